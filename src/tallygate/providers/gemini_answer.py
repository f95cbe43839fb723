"""Gemini answers to OpenAI ones: ``generateContent`` bodies, stream chunks, usage, errors.

Pure functions, shared by the ``gemini`` and ``vertex_ai`` providers; a Gemini door
reads usage the same way (``gemini_usage``) and writes it back (``usage_metadata``).

Usage: ``promptTokenCount`` includes ``cachedContentTokenCount``, so the cached count
is the cache-read bucket and the rest is uncached input (its audio part priced apart);
``toolUsePromptTokenCount`` is more input; ``thoughtsTokenCount`` is output, billed at
the output price, and the reasoning part of it; ``candidatesTokenCount`` is the rest
of the output. In a stream each chunk's ``usageMetadata`` is the total so far: the
last one counts, never a sum.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import UpstreamError, upstream_error_for
from tallygate.providers.base import ChatResult, PassThroughDecoder, StreamDecoder, StreamItem
from tallygate.providers.gemini_request import tool_call_id
from tallygate.providers.sse import SSEParser
from tallygate.usage import Usage

# Gemini finishReason -> OpenAI finish_reason; a blocked answer is a content filter.
FINISH_REASONS = {
    "STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
    "RECITATION": "content_filter", "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
    "MALFORMED_FUNCTION_CALL": "stop", "UNEXPECTED_TOOL_CALL": "stop", "OTHER": "stop",
}


def finish_reason(reason: object, has_tool_calls: bool) -> str:
    mapped = FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_tool_calls and mapped == "stop" else mapped


# --- usage -----------------------------------------------------------------------------

def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(int(value), 0)


def _modality(details: object, modality: str) -> int:
    if not isinstance(details, list):
        return 0
    return sum(_count(d.get("tokenCount")) for d in details
               if isinstance(d, Mapping) and d.get("modality") == modality)


def gemini_usage(meta: object) -> Usage | None:
    """Our disjoint buckets from a Gemini ``usageMetadata`` object."""
    if not isinstance(meta, Mapping) or not meta:
        return None
    prompt = _count(meta.get("promptTokenCount"))
    cached = min(_count(meta.get("cachedContentTokenCount")), prompt)
    # Audio is priced apart; cached audio is a cache read already.
    audio_in = min(max(_modality(meta.get("promptTokensDetails"), "AUDIO")
                       - _modality(meta.get("cacheTokensDetails"), "AUDIO"), 0),
                   prompt - cached)
    candidates = _count(meta.get("candidatesTokenCount"))
    audio_out = min(_modality(meta.get("candidatesTokensDetails"), "AUDIO"), candidates)
    thoughts = _count(meta.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=prompt - cached - audio_in + _count(meta.get("toolUsePromptTokenCount")),
        cache_read_tokens=cached,
        audio_input_tokens=audio_in,
        output_tokens=candidates - audio_out + thoughts,
        reasoning_tokens=thoughts,
        audio_output_tokens=audio_out,
    )


def usage_metadata(usage: Usage) -> dict[str, Any]:
    """Gemini's ``usageMetadata`` for our buckets (a Gemini door's answers): cache reads
    inside ``promptTokenCount``, reasoning as ``thoughtsTokenCount``."""
    thoughts = usage.reasoning_tokens
    candidates = usage.completion_tokens - thoughts
    meta: dict[str, Any] = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": candidates,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        meta["cachedContentTokenCount"] = usage.cache_read_tokens
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


# --- answers ---------------------------------------------------------------------------

def _read_parts(content: object) -> tuple[str, str, list[dict[str, Any]]]:
    """(text, thought text, OpenAI tool calls) of a candidate's content."""
    parts = content.get("parts") if isinstance(content, Mapping) else None
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping):
            continue
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            calls.append({
                "id": tool_call_id(part.get("thoughtSignature")), "type": "function",
                "function": {"name": str(call.get("name") or ""),
                             "arguments": orjson.dumps(call.get("args") or {}).decode()}})
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else text).append(part["text"])
    return "".join(text), "".join(thoughts), calls


def _choice(candidate: Mapping[str, Any], position: int) -> dict[str, Any]:
    text, thoughts, calls = _read_parts(candidate.get("content"))
    message: dict[str, Any] = {"role": "assistant",
                               "content": None if calls and not text else text,
                               "refusal": None}
    if thoughts:
        message["reasoning_content"] = thoughts
    if calls:
        message["tool_calls"] = calls
    index = candidate.get("index")
    return {"index": index if isinstance(index, int) else position, "message": message,
            "logprobs": None,
            "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls))}


def _blocked_choice() -> dict[str, Any]:
    return {"index": 0, "logprobs": None, "finish_reason": "content_filter",
            "message": {"role": "assistant", "content": None, "refusal": None}}


def answer_id(parsed: Mapping[str, Any]) -> str:
    rid = parsed.get("responseId")
    return f"chatcmpl-{rid}" if isinstance(rid, str) and rid else (
        "chatcmpl-" + os.urandom(12).hex())


def translate_answer(parsed: Mapping[str, Any], model: str) -> ChatResult:
    """A ``generateContent`` answer as an OpenAI chat.completion, with its usage. A
    prompt blocked by safety (``promptFeedback.blockReason``, no candidates) is one
    content-filter choice."""
    usage = gemini_usage(parsed.get("usageMetadata"))
    candidates = [c for c in parsed.get("candidates") or () if isinstance(c, Mapping)]
    choices = [_choice(c, i) for i, c in enumerate(candidates)] or [_blocked_choice()]
    body: dict[str, Any] = {
        "id": answer_id(parsed), "object": "chat.completion", "created": int(time.time()),
        "model": str(parsed.get("modelVersion") or model), "choices": choices}
    if usage is not None:
        body["usage"] = usage.to_openai()
    return ChatResult(body=body, usage=usage, raw=None)


# --- errors ----------------------------------------------------------------------------

def _retry_delay(details: object) -> str | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail ("37s", "1.5s"), rounded up."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                try:
                    return str(math.ceil(float(delay[:-1])))
                except ValueError:
                    return None
    return None


def google_error_fields(body: bytes) -> tuple[str | None, str | None, object]:
    """(message, status such as RESOURCE_EXHAUSTED, details) of a Google error body
    ``{"error": {"code", "message", "status", "details"}}`` (or a list holding one)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return None, None, None
    message = err.get("message") if isinstance(err.get("message"), str) else None
    status = err.get("status") if isinstance(err.get("status"), str) else None
    return message, status, err.get("details")


def google_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Google error answer as an UpstreamError with its status (5xx become 502). A 429
    keeps Retry-After, or takes it from the body's RetryInfo when no header says."""
    message, google_status, details = google_error_fields(body)
    keep: dict[str, str] = {}
    retry_after = headers.get("retry-after") or headers.get("Retry-After")
    if not retry_after and status == 429:
        retry_after = _retry_delay(details)
    if retry_after:
        keep["Retry-After"] = retry_after
    return upstream_error_for(status, message or f"upstream answered {status}",
                              code=google_status, headers=keep)


def _stream_error(err: Mapping[str, Any]) -> UpstreamError:
    code = err.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    google_status = err.get("status") if isinstance(err.get("status"), str) else None
    return UpstreamError(str(err.get("message") or "upstream stream error"),
                         status_code=status if status < 500 else 502, code=google_status)


# --- streams ---------------------------------------------------------------------------

class GeminiStreamDecoder(StreamDecoder):
    """``streamGenerateContent?alt=sse`` chunks to OpenAI chunks, one or more each.

    Gemini sends whole parts per chunk: text pieces, whole function calls (one
    tool-call delta each), a ``finishReason`` on a candidate's last chunk. The stream is
    done when every candidate seen has finished (or the prompt was blocked).
    """

    def __init__(self, include_usage: bool, model: str) -> None:
        super().__init__()
        self._sse = SSEParser()
        self._include_usage = include_usage
        self._model = model
        self._id: str | None = None
        self._created = int(time.time())
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self._tool_calls: dict[int, int] = {}  # candidate index -> tool calls so far

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            if not ev.data or self.done:
                continue
            try:
                chunk = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                out.extend(self._on_chunk(chunk))
        return out

    def _item(self, chunk: dict[str, Any]) -> StreamItem:
        return StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n")

    def _chunk(self, index: int, delta: dict[str, Any],
               finish: str | None = None) -> StreamItem:
        return self._item({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": index, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]})

    def _on_chunk(self, chunk: dict[str, Any]) -> list[StreamItem]:
        err = chunk.get("error")
        if isinstance(err, Mapping):
            raise _stream_error(err)
        if self._id is None:
            self._id = answer_id(chunk)
        if isinstance(chunk.get("modelVersion"), str):
            self._model = chunk["modelVersion"]
        usage = gemini_usage(chunk.get("usageMetadata"))
        if usage is not None:
            self.usage = usage  # cumulative: the latest is the total so far
        out: list[StreamItem] = []
        candidates = [c for c in chunk.get("candidates") or () if isinstance(c, Mapping)]
        for position, candidate in enumerate(candidates):
            out.extend(self._on_candidate(candidate, position))
        feedback = chunk.get("promptFeedback")
        if not candidates and isinstance(feedback, Mapping) and feedback.get("blockReason"):
            if 0 not in self._started:
                self._started.add(0)
                out.append(self._chunk(0, {"role": "assistant", "content": ""}))
            out.append(self._chunk(0, {}, "content_filter"))
            self._finished.add(0)
        if self._started and self._finished >= self._started:
            self.done = True
            if self._include_usage and self.usage is not None:
                out.append(self._item({
                    "id": self._id, "object": "chat.completion.chunk",
                    "created": self._created, "model": self._model, "choices": [],
                    "usage": self.usage.to_openai()}))
        return out

    def _on_candidate(self, candidate: Mapping[str, Any], position: int) -> list[StreamItem]:
        raw_index = candidate.get("index")
        index = raw_index if isinstance(raw_index, int) else position
        out: list[StreamItem] = []
        if index not in self._started:
            self._started.add(index)
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))
        text, thoughts, calls = _read_parts(candidate.get("content"))
        if thoughts:
            out.append(self._chunk(index, {"reasoning_content": thoughts}))
        if text:
            self.output_parts.append(text)
            out.append(self._chunk(index, {"content": text}))
        for call in calls:
            n = self._tool_calls.get(index, 0)
            self._tool_calls[index] = n + 1
            self.output_parts.append(call["function"]["arguments"])
            out.append(self._chunk(index, {"tool_calls": [{"index": n, **call}]}))
        reason = candidate.get("finishReason")
        if reason and index not in self._finished:
            self._finished.add(index)
            out.append(self._chunk(index, {},
                                   finish_reason(reason, self._tool_calls.get(index, 0) > 0)))
        return out


# --- the Gemini API passed through (the Gemini door) -----------------------------------

def read_native_answer(body: bytes) -> ChatResult:
    """A ``generateContent`` answer going back to a Gemini client as it came (``raw``),
    with its usage."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict) or not ("candidates" in parsed
                                            or "promptFeedback" in parsed):
        raise UpstreamError("upstream answered 200 with a body that is not a "
                            "GenerateContentResponse")
    return ChatResult(body=parsed, usage=gemini_usage(parsed.get("usageMetadata")), raw=body)


class GeminiPassThrough(PassThroughDecoder):
    """``streamGenerateContent?alt=sse`` chunks passed through as they came (each JSON
    payload byte for byte, framed as Google frames them), usage read from the last
    ``usageMetadata`` (cumulative). ``array``: the client asked without ``alt=sse``, so
    the same payloads go out as the one JSON array Google answers then. The chunk that
    finishes every candidate is held in ``tail``, to be sent after the bill is written;
    ``closing()`` is what ends the answer."""

    def __init__(self, *, array: bool = False) -> None:
        super().__init__()
        self._sse = SSEParser()
        self._array = array
        self._opened = False  # array form: "[" sent
        self._started: set[int] = set()
        self._finished: set[int] = set()

    def _frame(self, payload: bytes) -> bytes:
        if not self._array:
            return b"data: " + payload + b"\r\n\r\n"
        head = b",\r\n" if self._opened else b"["
        self._opened = True
        return head + payload

    def closing(self) -> bytes:
        if not self._array:
            return self.tail
        return self.tail + (b"]" if self._opened or self.tail else b"[]")

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            if not ev.data:
                continue
            try:
                chunk = orjson.loads(ev.data)
            except orjson.JSONDecodeError:
                chunk = None
            frame = self._frame(ev.data)
            if self.done:  # nothing normally follows the last chunk; keep it all the same
                self.tail += frame
                continue
            if isinstance(chunk, dict):
                self._read(chunk)
            if self.done:
                self.tail = frame
            else:
                out.append(StreamItem(chunk if isinstance(chunk, dict) else {}, frame))
        return out

    def _read(self, chunk: Mapping[str, Any]) -> None:
        usage = gemini_usage(chunk.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, Mapping) and feedback.get("blockReason"):
            self.done = True
            return
        for position, candidate in enumerate(chunk.get("candidates") or ()):
            if not isinstance(candidate, Mapping):
                continue
            index = candidate.get("index")
            index = index if isinstance(index, int) else position
            self._started.add(index)
            text, _, calls = _read_parts(candidate.get("content"))
            self.output_parts.append(text)
            self.output_parts.extend(c["function"]["arguments"] for c in calls)
            if candidate.get("finishReason"):
                self._finished.add(index)
        if self._started and self._started <= self._finished:
            self.done = True


# --- embeddings ------------------------------------------------------------------------

def embeddings_answer(parsed: Mapping[str, Any], model: str) -> ChatResult:
    """An ``embedContent`` / ``batchEmbedContents`` answer as OpenAI's embeddings list.
    Usage when Google reports it (``usageMetadata``); else None, and the engine
    estimates it from the input."""
    single = parsed.get("embedding")
    many = parsed.get("embeddings")
    vectors = [single] if isinstance(single, Mapping) else many if isinstance(many, list) else []
    data = [{"object": "embedding", "index": i,
             "embedding": list(v.get("values") or []) if isinstance(v, Mapping) else []}
            for i, v in enumerate(vectors)]
    meta = parsed.get("usageMetadata")
    tokens = _count(meta.get("promptTokenCount")) if isinstance(meta, Mapping) else None
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if tokens is not None:
        body["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    usage = Usage(input_tokens=tokens) if tokens is not None else None
    return ChatResult(body=body, usage=usage, raw=None)
