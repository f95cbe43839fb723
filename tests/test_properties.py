"""Issue 13, the property proof: whatever a caller sends and whatever an upstream
answers, through both doors and to both kinds of upstream:

- no 5xx caused by the request, and no traceback in any answer;
- no billed failure and no unbilled success (a 200 is billed once; an error is not);
- no reservation left behind;
- no credential in any answer or log line.

Bodies and answers are drawn by hypothesis around the APIs' shapes (valid ones with
fields replaced by arbitrary JSON, arbitrary JSON, noise); bounded to a few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.malformed import RawAnswer
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import MASTER_KEY, UPSTREAM_KEY, anthropic_entry, openai_entry, run_proxy
from tests.upstream_checks import (  # noqa: F401  (the fakes fixture)
    Gate,
    fakes_fixture,
    gate_config,
    make_gate,
)

BOUNDED = settings(max_examples=40, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.function_scoped_fixture])

JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module", name="env")
def env_fixture(tmp_path_factory: pytest.TempPathFactory,
                fakes: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[tuple[Gate, _Collect]]:
    gpt, claude = fakes
    logs = _Collect()
    root = logging.getLogger()
    root.addHandler(logs)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        settings_ = gate_config(tmp_path_factory.mktemp("props"), [
            openai_entry("openai", gpt.base_url), anthropic_entry("anthropic", claude.base_url)])
        with run_proxy(settings_) as proxy:
            yield make_gate(proxy), logs
    finally:
        root.removeHandler(logs)
        root.setLevel(level)
    text = "\n".join(logs.lines)
    for secret in (MASTER_KEY, UPSTREAM_KEY):
        assert secret not in text
    at = text.find("Traceback")
    assert at < 0, text[max(0, at - 300):at + 3000]


def _no_secret(gate: Gate, text: str) -> None:
    for secret in (MASTER_KEY, UPSTREAM_KEY, gate.key):
        assert secret not in text


def _check(gate: Gate, door: str, reply: Any, *, upstream_ok: bool) -> None:
    """The invariants of one call."""
    assert "Traceback" not in reply.text
    _no_secret(gate, reply.text)
    call_id = reply.headers.get("x-tallygate-call-id")
    rows = gate.billed_rows(call_id) if call_id else []
    assert gate.reserved() == 0, "a reservation was left behind"
    if upstream_ok:
        assert reply.status < 500, reply.text  # nothing the caller sends is a 5xx
    else:
        assert reply.status in (200, 502), reply.text
    if reply.status != 200:
        assert rows == [], (reply.status, rows)  # no billed failure
        body = reply.json()
        assert (set(body) == {"error"}) if door == "chat" else (body["type"] == "error")
        return
    if "text/event-stream" not in reply.headers.get("content-type", ""):
        assert len(rows) == 1, reply.text  # no unbilled success
        return
    ended_well = ("data: [DONE]" in reply.text if door == "chat"
                  else "event: message_stop" in reply.text)
    if ended_well:
        assert len(rows) == 1 and "incomplete" not in rows[0]["flags"], rows
    elif rows:  # broken off: billed for what was sent, flagged
        assert len(rows) == 1 and "incomplete" in rows[0]["flags"], rows
    else:  # nothing billed: then nothing was sent
        assert not _streamed_content(door, reply.text), reply.text


def _streamed_content(door: str, text: str) -> bool:
    """Whether the client was sent any text (or tool arguments) in the stream."""
    for line in text.split("\n"):
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        try:
            data = orjson.loads(line[6:])
        except orjson.JSONDecodeError:
            continue  # noise an upstream sent, passed on: no content
        if not isinstance(data, dict):
            continue
        if door == "messages" and data.get("type") == "content_block_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and any(isinstance(delta.get(k), str) and delta[k]
                                               for k in ("text", "partial_json", "thinking")):
                return True
        choices = data.get("choices") if door == "chat" else None
        for choice in choices if isinstance(choices, list) else ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("content"), str) and delta["content"]:
                return True
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str) \
                        and fn["arguments"]:
                    return True
    return False


# --- request bodies ---------------------------------------------------------------------

CHAT_BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
             "user": "u", "stream": False}
MESSAGES_BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
                 "stream": False}
CHAT_FIELDS = ["messages", "max_tokens", "n", "tools", "tool_choice", "temperature", "stop",
               "stream", "stream_options", "user", "metadata", "response_format",
               "logit_bias", "service_tier", "prediction", "seed", "modalities", "top_p"]
MESSAGES_FIELDS = ["messages", "max_tokens", "system", "tools", "tool_choice", "temperature",
                   "top_k", "top_p", "stop_sequences", "stream", "metadata", "thinking"]
MESSAGE_SHAPES = st.fixed_dictionaries({"role": st.sampled_from(
    ["user", "assistant", "system", "tool", "developer", "x"]) | JSON}, optional={
    "content": JSON | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "image", "tool_use", "tool_result",
                                  "input_audio", "file"])},
        optional={"text": JSON, "image_url": JSON, "source": JSON, "input": JSON,
                  "id": JSON, "name": JSON, "tool_use_id": JSON, "content": JSON}),
        max_size=3),
    "tool_calls": JSON | st.lists(st.fixed_dictionaries(
        {"id": JSON, "type": st.just("function"), "function": JSON}), max_size=2),
    "tool_call_id": JSON, "name": JSON})


def _bodies(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    mutated = st.builds(lambda changes, messages: {**base, **changes, **messages},
                        st.dictionaries(st.sampled_from(fields), JSON, max_size=3),
                        st.one_of(st.just({}), st.builds(lambda m: {"messages": m},
                                                         st.lists(MESSAGE_SHAPES,
                                                                  min_size=1, max_size=3))))
    return mutated | st.dictionaries(st.sampled_from(fields), JSON, max_size=5)


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
@pytest.mark.parametrize("door", ["chat", "messages"])
def test_no_request_breaks_billing(env: tuple[Gate, _Collect], door: str,
                                   upstream: str) -> None:
    gate, _ = env
    base, fields = (CHAT_BASE, CHAT_FIELDS) if door == "chat" else (MESSAGES_BASE,
                                                                     MESSAGES_FIELDS)

    @BOUNDED
    @given(body=_bodies(base, fields))
    def run(body: dict[str, Any]) -> None:
        reply = gate.post(door, {**body, "model": upstream})
        _check(gate, door, reply, upstream_ok=True)

    run()


# --- upstream answers ---------------------------------------------------------------------

def _openai_chunk(content: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


OPENAI_USAGE = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
OPENAI_FRAME = st.one_of(
    st.builds(_openai_chunk, st.text(max_size=6)),
    st.builds(_openai_chunk, JSON),
    st.builds(lambda v: {**_openai_chunk("x"), "choices": v}, JSON),
    st.builds(lambda v: {**OPENAI_USAGE, "usage": v}, JSON),
    st.just(OPENAI_USAGE), JSON,
).map(lambda v: b"data: " + orjson.dumps(v) + b"\n\n") | st.sampled_from(
    [b"data: not json\n\n", b": ping\n\n", b"data: {\"cut\n\n", b"\n", b"event: x\n"])


def _anthropic_event(kind: str, extra: Any) -> bytes:
    event = {"type": kind, **(extra if isinstance(extra, dict) else {"x": extra})}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


ANTHROPIC_START = _anthropic_event("message_start", {"message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
    "usage": {"input_tokens": 9, "output_tokens": 1}}})
ANTHROPIC_FRAME = st.one_of(
    st.builds(lambda t: _anthropic_event("content_block_delta", {
        "index": 0, "delta": {"type": "text_delta", "text": t}}), st.text(max_size=6)),
    st.builds(lambda d: _anthropic_event("content_block_delta", {"index": 0, "delta": d}),
              JSON),
    st.builds(lambda b: _anthropic_event("content_block_start",
                                         {"index": 0, "content_block": b}), JSON),
    st.builds(lambda u: _anthropic_event("message_delta", {
        "delta": {"stop_reason": "end_turn"}, "usage": u}), JSON),
    st.builds(lambda k, v: _anthropic_event(k, v), st.sampled_from(
        ["message_start", "ping", "content_block_stop", "error", "future"]), JSON),
    st.sampled_from([b"data: not json\n\n", b": c\n\n", b"event: x\ndata: [1]\n\n"]),
)


def _stream_answer(frames: list[bytes], start: bytes, end: bytes, ends: bool) -> RawAnswer:
    return RawAnswer([start, *frames, *([end] if ends else [])])


BODY_ANSWER = st.one_of(
    st.builds(lambda v: RawAnswer(orjson.dumps(v), content_type="application/json"), JSON),
    st.builds(lambda c: RawAnswer(orjson.dumps({
        "id": "x", "object": "chat.completion", "model": "m", "choices": c,
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
        "type": "message", "role": "assistant", "content": c}),
        content_type="application/json"), JSON),
    st.builds(lambda t: RawAnswer(t.encode(), content_type="text/html"), st.text(max_size=20)),
)


@pytest.mark.parametrize("upstream", ["openai", "anthropic"])
@pytest.mark.parametrize("door", ["chat", "messages"])
def test_no_upstream_answer_breaks_billing(env: tuple[Gate, _Collect],
                                           fakes: tuple[FakeOpenAI, FakeAnthropic],
                                           door: str, upstream: str) -> None:
    gate, _ = env
    fake = fakes[0] if upstream == "openai" else fakes[1]
    if upstream == "openai":
        stream_answer = st.builds(_stream_answer, st.lists(OPENAI_FRAME, max_size=6),
                                  st.just(b"data: " + orjson.dumps(_openai_chunk("")) + b"\n\n"),
                                  st.just(b"data: [DONE]\n\n"), st.booleans())
    else:
        stream_answer = st.builds(_stream_answer, st.lists(ANTHROPIC_FRAME, max_size=6),
                                  st.just(ANTHROPIC_START),
                                  st.just(_anthropic_event("message_stop", {})),
                                  st.booleans())

    @BOUNDED
    @given(stream=st.booleans(), data=st.data())
    def run(stream: bool, data: st.DataObject) -> None:
        fake.raw_answers[:] = [data.draw(stream_answer if stream else BODY_ANSWER)]
        body: dict[str, Any] = {"model": upstream, "max_tokens": 20, "stream": stream,
                                "messages": [{"role": "user", "content": "hi"}]}
        reply = gate.post(door, body)
        _check(gate, door, reply, upstream_ok=False)

    try:
        run()
    finally:
        fake.raw_answers.clear()
