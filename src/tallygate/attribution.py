"""Who pays for a call: the customer that Lago bills, by ``LAGO_API_CHARGE_BY``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

ChargeBy = Literal["end_user_id", "user_id", "team_id", "customer_id"]
CHARGE_BY_CHOICES: tuple[str, ...] = get_args(ChargeBy)


def parse_charge_by(value: str | None) -> ChargeBy:
    from tallygate.errors import ConfigError

    v = (value or "end_user_id").strip()
    if v not in CHARGE_BY_CHOICES:
        raise ConfigError(f"LAGO_API_CHARGE_BY must be one of {', '.join(CHARGE_BY_CHOICES)}, "
                          f"got {v!r}")
    return v  # type: ignore[return-value]


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
