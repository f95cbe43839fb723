"""How an SDK call reaches its deployment: at once, or through ``tallygate.routing``.

A plain call (no ``num_retries``, no ``fallbacks``) makes its one attempt on the
deployment its arguments describe (``Direct``). A call with per-call ``num_retries`` /
``fallbacks``, and every call of a ``tallygate.Router``, goes through the proxy's own
router (``Routed``): the same retries, fallbacks and cooldowns, each attempt billed by
the engine on the deployment that made it, so the one that answers is the one billed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Protocol, TypeVar

from tallygate.engine import CallContext
from tallygate.errors import BadRequestError
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider, provider_names
from tallygate.routing import Attempt, Plan, RouteOptions
from tallygate.routing import Router as RoutingRouter
from tallygate.routing.settings import RouterSettings

log = logging.getLogger("tallygate")

T = TypeVar("T")
# One attempt: the deployment to call and the call's context for it -> the answer.
OneAttempt = Callable[[Deployment, CallContext], Awaitable[T]]
# The keys a per-call fallback given as a mapping may set besides its model.
FALLBACK_KEYS = frozenset({"model", "api_base", "api_key"})


class Route(Protocol):
    async def run(self, ctx: CallContext, one: OneAttempt[T], *, stream: bool = False,
                  params: Mapping[str, Any] | None = None) -> T: ...


@dataclass(frozen=True, slots=True)
class Direct:
    """One attempt on the deployment the call's own arguments describe."""

    deployment: Deployment

    async def run(self, ctx: CallContext, one: OneAttempt[T], *, stream: bool = False,
                  params: Mapping[str, Any] | None = None) -> T:
        return await one(self.deployment, ctx)


def _prompt_tokens(params: Mapping[str, Any]) -> int:
    if "messages" in params:
        return estimate_prompt_tokens(params.get("messages") or ())
    value = params.get("input", params.get("prompt"))
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    return estimate_text_tokens(value if isinstance(value, str) else "")


def _max_output(params: Mapping[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


@dataclass(frozen=True, slots=True)
class Routed:
    """Attempts chosen by ``tallygate.routing``'s router for a resolved model name."""

    router: RoutingRouter
    plan: Plan
    options: RouteOptions
    mock_response: str | None = None   # a per-call mock_response, on whichever answers
    # Per-call provider parameters (api_version, input_type...): over the litellm_params
    # of a deployment whose provider takes them, as LiteLLM's Router merges them.
    provider_kwargs: Mapping[str, Any] = field(default_factory=dict)

    async def run(self, ctx: CallContext, one: OneAttempt[T], *, stream: bool = False,
                  params: Mapping[str, Any] | None = None) -> T:
        mock, extra = self.mock_response, self.provider_kwargs

        async def attempt(att: Attempt) -> T:
            deployment = att.deployment
            if mock is not None:
                deployment = replace(deployment, mock_response=mock)
            if extra:
                deployment = _with_provider_kwargs(deployment, extra)
            return await one(deployment, ctx.routed(att.tag))

        shape = params or {}
        return await self.router.run(
            self.plan, attempt, options=self.options, stream=stream,
            tokens=lambda: _prompt_tokens(shape) + _max_output(shape),
            prompt_tokens=lambda: _prompt_tokens(shape))


def _with_provider_kwargs(deployment: Deployment, extra: Mapping[str, Any]) -> Deployment:
    takes = get_provider(deployment.provider).litellm_params
    mine = {k: v for k, v in extra.items() if k in takes}
    other = sorted(k for k in extra if k not in takes)
    if other:
        log.warning("%s: no effect on deployment %s/%s (its provider does not take them)",
                    ", ".join(other), deployment.provider, deployment.model)
    return replace(deployment, params={**deployment.params, **mine}) if mine else deployment


def provider_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take every provider's own per-call parameters off ``kwargs``."""
    keys = _provider_keys() & kwargs.keys()
    return {k: kwargs.pop(k) for k in sorted(keys) if kwargs[k] is not None}


@cache
def _provider_keys() -> frozenset[str]:
    keys: set[str] = set()
    for name in provider_names():
        keys |= get_provider(name).litellm_params
    return frozenset(keys)


def fallback_entries(fallbacks: Any) -> list[dict[str, Any]]:
    """LiteLLM's per-call ``fallbacks``: model names, or ``{"model": ..., "api_base":
    ..., "api_key": ...}``, each tried in order after the call's own model fails."""
    if not isinstance(fallbacks, list | tuple):
        raise BadRequestError("'fallbacks' must be a list of model names", param="fallbacks",
                              code="invalid_type")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(fallbacks):
        if isinstance(item, str) and item:
            out.append({"model": item})
            continue
        if isinstance(item, Mapping) and isinstance(item.get("model"), str) and item["model"]:
            extra = sorted(str(k) for k in item if k not in FALLBACK_KEYS)
            if extra:
                raise BadRequestError(
                    f"'fallbacks[{i}]' may set only {', '.join(sorted(FALLBACK_KEYS))}; "
                    f"not supported: {', '.join(extra)}", param=f"fallbacks[{i}]",
                    code="unsupported_parameter")
            out.append(dict(item))
            continue
        raise BadRequestError(f"'fallbacks[{i}]' must be a model name (or a mapping with "
                              "one)", param=f"fallbacks[{i}]", code="invalid_type")
    return out


def check_retries(num_retries: Any) -> int | None:
    if num_retries is None:
        return None
    if isinstance(num_retries, bool) or not isinstance(num_retries, int) or num_retries < 0:
        raise BadRequestError("'num_retries' must be a non-negative integer",
                              param="num_retries", code="invalid_type")
    return num_retries


def per_call_route(models: Sequence[tuple[str, Deployment]], num_retries: int | None
                   ) -> Routed:
    """A router of one-deployment groups for one call: the call's model, then each
    fallback in order, retried ``num_retries`` times on retryable errors. No cooldowns:
    nothing outlives the call, as with LiteLLM's per-call retries and fallbacks."""
    names: list[str] = []
    groups: dict[str, tuple[Deployment, ...]] = {}
    for i, (name, deployment) in enumerate(models):
        unique = name if name not in groups else f"{name}#{i}"  # the same model twice
        names.append(unique)
        groups[unique] = (deployment,)
    settings = RouterSettings(
        num_retries=num_retries or 0, disable_cooldowns=True,
        max_fallbacks=max(len(names) - 1, 0),
        fallbacks={names[0]: tuple(names[1:])} if len(names) > 1 else {})
    router = RoutingRouter(groups, settings)
    return Routed(router, router.resolve(names[0]), RouteOptions(num_retries=num_retries))
