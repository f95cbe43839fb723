"""LagoSink against the Lago stand-in, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest

from tallygate.errors import ConfigError
from tallygate.event import FLAG_STREAM, FLAG_UNKNOWN_PRICE, UsageEvent
from tallygate.sinks.base import Sink
from tallygate.sinks.lago import LagoSettings, LagoSink, lago_event_body
from tallygate.usage import Usage
from tests.fakes.lago_server import TEST_API_KEY, FakeLago

CODE = "llm_usage"
BATCH = "/api/v1/events/batch"
SINGLE = "/api/v1/events"


def make_event(n: int = 0, *, customer: str | None = "cus_1",
               cost: Decimal | None = Decimal("0.000123450"), **over: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "call_id": f"tg-{n:04d}", "started_at_ms": 1714564799000 + n,
        "finished_at_ms": 1714564800123 + n, "model": "gpt-4o-mini", "provider": "openai",
        "provider_model": "gpt-4o-mini-2024-07-18",
        "usage": Usage(input_tokens=70, cache_read_tokens=20, cache_write_tokens=10,
                       output_tokens=50, reasoning_tokens=5),
        "cost": cost, "customer": customer}
    fields.update(over)
    return UsageEvent(**fields)


def settings(lago_url: str, **over: Any) -> LagoSettings:
    values: dict[str, Any] = {"api_base": lago_url, "api_key": TEST_API_KEY,
                              "event_code": CODE, "timeout_s": 2.0}
    values.update(over)
    return LagoSettings(**values)


@pytest.fixture
def lago() -> Iterator[FakeLago]:
    with FakeLago() as server:
        yield server


@pytest.fixture
async def sink(lago: FakeLago) -> AsyncIterator[LagoSink]:
    s = LagoSink(settings(lago.url))
    yield s
    await s.aclose()


def ids(events: list[UsageEvent]) -> list[str]:
    return [e.call_id for e in events]


# --- mapping -----------------------------------------------------------------------


def test_event_body_maps_every_field() -> None:
    ev = make_event(7, end_user="alice", user_id="u1", team_id="t1", key_id="k1",
                    price_source="genai-prices", flags=frozenset({FLAG_STREAM}))
    body = lago_event_body(ev, CODE, send_amount=True)
    assert body == {
        "transaction_id": "tg-0007",
        "external_subscription_id": "cus_1",
        "external_customer_id": "cus_1",
        "code": CODE,
        "timestamp": "1714564800.130",
        "precise_total_amount_cents": "0.012345",
        "properties": {
            # model as LiteLLM's integration sends it: the deployment's model.
            "model": "gpt-4o-mini-2024-07-18", "model_group": "gpt-4o-mini",
            "provider": "openai", "provider_model": "gpt-4o-mini-2024-07-18", "kind": "chat",
            "input_tokens": 100, "output_tokens": 50,
            "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
            "uncached_input_tokens": 70, "cached_input_tokens": 20,
            "cache_creation_input_tokens": 10, "reasoning_tokens": 5,
            "usage_source": "provider", "unknown_price": "false", "latency_ms": 1123,
            "response_cost": "0.00012345", "price_source": "genai-prices",
            "end_user": "alice", "user_id": "u1", "team_id": "t1", "key_id": "k1",
            "flags": "stream",
        },
    }
    props = body["properties"]
    assert props["uncached_input_tokens"] + props["cached_input_tokens"] + \
        props["cache_creation_input_tokens"] == props["input_tokens"]
    assert all(type(v) in (str, int) for v in props.values())
    grouped = lago_event_body(ev, CODE, model_property="group")["properties"]
    assert (grouped["model"], grouped["model_group"]) == ("gpt-4o-mini", "gpt-4o-mini")


def test_model_property_setting_is_read_from_the_environment() -> None:
    env = {"LAGO_API_BASE": "http://127.0.0.1:1", "LAGO_API_KEY": "k",
           "LAGO_API_EVENT_CODE": CODE}
    assert LagoSettings.from_env(env).model_property == "deployment"
    assert LagoSettings.from_env({**env, "TALLYGATE_LAGO_MODEL": "group"}).model_property == \
        "group"
    with pytest.raises(ConfigError, match="TALLYGATE_LAGO_MODEL"):
        LagoSettings.from_env({**env, "TALLYGATE_LAGO_MODEL": "both"})


@pytest.mark.parametrize(("cost", "digits"), [
    (Decimal("0.000123450"), "0.00012345"),
    (Decimal("1E-9"), "0.000000001"),
    (Decimal("12.5"), "12.5"),
    (Decimal("0"), "0"),
])
def test_response_cost_keeps_the_decimal_digits(cost: Decimal, digits: str) -> None:
    assert lago_event_body(make_event(cost=cost), CODE)["properties"]["response_cost"] == digits


async def test_sent_events_are_schema_valid_and_stored_as_mapped(
        lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(0), make_event(1, cost=None, flags=frozenset({FLAG_UNKNOWN_PRICE}))]
    result = await sink.send(events)
    assert result.delivered == ids(events) and not result.retry and not result.dead
    assert lago.schema_violations == []
    stored = lago.events["tg-0000"]
    expect = lago_event_body(events[0], CODE)
    del expect["external_customer_id"]  # Lago drops it
    assert stored.sent == expect
    assert stored.external_subscription_id == "cus_1"
    assert stored.as_json()["timestamp"] == "2024-05-01T12:00:00.123Z"
    unpriced = lago.events["tg-0001"].properties
    assert unpriced["unknown_price"] == "true" and "response_cost" not in unpriced
    assert lago.events["tg-0001"].precise_total_amount_cents is None
    # The amount in cents is opt-in (TALLYGATE_LAGO_SEND_AMOUNT): not sent by default.
    assert lago.events["tg-0000"].precise_total_amount_cents is None
    request = lago.requests_to(BATCH)[0]
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {TEST_API_KEY}"


# --- batch semantics ---------------------------------------------------------------


async def test_batches_follow_batch_size(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url, batch_size=100))
    try:
        events = [make_event(i) for i in range(250)]
        result = await sink.send(events)
    finally:
        await sink.aclose()
    assert sorted(result.delivered) == sorted(ids(events))
    assert [len(r.body["events"]) for r in lago.requests_to(BATCH)] == [100, 100, 50]
    assert sink.max_batch == 100


async def test_duplicates_only_are_delivered_and_the_rest_resent(
        lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(i) for i in range(5)]
    await sink.send([events[1], events[3]])
    result = await sink.send(events)
    assert sorted(result.delivered) == ids(events)
    assert not result.retry and not result.dead and result.error is None
    assert all(lago.count(e.call_id) == 1 for e in events)
    second = lago.requests_to(BATCH)[1:]
    assert [len(r.body["events"]) for r in second] == [5, 3]  # 422, then the remainder


async def test_one_invalid_event_among_100_is_dead_and_99_delivered(
        lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(i) for i in range(100)]
    lago.reject("tg-0037", detail={"timestamp": ["invalid_format"]})
    result = await sink.send(events)
    assert list(result.dead) == ["tg-0037"]
    assert "invalid_format" in result.dead["tg-0037"]
    assert len(result.delivered) == 99 and "tg-0037" not in result.delivered
    assert not result.retry
    assert len(lago.stored) == 99


async def test_invalid_and_duplicate_together_settle_in_rounds(
        lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(i) for i in range(6)]
    await sink.send([events[0], events[4]])
    lago.reject("tg-0002")  # its metric expression fails
    result = await sink.send(events)
    assert result.dead == {
        "tg-0002": 'lago rejected the event: "expression_evaluation_failed: Variable: b not '
                   'found"'}
    assert sorted(result.delivered) == ["tg-0000", "tg-0001", "tg-0003", "tg-0004", "tg-0005"]
    assert [len(r.body["events"]) for r in lago.requests_to(BATCH)[1:]] == [6, 5, 3]
    assert all(lago.count(e.call_id) == 1 for e in events if e.call_id != "tg-0002")


async def test_lower_server_batch_limit_splits_the_batch() -> None:
    with FakeLago(max_batch=10) as lago:
        sink = LagoSink(settings(lago.url))
        try:
            result = await sink.send([make_event(i) for i in range(25)])
        finally:
            await sink.aclose()
        assert len(result.delivered) == 25 and not result.retry
        assert len(lago.stored) == 25


async def test_event_without_customer_is_dead_without_a_request(
        lago: FakeLago, sink: LagoSink) -> None:
    result = await sink.send([make_event(0, customer=None), make_event(1)])
    assert list(result.dead) == ["tg-0000"] and "no customer" in result.dead["tg-0000"]
    assert result.delivered == ["tg-0001"]


# --- failures ----------------------------------------------------------------------


async def test_500_means_retry_and_the_resend_is_identical(
        lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(i) for i in range(3)]
    lago.fail_with(500, times=1)
    result = await sink.send(events)
    assert result.retry == ids(events) and not result.delivered and not result.paused
    assert result.error is not None and "500" in result.error
    result = await sink.send(events)
    assert result.delivered == ids(events)
    first, second = lago.requests_to(BATCH)
    assert first.body == second.body  # same transaction_id and timestamp on every attempt


async def test_failure_midway_keeps_what_was_delivered(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url, batch_size=10))
    events = [make_event(i) for i in range(30)]
    lago.fail_with(502, times=1, after=1)
    try:
        result = await sink.send(events)
    finally:
        await sink.aclose()
    assert result.delivered == ids(events[:10])
    assert result.retry == ids(events[10:]) and "502" in (result.error or "")
    assert len(lago.requests_to(BATCH)) == 2  # it stops at the first failure


async def test_refused_connection_means_retry(lago: FakeLago, sink: LagoSink) -> None:
    lago.stop()
    result = await sink.send([make_event(0)])
    assert result.retry == ["tg-0000"] and result.error is not None
    assert "unreachable" in result.error and TEST_API_KEY not in result.error
    lago.start()
    assert (await sink.send([make_event(0)])).delivered == ["tg-0000"]


async def test_nothing_listening_means_retry() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = LagoSink(settings(f"http://127.0.0.1:{port}"))
    try:
        result = await sink.send([make_event(0)])
    finally:
        await sink.aclose()
    assert result.retry == ["tg-0000"] and result.error


async def test_timeout_means_retry(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url, timeout_s=0.2))
    lago.slow = 1.0
    try:
        result = await sink.send([make_event(0)])
    finally:
        await sink.aclose()
    assert result.retry == ["tg-0000"]
    assert result.error == "lago timed out after 0.2s"


async def test_429_retries_after_the_reset(lago: FakeLago, sink: LagoSink) -> None:
    lago.fail_with(429, times=1, reset_s=7)
    result = await sink.send([make_event(0), make_event(1)])
    assert result.retry == ["tg-0000", "tg-0001"]
    assert result.retry_after == 7.0 and not result.paused


async def test_503_with_retry_after(lago: FakeLago, sink: LagoSink) -> None:
    lago.fail_with(503, times=1, headers={"Retry-After": "2"})
    result = await sink.send([make_event(0)])
    assert result.retry == ["tg-0000"] and result.retry_after == 2.0


async def test_401_pauses_and_never_shows_the_key(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url, api_key="wrong-secret-key"))
    try:
        result = await sink.send([make_event(0)])
    finally:
        await sink.aclose()
    assert result.paused and result.retry == ["tg-0000"]
    assert result.error is not None and "wrong-secret-key" not in result.error
    assert "wrong-secret-key" not in repr(sink)


async def test_403_pauses(lago: FakeLago, sink: LagoSink) -> None:
    lago.forbidden = True
    result = await sink.send([make_event(0)])
    assert result.paused and result.retry == ["tg-0000"] and "403" in (result.error or "")


async def test_dropped_answer_then_resend_is_billed_once(lago: FakeLago, sink: LagoSink) -> None:
    events = [make_event(i) for i in range(4)]
    lago.drop_after_store = 1
    result = await sink.send(events)
    assert result.retry == ids(events) and not result.delivered
    assert all(lago.count(e.call_id) == 1 for e in events)  # Lago has them already
    result = await sink.send(events)
    assert result.delivered == ids(events)
    assert all(lago.count(e.call_id) == 1 for e in events)


async def test_no_batch_endpoint_falls_back_to_single_events(
        lago: FakeLago, sink: LagoSink) -> None:
    lago.fail_with(404, times=1)  # an old Lago without /events/batch
    result = await sink.send([make_event(0), make_event(1)])
    assert result.delivered == ["tg-0000", "tg-0001"]
    assert len(lago.requests_to(SINGLE)) == 2


# --- single-event mode ---------------------------------------------------------------


async def test_single_event_mode(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url, single_event_mode=True))
    events = [make_event(i) for i in range(4)]
    try:
        await sink.send([events[0]])
        lago.reject("tg-0002", detail={"code": ["value_is_mandatory"]})
        result = await sink.send(events)
        assert result.delivered == ["tg-0000", "tg-0001", "tg-0003"]
        assert "value_is_mandatory" in result.dead["tg-0002"]
        lago.fail_with(500, times=1)
        result = await sink.send([make_event(5), make_event(6)])
        assert result.retry == ["tg-0005", "tg-0006"] and not result.delivered
    finally:
        await sink.aclose()
    assert lago.requests_to(BATCH) == []
    assert lago.requests_to(SINGLE)[1].body == {"event": lago_event_body(events[0], CODE)}
    assert lago.schema_violations == []


# --- settings ------------------------------------------------------------------------


def test_from_env_names_every_missing_variable() -> None:
    with pytest.raises(ConfigError) as err:
        LagoSettings.from_env({"LAGO_API_KEY": "sk-secret"})
    assert "LAGO_API_BASE" in err.value.message and "LAGO_API_EVENT_CODE" in err.value.message
    assert "LAGO_API_KEY" not in err.value.message and "sk-secret" not in err.value.message
    with pytest.raises(ConfigError) as err:
        LagoSettings.from_env({})
    assert all(name in err.value.message
               for name in ("LAGO_API_BASE", "LAGO_API_KEY", "LAGO_API_EVENT_CODE"))


def test_from_env_reads_litellm_variables() -> None:
    env = {"LAGO_API_BASE": "http://lago:3000/api/v1/", "LAGO_API_KEY": "sk-secret",
           "LAGO_API_EVENT_CODE": "llm", "LAGO_API_CHARGE_BY": "team_id",
           "TALLYGATE_LAGO_BATCH_SIZE": "50", "TALLYGATE_LAGO_SINGLE_EVENT": "true"}
    s = LagoSettings.from_env(env)
    assert (s.api_base, s.event_code, s.charge_by, s.batch_size, s.single_event_mode) == \
        ("http://lago:3000", "llm", "team_id", 50, True)
    assert "sk-secret" not in repr(s)
    assert LagoSettings.from_env({**env, "LAGO_API_CHARGE_BY": ""}).charge_by == "end_user_id"
    with pytest.raises(ConfigError, match="LAGO_API_CHARGE_BY"):
        LagoSettings.from_env({**env, "LAGO_API_CHARGE_BY": "org_id"})
    with pytest.raises(ConfigError, match="TALLYGATE_LAGO_BATCH_SIZE"):
        LagoSettings.from_env({**env, "TALLYGATE_LAGO_BATCH_SIZE": "lots"})


def test_lago_sink_is_a_sink(lago: FakeLago) -> None:
    sink = LagoSink(settings(lago.url))
    assert isinstance(sink, Sink) and sink.name == "lago"
