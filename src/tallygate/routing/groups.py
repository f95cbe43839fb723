"""Model groups and their deployments as the router holds them, built once at start.

A ``Target`` is one deployment with everything routing needs precomputed (its id,
host, effective timeouts, weight, price, the routing tag and headers of a first
attempt), so that choosing it costs no allocation. A ``Group`` is a model name and its
targets; a wildcard group's targets are templates made concrete per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from types import MappingProxyType
from urllib.parse import urlsplit

from tallygate.access.ratelimit import Limit
from tallygate.event import Routing
from tallygate.providers.base import Deployment
from tallygate.routing.settings import DeploymentRouting, RouterSettings

MODEL_ID_HEADER = "x-litellm-model-id"
MODEL_GROUP_HEADER = "x-litellm-model-group"
RETRIES_HEADER = "x-litellm-attempted-retries"
FALLBACKS_HEADER = "x-litellm-attempted-fallbacks"


def api_host(api_base: str | None) -> str | None:
    """The host (and port) of an api_base: never its path, query or credentials."""
    if not api_base:
        return None
    try:
        parts = urlsplit(api_base)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    return f"{host}:{port}" if port else host


def routing_headers(group: str, model_id: str, retries: int, fallbacks: int
                    ) -> dict[str, str]:
    return {MODEL_ID_HEADER: model_id, MODEL_GROUP_HEADER: group,
            RETRIES_HEADER: str(retries), FALLBACKS_HEADER: str(fallbacks)}


@dataclass(frozen=True, slots=True)
class Target:
    group: str
    model_id: str                    # routing.model_id, read on every call
    deployment: Deployment           # timeout: the effective one for plain calls
    stream_deployment: Deployment    # timeout: the effective one for streams
    routing: DeploymentRouting
    host: str | None
    weight: float                    # simple-shuffle's (weight, else rpm, else tpm, else 1)
    unit_cost: Decimal | None        # cost-based-routing's (None: unknown, tried last)
    template: str | None             # the configured provider/model when it has a ``*``
    first_tag: Routing               # the routing tag of a first attempt with no fallback
    first_headers: Mapping[str, str]
    limits_rpm: Limit | None
    limits_tpm: Limit | None

    @property
    def has_limits(self) -> bool:
        return self.limits_rpm is not None or self.limits_tpm is not None

    def limits(self, tokens: int) -> list[Limit]:
        out: list[Limit] = []
        if self.limits_rpm is not None:
            out.append(self.limits_rpm)
        if self.limits_tpm is not None:
            out.append(replace(self.limits_tpm, cost=tokens))
        return out

    def tag(self, attempts: int, fallbacks: int) -> Routing:
        if attempts == 1 and fallbacks == 0:
            return self.first_tag
        return Routing(self.group, self.model_id, self.host, attempts, fallbacks)

    def headers(self, retries: int, fallbacks: int) -> Mapping[str, str]:
        if retries == 0 and fallbacks == 0:
            return self.first_headers
        return routing_headers(self.group, self.model_id, retries, fallbacks)

    def concrete(self, provider: str, model: str) -> Target:
        """This wildcard template serving one requested model."""
        keep = provider == self.deployment.provider
        def made(d: Deployment) -> Deployment:
            if keep:
                return replace(d, model=model)
            # Another provider than the template's: its own key and default endpoint.
            return replace(d, provider=provider, model=model, api_key=None, api_base=None)
        return replace(self, deployment=made(self.deployment),
                       stream_deployment=made(self.stream_deployment))


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    targets: tuple[Target, ...]
    wildcard: bool = False
    cools: bool = True               # may its deployments be cooled down?
    by_id: bool = False              # a deployment named by its id (no cooldown check)
    ordered: bool = False            # some target has an ``order``
    any_limits: bool = False
    windows: bool = False            # some target has a known context window
    even: bool = True                # every target weighs the same (simple-shuffle)

    @property
    def single(self) -> bool:
        return len(self.targets) == 1


def _weight(r: DeploymentRouting) -> float:
    for value in (r.weight, r.rpm, r.tpm):
        if value is not None:
            return float(value)
    return 1.0


def build_groups(models: Mapping[str, Sequence[Deployment]], settings: RouterSettings, *,
                 unit_cost: Callable[[Deployment], Decimal | None],
                 context_window: Callable[[Deployment], int | None]) -> dict[str, Group]:
    """One Group per model name, its targets in config order."""
    groups: dict[str, Group] = {}
    for name, deployments in models.items():
        routings = settings.deployments.get(name) or ()
        targets: list[Target] = []
        for i, d in enumerate(deployments):
            r = routings[i] if i < len(routings) else DeploymentRouting(f"{name}#{i}")
            if r.context_window is None:
                r = replace(r, context_window=context_window(d))
            timeout = d.timeout if d.timeout is not None else settings.timeout_s
            stream_timeout = (r.stream_timeout or settings.stream_timeout_s or timeout)
            host = api_host(d.api_base)
            targets.append(Target(
                group=name, model_id=r.model_id,
                deployment=replace(d, timeout=timeout) if timeout != d.timeout else d,
                stream_deployment=replace(d, timeout=stream_timeout),
                routing=r, host=host, weight=_weight(r),
                unit_cost=unit_cost(d), template=r.template,
                first_tag=Routing(name, r.model_id, host),
                first_headers=MappingProxyType(routing_headers(name, r.model_id, 0, 0)),
                limits_rpm=(Limit("deployment", r.model_id, "requests", r.rpm, 1)
                            if r.rpm is not None else None),
                limits_tpm=(Limit("deployment", r.model_id, "tokens", r.tpm, 0)
                            if r.tpm is not None else None)))
        has_fallbacks = bool(settings.fallbacks.get(name) or settings.fallbacks.get("*")
                             or settings.default_fallbacks
                             or settings.context_window_fallbacks.get(name)
                             or settings.content_policy_fallbacks.get(name))
        groups[name] = Group(
            name=name, targets=tuple(targets), wildcard="*" in name,
            # LiteLLM never cools down a group's only deployment (nothing else would
            # serve); with fallbacks to go to, cooling it down is what lets them serve.
            cools=not settings.disable_cooldowns and (len(targets) > 1 or has_fallbacks),
            ordered=any(t.routing.order is not None for t in targets),
            any_limits=any(t.has_limits for t in targets),
            windows=any(t.routing.context_window for t in targets),
            even=len({t.weight for t in targets}) <= 1)
    return groups


def by_id_groups(groups: Mapping[str, Group]) -> dict[str, Group]:
    """A one-deployment group per deployment id: ``model: <model_info.id>`` calls it."""
    out: dict[str, Group] = {}
    for group in groups.values():
        if group.wildcard:
            continue
        for t in group.targets:
            out[t.model_id] = Group(group.name, (t,), cools=False, by_id=True,
                                    any_limits=t.has_limits,
                                    windows=bool(t.routing.context_window))
    return out
