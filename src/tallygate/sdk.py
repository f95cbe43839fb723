"""The SDK's call surface: ``acompletion`` is the one core, ``completion`` wraps it.

Settings (callbacks, charge-by) are read per call from the ``tallygate`` module and
the environment, so the LiteLLM-style module switches work as users expect.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from tallygate import callback_dispatch as cb
from tallygate import engine
from tallygate.attribution import parse_charge_by, resolve_customer
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import BadRequestError
from tallygate.event import FailureEvent, UsageEvent
from tallygate.pricing import default_price_book
from tallygate.providers.base import (
    PER_REQUEST_PRICE_KEY,
    PRICE_KEYS,
    Deployment,
    PriceOverride,
)
from tallygate.providers.registry import get_provider, split_model
from tallygate.response import ChunkObject, ModelResponse
from tallygate.routing import CURRENT_ATTEMPT
from tallygate.runtime import runtime
from tallygate.sdk_routing import Direct, Route, check_retries, fallback_entries, per_call_route
from tallygate.sinks.factory import sink_accepts

log = logging.getLogger("tallygate")



class SdkRecorder:
    """Sends events to the outbox for named sinks and to in-process listeners."""

    def __init__(self, resolved: cb.ResolvedCallbacks) -> None:
        self.resolved = resolved

    async def record(self, event: UsageEvent) -> None:
        attempt = CURRENT_ATTEMPT.get()
        if attempt is not None:  # the router corrects the deployment's tpm count with it
            attempt.settled(event.usage.total_tokens)
        sinks = [s for s in self.resolved.sinks if sink_accepts(s, event.customer is not None)]
        if event.customer is None and "lago" in self.resolved.sinks:
            log.warning("call %s is unattributed (no customer for LAGO_API_CHARGE_BY): "
                        "not sent to Lago", event.call_id)
        if sinks:
            await runtime.enqueue(event, sinks)
        await cb.notify(self.resolved.on_success, event)

    async def record_failure(self, failure: FailureEvent) -> None:
        await cb.notify(self.resolved.on_failure, failure)


def _module_callbacks(extra: Sequence[cb.Callback] | None) -> cb.ResolvedCallbacks:
    import tallygate

    return cb.resolve([*tallygate.callbacks, *(extra or ())], tallygate.success_callback,
                      tallygate.failure_callback)


def _price_override(kwargs: dict[str, Any]) -> PriceOverride | None:
    values = {k: kwargs.pop(k) for k in PRICE_KEYS if k in kwargs}
    table = kwargs.pop(PER_REQUEST_PRICE_KEY, None) or {}
    if not values and not table:
        return None
    if not isinstance(table, Mapping):
        raise BadRequestError(f"{PER_REQUEST_PRICE_KEY} must be a mapping of "
                              "search_context_size_low|medium|high to a price",
                              param=PER_REQUEST_PRICE_KEY)
    prices: dict[str, Any] = {k: Decimal(str(v)) for k, v in values.items() if v is not None}
    per_request = {str(k): Decimal(str(v)) for k, v in table.items() if v is not None}
    return PriceOverride(**prices, per_request=per_request)


def _deployment(model: str, kwargs: dict[str, Any], *, api_base: str | None,
                api_key: str | None, timeout: float | None) -> Deployment:
    """The deployment a call's own arguments describe; takes its keys off ``kwargs``."""
    if not isinstance(model, str) or not model:
        raise BadRequestError("model is required", param="model")
    provider, provider_model = split_model(model)
    mock_response = kwargs.pop("mock_response", None)
    # The provider's own litellm_params (api_version, vertex_project...) configure the
    # deployment, as in a config entry; they are not sent upstream as call parameters.
    adapter = get_provider(provider)
    provider_params = {k: kwargs.pop(k) for k in sorted(adapter.litellm_params & kwargs.keys())
                       if kwargs[k] is not None}
    if kwargs.get("api_version") is not None:
        # LiteLLM reads api_version only for the providers that version their API.
        log.warning("api_version has no effect for provider %s (model %r)", provider, model)
    kwargs.pop("api_version", None)
    return Deployment(provider=provider, model=provider_model, api_base=api_base,
                      api_key=api_key, timeout=timeout,
                      price=_price_override(kwargs),
                      mock_response=mock_response if isinstance(mock_response, str) else None,
                      params=provider_params)


def _context(model: str, kwargs: dict[str, Any], messages: Any, *, user: str | None,
             metadata: Mapping[str, Any] | None, callbacks: Sequence[cb.Callback] | None
             ) -> tuple[dict[str, Any], CallContext, SdkRecorder]:
    """The call's upstream parameters (what is left of ``kwargs``), who pays, and where
    its events go."""
    resolved = _module_callbacks(callbacks)
    params = {k: v for k, v in kwargs.items() if v is not None}
    if messages is not None:
        params["messages"] = messages
    if user is not None:
        params["user"] = user
    meta = MappingProxyType(dict(metadata or {}))
    charge_by = parse_charge_by(os.environ.get("LAGO_API_CHARGE_BY"))
    customer = resolve_customer(charge_by, end_user=user, metadata=meta)
    ctx = CallContext(model=model, customer=customer, end_user=user, metadata=meta)
    return params, ctx, SdkRecorder(resolved)


def _prepare(model: str, messages: Any, kwargs: dict[str, Any], *, user: str | None,
             metadata: Mapping[str, Any] | None, callbacks: Sequence[cb.Callback] | None,
             api_base: str | None, api_key: str | None, timeout: float | None,
             ) -> tuple[Deployment, dict[str, Any], CallContext, SdkRecorder]:
    deployment = _deployment(model, kwargs, api_base=api_base, api_key=api_key,
                             timeout=timeout)
    params, ctx, recorder = _context(model, kwargs, messages, user=user, metadata=metadata,
                                     callbacks=callbacks)
    return deployment, params, ctx, recorder


def _route(model: str, messages: Any, kwargs: dict[str, Any], *, user: str | None,
           metadata: Mapping[str, Any] | None, callbacks: Sequence[cb.Callback] | None,
           api_base: str | None, api_key: str | None, timeout: float | None,
           num_retries: Any, fallbacks: Any,
           ) -> tuple[Route, dict[str, Any], CallContext, SdkRecorder]:
    """``_prepare`` for the calls that take LiteLLM's per-call ``num_retries`` and
    ``fallbacks``: with either, the call goes through ``tallygate.routing``."""
    retries = check_retries(num_retries)
    if retries is None and fallbacks is None:
        deployment, params, ctx, recorder = _prepare(
            model, messages, kwargs, user=user, metadata=metadata, callbacks=callbacks,
            api_base=api_base, api_key=api_key, timeout=timeout)
        return Direct(deployment), params, ctx, recorder
    entries = [{"model": model}, *fallback_entries(fallbacks or [])]
    models: list[tuple[str, Deployment]] = []
    taken: set[str] = set()
    for entry in entries:
        mine = dict(kwargs)  # each model takes its own provider's keys off a copy
        models.append((entry["model"], _deployment(
            entry["model"], mine, api_base=entry.get("api_base", api_base),
            api_key=entry.get("api_key", api_key), timeout=timeout)))
        taken |= kwargs.keys() - mine.keys()
    for key in taken:
        kwargs.pop(key)
    params, ctx, recorder = _context(model, kwargs, messages, user=user, metadata=metadata,
                                     callbacks=callbacks)
    return per_call_route(models, retries), params, ctx, recorder


def _drop_unsupported(deployment: Deployment, params: dict[str, Any],
                      drop_params: bool | None) -> tuple[str, ...]:
    """LiteLLM's ``drop_params``: OpenAI parameters the provider does not take are a 400
    naming them, or, with ``drop_params`` (per call, or ``tallygate.drop_params``),
    dropped and named in the log and on the answer. Reasoning models take
    ``max_tokens`` as ``max_completion_tokens``, as LiteLLM maps it."""
    import tallygate
    from tallygate.model_info import OPENAI_CHAT_PARAMS, get_supported_openai_params

    supported = set(get_supported_openai_params(f"{deployment.provider}/{deployment.model}"))
    if ("max_tokens" in params and "max_tokens" not in supported
            and "max_completion_tokens" in supported):
        params.setdefault("max_completion_tokens", params.pop("max_tokens"))
    refused = sorted(k for k in params if k in OPENAI_CHAT_PARAMS and k not in supported
                     # a reasoning model takes its one temperature, 1
                     and not (k == "temperature" and params[k] == 1))
    if not refused:
        return ()
    drop = drop_params if drop_params is not None else bool(tallygate.drop_params)
    if not drop:
        raise BadRequestError(
            f"{deployment.provider} does not support parameters {refused} for model "
            f"{deployment.model!r}; pass drop_params=True (or set tallygate.drop_params = "
            "True) to drop them", param=refused[0], code="unsupported_params")
    for name in refused:
        params.pop(name)
    log.warning("dropped parameters %s that %s/%s does not support (drop_params)",
                ", ".join(refused), deployment.provider, deployment.model)
    return tuple(refused)


async def acompletion(model: str, messages: list[dict[str, Any]], *, stream: bool = False,
                      user: str | None = None, metadata: Mapping[str, Any] | None = None,
                      api_base: str | None = None, api_key: str | None = None,
                      timeout: float | None = None,
                      callbacks: Sequence[cb.Callback] | None = None,
                      drop_params: bool | None = None,
                      num_retries: int | None = None, fallbacks: list[Any] | None = None,
                      **kwargs: Any) -> Any:
    """A chat completion (OpenAI parameters). Returns a ModelResponse, or with
    ``stream=True`` an async iterator of chunks (``AsyncCompletionStream``).
    ``num_retries`` retries the model on retryable errors; ``fallbacks`` are models
    tried in order after it fails (``tallygate.routing`` runs both)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages must be a non-empty list", param="messages")
    route, params, ctx, recorder = _route(
        model, messages, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout, num_retries=num_retries,
        fallbacks=fallbacks)
    return await routed_chat(route, params, ctx, recorder, stream=stream,
                             drop_params=drop_params)


async def routed_chat(route: Route, params: dict[str, Any], ctx: CallContext,
                      recorder: SdkRecorder, *, stream: bool, drop_params: bool | None
                      ) -> Any:
    """A chat call's attempts on the deployments ``route`` gives (tallygate.Router's
    calls come here too)."""
    await runtime.aensure_sinks(recorder.resolved.sinks)

    async def one(deployment: Deployment, actx: CallContext) -> Any:
        mine = dict(params)  # a retry sees the params as they came
        dropped = _drop_unsupported(deployment, mine, drop_params)
        if stream:
            options = mine.pop("stream_options", None) or {}
            include_usage = bool(options.get("include_usage"))
            chat_stream = ChatStream(deployment, mine, actx, recorder, default_price_book,
                                     include_usage)
            await chat_stream.open()
            attempt = CURRENT_ATTEMPT.get()
            if attempt is not None:
                attempt.commit()  # the stream is the caller's now: no retry after this
            return AsyncCompletionStream(chat_stream)
        result, event = await engine.chat(deployment, mine, actx, recorder,
                                          default_price_book)
        return ModelResponse(result.body, event, dropped)

    return await route.run(ctx, one, stream=stream, params=params)


def completion(model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    """The sync form of ``acompletion``: same parameters, run on tallygate's I/O loop."""
    if kwargs.get("stream"):
        astream = runtime.run(acompletion(model, messages, **kwargs))
        return CompletionStream(astream)
    return runtime.run(acompletion(model, messages, **kwargs))


async def aembedding(model: str, input: str | list[str], *, user: str | None = None,
                     metadata: Mapping[str, Any] | None = None, api_base: str | None = None,
                     api_key: str | None = None, timeout: float | None = None,
                     callbacks: Sequence[cb.Callback] | None = None,
                     num_retries: int | None = None, fallbacks: list[Any] | None = None,
                     **kwargs: Any) -> ModelResponse:
    """Embeddings from an OpenAI-compatible endpoint, billed with input tokens only."""
    kwargs["input"] = input
    route, params, ctx, recorder = _route(
        model, None, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout, num_retries=num_retries,
        fallbacks=fallbacks)
    return await routed_embedding(route, params, ctx, recorder)


async def routed_embedding(route: Route, params: dict[str, Any], ctx: CallContext,
                           recorder: SdkRecorder) -> ModelResponse:
    await runtime.aensure_sinks(recorder.resolved.sinks)

    async def one(deployment: Deployment, actx: CallContext) -> ModelResponse:
        result, event = await engine.embedding(deployment, dict(params), actx, recorder,
                                               default_price_book)
        return ModelResponse(result.body, event)

    return await route.run(ctx, one, params=params)


def embedding(model: str, input: str | list[str], **kwargs: Any) -> ModelResponse:
    return runtime.run(aembedding(model, input, **kwargs))


class AsyncCompletionStream:
    """Chunks of a streaming call. It bills itself when it ends, when you ``aclose()``
    it, or (when abandoned) when it is garbage-collected."""

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream
        self._items: AsyncIterator[Any] = stream.__aiter__()
        self._loop = asyncio.get_running_loop()

    @property
    def call_id(self) -> str:
        return self._stream.ctx.call_id

    @property
    def usage_event(self) -> UsageEvent | None:
        """The billed event, once the stream has finished."""
        return self._stream.event

    def __aiter__(self) -> AsyncCompletionStream:
        return self

    async def __anext__(self) -> ChunkObject:
        item = await self._items.__anext__()
        return ChunkObject(item.data)

    async def aclose(self) -> None:
        """Stop reading; bills what was generated (flagged as cut short)."""
        if self._stream.event is None:
            await self._stream.finish(disconnected=True)

    async def __aenter__(self) -> AsyncCompletionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if self._stream.event is None and not self._loop.is_closed():
            # Abandoned mid-stream: still bill what was generated.
            self._loop.call_soon_threadsafe(
                lambda: self._loop.create_task(self._stream.finish(disconnected=True)))


class CompletionStream:
    """The sync form of ``AsyncCompletionStream``."""

    def __init__(self, astream: AsyncCompletionStream) -> None:
        self._astream = astream

    @property
    def call_id(self) -> str:
        return self._astream.call_id

    @property
    def usage_event(self) -> UsageEvent | None:
        return self._astream.usage_event

    def __iter__(self) -> Iterator[ChunkObject]:
        return self

    def __next__(self) -> ChunkObject:
        try:
            return runtime.run(self._astream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        runtime.run(self._astream.aclose())

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
