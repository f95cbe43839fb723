"""``tallygate.Router``: LiteLLM's ``Router`` for SDK code, on the proxy's routing code.

``model_list`` has the proxy config's entry shape (``model_name``, ``litellm_params``,
``model_info``) and the constructor's routing arguments are ``router_settings``' keys,
so both are read by the config's own parser (``tallygate.config``) and run by
``tallygate.routing.Router``: the same strategies, retries, fallbacks and cooldowns as
the proxy, each call billed once, priced on the deployment that answered. Its media
methods (``aimage_generation``, ``aimage_edit``, ``atranscription``, ``aspeech``,
``arerank``, ``amoderation``: those LiteLLM's Router has) run the same way.

LiteLLM constructor arguments that tallygate does not implement are refused when set
(a ConfigError naming them); the few that only change LiteLLM's own logging are warned
about. Routing state lives in the process; with ``redis_host`` / ``redis_url`` the
cooldowns and rpm/tpm counts are shared through Redis, and each event loop that calls
the router gets its own Redis connections (they cannot cross loops).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from tallygate import media
from tallygate.config import ProxySettings, parse_config
from tallygate.errors import BadRequestError, ConfigError
from tallygate.event import UsageEvent
from tallygate.media import MediaAnswer
from tallygate.pricing import default_price_book
from tallygate.providers.base import PER_REQUEST_PRICE_KEY, PRICE_KEYS, Deployment
from tallygate.response import ModelResponse
from tallygate.routing import Router as RoutingRouter
from tallygate.routing import pop_options
from tallygate.routing.settings import ROUTER_KEYS, FallbackTo
from tallygate.runtime import runtime
from tallygate.sdk import (
    CompletionStream,
    SdkRecorder,
    _context,
    routed_chat,
    routed_embedding,
)
from tallygate.sdk_media import (
    Build,
    SpeechResponse,
    image_edit_build,
    json_answer,
    routed_media,
    transcription_build,
)
from tallygate.sdk_routing import Routed, provider_kwargs
from tallygate.usage import Usage

log = logging.getLogger("tallygate")

# LiteLLM Router arguments with no effect on what a call does or costs: a warning.
_LOGGING_ONLY = {"set_verbose": False, "debug_level": "INFO", "client_ttl": 3600,
                 "polling_interval": None}
# LiteLLM Router arguments tallygate does not implement: refused when set.
_UNSUPPORTED = frozenset({
    "assistants_config", "search_tools", "guardrail_list", "cache_responses",
    "cache_kwargs", "caching_groups", "default_priority", "default_litellm_params",
    "default_max_parallel_requests", "model_group_retry_policy", "enable_tag_filtering",
    "optional_pre_call_checks", "provider_budget_config", "alerting_config",
    "router_general_settings", "ignore_invalid_deployments", "router_budget_config"})
# Per-call keys that configure a deployment: a Router call takes them from model_list.
_DEPLOYMENT_KWARGS = frozenset({"api_base", "api_key", "base_url", PER_REQUEST_PRICE_KEY,
                                *PRICE_KEYS})


def _plain(value: Any) -> Any:
    """LiteLLM's RetryPolicy / AllowedFailsPolicy objects as the mappings they hold."""
    dump = getattr(value, "model_dump", None)
    return dump(exclude_none=True) if callable(dump) else value


def _check_litellm_only(extra: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in extra if k not in _UNSUPPORTED and k not in _LOGGING_ONLY)
    if unknown:
        raise TypeError(f"Router() got unexpected keyword arguments: {', '.join(unknown)}")
    refused = sorted(k for k in extra if k in _UNSUPPORTED and extra[k] not in (None, False))
    if refused:
        raise ConfigError(f"Router: {', '.join(refused)} not supported by tallygate "
                          "(leave them unset)")
    noted = sorted(k for k in extra if k in _LOGGING_ONLY and extra[k] != _LOGGING_ONLY[k])
    if noted:
        log.warning("Router: %s only change LiteLLM's own logging; no effect in tallygate "
                    "(use the 'tallygate' logger)", ", ".join(noted))


class Router:
    """Routes calls over ``model_list`` as the proxy does; see the module docstring."""

    def __init__(self, model_list: Sequence[Mapping[str, Any]] | None = None, *,
                 routing_strategy: str | None = None,
                 routing_strategy_args: Mapping[str, Any] | None = None,
                 num_retries: int | None = None, retry_after: float | None = None,
                 timeout: float | None = None, stream_timeout: float | None = None,
                 allowed_fails: int | None = None, cooldown_time: float | None = None,
                 disable_cooldowns: bool | None = None,
                 fallbacks: list[Any] | None = None,
                 context_window_fallbacks: list[Any] | None = None,
                 content_policy_fallbacks: list[Any] | None = None,
                 default_fallbacks: list[str] | None = None,
                 max_fallbacks: int | None = None,
                 retry_policy: Any = None, allowed_fails_policy: Any = None,
                 model_group_alias: Mapping[str, Any] | None = None,
                 enable_pre_call_checks: bool | None = None,
                 redis_url: str | None = None, redis_host: str | None = None,
                 redis_port: int | None = None, redis_password: str | None = None,
                 **litellm_only: Any) -> None:
        _check_litellm_only(litellm_only)
        given = {k: v for k, v in locals().items() if k in ROUTER_KEYS}
        router_settings = {k: _plain(v) for k, v in given.items() if v is not None}
        self.model_list = list(model_list or [])
        try:
            self._settings: ProxySettings = parse_config(
                {"model_list": [dict(e) for e in self.model_list],
                 "router_settings": router_settings})
        except ConfigError as exc:
            raise ConfigError(f"Router: {exc.message}") from None
        from tallygate import scrub

        scrub.register([*(d.api_key for g in self._settings.models.values() for d in g),
                        redis_password])
        r = self._settings.router
        for kind in (r.fallbacks, r.context_window_fallbacks, r.content_policy_fallbacks):
            if any(isinstance(item, FallbackTo) for items in kind.values() for item in items):
                # The proxy's calls apply a fallback's own params; the SDK's do not yet.
                raise ConfigError("Router: fallbacks with their own params are supported "
                                  "by the proxy only; name the fallback model groups here")
        self._redis_url = r.redis_url
        self._shared = self._build() if r.redis_url is None else None
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RoutingRouter] = (
            weakref.WeakKeyDictionary())

    # -- the routing.Router(s) ---------------------------------------------------------

    def _build(self) -> RoutingRouter:
        r = self._settings.router
        router = RoutingRouter(
            self._settings.models, r,
            unit_cost=_unit_cost if r.strategy == "cost-based-routing" else _unknown,
            context_window=_context_window if r.pre_call_checks else _unknown)
        if r.redis_url is not None:
            from tallygate.access.ratelimit import RedisLimiter

            router.limiter = RedisLimiter(r.redis_url)
        return router

    async def _router(self) -> RoutingRouter:
        if self._shared is not None:
            return self._shared
        loop = asyncio.get_running_loop()
        router = self._by_loop.get(loop)
        if router is None:
            router = self._by_loop[loop] = self._build()
            await router.start()
        return router

    async def aclose(self) -> None:
        """Close the Redis connections this event loop's calls opened (if any)."""
        router = self._by_loop.pop(asyncio.get_running_loop(), None)
        if router is not None:
            await router.close()
            limiter = router.limiter
            close = getattr(limiter, "close", None)
            if close is not None:
                await close()

    def close(self) -> None:
        """``aclose`` for the sync calls' loop."""
        runtime.run(self.aclose())

    def get_model_names(self) -> list[str]:
        """The model names calls may name (groups and visible aliases)."""
        if self._shared is not None:
            return self._shared.names()
        # Names need no Redis: a router without it, opening no connection.
        settings = replace(self._settings.router, redis_url=None)
        return RoutingRouter(self._settings.models, settings).names()

    @property
    def model_names(self) -> list[str]:
        return self.get_model_names()

    # -- a call ------------------------------------------------------------------------

    async def _route(self, model: str, kwargs: dict[str, Any]) -> Routed:
        if not isinstance(model, str) or not model:
            raise BadRequestError("model is required", param="model")
        router = await self._router()
        plan = router.resolve(model)  # ModelNotFoundError (404) when nothing serves it
        own = sorted(k for k in kwargs if k in _DEPLOYMENT_KWARGS)
        if own:
            raise BadRequestError(
                f"{', '.join(own)}: a Router call takes these from its model_list entry; "
                "set them in litellm_params there", param=own[0],
                code="unsupported_parameter")
        options = pop_options(kwargs)  # num_retries, timeout, fallbacks, disable_fallbacks
        for i, item in enumerate(options.fallbacks or ()):
            if isinstance(item, FallbackTo):
                # The proxy's calls apply a fallback's own params; the SDK's do not yet.
                raise BadRequestError(f"'fallbacks[{i}]': a Router call's fallbacks are "
                                      "model names (params per fallback: the proxy only)",
                                      param=f"fallbacks[{i}]", code="unsupported_parameter")
            name = item
            if not router.resolves(name):
                raise BadRequestError(f"'fallbacks[{i}]': no model {name!r} in model_list",
                                      param=f"fallbacks[{i}]", code="model_not_found")
        mock = kwargs.pop("mock_response", None)
        if mock is not None and any(d.provider != "mock" for d in plan.deployments):
            # Only the mock provider answers from it; elsewhere it would call upstream.
            raise BadRequestError("mock_response: tallygate answers it only from mock/ "
                                  f"deployments, and model {model!r} has others",
                                  param="mock_response", code="unsupported_parameter")
        return Routed(router, plan, options, mock if isinstance(mock, str) else None,
                      provider_kwargs(kwargs))

    async def acompletion(self, model: str, messages: list[dict[str, Any]], *,
                          stream: bool = False, user: str | None = None,
                          metadata: Mapping[str, Any] | None = None,
                          callbacks: Sequence[Any] | None = None,
                          drop_params: bool | None = None, **kwargs: Any) -> Any:
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("messages must be a non-empty list", param="messages")
        route = await self._route(model, kwargs)
        params, ctx, recorder = _context(model, kwargs, messages, user=user,
                                         metadata=metadata, callbacks=callbacks)
        return await routed_chat(route, params, ctx, recorder, stream=stream,
                                 drop_params=drop_params)

    def completion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if kwargs.get("stream"):
            return CompletionStream(runtime.run(self.acompletion(model, messages, **kwargs)))
        return runtime.run(self.acompletion(model, messages, **kwargs))

    async def aembedding(self, model: str, input: str | list[str], *,
                         user: str | None = None, metadata: Mapping[str, Any] | None = None,
                         callbacks: Sequence[Any] | None = None,
                         **kwargs: Any) -> ModelResponse:
        route = await self._route(model, kwargs)
        kwargs["input"] = input
        params, ctx, recorder = _context(model, kwargs, None, user=user, metadata=metadata,
                                         callbacks=callbacks)
        return await routed_embedding(route, params, ctx, recorder)

    def embedding(self, model: str, input: str | list[str], **kwargs: Any) -> ModelResponse:
        return runtime.run(self.aembedding(model, input, **kwargs))

    async def aresponses(self, model: str = "", input: Any = None, *, stream: bool = False,
                         user: str | None = None, metadata: Mapping[str, Any] | None = None,
                         callbacks: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        from tallygate.sdk_responses import routed_responses

        route = await self._route(model, kwargs)
        params, ctx, recorder = _context(model, kwargs, None, user=user, metadata=metadata,
                                         callbacks=callbacks)
        return await routed_responses(route, params, ctx, recorder, input=input,
                                      stream=stream, metadata=metadata)

    def responses(self, model: str = "", input: Any = None, **kwargs: Any) -> Any:
        from tallygate.sdk_responses import ResponseEventStream, SyncResponseEventStream

        result = runtime.run(self.aresponses(model, input, **kwargs))
        if isinstance(result, ResponseEventStream):
            return SyncResponseEventStream(result)
        return result

    async def atext_completion(self, model: str, prompt: Any, *, user: str | None = None,
                               metadata: Mapping[str, Any] | None = None,
                               callbacks: Sequence[Any] | None = None,
                               **kwargs: Any) -> ModelResponse:
        from tallygate.sdk_responses import routed_text_completion

        if kwargs.get("stream"):
            raise BadRequestError("text_completion(stream=True) is not supported by the "
                                  "SDK; use completion(stream=True)", param="stream")
        route = await self._route(model, kwargs)
        params, ctx, recorder = _context(model, kwargs, None, user=user, metadata=metadata,
                                         callbacks=callbacks)
        return await routed_text_completion(route, params, ctx, recorder, prompt=prompt)

    def text_completion(self, model: str, prompt: Any, **kwargs: Any) -> ModelResponse:
        return runtime.run(self.atext_completion(model, prompt, **kwargs))

    # -- media calls: LiteLLM's Router has these (and of them, only image_generation in
    # a sync form), each routed and billed like completion's ---------------------------

    async def _media(self, model: str, build: Build, kwargs: dict[str, Any], *,
                     user: str | None, metadata: Mapping[str, Any] | None,
                     callbacks: Sequence[Any] | None) -> tuple[MediaAnswer, UsageEvent]:
        route = await self._route(model, kwargs)
        params, ctx, recorder = _context(model, kwargs, None, user=user, metadata=metadata,
                                         callbacks=callbacks)
        return await routed_media(route, build, params, ctx, recorder)

    async def aimage_generation(self, prompt: str, model: str, *, user: str | None = None,
                                metadata: Mapping[str, Any] | None = None,
                                callbacks: Sequence[Any] | None = None,
                                **kwargs: Any) -> ModelResponse:
        kwargs["prompt"] = prompt
        answer, event = await self._media(model, media.image_generation_request, kwargs,
                                          user=user, metadata=metadata, callbacks=callbacks)
        return json_answer(answer, event)

    def image_generation(self, prompt: str, model: str, **kwargs: Any) -> ModelResponse:
        return runtime.run(self.aimage_generation(prompt, model, **kwargs))

    async def aimage_edit(self, *, model: str, image: Any, prompt: str, mask: Any = None,
                          user: str | None = None, metadata: Mapping[str, Any] | None = None,
                          callbacks: Sequence[Any] | None = None,
                          **kwargs: Any) -> ModelResponse:
        kwargs["prompt"] = prompt
        answer, event = await self._media(model, image_edit_build(image, mask), kwargs,
                                          user=user, metadata=metadata, callbacks=callbacks)
        return json_answer(answer, event)

    async def atranscription(self, file: Any, model: str, *, user: str | None = None,
                             metadata: Mapping[str, Any] | None = None,
                             callbacks: Sequence[Any] | None = None,
                             **kwargs: Any) -> ModelResponse:
        answer, event = await self._media(model, transcription_build(file), kwargs,
                                          user=user, metadata=metadata, callbacks=callbacks)
        return json_answer(answer, event)

    async def aspeech(self, model: str, input: str, voice: Any = None, *,
                      user: str | None = None, metadata: Mapping[str, Any] | None = None,
                      callbacks: Sequence[Any] | None = None, **kwargs: Any) -> SpeechResponse:
        kwargs.update(input=input, voice=voice)
        answer, event = await self._media(model, media.speech_request, kwargs, user=user,
                                          metadata=metadata, callbacks=callbacks)
        return SpeechResponse(answer.body, answer.content_type, event)

    async def arerank(self, model: str, query: str, documents: list[Any],
                      top_n: int | None = None, *, user: str | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      callbacks: Sequence[Any] | None = None, **kwargs: Any) -> ModelResponse:
        kwargs.update(query=query, documents=documents, top_n=top_n)
        answer, event = await self._media(model, media.rerank_request, kwargs, user=user,
                                          metadata=metadata, callbacks=callbacks)
        return json_answer(answer, event)

    async def amoderation(self, model: str, input: Any, *, user: str | None = None,
                          metadata: Mapping[str, Any] | None = None,
                          callbacks: Sequence[Any] | None = None,
                          **kwargs: Any) -> ModelResponse:
        kwargs["input"] = input
        answer, event = await self._media(model, media.moderation_request, kwargs,
                                          user=user, metadata=metadata, callbacks=callbacks)
        return json_answer(answer, event)


def _unknown(d: Deployment) -> None:
    return None


def _priced(d: Deployment) -> str:
    from tallygate.engine import priced_model

    return priced_model(d, None) or d.model


def _unit_cost(d: Deployment) -> Decimal | None:
    # cost-based-routing's yardstick, as the proxy's: 1,000 tokens in and 1,000 out.
    usage = Usage(input_tokens=1000, output_tokens=1000)
    return default_price_book.price(d.provider, _priced(d), usage, d.price).cost


def _context_window(d: Deployment) -> int | None:
    return default_price_book.context_window(d.provider, _priced(d))


__all__ = ["Router", "SdkRecorder"]
