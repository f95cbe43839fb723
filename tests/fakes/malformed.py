"""Malformed answers for the provider stand-ins: each mode one way a broken upstream
answers a request (issue 13, classes 3 to 5).

    fake.malformed = "content_list"      # FakeOpenAI / FakeAnthropic, until set to None
    fake.raw_answers.append(RawAnswer([b"data: ...\\n\\n"]))   # one answer, verbatim

A mode rewrites the fake's normal answer for the request (its frames for a stream, its
body otherwise), so that everything but the defect is as the provider sends it. The
official SDKs, talking to a fake in these modes, fail or read garbage (tests/test_fakes.py),
which is what makes them malformed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1>nginx</body></html>"
BAD_USAGE_OPENAI = {"prompt_tokens": "12", "completion_tokens": -5, "total_tokens": None}
BAD_USAGE_ANTHROPIC = {"input_tokens": "12", "output_tokens": -5}


@dataclass
class RawAnswer:
    """An answer sent as it is: a body, or SSE frames written one by one."""

    body: bytes | list[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


def _data(payload: Any) -> bytes:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + raw + b"\n\n"


def _payloads(frames: list[bytes]) -> list[Any]:
    """The JSON of OpenAI ``data:`` frames (``[DONE]`` as the string)."""
    out: list[Any] = []
    for frame in frames:
        raw = frame.removeprefix(b"data: ").strip()
        out.append("[DONE]" if raw == b"[DONE]" else orjson.loads(raw))
    return out


def _openai_frames(frames: list[bytes], change: Callable[[list[Any]], list[Any]]) -> RawAnswer:
    payloads = change(_payloads(frames))
    return RawAnswer([_data(b"[DONE]" if p == "[DONE]" else p) for p in payloads])


def _insert_after_first(payloads: list[Any], bad: Any) -> list[Any]:
    return [payloads[0], bad, *payloads[1:]]


# --- OpenAI chat completions ------------------------------------------------------------

def _stream_modes() -> dict[str, Callable[[list[Any]], list[Any]]]:
    def chunk(**fields: Any) -> dict[str, Any]:
        return {"id": "chatcmpl-bad", "object": "chat.completion.chunk", "created": 0,
                "model": "gpt-4o-mini", **fields}

    def usage(payloads: list[Any], bad: Any) -> list[Any]:
        out = []
        for p in payloads:
            if isinstance(p, dict) and p.get("usage"):
                p = {**p, "usage": bad}
            out.append(p)
        return out

    return {
        "choices_strings": lambda p: _insert_after_first(p, chunk(choices=["x"])),
        "content_list": lambda p: _insert_after_first(p, chunk(choices=[
            {"index": 0, "delta": {"content": ["a"]}, "finish_reason": None}])),
        "delta_string": lambda p: _insert_after_first(p, chunk(choices=[
            {"index": 0, "delta": "x", "finish_reason": None}])),
        "tool_calls_string": lambda p: _insert_after_first(p, chunk(choices=[
            {"index": 0, "delta": {"tool_calls": "x"}, "finish_reason": None}])),
        "chunk_array": lambda p: _insert_after_first(p, [1, 2]),
        "non_json_line": lambda p: _insert_after_first(p, b"this is not json"),
        "broken_json": lambda p: _insert_after_first(p, b'{"id": "chatcmpl-bad", "cho'),
        "no_done": lambda p: [x for x in p if x != "[DONE]"],
        "no_done_no_usage": lambda p: [x for x in p if x != "[DONE]"
                                       and not (isinstance(x, dict) and x.get("usage"))],
        "usage_strings": lambda p: usage(p, BAD_USAGE_OPENAI),
        "usage_missing": lambda p: [x for x in p if not (isinstance(x, dict)
                                                         and x.get("usage"))],
    }


OPENAI_STREAM_MODES = _stream_modes()


def _openai_body_modes() -> dict[str, Callable[[dict[str, Any]], dict[str, Any] | bytes]]:
    return {
        "message_string": lambda b: {**b, "choices": [{**b["choices"][0], "message": "hi"}]},
        "choices_strings": lambda b: {**b, "choices": ["x"]},
        "choices_missing": lambda b: {k: v for k, v in b.items() if k != "choices"},
        "content_number": lambda b: {**b, "choices": [{**b["choices"][0], "message": {
            "role": "assistant", "content": 5}}]},
        "body_array": lambda b: orjson.dumps([b]),
        "usage_strings": lambda b: {**b, "usage": BAD_USAGE_OPENAI},
        "usage_missing": lambda b: {k: v for k, v in b.items() if k != "usage"},
        "usage_negative": lambda b: {**b, "usage": {"prompt_tokens": -1,
                                                    "completion_tokens": 3}},
    }


OPENAI_BODY_MODES = _openai_body_modes()
# A stream request answered with something else than an event stream.
NOT_A_STREAM = ("html", "plain_json", "error_json_200")


def openai_chat(mode: str, stream: bool, frames: list[bytes], body: dict[str, Any]) -> RawAnswer:
    """The fake OpenAI's normal answer (``frames`` or ``body``) broken as ``mode`` says."""
    if mode == "html":
        return RawAnswer(HTML, content_type="text/html")
    if mode == "plain_json":
        return RawAnswer(orjson.dumps(body), content_type="application/json")
    if mode == "error_json_200":
        return RawAnswer(orjson.dumps({"error": {"message": "overloaded", "type": "server_error",
                                                 "code": None, "param": None}}),
                         content_type="application/json")
    if stream:
        return _openai_frames(frames, OPENAI_STREAM_MODES[mode])
    changed = OPENAI_BODY_MODES[mode](body)
    raw = changed if isinstance(changed, bytes) else orjson.dumps(changed)
    return RawAnswer(raw, content_type="application/json")


def openai_embedding(mode: str, body: dict[str, Any]) -> RawAnswer:
    if mode == "usage_missing":
        body = {k: v for k, v in body.items() if k != "usage"}
    elif mode == "usage_strings":
        body = {**body, "usage": {"prompt_tokens": "12", "total_tokens": -3}}
    elif mode == "data_missing":
        body = {k: v for k, v in body.items() if k != "data"}
    else:
        raise KeyError(mode)
    return RawAnswer(orjson.dumps(body), content_type="application/json")


# --- Anthropic messages ------------------------------------------------------------------

def _event(data: Any) -> bytes:
    kind = data.get("type", "x") if isinstance(data, dict) else "x"
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"event: " + str(kind).encode() + b"\ndata: " + raw + b"\n\n"


def _anthropic_events(frames: list[bytes]) -> list[Any]:
    return [orjson.loads(f.split(b"\ndata: ", 1)[1]) for f in frames]


def _anthropic_stream_modes() -> dict[str, Callable[[list[Any]], list[Any]]]:
    def usage(events: list[Any]) -> list[Any]:
        out = []
        for e in events:
            if e.get("type") == "message_delta":
                e = {**e, "usage": BAD_USAGE_ANTHROPIC}
            elif e.get("type") == "message_start":
                e = {**e, "message": {**e["message"], "usage": BAD_USAGE_ANTHROPIC}}
            out.append(e)
        return out

    def after_start(bad: Any) -> Callable[[list[Any]], list[Any]]:
        return lambda events: [events[0], events[1], bad, *events[2:]]

    return {
        "non_json_line": after_start(b"this is not json"),
        "broken_json": after_start(b'{"type": "content_block_delta", "ind'),
        "delta_string": after_start({"type": "content_block_delta", "index": 0,
                                     "delta": "x"}),
        "text_list": after_start({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": ["a"]}}),
        "block_string": after_start({"type": "content_block_start", "index": 5,
                                     "content_block": "x"}),
        "index_string": after_start({"type": "content_block_delta", "index": "zero",
                                     "delta": {"type": "input_json_delta",
                                               "partial_json": "{}"}}),
        "event_array": after_start([1, 2]),
        "no_message_stop": lambda events: [e for e in events if e.get("type") != "message_stop"],
        "usage_strings": usage,
    }


ANTHROPIC_STREAM_MODES = _anthropic_stream_modes()

ANTHROPIC_BODY_MODES: dict[str, Callable[[dict[str, Any]], dict[str, Any] | bytes]] = {
    "content_string": lambda b: {**b, "content": "hi"},
    "blocks_strings": lambda b: {**b, "content": ["x"]},
    "text_not_string": lambda b: {**b, "content": [{"type": "text", "text": 5}]},
    "tool_input_string": lambda b: {**b, "content": [{"type": "tool_use", "id": "t",
                                                      "name": "f", "input": "x"}]},
    "body_array": lambda b: orjson.dumps([b]),
    "usage_strings": lambda b: {**b, "usage": BAD_USAGE_ANTHROPIC},
    "usage_missing": lambda b: {k: v for k, v in b.items() if k != "usage"},
}


def anthropic_messages(mode: str, stream: bool, frames: list[bytes],
                       body: dict[str, Any]) -> RawAnswer:
    if mode == "html":
        return RawAnswer(HTML, content_type="text/html")
    if mode == "plain_json":
        return RawAnswer(orjson.dumps(body), content_type="application/json")
    if stream:
        events = ANTHROPIC_STREAM_MODES[mode](_anthropic_events(frames))
        return RawAnswer([e if isinstance(e, bytes) and e.startswith(b"event:")
                          else _event(e) for e in events])
    changed = ANTHROPIC_BODY_MODES[mode](body)
    raw = changed if isinstance(changed, bytes) else orjson.dumps(changed)
    return RawAnswer(raw, content_type="application/json")
