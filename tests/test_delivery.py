"""DeliveryWorker against real outboxes and a scripted stand-in for the remote sink."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tallygate.metering.backoff import backoff_ceiling, full_jitter
from tallygate.metering.delivery import DeliveryWorker
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import (
    PG_DSN,
    ScriptedSink,
    drop_pg_schema,
    make_event,
    unique_pg_schema,
    wait_until,
)


class DelayRecordingOutbox(SQLiteOutbox):
    """The real SQLite outbox, also noting the delay of every mark_retry."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.delays: list[float] = []

    async def mark_retry(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        self.delays.append(delay_s)
        await super().mark_retry(ids, error, delay_s)


class TopOfRange(random.Random):
    """Full jitter that always draws the top of its range, to see the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[DelayRecordingOutbox]:
    box = DelayRecordingOutbox(tmp_path / "outbox.db")
    await box.open()
    yield box
    await box.close()


def _states(path: str) -> Counter[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT state FROM outbox").fetchall()
    conn.close()
    return Counter(state for (state,) in rows)


async def test_every_event_is_delivered_exactly_once(outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(250)]
    sink = ScriptedSink(max_batch=100)
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=5)
    await outbox.enqueue_many(events[:100], ["lago"])
    worker.start()
    for event in events[100:]:
        await outbox.enqueue(event, ["lago"])
        worker.notify()
    await wait_until(lambda: len(sink.delivered) == 250)
    await worker.stop()
    assert sorted(sink.delivered) == sorted(e.call_id for e in events)
    assert all(len(b) <= 100 for b in sink.batches)
    assert _states(outbox.path) == {"delivered": 250}
    counters = worker.sink_counters()["lago"]
    assert counters.delivered == 250 and counters.retried == 0 and counters.dead == 0


async def test_each_sink_gets_its_own_rows(outbox: SQLiteOutbox) -> None:
    lago, jsonl = ScriptedSink("lago"), ScriptedSink("jsonl", fail_times=1)
    worker = DeliveryWorker(outbox, [lago, jsonl], backoff_base_s=0.01)
    await outbox.enqueue_many([make_event() for _ in range(5)], ["lago", "jsonl"])
    worker.start()
    await wait_until(lambda: len(lago.delivered) == 5 and len(jsonl.delivered) == 5)
    await worker.stop()
    assert worker.sink_counters()["jsonl"].retried == 5
    assert worker.sink_counters()["lago"].retried == 0


async def test_failed_batches_are_retried_with_capped_growing_backoff(
        outbox: DelayRecordingOutbox) -> None:
    sink = ScriptedSink(fail_times=5)
    worker = DeliveryWorker(outbox, [sink], backoff_base_s=0.001, backoff_cap_s=0.004,
                            rng=TopOfRange())
    await outbox.enqueue(make_event(), ["lago"])
    worker.start()
    await wait_until(lambda: len(sink.delivered) == 1)
    status = await worker.status()
    await worker.stop()
    assert outbox.delays == [0.001, 0.002, 0.004, 0.004, 0.004]
    assert len(sink.batches) == 6
    lane = status.sinks["lago"]
    assert lane.counters.retried == 5 and lane.counters.consecutive_failures == 0
    assert lane.counters.last_error == "503 from lago"
    assert lane.outbox is not None and lane.outbox.delivered == 1
    assert not status.degraded and not status.paused and status.running


def test_backoff_ceiling_grows_and_caps() -> None:
    assert [backoff_ceiling(n, 0.5, 60) for n in (1, 2, 3, 4, 8, 9, 200)] == [
        0.5, 1.0, 2.0, 4.0, 60.0, 60.0, 60.0]
    rng = random.Random(7)
    for attempt in range(1, 20):
        assert 0 <= full_jitter(attempt, 0.5, 60, rng) <= backoff_ceiling(attempt, 0.5, 60)


async def test_retry_after_from_the_sink_is_used_as_the_delay(
        outbox: DelayRecordingOutbox) -> None:
    sink = ScriptedSink(fail_times=1, retry_after=30.0)
    worker = DeliveryWorker(outbox, [sink])
    await outbox.enqueue(make_event(), ["lago"])
    worker.start()
    await wait_until(lambda: outbox.delays)
    assert worker.degraded
    await worker.stop(drain_timeout_s=0.1)
    assert outbox.delays == [30.0]
    assert sink.delivered == []  # held back: not sent again within the 30 s
    assert _states(outbox.path) == {"pending": 1}


async def test_dead_events_are_dead_lettered_and_the_rest_delivered(
        outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(4)]
    sink = ScriptedSink(dead_ids=[events[1].call_id])
    worker = DeliveryWorker(outbox, [sink])
    await outbox.enqueue_many(events, ["lago"])
    worker.start()
    await wait_until(lambda: len(sink.delivered) == 3)
    await wait_until(lambda: worker.sink_counters()["lago"].dead == 1)
    await worker.stop()
    [dead] = await outbox.dead_rows()
    assert (dead.call_id, dead.reason) == (events[1].call_id, "422 invalid code")


async def test_max_attempts_dead_letters_a_row_that_keeps_failing(
        outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink(fail_times=100)
    worker = DeliveryWorker(outbox, [sink], max_attempts=3, backoff_base_s=0.001)
    await outbox.enqueue(make_event(), ["lago"])
    worker.start()
    await wait_until(lambda: worker.sink_counters()["lago"].dead == 1)
    await worker.stop()
    assert len(sink.batches) == 3
    [dead] = await outbox.dead_rows()
    assert dead.reason == "gave up after 3 attempts: 503 from lago" and dead.attempts == 3


async def test_a_sink_that_raises_does_not_kill_the_worker(
        outbox: SQLiteOutbox, caplog: pytest.LogCaptureFixture) -> None:
    event = make_event()
    sink = ScriptedSink(raise_times=2)
    worker = DeliveryWorker(outbox, [sink], backoff_base_s=0.001)
    await outbox.enqueue(event, ["lago"])
    with caplog.at_level(logging.ERROR, logger="tallygate.delivery"):
        worker.start()
        await wait_until(lambda: sink.delivered == [event.call_id])
        await worker.stop()
    assert worker.sink_counters()["lago"].send_failures == 2
    assert any(event.call_id in r.getMessage() for r in caplog.records)


async def test_a_paused_sink_drops_nothing_and_resumes(outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(3)]
    sink = ScriptedSink(pause_times=100)
    worker = DeliveryWorker(outbox, [sink], pause_recheck_s=60)
    await outbox.enqueue_many(events, ["lago"])
    worker.start()
    await wait_until(lambda: worker.paused)
    assert worker.degraded and len(sink.batches) == 1  # no hammering while paused
    status = await worker.status()
    assert status.paused and status.sinks["lago"].counters.last_error == "401 unauthorized"
    assert _states(outbox.path) == {"pending": 3}
    sink.pause_times = 0  # an operator fixed the key
    worker.resume("lago")
    await wait_until(lambda: len(sink.delivered) == 3)
    await worker.stop()
    assert not worker.paused
    assert sorted(sink.delivered) == sorted(e.call_id for e in events)


async def test_a_paused_sink_is_probed_again_after_the_recheck_interval(
        outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink(pause_times=2)
    worker = DeliveryWorker(outbox, [sink], pause_recheck_s=0.02)
    await outbox.enqueue(make_event(), ["lago"])
    worker.start()
    await wait_until(lambda: len(sink.delivered) == 1)
    await worker.stop()
    rows = await outbox.stats()
    assert rows.delivered == 1 and len(sink.batches) == 3


async def test_stop_drains_what_is_due(outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink(max_batch=10)
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=60)
    worker.start()
    await wait_until(lambda: True)
    await outbox.enqueue_many([make_event() for _ in range(95)], ["lago"])
    # No notify: the worker sleeps for its 60 s poll, and stop() must still deliver.
    await worker.stop(drain_timeout_s=5)
    assert len(sink.delivered) == 95
    assert _states(outbox.path) == {"delivered": 95}


async def test_stop_releases_rows_of_a_send_that_did_not_finish(outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink(delay_s=30)
    worker = DeliveryWorker(outbox, [sink])
    await outbox.enqueue_many([make_event() for _ in range(3)], ["lago"])
    worker.start()
    await wait_until(lambda: sink.batches)
    await worker.stop(drain_timeout_s=0.05)
    assert _states(outbox.path) == {"pending": 3}
    rows = await outbox.claim("lago", 10, 60)
    assert [r.attempts for r in rows] == [1, 1, 1]  # the cut send did not count


async def test_notify_from_another_thread_wakes_the_worker(outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink()
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=60)
    worker.start()
    await wait_until(lambda: True)
    event = make_event()

    def request_thread() -> None:
        outbox.enqueue_sync(event, ["lago"])
        worker.notify()

    thread = threading.Thread(target=request_thread)
    thread.start()
    await wait_until(lambda: sink.delivered == [event.call_id], timeout=5)
    thread.join()
    await worker.stop()


async def test_a_restarted_worker_picks_up_what_was_left(outbox: SQLiteOutbox) -> None:
    sink = ScriptedSink()
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=60)
    await outbox.enqueue_many([make_event() for _ in range(3)], ["lago"])
    worker.start()
    await wait_until(lambda: len(sink.delivered) == 3)
    await worker.stop()
    await outbox.enqueue(make_event(), ["lago"])
    worker.start()
    await wait_until(lambda: len(sink.delivered) == 4)
    await worker.stop()
    assert worker.sink_counters()["lago"].delivered == 4


def test_worker_arguments_are_checked(tmp_path: Path) -> None:
    box = SQLiteOutbox(tmp_path / "x.db")
    with pytest.raises(ValueError, match="unique"):
        DeliveryWorker(box, [ScriptedSink("a"), ScriptedSink("a")])
    with pytest.raises(ValueError, match="send_timeout_s"):
        DeliveryWorker(box, [ScriptedSink()], lease_s=10, send_timeout_s=10)


@pytest.mark.postgres
async def test_delivery_from_postgres_with_two_workers_delivers_each_event_once() -> None:
    schema = unique_pg_schema()
    boxes = [PostgresOutbox(PG_DSN, schema=schema) for _ in range(2)]
    try:
        for box in boxes:
            await box.open()
        events = [make_event() for _ in range(300)]
        await boxes[0].enqueue_many(events, ["lago"])
        sinks = [ScriptedSink(max_batch=25), ScriptedSink(max_batch=25)]
        workers = [DeliveryWorker(b, [s]) for b, s in zip(boxes, sinks, strict=True)]
        for w in workers:
            w.start()
        await wait_until(lambda: sum(len(s.delivered) for s in sinks) >= 300)
        for w in workers:
            await w.stop()
        delivered = sinks[0].delivered + sinks[1].delivered
        assert sorted(delivered) == sorted(e.call_id for e in events)
        assert (await boxes[0].stats()).delivered == 300
    finally:
        for box in boxes:
            await box.close()
        await drop_pg_schema(schema)


async def test_stop_flushes_rows_an_earlier_run_backed_off(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue(make_event(), ["lago"])
    [row] = await outbox.claim("lago", 10, 60)
    await outbox.mark_retry([row.id], "lago was down", 30)  # as a previous process left it
    sink = ScriptedSink()
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=60)
    worker.start()
    await worker.stop(drain_timeout_s=5)  # a script's flush at exit
    assert len(sink.delivered) == 1
