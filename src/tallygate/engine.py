"""One call, start to finish: adapter -> transport -> usage -> price -> UsageEvent.

Both the SDK and the proxy run calls through here, so a call is priced and metered the
same way whichever door it came in by. The engine never waits on a sink: it hands the
event to a ``Recorder`` (the durable outbox in practice) and returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Protocol

from tallygate import transport
from tallygate.errors import TallygateError, UpstreamConnectionError, UpstreamError
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.event import (
    FLAG_CLIENT_DISCONNECTED,
    FLAG_ESTIMATED_USAGE,
    FLAG_INCOMPLETE,
    FLAG_STREAM,
    FLAG_UNATTRIBUTED,
    FLAG_UNKNOWN_PRICE,
    CallKind,
    FailureEvent,
    Routing,
    UsageEvent,
    new_call_id,
    now_ms,
)
from tallygate.pricing import PriceBook
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    StreamItem,
    UpstreamRequest,
)
from tallygate.providers.registry import get_provider
from tallygate.providers.translate import pack_base64
from tallygate.usage import Usage

log = logging.getLogger("tallygate.engine")

# What a stream request answered 200 with that is no stream (a proxy's HTML error page,
# a plain JSON answer): a 502, not billed. Streams come as text/event-stream, or in a
# provider's own framing (Bedrock's application/vnd.amazon.eventstream).
NOT_A_STREAM = frozenset({"text/html", "application/json", "text/plain", "application/xml",
                          "text/xml"})


class Recorder(Protocol):
    """Takes finished calls. ``record`` returns once the event is safe (durable)."""

    async def record(self, event: UsageEvent) -> None: ...

    async def record_failure(self, failure: FailureEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who made the call and who pays; fixed before the call starts."""

    model: str
    customer: str | None
    call_id: str = field(default_factory=new_call_id)
    started_at_ms: int = field(default_factory=now_ms)
    end_user: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    key_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Selects a price variant, e.g. {"service_tier": "priority"} (tallygate.price_fields).
    price_context: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: the deployment the router chose for this attempt (the proxy sets it per attempt)
    routing: Routing | None = None

    def routed(self, routing: Routing) -> CallContext:
        """This context for one attempt of a routed call (cheaper than ``replace``)."""
        return CallContext(self.model, self.customer, self.call_id, self.started_at_ms,
                           self.end_user, self.user_id, self.team_id, self.key_id,
                           self.metadata, self.price_context, routing)


def priced_model(deployment: Deployment, answered_model: str | None) -> str | None:
    """The model a call is priced as: ``model_info.base_model`` when set; else, for a
    provider whose deployment names are not models (Azure), the model the answer
    named (None when it named none); else the model as sent upstream."""
    if deployment.base_model:
        return deployment.base_model
    provider = get_provider(deployment.provider)
    if not provider.names_model:
        return answered_model
    return provider.wire_model(deployment)


def make_event(ctx: CallContext, deployment: Deployment, usage: Usage, prices: PriceBook,
               *, kind: CallKind = "chat", extra_flags: frozenset[str] = frozenset(),
               first_chunk_ms: int | None = None, answered_model: str | None = None,
               provider_cost: Decimal | None = None,
               variant: str | None = None) -> UsageEvent:
    model = priced_model(deployment, answered_model)
    if model is None and (deployment.price is None or deployment.price.is_empty()):
        price = prices.unknown_model(deployment.provider, deployment.model)
    else:
        price = prices.price(deployment.provider, model or deployment.model, usage,
                             deployment.price, variant=variant, context=ctx.price_context)
    flags = set(extra_flags)
    if price.cost is None:
        flags.add(FLAG_UNKNOWN_PRICE)
    if usage.source == "estimated":
        flags.add(FLAG_ESTIMATED_USAGE)
    if ctx.customer is None:
        flags.add(FLAG_UNATTRIBUTED)
    return UsageEvent(
        call_id=ctx.call_id, started_at_ms=ctx.started_at_ms, finished_at_ms=now_ms(),
        model=ctx.model, provider=deployment.provider, provider_model=deployment.model,
        usage=usage, cost=price.cost, customer=ctx.customer, kind=kind,
        end_user=ctx.end_user, user_id=ctx.user_id, team_id=ctx.team_id, key_id=ctx.key_id,
        price_source=price.source, flags=frozenset(flags), metadata=ctx.metadata,
        unpriced=price.unpriced, first_chunk_ms=first_chunk_ms, provider_cost=provider_cost,
        routing=ctx.routing)


def failure_event(ctx: CallContext, deployment: Deployment | None,
                  exc: BaseException) -> FailureEvent:
    if isinstance(exc, TallygateError):
        status, err_type, message = exc.status_code, exc.error_type, exc.message
    elif isinstance(exc, asyncio.CancelledError):
        status, err_type, message = 499, "cancelled", "the call was cancelled"
    else:
        status, err_type, message = 500, type(exc).__name__, "internal error"
    return FailureEvent(
        call_id=ctx.call_id, started_at_ms=ctx.started_at_ms, finished_at_ms=now_ms(),
        model=ctx.model, provider=deployment.provider if deployment else None,
        customer=ctx.customer, status_code=status, error_type=err_type, message=message,
        end_user=ctx.end_user, metadata=ctx.metadata, routing=ctx.routing)


def _estimated_usage(params: Mapping[str, Any], output_text: str,
                     partial: Usage | None) -> Usage:
    """Usage for a stream that ended before the provider's numbers: keep what the
    provider reported (e.g. Anthropic's input counts) and estimate the rest."""
    out = estimate_text_tokens(output_text)
    if partial is not None and partial.prompt_tokens > 0:
        return replace(partial, output_tokens=max(partial.output_tokens, out),
                       source="estimated")
    return Usage(input_tokens=estimate_prompt_tokens(params.get("messages") or ()),
                 output_tokens=out, source="estimated")


def _with_prompt(params: Mapping[str, Any], usage: Usage) -> Usage:
    """A call always has input: usage that reports none (Ollama leaves out
    ``prompt_eval_count`` when its prompt cache served the whole prompt) gets an
    estimate, flagged, rather than billing the prompt as zero."""
    if usage.prompt_tokens:
        return usage
    return replace(usage, input_tokens=estimate_prompt_tokens(params.get("messages") or ()),
                   source="estimated")


def _with_estimated_requests(usage: Usage, provider: Provider, deployment: Deployment,
                             params: Mapping[str, Any]) -> Usage:
    """An estimate keeps the per-request fees the provider charges whatever the answer
    (Perplexity's search fee): the request was made, so it is billed."""
    if usage.requests:
        return usage
    items = provider.estimated_requests(deployment, params)
    return replace(usage, requests=items) if items else usage


def _embedding_usage(params: Mapping[str, Any], usage: Usage | None) -> Usage:
    """The provider's count, or an estimate from the input texts when it reports none."""
    if usage is not None and usage.prompt_tokens:
        return usage
    value = params.get("input")
    items = value if isinstance(value, list) else [value]
    tokens = 0
    for item in items:
        if isinstance(item, str):
            tokens += estimate_text_tokens(item)
        elif isinstance(item, list):  # a token array counts its tokens
            tokens += len(item)
        elif isinstance(item, int):  # one token array given flat
            tokens += 1
    return Usage(input_tokens=max(tokens, 1), source="estimated")


async def _send(provider: Provider, deployment: Deployment, params: dict[str, Any]) -> bytes:
    if provider.is_local:
        return provider.local_chat(deployment, params)
    return await _answer(provider, deployment,
                         provider.chat_request(deployment, params, stream=False))


async def _answer(provider: Provider, deployment: Deployment,
                  request: UpstreamRequest) -> bytes:
    resp = await _post(provider, deployment, request)
    if resp.status >= 400:
        raise provider.error_from_response(resp.status, resp.body, resp.headers)
    return resp.body


# A provider that embeds one input per request (Titan) gets this many requests at once.
EMBEDDING_CONCURRENCY = 4


async def _send_embeddings(provider: Provider, deployment: Deployment,
                           params: dict[str, Any]) -> list[bytes]:
    if provider.is_local:
        return [provider.local_chat(deployment, params)]
    requests = provider.embedding_requests(deployment, params)
    if len(requests) == 1:
        return [await _answer(provider, deployment, requests[0])]
    gate = asyncio.Semaphore(EMBEDDING_CONCURRENCY)

    async def one(request: UpstreamRequest) -> bytes:
        async with gate:
            return await _answer(provider, deployment, request)

    try:  # one failing request fails the call and cancels the rest
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(r)) for r in requests]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # as a single request would have failed
    return [t.result() for t in tasks]


async def _post(provider: Provider, deployment: Deployment,
                request: UpstreamRequest) -> transport.UpstreamResponse:
    """POST; with fetched credentials (``needs_authorize``) a 401 (a token revoked or
    expired early) gets fresh ones and one retry."""
    if not provider.needs_authorize:
        return await transport.post(request, deployment.timeout)
    await provider.authorize(deployment, request)
    resp = await transport.post(request, deployment.timeout)
    if resp.status == 401:
        await provider.authorize(deployment, request, rejected=True)
        resp = await transport.post(request, deployment.timeout)
    return resp


# For the other call kinds (tallygate.media): the same credentials handling.
authorized_post = _post


async def _open_stream(provider: Provider, deployment: Deployment, request: UpstreamRequest
                       ) -> tuple[Any, transport.UpstreamStream]:
    """Open an upstream stream: (its context manager, the answer), entered. Fetched
    credentials are refreshed once on a 401, as in ``_post``."""
    if provider.needs_authorize:
        await provider.authorize(deployment, request)
    cm = transport.open_stream(request, deployment.timeout)
    stream = await cm.__aenter__()
    if stream.status == 401 and provider.needs_authorize:
        await cm.__aexit__(None, None, None)
        await provider.authorize(deployment, request, rejected=True)
        cm = transport.open_stream(request, deployment.timeout)
        stream = await cm.__aenter__()
    return cm, stream


async def chat(deployment: Deployment, params: dict[str, Any], ctx: CallContext,
               recorder: Recorder, prices: PriceBook, *,
               kind: CallKind = "chat") -> tuple[ChatResult, UsageEvent]:
    """A non-streaming chat call, billed. Failures bill nothing and are recorded."""
    try:
        provider = get_provider(deployment.provider)
        body = await _send(provider, deployment, params)
        result = _read_answer(lambda: provider.chat_response(deployment, body),
                              "choices", "a chat completion")
        usage = result.usage  # None when missing or not counts (Usage.from_*)
        if usage is None:
            usage = _with_estimated_requests(
                _estimated_usage(params, _answer_text(result.body), result.usage),
                provider, deployment, params)
        if not usage.prompt_tokens:
            usage = _with_prompt(params, usage)
            if result.raw is None:  # a translated answer tells the client what is billed
                result.body["usage"] = usage.to_openai()
    except BaseException as exc:
        await recorder.record_failure(failure_event(ctx, deployment, exc))
        raise
    event = make_event(ctx, deployment, usage, prices, kind=kind,
                       answered_model=result.answered_model,
                       provider_cost=result.provider_cost)
    await recorder.record(event)
    return result, event


async def forward(deployment: Deployment, request: UpstreamRequest,
                  read: Callable[[bytes], ChatResult], params: Mapping[str, Any],
                  ctx: CallContext, recorder: Recorder, prices: PriceBook, *,
                  kind: CallKind = "chat") -> tuple[ChatResult, UsageEvent]:
    """A non-streaming call whose upstream request a door built itself (its own API
    passed through), billed like chat: ``read`` turns the 200 answer into its usage
    (None: estimated from ``params["messages"]``). Failures bill nothing."""
    try:
        provider = get_provider(deployment.provider)
        resp = await _post(provider, deployment, request)
        if resp.status >= 400:
            raise provider.error_from_response(resp.status, resp.body, resp.headers)
        try:
            result = read(resp.body)
        except TallygateError:
            raise
        except Exception as exc:
            raise UpstreamError("upstream answered 200 with a body that is not the "
                                f"expected answer ({type(exc).__name__})") from None
        usage = result.usage or _estimated_usage(params, _answer_text(result.body), None)
    except BaseException as exc:
        await recorder.record_failure(failure_event(ctx, deployment, exc))
        raise
    event = make_event(ctx, deployment, usage, prices, kind=kind)
    await recorder.record(event)
    return result, event


async def embedding(deployment: Deployment, params: dict[str, Any], ctx: CallContext,
                    recorder: Recorder, prices: PriceBook) -> tuple[ChatResult, UsageEvent]:
    """An embeddings call, billed like chat with input tokens only."""
    try:
        provider = get_provider(deployment.provider)
        bodies = await _send_embeddings(provider, deployment, params)
        result = _read_answer(lambda: provider.embedding_responses(deployment, bodies),
                              "data", "an embeddings list")
        if result.raw is None and params.get("encoding_format") == "base64":
            # A translated answer holds floats; OpenAI clients asked for packed vectors.
            result = replace(result, body=pack_base64(result.body))
    except BaseException as exc:
        await recorder.record_failure(failure_event(ctx, deployment, exc))
        raise
    usage = _embedding_usage(params, result.usage)
    event = make_event(ctx, deployment, usage, prices, kind="embedding",
                       answered_model=result.answered_model)
    await recorder.record(event)
    return result, event


async def probe(deployment: Deployment, *, embedding: bool = False) -> None:
    """A health check: a tiny real call to ``deployment``, billed to nobody (no event).
    Raises the upstream's error when the deployment does not answer well."""
    provider = get_provider(deployment.provider)
    if embedding:
        bodies = await _send_embeddings(provider, deployment, {"input": "ping"})
        _read_answer(lambda: provider.embedding_responses(deployment, bodies), "data",
                     "an embeddings list")
        return
    body = await _send(provider, deployment,
                       {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
    _read_answer(lambda: provider.chat_response(deployment, body), "choices",
                 "a chat completion")


async def unbilled(deployment: Deployment, request: UpstreamRequest) -> bytes:
    """A request that costs nothing (token counting): sent, its answer returned, no
    event. Upstream errors are the provider's errors, as for a billed call."""
    provider = get_provider(deployment.provider)
    resp = await _post(provider, deployment, request)
    if resp.status >= 400:
        raise provider.error_from_response(resp.status, resp.body, resp.headers)
    return resp.body


def _read_answer(read: Callable[[], ChatResult], key: str, what: str) -> ChatResult:
    """The provider's reading of a 200 answer; a body that is not JSON or lacks the
    ``key`` list is the upstream's failure (502), never an internal error."""
    try:
        result = read()
    except TallygateError:
        raise
    except Exception as exc:
        raise UpstreamError(f"upstream answered 200 with a body that is not {what} "
                            f"({type(exc).__name__})") from None
    if not isinstance(result.body, Mapping) or not isinstance(result.body.get(key), list):
        raise UpstreamError(f"upstream answered 200 with a body that is not {what} "
                            f"(no {key!r} list)")
    if key == "choices":
        _check_choices(result.body["choices"])
    return result


def _check_choices(choices: list[Any]) -> None:
    """Each choice must be one a client can read: a message object whose content is text
    (or parts, or null) and whose tool calls are objects. Anything else is the upstream's
    failure, answered 502 and not billed, rather than billed and then failing."""
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        if (not isinstance(message, Mapping) or not isinstance(content, str | list | None)
                or not isinstance(calls, list | None)
                or any(not isinstance(c, Mapping) for c in calls or ())):
            raise UpstreamError(f"upstream answered 200 with a malformed choices[{i}] "
                                "(its message is not a chat message)")


def _answer_text(body: Mapping[str, Any]) -> str:
    """The generated text of an answer, for an estimate: a chat completion's messages, a
    text completion's ``text``, a Messages answer's text blocks."""
    parts = []
    for choice in body.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
        elif isinstance(choice, dict) and isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    for block in body.get("content") or () if isinstance(body.get("content"), list) else ():
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
    return "".join(parts)


class ChatStream:
    """A streaming call. Iterate it for chunks; it bills itself exactly once when the
    stream ends, breaks or is abandoned (``finish``), with provider usage when it came
    and an estimate from the streamed text otherwise."""

    def __init__(self, deployment: Deployment, params: dict[str, Any], ctx: CallContext,
                 recorder: Recorder, prices: PriceBook, include_usage: bool, *,
                 request: UpstreamRequest | None = None,
                 decoder: StreamDecoder | None = None, kind: CallKind = "chat") -> None:
        """``request`` and ``decoder``: a door's own upstream request and reading of its
        stream (its API passed through) instead of the provider's chat ones (``params``
        then only feed estimates); ``kind`` is the billed event's."""
        self.deployment = deployment
        self.ctx = ctx
        self._params = params
        self._recorder = recorder
        self._prices = prices
        self._kind: CallKind = kind
        self._request = request
        self._provider = get_provider(deployment.provider)
        self._decoder: StreamDecoder = (decoder if decoder is not None else
                                        self._provider.chat_stream(deployment, include_usage))
        self._decoder.estimate_prompt = lambda: estimate_prompt_tokens(
            params.get("messages") or ())
        self._upstream: Any = None  # the open transport stream's context manager
        self._source: AsyncIterator[bytes] | None = None
        self._first: list[StreamItem] | None = None  # read by open(), not yet handed on
        self.event: UsageEvent | None = None
        self._finishing: asyncio.Future[UsageEvent | None] | None = None
        self._first_chunk_ms: int | None = None  # for the time-to-first-token metric

    async def open(self) -> ChatStream:
        """Send the request and read until the first chunk: an upstream that fails
        before producing anything (an error status, a refused or dropped connection, a
        timeout) raises here, while the caller can still answer otherwise (a retry, a
        fallback), and nothing is billed."""
        try:
            if self._provider.is_local:
                self._source = _local_source(self._provider.local_chat(
                    self.deployment, {**self._params, "stream": True}))
            else:
                request = self._request or self._provider.chat_request(
                    self.deployment, self._params, stream=True)
                cm, stream = await _open_stream(self._provider, self.deployment, request)
                self._upstream = cm
                if stream.status >= 400:
                    body = await stream.read()
                    raise self._provider.error_from_response(stream.status, body,
                                                             stream.headers)
                kind = stream.headers.get("Content-Type", "")
                if kind.split(";", 1)[0].strip().lower() in NOT_A_STREAM:
                    raise self._not_a_stream(kind, await stream.read())
                self._source = stream.chunks()
            await self._read_first()
        except BaseException as exc:
            await self._close_upstream()
            await self._recorder.record_failure(failure_event(self.ctx, self.deployment, exc))
            raise
        return self

    def _not_a_stream(self, kind: str, body: bytes) -> UpstreamError:
        """A stream request answered 200 with something else (an HTML page, a plain JSON
        answer or error): a 502, not billed."""
        media = kind.split(";", 1)[0].strip() or "no content type"
        exc = self._provider.error_from_response(502, body, {})
        if exc.message == "upstream answered 502":  # no error message of its own in it
            exc = UpstreamError(f"upstream answered a stream request with {media}, not an "
                                "event stream")
        return exc

    async def _read_first(self) -> None:
        assert self._source is not None
        while True:
            try:
                data = await self._source.__anext__()
            except StopAsyncIteration:
                raise UpstreamConnectionError(
                    "upstream ended the stream before sending anything") from None
            items = self._decoder.feed(data)
            if not items and self._decoder.failure is not None:
                raise self._decoder.failure  # failed before producing anything
            if items or self._decoder.done:
                self._first = items
                self._first_chunk_ms = now_ms() - self.ctx.started_at_ms
                return

    async def __aiter__(self) -> AsyncIterator[StreamItem]:
        async for items in self.pieces():
            for item in items:
                yield item

    async def pieces(self) -> AsyncIterator[list[StreamItem]]:
        """The chunks of each upstream read together, so that a proxy can forward them
        in one write (one syscall) rather than one write per chunk.

        A stream that breaks (the provider fails, sends a chunk that is not one, or ends
        without its end marker) raises an UpstreamError after ``fail`` billed what was
        produced: the caller reports it in-band, never as a stream that ended well."""
        assert self._source is not None, "open() the stream first"
        try:
            first, self._first = self._first, None
            if first:
                yield first
            if self._decoder.failure is not None:
                raise self._decoder.failure
            if not self._decoder.done:
                async for data in self._source:
                    items = self._decoder.feed(data)
                    if items:
                        yield items
                    if self._decoder.failure is not None:
                        raise self._decoder.failure
                    if self._decoder.done:
                        break
                else:
                    tail = self._decoder.feed(b"\n\n")  # an event without its blank line
                    if tail:
                        yield tail
                    if self._decoder.failure is not None:
                        raise self._decoder.failure
                    if not self._decoder.done:
                        raise UpstreamError("the upstream stream ended before its end "
                                            "marker (the answer may be cut short)")
        except UpstreamError as exc:
            await self.fail(exc)
            raise
        except Exception as exc:
            failure = UpstreamError(f"the upstream sent a malformed stream "
                                    f"({type(exc).__name__})")
            await self.fail(failure)
            raise failure from None
        await self.finish()

    async def fail(self, exc: BaseException) -> UsageEvent | None:
        """The stream broke (``exc``): bill what the client was sent, flagged incomplete;
        if nothing was, it is a failed call: nothing billed, the reservation released."""
        if self._finishing is not None:  # already billed, or already failed
            return await asyncio.shield(self._finishing)
        if self._decoder.output_text():
            log.warning("call %s: upstream stream failed after output began: %s",
                        self.ctx.call_id, getattr(exc, "message", type(exc).__name__))
            return await self.finish(incomplete=True)
        self._finishing = asyncio.get_running_loop().create_future()
        self._finishing.set_result(None)
        await self._close_upstream()
        await self._recorder.record_failure(failure_event(self.ctx, self.deployment, exc))
        return None

    async def finish(self, *, disconnected: bool = False,
                     incomplete: bool = False) -> UsageEvent | None:
        """Close upstream and record the event; safe to call more than once. None when
        the stream failed before producing anything (``fail``): nothing was billed."""
        if self._finishing is not None:
            return await asyncio.shield(self._finishing)
        self._finishing = asyncio.get_running_loop().create_future()
        try:
            await self._close_upstream()
            dec = self._decoder
            final = dec.done or dec.usage_final
            usage = dec.usage if final else None
            if usage is None:
                usage = _with_estimated_requests(
                    _estimated_usage(self._params, dec.output_text(), dec.usage),
                    self._provider, self.deployment, self._params)
            usage = _with_prompt(self._params, usage)
            flags = {FLAG_STREAM}
            if disconnected:
                flags.add(FLAG_CLIENT_DISCONNECTED)
            if incomplete:
                flags.add(FLAG_INCOMPLETE)
            event = make_event(self.ctx, self.deployment, usage, self._prices,
                               kind=self._kind, extra_flags=frozenset(flags),
                               first_chunk_ms=self._first_chunk_ms,
                               answered_model=(None if self._provider.names_model
                                               else dec.answered_model()),
                               provider_cost=dec.provider_cost)
            self.event = event
            await self._recorder.record(event)
        except BaseException as exc:
            self._finishing.set_exception(exc)
            self._finishing.exception()  # retrieved: a later caller re-raises it
            raise
        self._finishing.set_result(event)
        return event

    async def _close_upstream(self) -> None:
        cm, self._upstream = self._upstream, None
        if cm is not None:
            await cm.__aexit__(None, None, None)


async def _local_source(body: bytes) -> AsyncIterator[bytes]:
    # Hand the mock's stream over in pieces, as a network would.
    step = 256
    for i in range(0, len(body), step):
        yield body[i:i + step]
        await asyncio.sleep(0)
