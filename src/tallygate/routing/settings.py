"""``router_settings`` (and the routing keys of each deployment) in LiteLLM's names.

    router_settings:
      routing_strategy: simple-shuffle   # least-busy | latency-based-routing |
                                         # usage-based-routing-v2 | cost-based-routing
      num_retries: 2
      allowed_fails: 3                   # failures a minute before a cooldown
      cooldown_time: 5                   # seconds out of rotation
      fallbacks: [{"gpt-4o": ["claude-sonnet"]}]
      model_group_alias: {"gpt-4": "gpt-4o"}
      redis_url: redis://127.0.0.1:6379/0   # cooldowns shared by every gateway

Per deployment (``litellm_params``): ``order``, ``weight``, ``rpm``, ``tpm``,
``max_retries``, ``timeout``, ``stream_timeout``; ``model_info``: ``id``,
``max_input_tokens``, ``mode``, ``health_check_model``, ``health_check_timeout``.
``litellm_settings.num_retries`` / ``request_timeout`` (and the fallback keys LiteLLM
also reads there) are defaults that ``router_settings`` overrides.

Every value is checked here; a fallback or alias naming a model group that does not
exist is a ConfigError naming its path (the CLI exits 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args
from urllib.parse import quote

from tallygate.errors import ConfigError
from tallygate.providers.base import Deployment

Strategy = Literal["simple-shuffle", "least-busy", "latency-based-routing",
                   "usage-based-routing-v2", "usage-based-routing", "cost-based-routing"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

# The error kinds the router tells apart (LiteLLM's exception classes, by name).
ErrorKind = Literal["bad_request", "auth", "not_found", "timeout", "rate_limit",
                    "content_policy", "context_window", "server"]
# retry_policy / allowed_fails_policy field prefix -> error kind
POLICY_KINDS: Mapping[str, ErrorKind] = MappingProxyType({
    "BadRequestError": "bad_request", "AuthenticationError": "auth",
    "TimeoutError": "timeout", "RateLimitError": "rate_limit",
    "ContentPolicyViolationError": "content_policy",
    "InternalServerError": "server",
})

ROUTER_KEYS = frozenset({
    "routing_strategy", "routing_strategy_args", "num_retries", "retry_after", "timeout",
    "stream_timeout", "allowed_fails", "cooldown_time", "fallbacks",
    "context_window_fallbacks", "content_policy_fallbacks", "default_fallbacks",
    "retry_policy", "allowed_fails_policy", "model_group_alias", "enable_pre_call_checks",
    "redis_host", "redis_port", "redis_password", "redis_url", "max_fallbacks",
    "disable_cooldowns"})
# Keys LiteLLM also reads from litellm_settings; router_settings wins where both are set.
LITELLM_SETTINGS_KEYS = frozenset({
    "num_retries", "request_timeout", "fallbacks", "context_window_fallbacks",
    "content_policy_fallbacks", "default_fallbacks", "allowed_fails", "cooldown_time"})
# litellm_params keys that are routing's, not the provider's.
DEPLOYMENT_KEYS = frozenset({"order", "weight", "rpm", "tpm", "max_retries", "timeout",
                             "stream_timeout"})
LATENCY_ARGS = frozenset({"ttl", "lowest_latency_buffer", "max_latency_list_size"})

DEFAULT_NUM_RETRIES = 2          # LiteLLM's (the OpenAI client's) default
DEFAULT_ALLOWED_FAILS = 3
DEFAULT_COOLDOWN_S = 5.0
DEFAULT_MAX_FALLBACKS = 5

# Request fields a fallback entry may not set: the gateway's (routing, who pays, the
# answer's shape) or the deployment's (where and with which key it is called).
NOT_PER_FALLBACK = frozenset({
    "fallbacks", "num_retries", "timeout", "disable_fallbacks", "stream", "stream_options",
    "user", "metadata", "api_key", "api_base", "base_url", "api_version",
    "custom_llm_provider", "extra_headers", "drop_params"})


@dataclass(frozen=True, slots=True)
class FallbackTo:
    """A fallback entry that carries its own request params (LiteLLM's
    ``{"model": "gpt-3.5", "temperature": 0.2}``): its call uses them instead of the
    client's."""

    model: str
    params: Mapping[str, Any]


# A fallback: a model group's name, or a name with the params its call uses.
Fallback = str | FallbackTo
Fallbacks = Mapping[str, tuple[Fallback, ...]]
_EMPTY: Fallbacks = MappingProxyType({})


def fallback_name(item: Fallback) -> str:
    return item if isinstance(item, str) else item.model


def fallback_entry(item: Any, path: str, error: Callable[[str, str], Exception]) -> Fallback:
    """One fallback as LiteLLM takes it: a name, or ``{"model": name, **params}``.
    ``error(message, path)`` makes the error to raise (a ConfigError, a 400)."""
    if isinstance(item, str) and item:
        return item
    if not isinstance(item, dict):
        raise error("must be a model group name or a mapping with a 'model'", path)
    model = item.get("model")
    if not isinstance(model, str) or not model:
        raise error("must name its model group in 'model'", path)
    params = {str(k): v for k, v in item.items() if k != "model"}
    refused = sorted(k for k in params if k in NOT_PER_FALLBACK)
    if refused:
        raise error(f"{', '.join(refused)} cannot be set per fallback (only request "
                    "params such as messages or temperature can)", path)
    return FallbackTo(model, MappingProxyType(params)) if params else model


@dataclass(frozen=True, slots=True)
class DeploymentRouting:
    """What the router knows of one deployment besides how to call it."""

    model_id: str                    # model_info.id, or a stable id made from the config
    order: int | None = None         # lower first; None after every ordered one
    weight: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 0             # retries of this same deployment inside one attempt
    stream_timeout: float | None = None
    context_window: int | None = None  # model_info.max_input_tokens (or max_tokens)
    mode: str = "chat"               # model_info.mode: chat | embedding
    health_check_model: str | None = None
    health_check_timeout: float | None = None
    template: str | None = None      # the configured provider/model when it has a ``*``


@dataclass(frozen=True, slots=True)
class HealthRouting:
    """general_settings.enable_health_check_routing and its companions: background
    health checks take the deployments that fail them out of rotation."""

    stale_s: float                   # health_check_staleness_threshold (interval x 2)
    ignore_transient: bool = False   # health_check_ignore_transient_errors: 429/408
    # router_settings.allowed_fails_policy is set: a failed check counts toward the
    # deployment's cooldown by the policy instead of taking it out at once
    by_policy: bool = False


@dataclass(frozen=True, slots=True)
class LatencyArgs:
    ttl_s: float = 3600.0            # how long a latency sample counts
    lowest_latency_buffer: float = 0.0  # pick at random among those this close to the best
    max_latency_list_size: int = 10  # samples kept per deployment


@dataclass(frozen=True, slots=True)
class RouterSettings:
    strategy: Strategy = "simple-shuffle"
    latency: LatencyArgs = field(default_factory=LatencyArgs)
    num_retries: int = DEFAULT_NUM_RETRIES
    retry_after_s: float = 0.0       # the least wait before retrying the same deployment
    timeout_s: float | None = None   # default per-call timeout of deployments without one
    stream_timeout_s: float | None = None
    allowed_fails: int = DEFAULT_ALLOWED_FAILS
    cooldown_s: float = DEFAULT_COOLDOWN_S
    disable_cooldowns: bool = False
    fallbacks: Fallbacks = field(default_factory=lambda: _EMPTY)
    context_window_fallbacks: Fallbacks = field(default_factory=lambda: _EMPTY)
    content_policy_fallbacks: Fallbacks = field(default_factory=lambda: _EMPTY)
    default_fallbacks: tuple[str, ...] = ()
    max_fallbacks: int = DEFAULT_MAX_FALLBACKS
    retry_policy: Mapping[ErrorKind, int] = field(default_factory=dict)
    allowed_fails_policy: Mapping[ErrorKind, int] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    hidden_aliases: frozenset[str] = frozenset()
    pre_call_checks: bool = False
    redis_url: str | None = None
    # model group -> the routing of each of its deployments, in config order
    deployments: Mapping[str, tuple[DeploymentRouting, ...]] = field(default_factory=dict)


class _Values:
    """Typed reads of config values that name their path in every error."""

    def __init__(self, env: Callable[[Any, str], Any]) -> None:
        self.env = env

    def integer(self, value: Any, path: str, *, minimum: int = 0) -> int | None:
        value = self.env(value, path)
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{path}: must be an integer of at least {minimum}")
        return value

    def number(self, value: Any, path: str, *, positive: bool = False) -> float | None:
        value = self.env(value, path)
        if value is None:
            return None
        try:
            number = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: must be a number") from None
        if number != number or number < 0 or (positive and number == 0):
            raise ConfigError(f"{path}: must be a {'positive' if positive else 'non-negative'}"
                              " number")
        return number

    def flag(self, value: Any, path: str) -> bool | None:
        value = self.env(value, path)
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false")
        return value

    def text(self, value: Any, path: str) -> str | None:
        value = self.env(value, path)
        if value is None or value == "":
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string")
        return value


def stable_id(group: str, position: int, deployment: Deployment) -> str:
    """The same id for the same config entry on every gateway (shared cooldowns need it),
    without anything secret in it."""
    seed = f"{group}\n{position}\n{deployment.provider}/{deployment.model}\n" \
           f"{deployment.api_base or ''}"
    return hashlib.sha256(seed.encode()).hexdigest()[:24]


def deployment_routing(v: _Values, group: str, position: int, deployment: Deployment,
                       params: Mapping[str, Any], entry: Mapping[str, Any],
                       path: str) -> DeploymentRouting:
    """One deployment's routing keys; ``path`` names its ``litellm_params``."""
    info = deployment.model_info
    ipath = path.rsplit(".", 1)[0] + ".model_info"
    model_id = v.text(info.get("id"), f"{ipath}.id") or stable_id(group, position, deployment)
    rpm = v.integer(params.get("rpm", entry.get("rpm")), f"{path}.rpm")
    tpm = v.integer(params.get("tpm", entry.get("tpm")), f"{path}.tpm")
    window = v.integer(info.get("max_input_tokens", info.get("max_tokens")),
                       f"{ipath}.max_input_tokens", minimum=1)
    mode = v.text(info.get("mode"), f"{ipath}.mode") or "chat"
    raw_model = params.get("model")
    return DeploymentRouting(
        model_id=model_id,
        order=v.integer(params.get("order"), f"{path}.order"),
        weight=v.number(params.get("weight"), f"{path}.weight"),
        rpm=rpm, tpm=tpm,
        max_retries=v.integer(params.get("max_retries"), f"{path}.max_retries") or 0,
        stream_timeout=v.number(params.get("stream_timeout"), f"{path}.stream_timeout",
                                positive=True),
        context_window=window,
        mode=mode,
        health_check_model=v.text(info.get("health_check_model"),
                                  f"{ipath}.health_check_model"),
        health_check_timeout=v.number(info.get("health_check_timeout"),
                                      f"{ipath}.health_check_timeout", positive=True),
        template=raw_model if isinstance(raw_model, str) and "*" in raw_model else None,
    )


def _names(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(n, str) and n for n in value):
        raise ConfigError(f"{path}: must be a list of model group names")
    return tuple(value)


def _config_error(message: str, path: str) -> Exception:
    return ConfigError(f"{path}: {message}")


def _fallback_map(value: Any, path: str) -> dict[str, tuple[Fallback, ...]]:
    """LiteLLM's shape: ``[{"group": ["fallback", ...]}, ...]`` (a mapping is accepted),
    a fallback being a name or ``{"model": name, **request params}``."""
    if value is None:
        return {}
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise ConfigError(f'{path}: must be a list like [{{"model": ["fallback"]}}]')
    out: dict[str, tuple[Fallback, ...]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item:
            raise ConfigError(f'{path}[{i}]: must be a mapping like {{"model": ["fallback"]}}')
        for group, targets in item.items():
            where = f"{path}[{i}].{group}"
            if isinstance(targets, str | dict):
                targets = [targets]
            if not isinstance(targets, list):
                raise ConfigError(f"{where}: must be a list of model group names")
            out[str(group)] = tuple(fallback_entry(t, f"{where}[{j}]", _config_error)
                                    for j, t in enumerate(targets))
    return out


def _policy(v: _Values, raw: Any, path: str, suffix: str,
            unknown: list[str]) -> dict[ErrorKind, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping")
    out: dict[ErrorKind, int] = {}
    for key, value in raw.items():
        kind = POLICY_KINDS.get(str(key)[: -len(suffix)]) if str(key).endswith(suffix) else None
        if kind is None:
            unknown.append(f"{path}.{key}")
            continue
        count = v.integer(value, f"{path}.{key}")
        if count is not None:
            out[kind] = count
    return out


def _redis_url(v: _Values, raw: Mapping[str, Any]) -> str | None:
    url = v.text(raw.get("redis_url"), "router_settings.redis_url")
    if url is not None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("router_settings.redis_url: must be a redis:// URL")
        return url
    host = v.text(raw.get("redis_host"), "router_settings.redis_host")
    if host is None:
        for key in ("redis_port", "redis_password"):
            if raw.get(key) is not None:
                raise ConfigError(f"router_settings.{key}: needs redis_host (or redis_url)")
        return None
    port = v.integer(raw.get("redis_port"), "router_settings.redis_port", minimum=1) or 6379
    password = v.text(raw.get("redis_password"), "router_settings.redis_password")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/0"


@dataclass(frozen=True, slots=True)
class Entry:
    """One model_list entry as routing reads it."""

    group: str
    position: int                   # its place in its group
    deployment: Deployment
    params: Mapping[str, Any]       # the raw litellm_params
    raw: Mapping[str, Any]          # the raw entry (LiteLLM also takes rpm/tpm there)
    path: str                       # model_list[i].litellm_params


def name_resolver(entries: Sequence[Entry], providers: Sequence[str]
                  ) -> Callable[[str], bool]:
    """Whether a name reaches a model group: a group's name, a deployment's
    ``model_info.id``, or a name a wildcard group matches."""
    from tallygate.routing.wildcards import PatternSet, is_pattern

    names = {e.group for e in entries}
    ids = {str(e.deployment.model_info["id"]) for e in entries
           if e.deployment.model_info.get("id")}
    patterns = PatternSet([(n, n) for n in names if is_pattern(n)])

    def resolves(name: str) -> bool:
        return (name in names or name in ids
                or (bool(patterns) and patterns.match(name, providers) is not None))
    return resolves


def parse_router_settings(raw: Any, litellm_settings: Mapping[str, Any], settings_path: str,
                          entries: Sequence[Entry], *, env: Callable[[Any, str], Any],
                          resolves: Callable[[str], bool],
                          unknown: list[str]) -> RouterSettings:
    """Validate ``router_settings`` and the routing keys of every entry.

    ``resolves(name)`` says whether a name reaches a model group (a group, a wildcard
    pattern, a deployment id; aliases are checked here)."""
    v = _Values(env)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("router_settings: must be a mapping")
    unknown.extend(f"router_settings.{k}" for k in raw if k not in ROUTER_KEYS)
    s = litellm_settings

    def pick(key: str, settings_key: str | None = None) -> tuple[Any, str]:
        if raw.get(key) is not None:
            return raw[key], f"router_settings.{key}"
        other = settings_key or key
        return s.get(other), f"{settings_path}.{other}"

    strategy = v.text(raw.get("routing_strategy"), "router_settings.routing_strategy")
    strategy = strategy or "simple-shuffle"
    if strategy not in STRATEGIES:
        raise ConfigError(f"router_settings.routing_strategy: must be one of "
                          f"{', '.join(STRATEGIES)}, got {strategy!r}")
    latency = _latency_args(v, raw.get("routing_strategy_args"), strategy, unknown)

    value, path = pick("num_retries")
    num_retries = v.integer(value, path)
    value, path = pick("timeout", "request_timeout")
    timeout = v.number(value, path, positive=True)
    value, path = pick("allowed_fails")
    allowed_fails = v.integer(value, path)
    value, path = pick("cooldown_time")
    cooldown = v.number(value, path)
    aliases, hidden = _aliases(v, raw.get("model_group_alias"), resolves)

    def reaches(name: str) -> bool:
        return name in aliases or resolves(name)

    maps: dict[str, dict[str, tuple[Fallback, ...]]] = {}
    for key in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
        value, path = pick(key)
        maps[key] = _fallback_map(value, path)
        for group, targets in maps[key].items():
            if group != "*" and not reaches(group):
                raise ConfigError(f"{path}: unknown model group {group!r}")
            for i, target in enumerate(targets):
                name = fallback_name(target)
                if not reaches(name):
                    raise ConfigError(f"{path}.{group}[{i}]: unknown model group {name!r}")
    value, path = pick("default_fallbacks")
    defaults = _names(value, path) if value is not None else ()
    for i, target in enumerate(defaults):
        if not reaches(target):
            raise ConfigError(f"{path}[{i}]: unknown model group {target!r}")

    deployments: dict[str, list[DeploymentRouting]] = {}
    seen: dict[str, str] = {}
    for e in entries:
        routing = deployment_routing(v, e.group, e.position, e.deployment, e.params, e.raw,
                                     e.path)
        if routing.model_id in seen:
            raise ConfigError(f"{e.path.rsplit('.', 1)[0]}.model_info.id: "
                              f"{routing.model_id!r} is also the id of {seen[routing.model_id]}")
        seen[routing.model_id] = e.path.rsplit(".", 1)[0]
        deployments.setdefault(e.group, []).append(routing)
    return RouterSettings(
        strategy=strategy,  # type: ignore[arg-type]
        latency=latency,
        num_retries=num_retries if num_retries is not None else DEFAULT_NUM_RETRIES,
        retry_after_s=v.number(raw.get("retry_after"), "router_settings.retry_after") or 0.0,
        timeout_s=timeout,
        stream_timeout_s=v.number(raw.get("stream_timeout"), "router_settings.stream_timeout",
                                  positive=True),
        allowed_fails=allowed_fails if allowed_fails is not None else DEFAULT_ALLOWED_FAILS,
        cooldown_s=cooldown if cooldown is not None else DEFAULT_COOLDOWN_S,
        disable_cooldowns=bool(v.flag(raw.get("disable_cooldowns"),
                                      "router_settings.disable_cooldowns")),
        fallbacks=MappingProxyType(maps["fallbacks"]),
        context_window_fallbacks=MappingProxyType(maps["context_window_fallbacks"]),
        content_policy_fallbacks=MappingProxyType(maps["content_policy_fallbacks"]),
        default_fallbacks=defaults,
        max_fallbacks=_or(v.integer(raw.get("max_fallbacks"), "router_settings.max_fallbacks"),
                          DEFAULT_MAX_FALLBACKS),
        retry_policy=_policy(v, raw.get("retry_policy"), "router_settings.retry_policy",
                             "Retries", unknown),
        allowed_fails_policy=_policy(v, raw.get("allowed_fails_policy"),
                                     "router_settings.allowed_fails_policy", "AllowedFails",
                                     unknown),
        aliases=aliases,
        hidden_aliases=hidden,
        pre_call_checks=bool(v.flag(raw.get("enable_pre_call_checks"),
                                    "router_settings.enable_pre_call_checks")),
        redis_url=_redis_url(v, raw),
        deployments={g: tuple(d) for g, d in deployments.items()},
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _latency_args(v: _Values, raw: Any, strategy: str, unknown: list[str]) -> LatencyArgs:
    path = "router_settings.routing_strategy_args"
    if raw is None:
        return LatencyArgs()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping")
    if strategy != "latency-based-routing":
        unknown.extend(f"{path}.{k} (only read by latency-based-routing)" for k in raw)
        return LatencyArgs()
    unknown.extend(f"{path}.{k}" for k in raw if k not in LATENCY_ARGS)
    ttl = v.number(raw.get("ttl"), f"{path}.ttl", positive=True)
    buffer = v.number(raw.get("lowest_latency_buffer"), f"{path}.lowest_latency_buffer")
    size = v.integer(raw.get("max_latency_list_size"), f"{path}.max_latency_list_size",
                     minimum=1)
    return LatencyArgs(ttl_s=ttl if ttl is not None else 3600.0,
                       lowest_latency_buffer=buffer or 0.0,
                       max_latency_list_size=size or 10)


def _aliases(v: _Values, raw: Any, resolves: Callable[[str], bool]
             ) -> tuple[dict[str, str], frozenset[str]]:
    path = "router_settings.model_group_alias"
    if raw is None:
        return {}, frozenset()
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a mapping of alias to model group")
    out: dict[str, str] = {}
    hidden: set[str] = set()
    for alias, target in raw.items():
        name = str(alias)
        if isinstance(target, dict):
            group = v.text(target.get("model"), f"{path}.{name}.model")
            if v.flag(target.get("hidden"), f"{path}.{name}.hidden"):
                hidden.add(name)
        else:
            group = v.text(target, f"{path}.{name}")
        if group is None:
            raise ConfigError(f"{path}.{name}: must name a model group")
        if not resolves(group):
            raise ConfigError(f"{path}.{name}: unknown model group {group!r}")
        out[name] = group
    return out, frozenset(hidden)
