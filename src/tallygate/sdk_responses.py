"""The SDK's ``responses`` / ``aresponses`` (OpenAI's Responses API through any provider)
and ``text_completion`` / ``atext_completion``, with the doors' own translation code:
a provider that serves the API itself gets the request passed through (as the proxy's
door does); any other is called through its chat API with the request translated
(``doors.responses_request``, ``doors.completions_translate``) and the answer rendered
back. Billed once, like the proxy's calls.

The SDK keeps no response store: ``previous_response_id`` works with a provider that
stores responses itself (OpenAI) and is refused for translated calls, which need the
proxy's store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import orjson

from tallygate import callback_dispatch as cb
from tallygate import engine
from tallygate.doors.completions_translate import check_completion
from tallygate.doors.completions_translate import to_chat as completion_to_chat
from tallygate.doors.responses_native import PassthroughDecoder, answer_reader, is_native
from tallygate.doors.responses_render import ResponseStreamEncoder, base_response, from_chat
from tallygate.doors.responses_request import estimate_messages, parse, to_chat
from tallygate.engine import CallContext, ChatStream
from tallygate.errors import BadRequestError
from tallygate.event import UsageEvent
from tallygate.pricing import default_price_book
from tallygate.providers.base import Deployment, NativeCompletions
from tallygate.providers.registry import get_provider
from tallygate.response import ModelResponse, ResponseObject
from tallygate.routing import CURRENT_ATTEMPT
from tallygate.runtime import runtime
from tallygate.sdk import SdkRecorder, _route
from tallygate.sdk_routing import Route


class ResponseEventStream:
    """The Responses stream's events (``response.output_text.delta``...), as objects;
    billed once when it ends (``usage_event``)."""

    def __init__(self, stream: ChatStream, frames: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._frames = frames
        self._pending: list[dict[str, Any]] = []

    @property
    def usage_event(self) -> UsageEvent | None:
        return self._stream.event

    def __aiter__(self) -> ResponseEventStream:
        return self

    async def __anext__(self) -> ResponseObject:
        while not self._pending:
            frame = await self._frames.__anext__()
            for line in frame.split(b"\n"):
                if line.startswith(b"data: "):
                    self._pending.append(orjson.loads(line[6:]))
        return ResponseObject(self._pending.pop(0))

    async def aclose(self) -> None:
        if self._stream.event is None:
            await self._stream.finish(disconnected=True)


class SyncResponseEventStream:
    def __init__(self, astream: ResponseEventStream) -> None:
        self._astream = astream

    @property
    def usage_event(self) -> UsageEvent | None:
        return self._astream.usage_event

    def __iter__(self) -> Iterator[ResponseObject]:
        return self

    def __next__(self) -> ResponseObject:
        try:
            return runtime.run(self._astream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        runtime.run(self._astream.aclose())


async def aresponses(input: Any = None, model: str = "", *, stream: bool = False,
                     user: str | None = None, metadata: Mapping[str, Any] | None = None,
                     api_base: str | None = None, api_key: str | None = None,
                     timeout: float | None = None,
                     callbacks: Sequence[cb.Callback] | None = None,
                     num_retries: int | None = None, fallbacks: list[Any] | None = None,
                     **kwargs: Any) -> Any:
    """A Responses API call (OpenAI's parameters: ``input``, ``instructions``, ``tools``,
    ``text``, ``reasoning``, ``max_output_tokens``...). Returns the Response, or with
    ``stream=True`` an async iterator of its events."""
    route, params, ctx, recorder = _route(
        model, None, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout, num_retries=num_retries,
        fallbacks=fallbacks)
    return await routed_responses(route, params, ctx, recorder, input=input, stream=stream,
                                  metadata=metadata)


async def routed_responses(route: Route, params: dict[str, Any], ctx: CallContext,
                           recorder: SdkRecorder, *, input: Any, stream: bool,
                           metadata: Mapping[str, Any] | None) -> Any:
    """A Responses call's attempts on the deployments ``route`` gives."""
    first = {**params, "model": ctx.model, "stream": stream}
    if input is not None:
        first["input"] = input
    if metadata:
        first["metadata"] = dict(metadata)
    parse(first)  # a malformed request is the caller's 400 before any attempt
    await runtime.aensure_sinks(recorder.resolved.sinks)

    async def one(deployment: Deployment, actx: CallContext) -> Any:
        body: dict[str, Any] = {**first, "model": deployment.model}
        rq = parse(body)
        return await _respond(deployment, body, rq, actx, recorder, stream)

    return await route.run(ctx, one, stream=stream, params={"input": input})


def _committed() -> None:
    attempt = CURRENT_ATTEMPT.get()
    if attempt is not None:
        attempt.commit()  # the stream is the caller's now: no retry after this


async def _respond(deployment: Deployment, body: dict[str, Any], rq: Any, ctx: CallContext,
                   recorder: SdkRecorder, stream: bool) -> Any:
    estimate = {"messages": estimate_messages(rq)}
    if is_native(deployment):
        upstream = get_provider(deployment.provider).responses_request(
            deployment, orjson.dumps(body))
        if not stream:
            result, event = await engine.forward(deployment, upstream, answer_reader({}),
                                                 estimate, ctx, recorder, default_price_book)
            return ModelResponse(result.body, event)
        decoder = PassthroughDecoder()
        chat_stream = ChatStream(deployment, estimate, ctx, recorder, default_price_book,
                                 include_usage=False, request=upstream, decoder=decoder)
        await chat_stream.open()
        _committed()

        async def passed() -> AsyncIterator[bytes]:
            async for items in chat_stream.pieces():
                for item in items:
                    yield item.frame
            yield decoder.terminal

        return ResponseEventStream(chat_stream, passed())
    if rq.previous_response_id is not None:
        raise BadRequestError("previous_response_id needs a provider that stores responses "
                              f"({deployment.provider!r} does not) or the proxy's "
                              "response store", param="previous_response_id")
    call = to_chat(rq, [], deployment)
    response_id = "resp_" + ctx.call_id.removeprefix("tg-")
    if not stream:
        result, event = await engine.chat(deployment, call.params, ctx, recorder,
                                          default_price_book)
        answered = result.body.get("model")
        base = base_response(rq, response_id,
                             answered if isinstance(answered, str) else deployment.model)
        return ModelResponse(from_chat(base, result.body, event.usage, call.namespaced),
                             event, tuple(call.dropped))
    chat_stream = ChatStream(deployment, call.params, ctx, recorder, default_price_book,
                             include_usage=False)
    await chat_stream.open()
    _committed()
    encoder = ResponseStreamEncoder(base_response(rq, response_id, deployment.model),
                                    call.namespaced)

    async def rendered() -> AsyncIterator[bytes]:
        yield encoder.start()
        async for items in chat_stream.pieces():
            for item in items:
                for frame in encoder.feed(item.data):
                    yield frame
        event = await chat_stream.finish()
        assert event is not None  # the stream ended well: it billed itself
        yield encoder.end(event.usage)

    return ResponseEventStream(chat_stream, rendered())


def responses(input: Any = None, model: str = "", **kwargs: Any) -> Any:
    """The sync form of ``aresponses``."""
    result = runtime.run(aresponses(input, model, **kwargs))
    return SyncResponseEventStream(result) if isinstance(result, ResponseEventStream) else result


async def atext_completion(prompt: Any, model: str = "", *, user: str | None = None,
                           metadata: Mapping[str, Any] | None = None,
                           api_base: str | None = None, api_key: str | None = None,
                           timeout: float | None = None,
                           callbacks: Sequence[cb.Callback] | None = None,
                           num_retries: int | None = None,
                           fallbacks: list[Any] | None = None,
                           **kwargs: Any) -> ModelResponse:
    """A legacy text completion (not streamed): passed through to a provider that serves
    ``/completions``, else one chat turn rendered back as a ``text_completion``."""
    if kwargs.get("stream"):
        raise BadRequestError("text_completion(stream=True) is not supported by the SDK; "
                              "use completion(stream=True)", param="stream")
    route, params, ctx, recorder = _route(
        model, None, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout, num_retries=num_retries,
        fallbacks=fallbacks)
    return await routed_text_completion(route, params, ctx, recorder, prompt=prompt)


async def routed_text_completion(route: Route, params: dict[str, Any], ctx: CallContext,
                                 recorder: SdkRecorder, *, prompt: Any) -> ModelResponse:
    check_completion({**params, "model": ctx.model, "prompt": prompt})
    await runtime.aensure_sinks(recorder.resolved.sinks)

    async def one(deployment: Deployment, actx: CallContext) -> ModelResponse:
        data: dict[str, Any] = {**params, "model": deployment.model, "prompt": prompt}
        provider = get_provider(deployment.provider)
        if isinstance(provider, NativeCompletions):
            estimate = {"messages": [{"role": "user", "content": str(prompt)}]}
            result, event = await engine.forward(
                deployment, provider.completion_request(deployment, data, stream=False),
                lambda raw: provider.completion_response(deployment, raw), estimate, actx,
                recorder, default_price_book, kind="completion")
            return ModelResponse(result.body, event)
        from tallygate.doors.completions_translate import to_text_completion

        chat, dropped = completion_to_chat(data, deployment)
        echo = chat["messages"][0]["content"] if data.get("echo") else ""
        result, event = await engine.chat(deployment, chat, actx, recorder,
                                          default_price_book, kind="completion")
        return ModelResponse(to_text_completion(result.body, event.usage, echo, actx.call_id),
                             event, tuple(dropped))

    return await route.run(ctx, one, params={"prompt": prompt})


def text_completion(prompt: Any, model: str = "", **kwargs: Any) -> ModelResponse:
    return runtime.run(atext_completion(prompt, model, **kwargs))
