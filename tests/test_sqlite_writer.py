"""The writer thread of a SQLite file: urgent writes (a call waits on them) go before
background ones, in turn when both wait, and nothing queued is lost or left hanging."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tallygate import sqlite_writer
from tallygate.access import budgets
from tallygate.access.budgets import LEDGER_COLUMNS
from tallygate.access.db import SQLiteDatabase
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import make_event


def _blocked_writer() -> tuple[sqlite_writer.Writer, threading.Event, list[str]]:
    """A writer whose thread is held by a first write until the event is set."""
    writer = sqlite_writer.Writer()
    gate, running = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        running.set()
        gate.wait()

    writer.submit(hold, urgent=False)
    assert running.wait(5)
    return writer, gate, order


def test_urgent_writes_go_first_and_take_turns_with_background_ones() -> None:
    writer, gate, order = _blocked_writer()
    futures = [writer.submit(lambda n=n: order.append(f"b{n}"), urgent=False) for n in range(3)]
    futures += [writer.submit(lambda n=n: order.append(f"u{n}"), urgent=True) for n in range(3)]
    futures.append(writer.submit(lambda: order.append("u3"), urgent=True))
    gate.set()
    for f in futures:
        f.result(timeout=5)
    # Not first come, first served (b0 b1 b2 u0 ...): an urgent write waits for at most
    # one background write, and background work still gets every other turn.
    assert order == ["u0", "b0", "u1", "b1", "u2", "b2", "u3"]
    writer.shutdown(wait=True)


def test_a_failed_write_fails_its_caller_only() -> None:
    writer, gate, _ = _blocked_writer()
    bad = writer.submit(lambda: 1 // 0, urgent=True)
    good = writer.submit(lambda: "ok", urgent=True)
    gate.set()
    with pytest.raises(ZeroDivisionError):
        bad.result(timeout=5)
    assert good.result(timeout=5) == "ok"
    writer.shutdown(wait=True)


def test_shutdown_finishes_what_is_queued_then_refuses_more() -> None:
    writer, gate, order = _blocked_writer()
    queued = [writer.submit(lambda n=n: order.append(str(n)), urgent=n % 2 == 0)
              for n in range(4)]
    writer.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        writer.submit(lambda: None, urgent=True)
    gate.set()
    writer.shutdown(wait=True)
    assert all(f.done() for f in queued) and sorted(order) == ["0", "1", "2", "3"]


async def test_a_cancelled_caller_s_write_that_has_not_started_is_skipped() -> None:
    writer, gate, order = _blocked_writer()
    task = asyncio.ensure_future(sqlite_writer.run(writer, order.append, "cancelled",
                                                   urgent=True))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = asyncio.ensure_future(sqlite_writer.run(writer, order.append, "after"))
    gate.set()
    await after
    assert order == ["after"]
    writer.shutdown(wait=True)


def _row(call_id: str, cost: str) -> tuple[object, ...]:
    row = dict.fromkeys(LEDGER_COLUMNS)
    row.update(call_id=call_id, ts_ms=1_700_000_000_000, key_token="k1", customer_id="acme",
               billed_to="acme", model="gpt", provider="p", provider_model="pm", kind="chat",
               input_tokens=10, cache_read_tokens=0, cache_write_tokens=0, output_tokens=5,
               cost=cost, status="billed", flags="")
    return tuple(row[c] for c in LEDGER_COLUMNS)


async def test_a_ledger_batch_in_chunks_settles_each_call_once(tmp_path: Path) -> None:
    """The ledger sink's batch is written in chunks, one INSERT each: a call settled
    before, a call twice in the batch and a release among them each count once."""
    db = SQLiteDatabase(str(tmp_path / "access.db"))
    await db.open()
    try:
        await db.write(lambda conn: conn.execute(
            "INSERT INTO access_budgets (scope, id, max_micros, spend_micros, reserved_micros)"
            " VALUES ('key', 'k1', 10000000, 0, 0)"))
        scope = [("key", "k1")]
        n = budgets.SQLITE_SETTLE_CHUNK * 2 + 5
        items = [(f"c{i}", scope, [], 100, _row(f"c{i}", "0.0001")) for i in range(n)]
        await budgets.settle_many(db, items[:3])                 # settled before
        batch = [*items, items[10], ("released", scope, [], 0, None)]
        await budgets.settle_many(db, batch)
        await budgets.settle_many(db, batch)                      # a redelivery
        rows = await db.fetchone("SELECT count(*) AS n, count(DISTINCT call_id) AS d, "
                                 "sum(input_tokens) AS t FROM access_ledger")
        assert rows is not None and (rows["n"], rows["d"], rows["t"]) == (n, n, 10 * n)
        spend = await db.fetchone("SELECT spend_micros FROM access_budgets WHERE id = 'k1'")
        assert spend is not None and spend["spend_micros"] == 100 * n
        cost = await db.fetchone("SELECT cost, ts_ms FROM access_ledger WHERE call_id = 'c7'")
        assert cost is not None and (cost["cost"], cost["ts_ms"]) == ("0.0001",
                                                                      1_700_000_000_000)
    finally:
        await db.close()


def _write_in_child(path: str, out: Any) -> None:
    """A second process's write to the same file: when did it run?"""
    writer = sqlite_writer.Writer(path)
    out.send(writer.submit(time.monotonic, urgent=True).result(timeout=10))
    writer.shutdown(wait=True)


def test_writes_of_two_processes_to_one_file_take_turns(tmp_path: Path) -> None:
    """Each write holds the file's lock (an flock beside it): another process's write
    starts only when this one has ended, and it is handed on at once, not polled."""
    path = str(tmp_path / "shared.db")
    writer = sqlite_writer.Writer(path)
    running, gate = threading.Event(), threading.Event()

    def long_write() -> float:
        running.set()
        gate.wait(10)
        return time.monotonic()

    first = writer.submit(long_write, urgent=True)
    assert running.wait(5)
    ctx = multiprocessing.get_context("fork")
    theirs, mine = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_write_in_child, args=(path, mine))
    child.start()
    time.sleep(0.3)  # the child's write is queued on its own thread by now
    assert not theirs.poll()  # ...and waits for ours
    gate.set()
    ended = first.result(timeout=5)
    assert theirs.poll(10)
    started = theirs.recv()
    child.join(10)
    assert child.exitcode == 0
    assert ended <= started < ended + 0.1
    assert os.path.exists(path + sqlite_writer.LOCK_SUFFIX)
    writer.shutdown(wait=True)


def test_no_lock_file_for_an_in_memory_database() -> None:
    writer = sqlite_writer.Writer(":memory:")
    assert writer.submit(lambda: 42, urgent=False).result(timeout=5) == 42
    writer.shutdown(wait=True)


async def test_an_insert_into_a_free_file_needs_no_thread_hop(tmp_path: Path) -> None:
    """Nothing holds the file: the call's insert runs on the caller's thread (the event
    loop), not on the writer thread, which is not needed at all for it."""
    outbox = SQLiteOutbox(tmp_path / "outbox.db")
    await outbox.open()
    try:
        assert outbox._writer is not None
        outbox._writer.shutdown(wait=True)   # no writer thread from here on
        await outbox.enqueue(make_event(), ["lago"])
        with sqlite3.connect(tmp_path / "outbox.db") as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
    finally:
        await outbox.close()


async def test_an_insert_while_a_write_holds_the_file_waits_on_the_writer_thread(
        tmp_path: Path) -> None:
    """A write holds the file (another process's lock): the insert does not wait on the
    event loop; it goes to the writer thread, which writes it once the lock is free."""
    path = str(tmp_path / "outbox.db")
    outbox = SQLiteOutbox(path)
    await outbox.open()
    other = sqlite_writer.open_lock(path)   # an open file of its own: another process
    assert other is not None
    try:
        assert sqlite_writer.try_lock(other)
        task = asyncio.ensure_future(outbox.enqueue(make_event(), ["lago"]))
        await asyncio.sleep(0.2)
        assert not task.done()               # the loop ran on meanwhile (we are here)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
        sqlite_writer.unlock(other)
        await asyncio.wait_for(task, 5)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (1,)
    finally:
        os.close(other)
        await outbox.close()


async def _budgeted_db(path: str) -> SQLiteDatabase:
    db = SQLiteDatabase(path)
    await db.open()
    await db.execute("INSERT INTO access_budgets (scope, id, max_micros, spend_micros, "
                     "reserved_micros) VALUES ('key', 'k', 10000000, 0, 0)")
    return db


async def test_a_reservation_in_a_free_file_runs_on_the_caller_s_thread(
        tmp_path: Path) -> None:
    """An urgent write (a budget reservation the call waits on) with nothing holding the
    file runs on the event loop: no writer thread is started for it."""
    db = await _budgeted_db(str(tmp_path / "gw.db"))
    try:
        assert await budgets.reserve_many(db, [("c1", [("key", "k")], 250_000)]) == [None]
        assert db._writer is None
        assert await db.fetch("SELECT spend_micros, reserved_micros FROM access_budgets"
                              ) == [{"spend_micros": 0, "reserved_micros": 250_000}]
        # A background write (a ledger batch) still goes to the writer thread.
        await db.write(lambda conn: conn.execute("UPDATE access_budgets SET spend_micros = 1"))
        assert db._writer is not None
    finally:
        await db.close()


async def test_a_reservation_while_a_write_holds_the_file_goes_to_the_writer_thread(
        tmp_path: Path) -> None:
    """A write holds the file (another process's lock): the reservation neither waits on
    the event loop nor fails; the writer thread makes it once the file is free. The same
    with the fast path off (the forked workers of --workers N)."""
    path = str(tmp_path / "gw.db")
    db = await _budgeted_db(path)
    other = sqlite_writer.open_lock(path)
    assert other is not None
    try:
        for call_id, on_caller in (("c1", True), ("c2", False)):
            db.write_on_caller = on_caller
            assert sqlite_writer.try_lock(other)
            task = asyncio.ensure_future(
                budgets.reserve_many(db, [(call_id, [("key", "k")], 100_000)]))
            await asyncio.sleep(0.2)
            assert not task.done()
            sqlite_writer.unlock(other)
            assert await asyncio.wait_for(task, 5) == [None]
        assert db._writer is not None
        assert await db.fetch("SELECT reserved_micros FROM access_budgets") == [
            {"reserved_micros": 200_000}]
        assert await db.fetch("SELECT call_id FROM access_reservations ORDER BY call_id"
                              ) == [{"call_id": "c1"}, {"call_id": "c2"}]
    finally:
        os.close(other)
        await db.close()


async def test_a_write_that_meets_a_writer_without_lock_file_goes_to_the_writer_thread(
        tmp_path: Path) -> None:
    """A writer that takes no lock file (an older tallygate) holds SQLite's own lock: the
    caller's BEGIN IMMEDIATE fails at once, nothing is half-written, the writer thread
    (which waits out SQLite's busy timeout) makes the reservation."""
    path = str(tmp_path / "gw.db")
    db = await _budgeted_db(path)
    old = sqlite3.connect(path, isolation_level=None)
    try:
        old.execute("BEGIN IMMEDIATE")
        task = asyncio.ensure_future(budgets.reserve_many(db, [("c1", [("key", "k")], 5)]))
        await asyncio.sleep(0.2)
        assert not task.done() and db._writer is not None
        old.execute("COMMIT")
        assert await asyncio.wait_for(task, 15) == [None]
        assert await db.fetch("SELECT reserved_micros FROM access_budgets") == [
            {"reserved_micros": 5}]
    finally:
        old.close()
        await db.close()


async def test_a_group_commit_of_many_calls_is_written_on_the_writer_thread(
        tmp_path: Path) -> None:
    """A batch of more than a couple of calls goes to the writer thread even when the
    file is free: sqlite3 runs it there beside the event loop, not on it."""
    path = str(tmp_path / "outbox.db")
    outbox = SQLiteOutbox(path)
    await outbox.open()
    threads: list[str] = []
    real_insert = outbox._insert

    def insert(conn: sqlite3.Connection, events: Any, sinks: Any) -> None:
        threads.append(threading.current_thread().name)
        real_insert(conn, events, sinks)

    outbox._insert = insert  # type: ignore[method-assign]
    try:
        await outbox.enqueue_many([make_event()], ["lago"])
        await outbox.enqueue_many([make_event() for _ in range(10)], ["lago"])
        loop_thread = threading.current_thread().name
        assert threads[0] == loop_thread and threads[1] != loop_thread
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*) FROM outbox").fetchone() == (11,)
    finally:
        await outbox.close()
