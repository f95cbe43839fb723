"""SQLiteOutbox on real files: idempotence, leases, claims across processes, kill -9."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tallygate.errors import ConfigError
from tallygate.event import now_ms
from tallygate.metering.factory import open_outbox, outbox_for
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import claim_all_in_process, make_event


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[SQLiteOutbox]:
    box = SQLiteOutbox(tmp_path / "outbox.db")
    await box.open()
    yield box
    await box.close()


def _row(path: str, row_id: int) -> dict[str, object]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone()
    conn.close()
    return dict(row)


async def test_event_round_trips_through_the_outbox(outbox: SQLiteOutbox) -> None:
    event = make_event()
    await outbox.enqueue(event, ["lago"])
    [row] = await outbox.claim("lago", 10, 60)
    assert row.event == event
    assert row.sink == "lago"
    assert row.attempts == 1


async def test_enqueue_twice_is_a_no_op_and_each_sink_gets_a_row(outbox: SQLiteOutbox) -> None:
    event = make_event()
    await outbox.enqueue(event, ["lago", "jsonl"])
    await outbox.enqueue(event, ["lago", "jsonl"])
    outbox.enqueue_sync(event, ["lago"])
    assert (await outbox.stats()).pending == 2
    assert len(await outbox.claim("lago", 10, 60)) == 1
    assert len(await outbox.claim("jsonl", 10, 60)) == 1


async def test_a_claim_gets_what_the_row_holds_not_what_was_enqueued_last(
        outbox: SQLiteOutbox, tmp_path: Path) -> None:
    """Claims reuse the events this process just wrote instead of parsing them again,
    but only where the row's stored text is that event's: a second enqueue of the same
    call (left out by the unique row) or a row written by another process is read from
    the database."""
    first = make_event("call-1", cost="0.001")
    await outbox.enqueue(first, ["lago"])
    await outbox.enqueue(make_event("call-1", cost="0.999"), ["lago"])  # a no-op row-wise
    [row] = await outbox.claim("lago", 10, 60)
    assert row.event == first and row.event.cost == first.cost
    # Another writer of the same file: this process never saw its event.
    other = SQLiteOutbox(outbox.path)
    await other.open()
    try:
        theirs = make_event("call-2")
        await other.enqueue(theirs, ["lago"])
    finally:
        await other.close()
    [row] = await outbox.claim("lago", 10, 60)
    assert row.event == theirs


async def test_enqueue_many_commits_every_event(outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(50)]
    await outbox.enqueue_many(events, ["lago"])
    rows = await outbox.claim("lago", 100, 60)
    assert [r.event.call_id for r in rows] == [e.call_id for e in events]


async def test_claim_takes_only_due_rows_of_its_sink_oldest_first(outbox: SQLiteOutbox) -> None:
    first, second = make_event(), make_event()
    await outbox.enqueue(first, ["lago"])
    await outbox.enqueue(second, ["lago"])
    await outbox.enqueue(make_event(), ["other"])
    rows = await outbox.claim("lago", 1, 60)
    assert [r.event.call_id for r in rows] == [first.call_id]
    assert [r.event.call_id for r in await outbox.claim("lago", 5, 60)] == [second.call_id]
    assert await outbox.claim("lago", 5, 60) == []  # the rest is inflight under lease


async def test_expired_lease_returns_rows_and_stale_owner_cannot_mark_them(
        outbox: SQLiteOutbox, tmp_path: Path) -> None:
    await outbox.enqueue(make_event(), ["lago"])
    [row] = await outbox.claim("lago", 10, 0.05)
    await asyncio.sleep(0.1)
    other = SQLiteOutbox(tmp_path / "outbox.db")
    await other.open()
    try:
        [again] = await other.claim("lago", 10, 60)
        assert again.id == row.id and again.attempts == 2
        await outbox.mark_retry([row.id], "stale worker", 0)   # not its row any more
        await outbox.mark_dead({row.id: "stale worker"})
        assert _row(outbox.path, row.id)["owner"] == other.owner
        assert _row(outbox.path, row.id)["state"] == "inflight"
        await other.mark_delivered([again.id])
        assert (await outbox.stats()).delivered == 1
    finally:
        await other.close()


async def test_retry_delay_holds_the_row_back(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue(make_event(), ["lago"])
    [row] = await outbox.claim("lago", 10, 60)
    before = now_ms()
    await outbox.mark_retry([row.id], "503", 30)
    assert await outbox.claim("lago", 10, 60) == []
    stored = _row(outbox.path, row.id)
    assert stored["state"] == "pending" and stored["last_error"] == "503"
    assert isinstance(stored["next_attempt_at_ms"], int)
    assert stored["next_attempt_at_ms"] >= before + 30_000
    await outbox.mark_retry([row.id], "ignored: not inflight", 0)
    assert _row(outbox.path, row.id)["last_error"] == "503"


async def test_release_gives_rows_back_without_counting_the_attempt(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue(make_event(), ["lago"])
    [row] = await outbox.claim("lago", 10, 60)
    await outbox.release([row.id])
    [again] = await outbox.claim("lago", 10, 60)
    assert again.attempts == 1


async def test_dead_rows_are_listed_retried_and_counted(outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(3)]
    await outbox.enqueue_many(events, ["lago"])
    rows = await outbox.claim("lago", 10, 60)
    await outbox.mark_dead({rows[0].id: "422 bad code", rows[1].id: "422 bad subscription"})
    await outbox.mark_delivered([rows[2].id])
    dead = await outbox.dead_rows()
    assert [(d.id, d.call_id, d.reason, d.attempts) for d in dead] == [
        (rows[0].id, events[0].call_id, "422 bad code", 1),
        (rows[1].id, events[1].call_id, "422 bad subscription", 1)]
    assert await outbox.dead_rows(sink="other") == []
    stats = await outbox.stats()
    assert (stats.pending, stats.inflight, stats.delivered, stats.dead) == (0, 0, 1, 2)
    assert stats.last_error in ("422 bad code", "422 bad subscription")
    assert await outbox.retry_dead([rows[0].id, rows[2].id]) == 1   # row 2 is not dead
    assert await outbox.retry_dead() == 1
    again = await outbox.claim("lago", 10, 60)
    assert {r.id for r in again} == {rows[0].id, rows[1].id}
    assert all(r.attempts == 1 for r in again)  # a retried dead row starts over


async def test_replay_and_purge_of_delivered_rows(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue_many([make_event() for _ in range(4)], ["lago", "jsonl"])
    for sink in ("lago", "jsonl"):
        await outbox.mark_delivered([r.id for r in await outbox.claim(sink, 10, 60)])
    assert await outbox.replay(now_ms() + 60_000) == 0
    assert await outbox.replay(0, sink="lago") == 4
    assert len(await outbox.claim("lago", 10, 60)) == 4
    assert await outbox.purge_delivered(now_ms() - 60_000) == 0
    assert await outbox.purge_delivered(now_ms() + 1) == 4
    stats = await outbox.stats()
    assert (stats.inflight, stats.delivered) == (4, 0)


async def test_stats_per_sink_and_oldest_age(outbox: SQLiteOutbox) -> None:
    empty = await outbox.stats()
    assert empty.oldest_pending_age_s is None and empty.last_error is None
    await outbox.enqueue(make_event(), ["lago"])
    await asyncio.sleep(0.02)
    stats = await outbox.stats("lago")
    assert stats.pending == 1
    assert stats.oldest_pending_age_s is not None and stats.oldest_pending_age_s > 0
    assert (await outbox.stats("jsonl")).pending == 0


async def test_schema_is_migrated_once_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    for _ in range(2):
        box = SQLiteOutbox(path)
        await box.open()
        await box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    conn.close()
    box = SQLiteOutbox(path)
    with pytest.raises(ConfigError, match="newer"):
        await box.open()
    await box.close()


async def test_enqueue_from_other_threads_uses_their_own_connections(
        outbox: SQLiteOutbox) -> None:
    events = [make_event() for _ in range(40)]

    def produce(chunk: list[object]) -> None:
        for event in chunk:
            outbox.enqueue_sync(event, ["lago"])  # type: ignore[arg-type]

    threads = [threading.Thread(target=produce, args=(events[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    claimed: list[int] = []
    while any(t.is_alive() for t in threads):
        claimed += [r.id for r in await outbox.claim("lago", 5, 60)]
        await asyncio.sleep(0)
    for t in threads:
        t.join()
    claimed += [r.id for r in await outbox.claim("lago", 100, 60)]
    assert len(claimed) == len(set(claimed)) == 40


def test_two_processes_never_claim_the_same_row(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")

    async def fill() -> None:
        box = SQLiteOutbox(path)
        await box.open()
        await box.enqueue_many([make_event() for _ in range(1500)], ["lago"])
        await box.close()

    asyncio.run(fill())
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=claim_all_in_process, args=(path, "lago", 5, start, results))
             for _ in range(3)]
    for p in procs:
        p.start()
    got = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    results.close()
    results.join_thread()
    all_ids = [i for ids in got for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 1500
    assert sum(1 for ids in got if ids) >= 2, "the processes should have raced"


_CHILD = """
import asyncio, sys, time
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import make_event

async def main():
    box = SQLiteOutbox(sys.argv[1])
    await box.open()
    await box.enqueue(make_event(sys.argv[2]), ["lago"])
    print("committed", flush=True)
    time.sleep(60)

asyncio.run(main())
"""


def test_a_committed_row_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "killed.db")
    root = Path(__file__).resolve().parent.parent
    child = subprocess.Popen([sys.executable, "-c", _CHILD, path, "tg-survivor"],
                             stdout=subprocess.PIPE, cwd=root, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    async def check() -> list[str]:
        box = SQLiteOutbox(path)
        await box.open()
        try:
            return [r.event.call_id for r in await box.claim("lago", 10, 60)]
        finally:
            await box.close()

    assert asyncio.run(check()) == ["tg-survivor"]


async def test_enqueue_latency_is_printed(outbox: SQLiteOutbox) -> None:
    """Prints p50/p99 of enqueue; bench/outbox_bench.py is the real benchmark."""
    samples = []
    for _ in range(2000):
        event = make_event()
        start = time.perf_counter()
        await outbox.enqueue(event, ["lago"])
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(f"\nsqlite enqueue p50={samples[1000] * 1e6:.0f}us p99={samples[1980] * 1e6:.0f}us")


def test_factory_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(outbox_for("postgresql://u@127.0.0.1/db"), PostgresOutbox)
    assert isinstance(outbox_for("postgres://u@127.0.0.1/db"), PostgresOutbox)
    plain = outbox_for(tmp_path / "a.db")
    assert isinstance(plain, SQLiteOutbox) and plain.path == str(tmp_path / "a.db")
    relative = outbox_for("sqlite:///data/tallygate.db")
    assert isinstance(relative, SQLiteOutbox) and relative.path == "data/tallygate.db"
    absolute = outbox_for("sqlite:////var/lib/tallygate.db")
    assert isinstance(absolute, SQLiteOutbox) and absolute.path == "/var/lib/tallygate.db"
    for bad in ("mysql://x/y", ":memory:", "sqlite:///"):
        with pytest.raises(ConfigError):
            outbox_for(bad)


async def test_open_outbox_opens_and_migrates(tmp_path: Path) -> None:
    box = await open_outbox(f"sqlite:///{tmp_path}/f.db")  # tmp_path is absolute
    try:
        await box.enqueue(make_event(), ["lago"])
        assert (await box.stats()).pending == 1
    finally:
        await box.close()


async def test_a_flush_claim_takes_backed_off_rows_but_not_leased_ones(
        outbox: SQLiteOutbox) -> None:
    await outbox.enqueue_many([make_event(), make_event()], ["lago"])
    first, _leased = await outbox.claim("lago", 10, 60)
    await outbox.mark_retry([first.id], "503", 30)
    assert await outbox.claim("lago", 10, 60) == []
    [flushed] = await outbox.claim("lago", 10, 60, ignore_backoff=True)
    assert flushed.id == first.id  # the other row is still under its lease
