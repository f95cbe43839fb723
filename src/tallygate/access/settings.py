"""``access_settings`` in config.yaml: attribution rules, budgets' reservation cap, Redis.

    access_settings:
      user_field: ignore            # ignore | must_match | master_only
      unattributed: hold            # reject | default_customer | hold
      default_customer: acme        # with unattributed: default_customer
      redis_url: redis://127.0.0.1:6379/0   # share rate limits between gateways
      max_reservation_usd: 0.10     # reserved per call when the body has no max_tokens
      resolve_subscription_from_lago: false
      key_cache_ttl_s: 5

Per-deployment limits (LiteLLM's ``rpm`` / ``tpm`` in ``litellm_params``) are the
router's (``tallygate.routing``): a call goes to a deployment of its group that has room.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, get_args

from tallygate.errors import ConfigError

UserField = Literal["ignore", "must_match", "master_only"]
Unattributed = Literal["reject", "default_customer", "hold"]
ACCESS_KEYS = {"user_field", "unattributed", "default_customer", "redis_url",
               "max_reservation_usd", "resolve_subscription_from_lago", "key_cache_ttl_s",
               "stale_reservation_s"}


@dataclass(frozen=True, slots=True)
class AccessSettings:
    user_field: UserField = "ignore"
    unattributed: Unattributed = "hold"
    default_customer: str | None = None
    redis_url: str | None = None
    max_reservation_usd: Decimal = Decimal("0.10")
    resolve_subscription_from_lago: bool = False
    key_cache_ttl_s: float = 5.0
    stale_reservation_s: float = 900.0


def _choice(value: Any, path: str, choices: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise ConfigError(f"{path}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def parse_access_settings(raw: Any, entries: list[Any], *,
                          env: Callable[[Any, str], Any],
                          decimal: Callable[[Any, str], Decimal | None],
                          number: Callable[[Any, str], float | None],
                          unknown: list[str]) -> AccessSettings:
    """Validate ``access_settings`` (ConfigError names the path)."""
    path = "access_settings"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping")
    unknown.extend(f"{path}.{k}" for k in raw if k not in ACCESS_KEYS)
    user_field = _choice(raw.get("user_field"), f"{path}.user_field", get_args(UserField),
                         "ignore")
    unattributed = _choice(raw.get("unattributed"), f"{path}.unattributed",
                           get_args(Unattributed), "hold")
    default_customer = env(raw.get("default_customer"), f"{path}.default_customer")
    if unattributed == "default_customer" and not default_customer:
        raise ConfigError(f"{path}.default_customer: required with unattributed: "
                          "default_customer")
    redis_url = env(raw.get("redis_url"), f"{path}.redis_url")
    if redis_url is not None and not str(redis_url).startswith(("redis://", "rediss://",
                                                                 "unix://")):
        raise ConfigError(f"{path}.redis_url: must be a redis:// URL")
    cap = decimal(raw.get("max_reservation_usd"), f"{path}.max_reservation_usd")
    resolve = raw.get("resolve_subscription_from_lago", False)
    if not isinstance(resolve, bool):
        raise ConfigError(f"{path}.resolve_subscription_from_lago: must be true or false")
    ttl = number(raw.get("key_cache_ttl_s"), f"{path}.key_cache_ttl_s")
    stale = number(raw.get("stale_reservation_s"), f"{path}.stale_reservation_s")
    return AccessSettings(
        user_field=user_field,  # type: ignore[arg-type]
        unattributed=unattributed,  # type: ignore[arg-type]
        default_customer=str(default_customer) if default_customer else None,
        redis_url=str(redis_url) if redis_url else None,
        max_reservation_usd=cap if cap is not None else Decimal("0.10"),
        resolve_subscription_from_lago=resolve,
        key_cache_ttl_s=ttl if ttl is not None else 5.0,
        stale_reservation_s=stale if stale is not None else 900.0)
