"""Lago trouble never breaks a user's call, and nothing is lost: a 500 or a Lago that is
down leaves the event in the outbox, and it is delivered once Lago is back. Missing
settings fail where "lago" is switched on, naming what is missing."""

from __future__ import annotations

import time

import pytest

import tallygate
from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.sdk_fixtures import EVENT_CODE, SdkPaths, openai_kwargs

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks


def flush_until(lago: FakeLago, call_ids: list[str], timeout: float = 8.0) -> None:
    """Flush until Lago has every event (retries wait out a short backoff)."""
    deadline = time.monotonic() + timeout
    while not all(lago.count(c) for c in call_ids):
        assert time.monotonic() < deadline, "events not delivered"
        tallygate.flush(timeout_s=1.0)
        time.sleep(0.05)


def test_lago_answering_500_does_not_break_the_call(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    lago.fail_with(500)  # until cleared
    calls = [tallygate.completion(model="gpt-4o-mini", user="customer-42",
                                  **openai_kwargs(openai_fake)) for _ in range(3)]
    assert all(c.choices[0].message.content for c in calls)
    tallygate.flush(timeout_s=0.5)
    assert lago.events == {}
    assert lago.requests_to("/api/v1/events/batch")  # it did try
    lago.clear_faults()
    ids = [c.call_id for c in calls]
    flush_until(lago, ids)
    for call_id in ids:
        assert lago.count(call_id) == 1
    assert lago.schema_violations == []


def test_lago_down_does_not_break_the_call(sdk: SdkPaths, lago: FakeLago,
                                           openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    lago.stop()
    r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    tallygate.flush(timeout_s=0.5)
    lago.start()
    flush_until(lago, [r.call_id])
    assert lago.count(r.call_id) == 1


def test_lago_storing_then_hanging_up_does_not_bill_twice(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    lago.drop_after_store = 1
    r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    flush_until(lago, [r.call_id])
    tallygate.flush(timeout_s=2.0)  # the resend must be a duplicate, not a second event
    assert len(lago.requests_to("/api/v1/events/batch")) >= 2
    assert lago.count(r.call_id) == 1


@pytest.mark.parametrize("switch", ["success_callback", "callbacks"])
def test_missing_lago_settings_fail_when_lago_is_switched_on(
        sdk: SdkPaths, monkeypatch: pytest.MonkeyPatch, switch: str) -> None:
    monkeypatch.setenv("LAGO_API_BASE", "http://127.0.0.1:9")
    with pytest.raises(tallygate.ConfigError) as info:
        setattr(tallygate, switch, ["lago"])
    message = str(info.value)
    assert "LAGO_API_KEY" in message and "LAGO_API_EVENT_CODE" in message
    assert "LAGO_API_BASE" not in message
    assert getattr(tallygate, switch) == []  # the switch did not take


def test_missing_lago_settings_name_all_three(sdk: SdkPaths) -> None:
    with pytest.raises(tallygate.ConfigError,
                       match="LAGO_API_BASE, LAGO_API_KEY, LAGO_API_EVENT_CODE"):
        tallygate.success_callback = ["lago"]


def test_missing_lago_settings_fail_for_per_call_callbacks_before_the_call(
        sdk: SdkPaths, openai_fake: FakeOpenAI) -> None:
    with pytest.raises(tallygate.ConfigError, match="LAGO_API_KEY"):
        tallygate.completion(model="gpt-4o-mini", user="c", callbacks=["lago"],
                             **openai_kwargs(openai_fake))
    assert openai_fake.requests == []  # nothing was sent (or billed)


def test_a_bad_charge_by_fails_when_lago_is_switched_on(
        sdk: SdkPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAGO_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("LAGO_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("LAGO_API_EVENT_CODE", EVENT_CODE)
    monkeypatch.setenv("LAGO_API_CHARGE_BY", "org")
    with pytest.raises(tallygate.ConfigError, match="LAGO_API_CHARGE_BY"):
        tallygate.success_callback = ["lago"]


def test_an_unknown_callback_name_fails_at_assignment(sdk: SdkPaths) -> None:
    with pytest.raises(tallygate.ConfigError, match="'lagoo'"):
        tallygate.callbacks = ["lagoo"]


def test_the_key_is_not_in_errors_or_logs(sdk: SdkPaths, lago: FakeLago,
                                          openai_fake: FakeOpenAI,
                                          caplog: pytest.LogCaptureFixture) -> None:
    tallygate.success_callback = ["lago"]
    lago.api_keys = {"another-key"}  # Lago refuses ours: the sink pauses
    r = tallygate.completion(model="gpt-4o-mini", user="customer-42",
                             **openai_kwargs(openai_fake))
    tallygate.flush(timeout_s=0.5)
    assert lago.events == {}
    assert TEST_API_KEY not in caplog.text
    assert "401" in caplog.text
    assert r.call_id  # the call itself was fine
