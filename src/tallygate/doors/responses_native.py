"""The Responses API passed through to a deployment that serves it (``openai/``).

The request goes to the provider's own ``/responses`` as it came, with only ``model``
replaced (and, when the conversation a ``previous_response_id`` names lives elsewhere,
its stored items put in front of ``input``). The answer's bytes go back untouched;
usage is read from them: the answer's ``usage``, or the stream's ``response.completed``
(or ``.incomplete`` / ``.failed``) event, which is held back until the call is billed so
that the outbox write comes before the stream's last event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from tallygate.errors import UpstreamError
from tallygate.providers.base import ChatResult, Deployment, StreamDecoder, StreamItem
from tallygate.providers.registry import get_provider
from tallygate.providers.sse import SSEParser
from tallygate.usage import Usage, request_counts

RESPONSES_ENDPOINTS = frozenset({"/v1/responses", "/responses"})
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_LIFECYCLE = _TERMINAL | {"response.created", "response.in_progress", "response.queued"}
_DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})
# Items another account's API cannot take back: tool calls it did not run, and reasoning
# that only the account that made it can read (unless its encrypted content came along).
_NOT_REPLAYABLE = frozenset({"web_search_call", "file_search_call", "code_interpreter_call",
                             "image_generation_call", "mcp_list_tools", "compaction"})


def is_native(deployment: Deployment) -> bool:
    """Whether the deployment takes Responses API requests itself: its provider serves
    the API, unless the entry's ``model_info.supported_endpoints`` (LiteLLM's name) is
    set and leaves ``/v1/responses`` out (an OpenAI-compatible server without it)."""
    if not get_provider(deployment.provider).responses_api:
        return False
    endpoints = deployment.model_info.get("supported_endpoints")
    if isinstance(endpoints, list | tuple):
        return any(e in RESPONSES_ENDPOINTS for e in endpoints)
    return True


def read_usage(response: object) -> Usage | None:
    """Usage from a Response object: ``input_tokens`` counts cached tokens (and cache
    writes) too; reasoning tokens are a part of ``output_tokens``."""
    raw = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(raw, dict):
        return None
    usage = Usage.from_openai({
        "prompt_tokens": raw.get("input_tokens"),
        "completion_tokens": raw.get("output_tokens"),
        "prompt_tokens_details": raw.get("input_tokens_details"),
        "completion_tokens_details": raw.get("output_tokens_details")})
    return usage if usage is not None else Usage()


def web_searches(response: Mapping[str, Any]) -> int:
    """Web searches the response ran (each billed per call): ``tool_usage`` when the API
    reports it, else its completed ``web_search_call`` items."""
    tool_usage = response.get("tool_usage")
    if isinstance(tool_usage, dict) and isinstance(tool_usage.get("web_search"), dict):
        count = tool_usage["web_search"].get("num_requests")
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            return count
    return sum(1 for item in response.get("output") or ()
               if isinstance(item, dict) and item.get("type") == "web_search_call"
               and item.get("status") in ("completed", None))


def billed_usage(response: Mapping[str, Any]) -> Usage | None:
    usage = read_usage(response)
    searches = web_searches(response)
    if usage is not None and searches:
        usage = replace(usage, requests=request_counts({"web_searches": searches}))
    return usage


def answer_reader(echo: Mapping[str, Any]) -> Callable[[bytes], ChatResult]:
    """Reads a Response answer; ``echo`` holds fields to give back as the client sent
    them (``previous_response_id`` when the gateway sent the conversation instead)."""
    def read(raw: bytes) -> ChatResult:
        parsed = orjson.loads(raw)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("output"), list):
            raise UpstreamError("upstream answered 200 with a body that is not a Response "
                                "(no 'output' list)")
        if echo:
            parsed.update(echo)
            raw = orjson.dumps(parsed)
        return ChatResult(body=parsed, usage=billed_usage(parsed), raw=raw)

    return read


def replayable(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Stored conversation items as input for a deployment that did not store them."""
    out = []
    for item in items:
        kind = item.get("type")
        if kind in _NOT_REPLAYABLE:
            continue
        if kind == "reasoning" and not item.get("encrypted_content"):
            continue
        out.append(dict(item))
    return out


class PassthroughDecoder(StreamDecoder):
    """Forwards the upstream's Responses events as they are; reads the usage and the
    final Response from the terminal event, which it keeps back (``terminal``) for the
    door to send once the call is billed."""

    def __init__(self, echo: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._echo = echo  # fields set on the lifecycle events' response (answer_reader)
        self._sse = SSEParser()
        self._deltas: list[bytes] = []
        self.final: dict[str, Any] | None = None
        self.terminal = b""
        self.events = 0  # the next sequence_number, for an error event of our own

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            payload = ev.data
            if not payload:
                continue
            self.events += 1
            kind = ev.event
            if kind is None:  # a server that puts the type only in the data
                parsed = orjson.loads(payload)
                kind = parsed.get("type") if isinstance(parsed, dict) else None
            if self._echo and kind in _LIFECYCLE:
                payload = self._echoed(payload)
            head = b"event: " + kind.encode() + b"\n" if ev.event is not None and kind else b""
            frame = head + b"data: " + payload + b"\n\n"
            if kind in _TERMINAL:
                self._on_terminal(payload, frame)
                continue
            if kind in _DELTAS:
                self._deltas.append(payload)
            out.append(StreamItem(None, frame, payload))
        return out

    def _echoed(self, payload: bytes) -> bytes:
        event = orjson.loads(payload)
        if isinstance(event, dict) and isinstance(event.get("response"), dict):
            event["response"].update(self._echo or {})
            return orjson.dumps(event)
        return payload

    def _on_terminal(self, payload: bytes, frame: bytes) -> None:
        event = orjson.loads(payload)
        response = event.get("response") if isinstance(event, dict) else None
        if isinstance(response, dict):
            self.final = response
            self.usage = billed_usage(response)
        self.terminal += frame
        self.done = True

    def output_text(self) -> str:
        parts = []
        for payload in self._deltas:
            event = orjson.loads(payload)
            if isinstance(event, dict) and isinstance(event.get("delta"), str):
                parts.append(event["delta"])
        return "".join(parts)
