"""Callbacks as users write them: the jsonl sink, callables, CustomLogger subclasses,
per-call ``callbacks=[...]``, callbacks that raise, and failed calls, which bill nothing
and reach the failure callbacks with the right tallygate error."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tallygate import CustomLogger, FailureEvent, UsageEvent
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.sdk_fixtures import MESSAGES, SdkPaths, anthropic_kwargs, openai_kwargs

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks


class Recorder(CustomLogger):
    def __init__(self) -> None:
        self.ok: list[UsageEvent] = []
        self.failed: list[FailureEvent] = []

    def log_success_event(self, event: UsageEvent) -> None:
        self.ok.append(event)

    def log_failure_event(self, event: FailureEvent) -> None:
        self.failed.append(event)


class AsyncRecorder(CustomLogger):
    def __init__(self) -> None:
        self.ok: list[UsageEvent] = []

    async def async_log_success_event(self, event: UsageEvent) -> None:
        self.ok.append(event)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_jsonl_writes_one_line_per_call(sdk: SdkPaths, openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["jsonl"]
    calls = [tallygate.completion(model="gpt-4o-mini", user="customer-42",
                                  **openai_kwargs(openai_fake)) for _ in range(3)]
    stream = tallygate.completion(model="gpt-4o-mini", user="customer-42", stream=True,
                                  **openai_kwargs(openai_fake))
    list(stream)
    tallygate.flush()
    lines = [json.loads(line) for line in sdk.jsonl.read_text().splitlines()]
    assert [x["call_id"] for x in lines] == [c.call_id for c in calls] + [stream.call_id]
    first = lines[0]
    assert first["customer"] == "customer-42"
    assert Decimal(first["cost"]) == calls[0].cost
    assert first["usage"]["input_tokens"] == 12 and first["usage"]["output_tokens"] == 7
    assert UsageEvent.from_dict(first) == calls[0].usage_event


def test_callables_and_loggers_receive_the_frozen_event(
        sdk: SdkPaths, openai_fake: FakeOpenAI) -> None:
    plain: list[Any] = []
    rec, arec = Recorder(), AsyncRecorder()

    async def async_fn(event: UsageEvent) -> None:
        plain.append(("async", event))

    tallygate.success_callback = [lambda e: plain.append(("sync", e)), async_fn, rec, arec]
    r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    assert [kind for kind, _ in plain] == ["sync", "async"]
    for _, event in plain:
        assert event is r.usage_event
    assert rec.ok == [r.usage_event] and arec.ok == [r.usage_event]
    event = rec.ok[0]
    assert isinstance(event, UsageEvent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.cost = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.metadata["x"] = 1  # type: ignore[index]
    assert rec.failed == []


def test_callbacks_hear_successes_and_failures(sdk: SdkPaths,
                                              openai_fake: FakeOpenAI) -> None:
    rec = Recorder()
    tallygate.callbacks = [rec]
    tallygate.completion(model="gpt-4o-mini", user="c", **openai_kwargs(openai_fake))
    openai_fake.fail(500)
    with pytest.raises(tallygate.UpstreamError):
        tallygate.completion(model="gpt-4o-mini", user="c", **openai_kwargs(openai_fake))
    assert len(rec.ok) == 1 and len(rec.failed) == 1


def test_per_call_callbacks_add_to_the_module_ones(sdk: SdkPaths,
                                                   openai_fake: FakeOpenAI) -> None:
    module_seen: list[UsageEvent] = []
    call_seen: list[UsageEvent] = []
    tallygate.success_callback = [module_seen.append]
    a = tallygate.completion(model="gpt-4o-mini", user="c", callbacks=[call_seen.append],
                             **openai_kwargs(openai_fake))
    b = tallygate.completion(model="gpt-4o-mini", user="c", **openai_kwargs(openai_fake))
    assert [e.call_id for e in module_seen] == [a.call_id, b.call_id]
    assert [e.call_id for e in call_seen] == [a.call_id]  # only for its own call
    c = tallygate.completion(model="gpt-4o-mini", user="c", callbacks=["jsonl"],
                             **openai_kwargs(openai_fake))
    tallygate.flush()
    assert [json.loads(x)["call_id"] for x in sdk.jsonl.read_text().splitlines()] == [
        c.call_id]


async def test_per_call_callbacks_in_acompletion(sdk: SdkPaths, openai_fake: FakeOpenAI,
                                                 loop_session: None) -> None:
    seen: list[UsageEvent] = []
    r = await tallygate.acompletion(model="gpt-4o-mini", user="c",
                                    callbacks=[seen.append, "jsonl"],
                                    **openai_kwargs(openai_fake))
    assert [e.call_id for e in seen] == [r.call_id]
    tallygate.flush()
    assert json.loads(sdk.jsonl.read_text())["call_id"] == r.call_id


def test_a_raising_callback_never_breaks_the_call(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
        caplog: pytest.LogCaptureFixture) -> None:
    after: list[UsageEvent] = []

    def broken(event: UsageEvent) -> None:
        raise ValueError("callback bug")

    class BrokenLogger(CustomLogger):
        async def async_log_success_event(self, event: UsageEvent) -> None:
            raise RuntimeError("logger bug")

    tallygate.success_callback = ["lago", broken, BrokenLogger(), after.append]
    with caplog.at_level(logging.ERROR, logger="tallygate"):
        r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                                 **openai_kwargs(openai_fake))
        stream = tallygate.completion(model="gpt-4o-mini", user="customer-42", stream=True,
                                      **openai_kwargs(openai_fake))
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert r.choices[0].message.content
    assert [e.call_id for e in after] == [r.call_id, stream.call_id]  # the next still ran
    failures = [rec for rec in caplog.records if rec.name == "tallygate.callbacks"]
    assert len(failures) == 4
    for call_id in (r.call_id, stream.call_id):
        assert sum(call_id in rec.getMessage() for rec in failures) == 2
    assert any(rec.exc_info and isinstance(rec.exc_info[1], ValueError) for rec in failures)
    tallygate.flush()
    assert lago.count(r.call_id) == 1 and lago.count(stream.call_id) == 1


@pytest.mark.parametrize(("status", "error"), [
    (400, tallygate.UpstreamError),
    (401, tallygate.UpstreamError),
    (429, tallygate.UpstreamError),
    (500, tallygate.UpstreamError),
])
def test_upstream_errors_raise_bill_nothing_and_reach_failure_callbacks(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, status: int,
        error: type[Exception]) -> None:
    failed: list[FailureEvent] = []
    ok: list[UsageEvent] = []
    tallygate.success_callback = ["lago", "jsonl", ok.append]
    tallygate.failure_callback = [failed.append]
    openai_fake.fail(status, "nope")
    with pytest.raises(error) as info:
        tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    exc = info.value
    assert isinstance(exc, tallygate.TallygateError)
    assert exc.status_code == (status if status < 500 else 502)
    if status == 401:  # the provider's words about a key are never repeated (they quote it)
        assert "refused the gateway's credentials" in exc.message
    else:
        assert exc.message == "nope"
    assert ok == []
    assert len(failed) == 1
    f = failed[0]
    assert f.status_code == exc.status_code and f.customer == "customer-42"
    assert f.model == "gpt-4o-mini" and f.provider == "openai"
    # A streaming call fails the same way, before any chunk.
    openai_fake.fail(status, "nope")
    with pytest.raises(error):
        tallygate.completion(model="gpt-4o-mini", user="customer-42", stream=True,
                             **openai_kwargs(openai_fake))
    assert len(failed) == 2 and ok == []
    tallygate.flush()
    assert lago.events == {}
    assert not sdk.jsonl.exists() or sdk.jsonl.read_text() == ""


def test_anthropic_errors_keep_their_status(sdk: SdkPaths,
                                           anthropic_fake: FakeAnthropic) -> None:
    failed: list[FailureEvent] = []
    tallygate.failure_callback = [failed.append]
    anthropic_fake.fail(429, "slow down")
    with pytest.raises(tallygate.UpstreamError) as info:
        tallygate.completion(model="anthropic/claude-sonnet-4-5", user="c",
                             **anthropic_kwargs(anthropic_fake))
    assert info.value.status_code == 429 and info.value.message == "slow down"
    assert failed[0].provider == "anthropic"


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_connection_raises_and_bills_nothing(sdk: SdkPaths, stream: bool) -> None:
    failed: list[FailureEvent] = []
    ok: list[UsageEvent] = []
    either: list[Any] = []
    tallygate.callbacks = ["jsonl", either.append]
    tallygate.success_callback = [ok.append]
    tallygate.failure_callback = [failed.append]
    with pytest.raises(tallygate.UpstreamConnectionError):
        tallygate.completion(model="gpt-4o-mini", messages=MESSAGES, user="c",
                             stream=stream, api_base=f"http://127.0.0.1:{free_port()}/v1",
                             api_key="sk-test")
    assert ok == []
    # callbacks and failure_callback both hear failures: once each.
    assert len(failed) == 1 and failed[0].status_code == 502
    assert either == failed
    tallygate.flush()
    assert not sdk.jsonl.exists()


def test_bad_arguments_raise_bad_request(sdk: SdkPaths) -> None:
    with pytest.raises(tallygate.BadRequestError):
        tallygate.completion(model="gpt-4o-mini", messages=[])
    with pytest.raises(tallygate.BadRequestError):
        tallygate.completion(model="", messages=MESSAGES)
