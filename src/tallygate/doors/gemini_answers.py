"""OpenAI chat answers and chunks as Gemini ones (the Gemini door, translated).

The other direction of ``providers.gemini_answer``: a chat completion becomes a
``GenerateContentResponse`` (text and ``functionCall`` parts, ``finishReason``, and the
billed usage as ``usageMetadata`` through ``usage_metadata``); a chunk stream becomes
``streamGenerateContent`` chunks: text as it comes, each tool call whole (OpenAI streams
its arguments in pieces, Gemini sends a call in one part) with the finish, and the usage
on the last chunk. ``GeminiFramer`` frames payloads as SSE or as Google's one JSON array.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tallygate.providers.gemini_answer import FINISH_REASONS, usage_metadata
from tallygate.usage import Usage

# OpenAI finish_reason -> Gemini finishReason (a tool call ends a turn with STOP).
FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY",
          "tool_calls": "STOP", "function_call": "STOP"}
assert set(FINISH.values()) <= set(FINISH_REASONS)


def _args(arguments: object) -> dict[str, Any]:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _call_part(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call.get("function"), Mapping) else {}
    assert isinstance(fn, Mapping)
    out: dict[str, Any] = {"name": str(fn.get("name") or ""), "args": _args(fn.get("arguments"))}
    if isinstance(call.get("id"), str) and call["id"]:
        out["id"] = call["id"]
    return {"functionCall": out}


def _parts(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        parts.append({"text": message["reasoning_content"], "thought": True})
    if isinstance(message.get("content"), str) and message["content"]:
        parts.append({"text": message["content"]})
    for call in message.get("tool_calls") or ():
        if isinstance(call, Mapping):
            parts.append(_call_part(call))
    return parts


def to_gemini(body: Mapping[str, Any], usage: Usage, response_id: str,
              model: str) -> dict[str, Any]:
    """A chat completion as a ``GenerateContentResponse``."""
    candidates = []
    for position, choice in enumerate(body.get("choices") or ()):
        if not isinstance(choice, Mapping):
            continue
        message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
        assert isinstance(message, Mapping)
        index = choice.get("index")
        candidates.append({
            "content": {"role": "model", "parts": _parts(message) or [{"text": ""}]},
            "finishReason": FINISH.get(str(choice.get("finish_reason")), "STOP"),
            "index": index if isinstance(index, int) else position})
    return {"candidates": candidates, "usageMetadata": usage_metadata(usage),
            "modelVersion": model, "responseId": response_id}


@dataclass
class _Candidate:
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # tool index -> call
    finish: str | None = None


class GeminiChunkEncoder:
    """Chat chunks to ``streamGenerateContent`` chunk payloads (dicts)."""

    def __init__(self, response_id: str, model: str) -> None:
        self._head = {"modelVersion": model, "responseId": response_id}
        self._candidates: dict[int, _Candidate] = {}

    def _chunk(self, index: int, parts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"candidates": [{"content": {"role": "model", "parts": parts},
                                "index": index}], **self._head}

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            raw_index = choice.get("index")
            index = raw_index if isinstance(raw_index, int) else 0
            state = self._candidates.setdefault(index, _Candidate())
            delta = choice.get("delta") if isinstance(choice.get("delta"), Mapping) else {}
            assert isinstance(delta, Mapping)
            parts: list[dict[str, Any]] = []
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                parts.append({"text": delta["reasoning_content"], "thought": True})
            if isinstance(delta.get("content"), str) and delta["content"]:
                parts.append({"text": delta["content"]})
            if parts:
                out.append(self._chunk(index, parts))
            for piece in delta.get("tool_calls") or ():
                if not isinstance(piece, Mapping):
                    continue
                raw_at = piece.get("index")
                at = raw_at if isinstance(raw_at, int) else 0
                call = state.calls.setdefault(at, {"id": None, "function": {
                    "name": "", "arguments": ""}})
                if piece.get("id"):
                    call["id"] = piece["id"]
                fn = piece.get("function")
                if isinstance(fn, Mapping):
                    call["function"]["name"] += str(fn.get("name") or "")
                    call["function"]["arguments"] += str(fn.get("arguments") or "")
            if choice.get("finish_reason"):
                state.finish = str(choice["finish_reason"])
        return out

    def end(self, usage: Usage) -> dict[str, Any]:
        """The last chunk: every tool call whole, each candidate's finishReason, and the
        billed usage."""
        candidates = []
        for index, state in sorted(self._candidates.items()) or [(0, _Candidate())]:
            parts = [_call_part(state.calls[at]) for at in sorted(state.calls)]
            candidates.append({"content": {"role": "model", "parts": parts or [{"text": ""}]},
                               "finishReason": FINISH.get(state.finish or "stop", "STOP"),
                               "index": index})
        return {"candidates": candidates, "usageMetadata": usage_metadata(usage),
                **self._head}


class GeminiFramer:
    """Payloads framed as Google streams them: SSE events ending in CRLF CRLF
    (``?alt=sse``), or the items of one JSON array (no ``alt``)."""

    def __init__(self, *, array: bool) -> None:
        self.array = array
        self._opened = False

    def frame(self, payload: Mapping[str, Any] | bytes) -> bytes:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        if not self.array:
            return b"data: " + data + b"\r\n\r\n"
        head = b",\r\n" if self._opened else b"["
        self._opened = True
        return head + data

    def close(self) -> bytes:
        if not self.array:
            return b""
        return b"]" if self._opened else b"[]"
