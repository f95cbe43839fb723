"""The proxy's settings, loaded from a LiteLLM-shaped config.yaml and validated at start.

A wrong shape raises ConfigError naming the path (``model_list[1].litellm_params.model:
required``); keys we do not know are listed in one warning; ``os.environ/NAME`` values
are read from the environment and an unset NAME is an error naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from tallygate.access.settings import AccessSettings, parse_access_settings
from tallygate.attribution import ChargeBy, parse_charge_by
from tallygate.callback_dispatch import SINK_NAMES
from tallygate.errors import ConfigError
from tallygate.providers.base import (
    PER_REQUEST_PRICE_KEY,
    PRICE_KEYS,
    Deployment,
    PriceOverride,
)
from tallygate.providers.registry import get_provider, provider_names, split_model
from tallygate.routing.settings import (
    DEPLOYMENT_KEYS,
    LITELLM_SETTINGS_KEYS,
    Entry,
    HealthRouting,
    RouterSettings,
    name_resolver,
    parse_router_settings,
)

log = logging.getLogger("tallygate.config")

ENV_PREFIX = "os.environ/"
DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_RESPONSES_RETENTION_S = 30 * 86_400

_PARAM_KEYS = {"model", "api_base", "api_key", "mock_response", "extra_headers",
               *DEPLOYMENT_KEYS, *PRICE_KEYS, PER_REQUEST_PRICE_KEY}
# LiteLLM also takes a deployment's rpm/tpm beside its litellm_params.
_ENTRY_KEYS = {"model_name", "litellm_params", "tallygate_params", "model_info", "rpm", "tpm"}
_SETTINGS_KEYS = {"callbacks", "success_callback", "failure_callback", "drop_params",
                  "set_verbose", "json_logs", "require_auth_for_metrics_endpoint",
                  *LITELLM_SETTINGS_KEYS}
_GENERAL_KEYS = {"master_key", "database_url", "max_request_size_mb", "drain_timeout_s",
                 "metrics_customer_labels", "responses_retention_period",
                 "outbox_batch_size", "charge_by", "jsonl_path", "background_health_checks",
                 "health_check_interval", "health_check_details",
                 "enable_health_check_routing", "health_check_staleness_threshold",
                 "health_check_ignore_transient_errors",
                 "require_auth_for_health_readiness", "body_read_timeout_s"}
DEFAULT_BODY_READ_TIMEOUT_S = 30.0
_TOP_KEYS = {"model_list", "litellm_settings", "tallygate_settings", "general_settings",
             "environment_variables", "router_settings", "access_settings"}


@dataclass(frozen=True, slots=True)
class ProxySettings:
    models: Mapping[str, tuple[Deployment, ...]]
    sinks: tuple[str, ...] = ()
    master_key: str | None = None
    database_url: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    drain_timeout_s: float = 10.0
    outbox_batch_size: int | None = None
    charge_by: ChargeBy = "end_user_id"
    #: customers with their own series in /metrics' token and cost counters; the rest
    #: share "other". 0 (the default): no customer label, customer ids stay out of metrics
    metrics_customer_labels: int = 0
    config_path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    access: AccessSettings = field(default_factory=AccessSettings)
    # Whether /metrics and /health/readiness need the master key (on when one is set).
    metrics_auth: bool = False
    readiness_auth: bool = False
    # How long a request body may take to arrive (one shorter than its Content-Length).
    body_read_timeout_s: float = DEFAULT_BODY_READ_TIMEOUT_S
    #: how long the Responses API's stored responses are kept
    responses_retention_s: float = DEFAULT_RESPONSES_RETENTION_S
    #: litellm_settings.drop_params: leave out (and name) OpenAI params a provider
    #: does not take, instead of refusing the call
    drop_params: bool = False
    #: litellm_settings.set_verbose / json_logs: DEBUG logging; one JSON object a line
    set_verbose: bool = False
    json_logs: bool = False
    router: RouterSettings = field(default_factory=RouterSettings)
    # general_settings.background_health_checks / health_check_interval / _details
    health_check_interval_s: float | None = None   # None: no background health checks
    health_check_details: bool = True
    # general_settings.enable_health_check_routing (+ staleness, transient errors)
    health_routing: HealthRouting | None = None

    def default_database_path(self) -> str:
        """The outbox lives next to the config file unless told otherwise."""
        base = self.config_path.parent if self.config_path else Path.cwd()
        return str(base / "tallygate.db")

    def default_jsonl_path(self) -> str:
        base = self.config_path.parent if self.config_path else Path.cwd()
        return str(base / "tallygate-usage.jsonl")


class _Reader:
    """Walks the YAML tree, remembering paths for errors and unknown keys."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.config_env: dict[str, str] = {}  # the config's environment_variables block
        self.unknown: list[str] = []
        # Keys LiteLLM acts on that are read but not acted on here: said in one warning.
        self.not_applied: list[str] = []

    def env(self, value: Any, path: str) -> Any:
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX):]
            if name not in self.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            if not self.environ[name].strip():
                # An empty master_key would otherwise mean "no auth": refuse, as for unset.
                raise ConfigError(f"{path}: environment variable {name} is empty")
            return self.environ[name]
        return value

    def mapping(self, value: Any, path: str, known: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: must be a mapping")
        for key in value:
            if key not in known:
                self.unknown.append(f"{path}.{key}" if path else str(key))
        return value

    def text(self, value: Any, path: str, *, required: bool = False) -> str | None:
        value = self.env(value, path)
        if value is None or value == "":
            if required:
                raise ConfigError(f"{path}: required")
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string")
        return value

    def number(self, value: Any, path: str) -> float | None:
        value = self.env(value, path)
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: must be a number") from None
        if number < 0:
            raise ConfigError(f"{path}: must not be negative")
        return number

    def decimal(self, value: Any, path: str) -> Decimal | None:
        value = self.env(value, path)
        if value is None:
            return None
        if isinstance(value, bool):
            raise ConfigError(f"{path}: must be a number")
        try:
            # str() first: a YAML float like 5e-07 must keep its written digits.
            number = Decimal(str(value))
        except InvalidOperation:
            raise ConfigError(f"{path}: must be a number") from None
        if number < 0 or not number.is_finite():
            raise ConfigError(f"{path}: must be a non-negative number")
        return number

    def flag(self, value: Any, path: str, default: bool = False) -> bool:
        value = self.env(value, path)
        if value is None:
            return default
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"  # os.environ/NAME gives a string
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false")
        return value

    def names(self, value: Any, path: str) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be a list of callback names")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(f"{path}[{i}]: must be a callback name")
            if item not in SINK_NAMES:
                raise ConfigError(f"{path}[{i}]: unknown callback {item!r}; "
                                  f"known: {', '.join(SINK_NAMES)}")
            out.append(item)
        return out


def _deployment(r: _Reader, entry: dict[str, Any], path: str) -> tuple[str, Deployment]:
    name = r.text(entry.get("model_name"), f"{path}.model_name", required=True)
    assert name is not None
    params_key = "tallygate_params" if "tallygate_params" in entry else "litellm_params"
    ppath = f"{path}.{params_key}"
    if entry.get(params_key) is None:
        raise ConfigError(f"{ppath}: required")
    raw_params = entry.get(params_key)
    if not isinstance(raw_params, dict):
        raise ConfigError(f"{ppath}: must be a mapping")
    model = r.text(raw_params.get("model"), f"{ppath}.model", required=True)
    assert model is not None
    provider, provider_model = split_model(model)
    if "/" in model and provider == "openai" and not model.startswith("openai/"):
        head = model.split("/", 1)[0]
        raise ConfigError(f"{ppath}.model: unknown provider {head!r} "
                          f"(known: {', '.join(provider_names())})")
    adapter = get_provider(provider)
    params = r.mapping(raw_params, ppath, _PARAM_KEYS | adapter.litellm_params)
    model_info = r.mapping(entry.get("model_info"), f"{path}.model_info",
                           set(entry.get("model_info") or {}))
    prices: dict[str, Any] = {k: r.decimal(params.get(k), f"{ppath}.{k}") for k in PRICE_KEYS}
    per_request = _per_request_prices(r, params.get(PER_REQUEST_PRICE_KEY),
                                      f"{ppath}.{PER_REQUEST_PRICE_KEY}")
    override = (PriceOverride(**prices, per_request=per_request)
                if per_request or any(v is not None for v in prices.values()) else None)
    extra = {k: r.env(params[k], f"{ppath}.{k}") for k in sorted(adapter.litellm_params)
             if params.get(k) is not None}
    for key, names in adapter.param_envs.items():
        # LiteLLM reads these from the environment when the entry does not set them.
        if key not in extra:
            found = next((r.config_env[n] for n in names if r.config_env.get(n)), None)
            if found is not None:
                extra[key] = found
    if r.config_env:
        extra = adapter.config_params(provider_model, extra, r.config_env)
    headers = params.get("extra_headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{ppath}.extra_headers: must be a mapping")
    mock = params.get("mock_response")
    api_key = r.text(params.get("api_key"), f"{ppath}.api_key")
    if api_key is None:
        # LiteLLM puts environment_variables into the process environment, where the
        # provider finds its key (OPENAI_API_KEY...); ours are not, so bind it here.
        api_key = next((r.config_env[n] for n in adapter.api_key_envs()
                        if r.config_env.get(n)), None)
    api_base = r.text(params.get("api_base"), f"{ppath}.api_base")
    if api_base is None:
        api_base = next((r.environ[n] for n in adapter.api_base_envs if r.environ.get(n)),
                        None)
    deployment = Deployment(
        provider=provider, model=provider_model,
        api_base=api_base,
        api_key=api_key,
        timeout=r.number(params.get("timeout"), f"{ppath}.timeout"),
        headers={str(k): str(r.env(v, f"{ppath}.extra_headers.{k}")) for k, v in headers.items()},
        price=override,
        mock_response=str(mock) if mock is not None else None,
        params=extra,
        model_info=dict(model_info),
    )
    try:
        adapter.check_deployment(deployment)
    except ConfigError as exc:
        raise ConfigError(f"{ppath}: {exc.message}") from None
    endpoints = model_info.get("supported_endpoints")
    if (isinstance(endpoints, list) and not adapter.responses_api
            and any(e in ("/v1/responses", "/responses") for e in endpoints)):
        log.warning("%s.model_info.supported_endpoints names /v1/responses, but %s "
                    "deployments have no Responses API of their own: the Responses door "
                    "serves them translated to their chat API", path, provider)
    return name, deployment


def _per_request_prices(r: _Reader, value: Any, path: str) -> dict[str, Decimal]:
    """LiteLLM's ``search_context_cost_per_query``: {search_context_size_low: USD, ...}."""
    value = r.env(value, path)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping of search_context_size_low|medium|"
                          "high to a price per request")
    out: dict[str, Decimal] = {}
    for name, price in value.items():
        if name not in ("search_context_size_low", "search_context_size_medium",
                        "search_context_size_high"):
            raise ConfigError(f"{path}.{name}: unknown; the keys are search_context_size_"
                              "low, search_context_size_medium, search_context_size_high")
        number = r.decimal(price, f"{path}.{name}")
        if number is not None:
            out[str(name)] = number
    return out


def _retention(r: _Reader, value: Any) -> float:
    """``general_settings.responses_retention_period``: a duration (``30d``, ``12h``) or
    seconds; stored responses older than that are deleted."""
    from tallygate.access.budgets import parse_duration_s
    from tallygate.errors import BadRequestError

    value = r.env(value, "general_settings.responses_retention_period")
    if value is None:
        return DEFAULT_RESPONSES_RETENTION_S
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError("general_settings.responses_retention_period: must be positive")
        return float(value)
    try:
        seconds = parse_duration_s(value, "responses_retention_period")
    except BadRequestError as exc:
        raise ConfigError(f"general_settings.{exc.message}") from None
    return float(seconds or DEFAULT_RESPONSES_RETENTION_S)


def parse_config(data: Any, environ: Mapping[str, str] | None = None,
                 config_path: Path | None = None) -> ProxySettings:
    environ = os.environ if environ is None else environ
    r = _Reader(environ)
    top = r.mapping(data, "", _TOP_KEYS)
    if "environment_variables" in top:
        env_vars = r.mapping(top["environment_variables"], "environment_variables",
                             set(top["environment_variables"] or {}))
        # LiteLLM sets these into the process environment before reading the rest.
        merged = dict(environ)
        r.config_env = {str(k): str(v) for k, v in env_vars.items()}
        merged.update(r.config_env)
        r.environ = merged
    entries = top.get("model_list")
    if entries is None:
        raise ConfigError("model_list: required")
    if not isinstance(entries, list):
        raise ConfigError("model_list: must be a list")
    models: dict[str, list[Deployment]] = {}
    routed: list[Entry] = []
    for i, entry in enumerate(entries):
        path = f"model_list[{i}]"
        entry = r.mapping(entry, path, _ENTRY_KEYS)
        if not entry:
            raise ConfigError(f"{path}: must be a mapping with model_name and litellm_params")
        name, deployment = _deployment(r, entry, path)
        params_key = "tallygate_params" if "tallygate_params" in entry else "litellm_params"
        routed.append(Entry(name, len(models.get(name, ())), deployment, entry[params_key],
                            entry, f"{path}.{params_key}"))
        models.setdefault(name, []).append(deployment)

    settings_key = "tallygate_settings" if "tallygate_settings" in top else "litellm_settings"
    s = r.mapping(top.get(settings_key), settings_key, _SETTINGS_KEYS)
    sinks: list[str] = []
    for key in ("callbacks", "success_callback"):
        for name in r.names(s.get(key), f"{settings_key}.{key}"):
            if name not in sinks:
                sinks.append(name)
    if r.names(s.get("failure_callback"), f"{settings_key}.failure_callback"):
        # LiteLLM sends failed calls to these; ours are metered sinks of billed calls.
        r.not_applied.append(f"{settings_key}.failure_callback")
    flags = {key: r.flag(s.get(key), f"{settings_key}.{key}")
             for key in ("drop_params", "set_verbose", "json_logs")}

    g = r.mapping(top.get("general_settings"), "general_settings", _GENERAL_KEYS)
    size_mb = r.number(g.get("max_request_size_mb"), "general_settings.max_request_size_mb")
    drain = r.number(g.get("drain_timeout_s"), "general_settings.drain_timeout_s")
    batch = r.number(g.get("outbox_batch_size"), "general_settings.outbox_batch_size")
    customer_labels = r.number(g.get("metrics_customer_labels"),
                               "general_settings.metrics_customer_labels")
    charge_by_raw = r.text(g.get("charge_by"), "general_settings.charge_by")
    try:
        charge_by = parse_charge_by(charge_by_raw or r.environ.get("LAGO_API_CHARGE_BY"))
    except ConfigError as exc:
        raise ConfigError(f"general_settings.charge_by: {exc.message}") from None
    retention = _retention(r, g.get("responses_retention_period"))
    access = parse_access_settings(top.get("access_settings"), entries, env=r.env,
                                   decimal=r.decimal, number=r.number, unknown=r.unknown)
    router = parse_router_settings(top.get("router_settings"), s, settings_key, routed,
                                   env=r.env, resolves=name_resolver(routed, provider_names()),
                                   unknown=r.unknown)
    background = g.get("background_health_checks")
    if background is not None and not isinstance(background, bool):
        raise ConfigError("general_settings.background_health_checks: must be true or false")
    interval = r.number(g.get("health_check_interval"), "general_settings.health_check_interval")
    details = g.get("health_check_details", True)
    if not isinstance(details, bool):
        raise ConfigError("general_settings.health_check_details: must be true or false")
    health_routing = _health_routing(r, g, (interval or 300.0) if background else None,
                                     bool(router.allowed_fails_policy))

    if r.unknown:
        log.warning("config: ignoring unknown keys: %s", ", ".join(r.unknown))
    master_key = r.text(g.get("master_key"), "general_settings.master_key")
    body_timeout = r.number(g.get("body_read_timeout_s"), "general_settings.body_read_timeout_s")
    if r.not_applied:
        log.warning("config: these keys are accepted but have no effect in tallygate: %s",
                    ", ".join(r.not_applied))
    return ProxySettings(
        models={k: tuple(v) for k, v in models.items()},
        sinks=tuple(sinks),
        master_key=master_key,
        database_url=(r.text(g.get("database_url"), "general_settings.database_url")
                      or r.environ.get("TALLYGATE_DATABASE_URL")),
        max_request_bytes=(int(size_mb * 1024 * 1024) if size_mb is not None
                           else DEFAULT_MAX_REQUEST_BYTES),
        drain_timeout_s=drain if drain is not None else 10.0,
        outbox_batch_size=int(batch) if batch else None,
        charge_by=charge_by,
        metrics_customer_labels=(int(customer_labels) if customer_labels is not None
                                 else 0),
        config_path=config_path,
        extra={"environ": r.environ, "jsonl_path": g.get("jsonl_path")},
        access=access,
        metrics_auth=r.flag(s.get("require_auth_for_metrics_endpoint"),
                            f"{settings_key}.require_auth_for_metrics_endpoint",
                            master_key is not None),
        readiness_auth=r.flag(g.get("require_auth_for_health_readiness"),
                              "general_settings.require_auth_for_health_readiness",
                              master_key is not None),
        body_read_timeout_s=body_timeout or DEFAULT_BODY_READ_TIMEOUT_S,
        responses_retention_s=retention,
        **flags,
        router=router,
        health_check_interval_s=(interval or 300.0) if background else None,
        health_check_details=details,
        health_routing=health_routing,
    )


def _health_routing(r: _Reader, g: Mapping[str, Any], interval: float | None,
                    policy: bool) -> HealthRouting | None:
    """general_settings.enable_health_check_routing, read as LiteLLM reads it: it acts
    only with background health checks, which make the verdicts it routes by."""
    path = "general_settings"
    enabled = r.flag(g.get("enable_health_check_routing"),
                     f"{path}.enable_health_check_routing", False)
    stale = r.number(g.get("health_check_staleness_threshold"),
                     f"{path}.health_check_staleness_threshold")
    if stale is not None and stale <= 0:
        raise ConfigError(f"{path}.health_check_staleness_threshold: must be a positive "
                          "number of seconds")
    transient = r.flag(g.get("health_check_ignore_transient_errors"),
                       f"{path}.health_check_ignore_transient_errors", False)
    if enabled and interval is None:
        log.warning("config: %s.enable_health_check_routing has no effect without "
                    "%s.background_health_checks: true (its verdicts come from them)",
                    path, path)
    if not enabled or interval is None:
        for key in ("health_check_staleness_threshold", "health_check_ignore_transient_errors"):
            if g.get(key) is not None:
                r.not_applied.append(f"{path}.{key} (read by enable_health_check_routing)")
        return None
    return HealthRouting(stale_s=stale if stale is not None else 2 * interval,
                         ignore_transient=bool(transient), by_policy=policy)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ProxySettings:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, environ, config_path=p.resolve())
