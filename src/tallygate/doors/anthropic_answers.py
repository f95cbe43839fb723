"""OpenAI-shaped answers and chunk streams rendered as Anthropic messages and stream events.

For the Messages door's translated calls (any deployment that does not speak the
Messages API). Usage comes from the billed ``UsageEvent`` (disjoint buckets), so what
the client reads is what Lago is sent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.usage import Usage

# OpenAI finish_reason -> Anthropic stop_reason
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def frame(event: dict[str, Any]) -> bytes:
    """One Anthropic SSE frame: ``event: <type>`` and its data."""
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


# --- answer: OpenAI chat.completion -> Anthropic message -------------------------------

def usage_dict(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage object from our disjoint buckets (``input_tokens`` uncached)."""
    return {"input_tokens": (usage.input_tokens + usage.audio_input_tokens
                             + usage.citation_tokens),
            "cache_creation_input_tokens": usage.cache_write_all_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_write_tokens,
                               "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens},
            "output_tokens": usage.completion_tokens}


def _tool_use_id() -> str:
    return "toolu_" + os.urandom(12).hex()


def _tool_input(arguments: object) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    # Anthropic's input is always an object; keep text that is not one rather than lose it.
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


def _reasoning_of(message: Mapping[str, Any]) -> str:
    """The reasoning text an OpenAI-compatible answer or delta carries, if any."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def stop_reason(finish_reason: object, has_tools: bool) -> str:
    reason = STOP_REASONS.get(finish_reason, "end_turn") if isinstance(
        finish_reason, str) else "end_turn"
    # Some OpenAI-compatible servers say "stop" after tool calls.
    return "tool_use" if has_tools and reason == "end_turn" else reason


def to_message(body: Mapping[str, Any], usage: Usage, message_id: str,
               model: str) -> dict[str, Any]:
    """The Anthropic message for an OpenAI chat.completion body and the billed usage."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    thought = _reasoning_of(message)
    if thought:
        # DeepSeek's and vLLM's reasoning_content: a thinking block, unsigned (it is not
        # Anthropic's thinking; the door drops thinking blocks sent back to it).
        blocks.append({"type": "thinking", "thinking": thought, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    for call in calls:
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        blocks.append({"type": "tool_use", "id": call.get("id") or _tool_use_id(),
                       "name": function.get("name") or "",
                       "input": _tool_input(function.get("arguments"))})
    return {"id": message_id, "type": "message", "role": "assistant",
            "model": body.get("model") or model, "content": blocks,
            "stop_reason": stop_reason(choice.get("finish_reason"), bool(calls)),
            "stop_sequence": None, "usage": usage_dict(usage)}


# --- stream: OpenAI chunks -> Anthropic stream events ----------------------------------

class MessageStreamEncoder:
    """Builds Anthropic stream events from OpenAI chat chunks.

    ``start`` (message_start), ``feed`` per chunk (content_block_start / delta / stop for
    text and tool_use), ``end`` with the billed usage (message_delta, message_stop).
    message_start carries an estimate of the input; message_delta carries the billed
    numbers, cumulative, which the Anthropic SDK takes over the earlier ones.
    """

    def __init__(self, message_id: str, model: str, input_estimate: int) -> None:
        self.message_id = message_id
        self.model = model
        self.input_estimate = input_estimate
        self._open: int | None = None      # index of the open content block
        self._open_kind: str | None = None
        self._blocks = 0
        self._tools: dict[int, int] = {}   # OpenAI tool_calls index -> block index
        self._finish: object = None

    def start(self) -> bytes:
        return frame({"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_estimate, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0,
                      "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                         "ephemeral_1h_input_tokens": 0},
                      "output_tokens": 0}}})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, self._open, self._open_kind = self._open, None, None
        return [frame({"type": "content_block_stop", "index": index})]

    def _begin(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self._open, self._open_kind = self._blocks, kind
        self._blocks += 1
        out.append(frame({"type": "content_block_start", "index": self._open,
                           "content_block": block}))
        return out

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        choices = chunk.get("choices")
        # Parts not in the chunk shape (a string delta, a list as content) are skipped.
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            thought = _reasoning_of(delta)
            if thought:
                if self._open_kind != "thinking":
                    out += self._begin("thinking", {"type": "thinking", "thinking": "",
                                                    "signature": ""})
                out.append(frame({"type": "content_block_delta", "index": self._open,
                                  "delta": {"type": "thinking_delta", "thinking": thought}}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open_kind != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                out.append(frame({"type": "content_block_delta", "index": self._open,
                                  "delta": {"type": "text_delta", "text": text}}))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if not isinstance(call, dict) or not isinstance(call.get("index", 0), int):
                    continue
                function = call.get("function")
                if not isinstance(function, dict):
                    function = {}
                key = call.get("index", 0)
                index = self._tools.get(key)
                if index is None:
                    out += self._begin("tool_use", {
                        "type": "tool_use", "id": call.get("id") or _tool_use_id(),
                        "name": function.get("name") or "", "input": {}})
                    index = self._tools[key] = self._blocks - 1
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    out.append(frame({"type": "content_block_delta", "index": index,
                                      "delta": {"type": "input_json_delta",
                                                "partial_json": arguments}}))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def end(self, usage: Usage) -> bytes:
        out = self._close()
        out.append(frame({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason(self._finish, bool(self._tools)),
                                     "stop_sequence": None},
                           "usage": usage_dict(usage)}))
        out.append(frame({"type": "message_stop"}))
        return b"".join(out)
