"""Who pays for a call: the customer that Lago bills, by ``LAGO_API_CHARGE_BY``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

import orjson

ChargeBy = Literal["end_user_id", "user_id", "team_id", "customer_id"]
CHARGE_BY_CHOICES: tuple[str, ...] = get_args(ChargeBy)


def parse_charge_by(value: str | None) -> ChargeBy:
    from tallygate.errors import ConfigError

    v = (value or "end_user_id").strip()
    if v not in CHARGE_BY_CHOICES:
        raise ConfigError(f"LAGO_API_CHARGE_BY must be one of {', '.join(CHARGE_BY_CHOICES)}, "
                          f"got {v!r}")
    return v  # type: ignore[return-value]


# The request fields that name the end user, in order: OpenAI's ``user`` and its
# documented successor ``safety_identifier``.
END_USER_FIELDS = ("user", "safety_identifier")


def end_user_of(data: Mapping[str, Any]) -> tuple[str | None, str]:
    """(end user, the field that named it) of a request body in any OpenAI shape."""
    for name in END_USER_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value:
            return value, name
    return None, END_USER_FIELDS[0]


# Claude Code before 2.x: "user_<device hash>_account_<uuid or empty>_session_<uuid>".
_LEGACY_AGENT_ID = re.compile(r"user_([0-9a-f]+)_account_([0-9a-f-]*)_session_[0-9a-f-]+")
_AGENT_KEYS = ("account_uuid", "device_id", "session_id")


def stable_user_id(value: str) -> str | None:
    """The payer in a Messages API ``metadata.user_id``.

    Claude Code sends a JSON object there (``{"device_id", "account_uuid",
    "session_id"}``): its stable identity is the account, else the device, never the
    session, which would make every session a new customer (None when only a session is
    given). Older versions joined the same ids with underscores. Any other value is the
    end user as it is.
    """
    if value.startswith("{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if isinstance(parsed, dict) and any(k in parsed for k in _AGENT_KEYS):
            for key in ("account_uuid", "device_id"):
                ident = parsed.get(key)
                if isinstance(ident, str) and ident:
                    return ident
            return None
        return value
    legacy = _LEGACY_AGENT_ID.fullmatch(value)
    if legacy is not None:
        return legacy.group(2) or legacy.group(1)
    return value


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def resolve_customer(charge_by: ChargeBy, *, end_user: str | None,
                     metadata: Mapping[str, Any] | None,
                     user_id: str | None = None, team_id: str | None = None,
                     customer_id: str | None = None) -> str | None:
    """The billed id, or None when it cannot be resolved (the call is unattributed).

    ``end_user_id`` is the OpenAI ``user`` field; the other ids come from the caller's
    key when there is one, else from ``metadata`` (LiteLLM's ``user_api_key_*`` names
    are read too, so existing integrations keep working).
    """
    meta = metadata or {}
    if charge_by == "end_user_id":
        return end_user or None
    if charge_by == "user_id":
        return user_id or _text(meta.get("user_id")) or _text(meta.get("user_api_key_user_id"))
    if charge_by == "team_id":
        return team_id or _text(meta.get("team_id")) or _text(meta.get("user_api_key_team_id"))
    return customer_id or _text(meta.get("customer_id"))
