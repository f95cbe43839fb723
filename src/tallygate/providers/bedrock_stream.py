"""ConverseStream's AWS event-stream frames -> OpenAI chat.completion.chunk objects.

The binary framing (prelude, headers, payload, CRCs) is parsed by botocore's
``EventStreamBuffer`` as bytes arrive; this module only reads the events. Usage comes in
the final ``metadata`` event alone; an exception event mid-stream fails the call after
the chunks read before it are delivered, and what was generated is billed. Members and
events this module does not know (AWS pads events with a ``p`` field) are ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tallygate.errors import UpstreamError, upstream_error_for
from tallygate.providers.base import StreamDecoder, StreamItem
from tallygate.providers.bedrock_converse import converse_usage, finish_reason

# The in-stream exceptions ConverseStream declares, as the HTTP status they stand for.
EXCEPTION_STATUS = {
    "throttlingException": 429,
    "validationException": 400,
    "serviceUnavailableException": 503,
    "modelStreamErrorException": 502,
    "internalServerException": 502,
}


def stream_failure(kind: str, message: str) -> UpstreamError:
    status = EXCEPTION_STATUS.get(kind, 502)
    code = kind[:1].upper() + kind[1:]
    if status == 503:
        return UpstreamError(message, status_code=503, code=code,
                             error_type="service_unavailable")
    return upstream_error_for(status, message, code=code)


class ConverseStreamDecoder(StreamDecoder):
    """Decodes one ConverseStream answer incrementally."""

    def __init__(self, include_usage: bool, model: str) -> None:
        super().__init__()
        from botocore.eventstream import EventStreamBuffer

        self._buffer = EventStreamBuffer()
        self._include_usage = include_usage
        self._model = model
        self._id = "chatcmpl-" + uuid.uuid4().hex
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # contentBlockIndex -> OpenAI tool_calls index
        self._finished = False

    def feed(self, data: bytes) -> list[StreamItem]:
        from botocore.eventstream import ParserError

        self._buffer.add_data(data)
        out: list[StreamItem] = []
        try:
            for message in self._buffer:
                if self.failure is not None or self.done:
                    break
                frame = message.to_response_dict()  # {"headers", "body", "status_code"}
                out.extend(self._on_message(frame["headers"], frame["body"]))
        except ParserError as exc:
            # A frame whose length or CRC is wrong: the stream cannot be trusted past it.
            self.failure = UpstreamError(
                f"Bedrock sent a malformed event stream ({type(exc).__name__})")
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> StreamItem:
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                 "model": self._model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": finish}]}
        return StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n")

    def _on_message(self, headers: dict[str, Any], payload: bytes) -> list[StreamItem]:
        kind = headers.get(":message-type")
        if kind == "exception":
            self.failure = stream_failure(str(headers.get(":exception-type") or ""),
                                          _message(payload))
            return []
        if kind == "error":
            self.failure = UpstreamError(
                str(headers.get(":error-message") or "Bedrock stream error"),
                code=str(headers.get(":error-code") or "") or None)
            return []
        if kind != "event":
            return []
        try:
            event = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        name = headers.get(":event-type")
        if name == "messageStart":
            return [self._chunk({"role": "assistant", "content": ""})]
        if name == "contentBlockStart":
            return self._on_block_start(event)
        if name == "contentBlockDelta":
            return self._on_block_delta(event)
        if name == "messageStop":
            self._finished = True
            return [self._chunk({}, finish_reason(event.get("stopReason")))]
        if name == "metadata":
            return self._on_metadata(event)
        return []  # contentBlockStop and event types added later

    def _on_block_start(self, event: dict[str, Any]) -> list[StreamItem]:
        start = event.get("start")
        tool = start.get("toolUse") if isinstance(start, dict) else None
        if not isinstance(tool, dict):
            return []
        index = len(self._tools)
        self._tools[_index(event)] = index
        call = {"index": index, "id": tool.get("toolUseId"), "type": "function",
                "function": {"name": tool.get("name"), "arguments": ""}}
        return [self._chunk({"tool_calls": [call]})]

    def _on_block_delta(self, event: dict[str, Any]) -> list[StreamItem]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return []
        text = delta.get("text")
        if isinstance(text, str) and text:
            self.output_parts.append(text)
            return [self._chunk({"content": text})]
        tool = delta.get("toolUse")
        if isinstance(tool, dict) and isinstance(tool.get("input"), str) and tool["input"]:
            index = self._tools.get(_index(event))
            if index is None:
                return []
            self.output_parts.append(tool["input"])
            call = {"index": index, "function": {"arguments": tool["input"]}}
            return [self._chunk({"tool_calls": [call]})]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict):
            if isinstance(reasoning.get("text"), str) and reasoning["text"]:
                self.output_parts.append(reasoning["text"])
                return [self._chunk({"reasoning_content": reasoning["text"]})]
            if isinstance(reasoning.get("signature"), str):
                block = {"type": "thinking", "thinking": "",
                         "signature": reasoning["signature"]}
                return [self._chunk({"thinking_blocks": [block]})]
        return []  # citations, tool results of server tools, images

    def _on_metadata(self, event: dict[str, Any]) -> list[StreamItem]:
        self.usage = converse_usage(event.get("usage"))
        self.done = True
        out = [] if self._finished else [self._chunk({}, "stop")]
        self._finished = True
        if self._include_usage and self.usage is not None:
            chunk = {"id": self._id, "object": "chat.completion.chunk",
                     "created": self._created, "model": self._model, "choices": [],
                     "usage": self.usage.to_openai()}
            out.append(StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n"))
        return out


def _index(event: dict[str, Any]) -> int:
    value = event.get("contentBlockIndex")
    return value if isinstance(value, int) else 0


def _message(payload: bytes) -> str:
    try:
        parsed = orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        text = parsed.get("message") or parsed.get("Message")
        if isinstance(text, str) and text:
            return text
    return "Bedrock stream failed"
