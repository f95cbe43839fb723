"""The Outbox on one SQLite file, shared by the threads and processes of one machine.

Durability: WAL mode with ``synchronous=NORMAL``. A commit writes the transaction to
the WAL file with write(2) before returning, so a committed row survives the process
being killed (kill -9, OOM killer): the data is in the OS page cache and the kernel
writes it out. Only an OS crash or power loss may lose the last few commits, because
NORMAL does not fsync on every commit; that is the price of a sub-millisecond enqueue.

Concurrency: every thread gets its own connection (sqlite3 connections must not be
used by two threads at once). ``enqueue``'s one INSERT runs on the caller's thread when
no write holds the file (taken without waiting through the writers' lock file, so it
never waits there); else it goes, like every other write (claims, marks), to the file's
one writer thread (``tallygate.sqlite_writer``, shared with the access tables' writes),
so the event loop never waits on a lock or on another write of this process. Reads
(stats, dead rows) and WAL checkpoints (which fsync) run on a background thread of this
object, never in a writer's way. Claims take the database write lock with BEGIN
IMMEDIATE before reading, so two processes never claim the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tallygate import sqlite_writer
from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.metering.outbox import DeadRow, OutboxRow, OutboxStats
from tallygate.metering.recent_events import RecentEvents
from tallygate.metering.rowcodec import (
    clip_error,
    decode_event,
    encode_event,
    new_owner_id,
    wall_ms,
)
from tallygate.sqlite_connect import connect

T = TypeVar("T")

BUSY_TIMEOUT_S = 10.0
REQUEST_PATH_CHECKPOINT_PAGES = 20_000  # ~80 MB of WAL
# A passive checkpoint on the background thread, after writes, at most this often. While
# a checkpoint's pages go to disk, writes to the file can stall in the kernel for as long
# as that takes: small and frequent keeps each stall short. One call at a time on the
# bench machine, p99 was 11-19 ms with one a second, 4.2-4.7 ms with one every 0.2 s
# (3.6-3.9 ms with the file in memory), 45-49 ms with one every 5 s; c=50 unchanged.
CHECKPOINT_EVERY_S = 0.2
# A lone call's insert runs on the event loop when the file is free (cheaper than the
# writer thread's round trip); a group commit of more goes to the writer thread.
CALLER_INSERT_MAX_EVENTS = 2

# Forward-only: a migration is never edited once released; add a new one instead.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            call_id TEXT NOT NULL,
            event TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at_ms INTEGER NOT NULL,
            lease_until_ms INTEGER,
            owner TEXT,
            last_error TEXT,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            delivered_at_ms INTEGER,
            UNIQUE (sink, call_id)
        )""",
        # Claims: a claimed row's next_attempt_at_ms is its lease end, so one range
        # scan finds both due pending rows and inflight rows whose worker died.
        """CREATE INDEX outbox_due ON outbox (sink, next_attempt_at_ms)
            WHERE state IN ('pending', 'inflight')""",
        # Stats, dead listing, replay and purge.
        "CREATE INDEX outbox_state ON outbox (state, created_at_ms)",
    )),
)

_INSERT_ROW = "(?, ?, ?, ?, ?, ?)"
_INSERT_HEAD = """INSERT INTO outbox (sink, call_id, event, next_attempt_at_ms, created_at_ms,
    updated_at_ms) VALUES """
_INSERT_TAIL = " ON CONFLICT (sink, call_id) DO NOTHING"

# A claim is two statements of one step each (not one UPDATE ... RETURNING, which the
# writer thread would step through row by row, trading the GIL with the event loop once
# a row): the due rows as one JSON array, then their lease.
_CLAIM_SELECT = """
SELECT json_group_array(json_array(id, call_id, CAST(event AS TEXT), attempts)) FROM (
    SELECT id, call_id, event, attempts FROM outbox
    WHERE sink = ? AND state IN ('pending', 'inflight') AND {due}
    ORDER BY next_attempt_at_ms, id LIMIT ?)
"""
_CLAIM_DUE = _CLAIM_SELECT.format(due="next_attempt_at_ms <= ?")
_CLAIM_FLUSH = _CLAIM_SELECT.format(due="(next_attempt_at_ms <= ? OR state = 'pending')")
_CLAIM_LEASE = """
UPDATE outbox SET state = 'inflight', owner = ?, lease_until_ms = ?, next_attempt_at_ms = ?,
    attempts = attempts + 1, updated_at_ms = ?
WHERE id IN (SELECT value FROM json_each(?))
"""

_IDS = "(SELECT value FROM json_each(?))"


@contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE takes the write lock first, so what we read is what we update."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _ids_json(ids: Sequence[int]) -> str:
    return orjson.dumps(list(ids)).decode()


class SQLiteOutbox:
    """A durable outbox in the SQLite file at ``path`` (created when missing)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = str(path)
        self.owner = new_owner_id()
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._writer: sqlite_writer.Writer | None = None
        # Off for the forked workers of one gateway: measured slower there (each one's
        # inserts on its loop against the others' writes), faster for one process.
        self.insert_on_caller = True
        self._caller_writes = sqlite_writer.CallerWrites(self.path)  # ``_insert_now``
        self._last_checkpoint = 0.0
        self._closed = False
        self._recent = RecentEvents()

    # -- connections -------------------------------------------------------------

    def _connect(self, background: bool) -> sqlite3.Connection:
        conn = connect(self.path, self._busy_timeout_s)
        if not background:
            # A checkpoint fsyncs the database: keep it out of the writes' way. The
            # background thread checkpoints (passive) every second after deliveries;
            # a writer only steps in if nothing does, so that the WAL stays bounded.
            conn.execute(f"PRAGMA wal_autocheckpoint={REQUEST_PATH_CHECKPOINT_PAGES}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise RuntimeError("SQLiteOutbox is closed")
        conn = self._connect(background=getattr(self._local, "background", False))
        me = threading.current_thread()
        with self._conns_lock:
            # Threads come and go (executors); close the connections of dead ones.
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            self._conns[me] = conn
        self._local.conn = conn
        return conn

    def _mark_background(self) -> None:
        self._local.background = True

    async def _background(self, fn: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise RuntimeError("SQLiteOutbox is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _write(self, fn: Callable[..., T], *args: object, urgent: bool = False) -> T:
        """``fn`` on the file's writer thread (``urgent``: a caller waits to answer)."""
        if self._writer is None:
            raise RuntimeError("SQLiteOutbox is not open")
        return await sqlite_writer.run(self._writer, fn, *args, urgent=urgent)

    def _maybe_checkpoint(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None or loop.time() - self._last_checkpoint < CHECKPOINT_EVERY_S:
            return
        self._last_checkpoint = loop.time()
        loop.run_in_executor(self._executor, self._checkpoint_quietly)

    def _checkpoint_quietly(self) -> None:
        # A failed one is done by the next (or by a writer's autocheckpoint).
        with contextlib.suppress(sqlite3.Error):
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="tallygate-outbox",
                initializer=self._mark_background)
        if self._writer is None:
            self._writer = sqlite_writer.acquire(self.path)
        await self._write(self._migrate)

    def _migrate(self) -> None:
        conn = self._conn()
        with _write_transaction(conn):
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_version (
                version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)""")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            latest = MIGRATIONS[-1][0]
            if current > latest:
                raise ConfigError(f"outbox {self.path} has schema version {current}, newer "
                                  f"than this tallygate knows ({latest}); upgrade tallygate")
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version VALUES (?, ?)",
                                 (version, wall_ms()))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(executor, self._checkpoint)
            executor.shutdown(wait=True)
        if self._writer is not None:
            self._writer = None
            sqlite_writer.release(self.path)
        self._caller_writes.close()
        with self._conns_lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()

    def _checkpoint(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # -- request path --------------------------------------------------------------

    def enqueue_sync(self, event: UsageEvent, sinks: Sequence[str]) -> None:
        """Commit one row per sink on this thread; a row already there is left alone."""
        self.enqueue_many_sync([event], sinks)

    def enqueue_many_sync(self, events: Sequence[UsageEvent], sinks: Sequence[str]) -> None:
        if self._closed:
            raise RuntimeError("SQLiteOutbox is closed")
        self._insert(self._conn(), events, sinks)

    def _insert(self, conn: sqlite3.Connection, events: Sequence[UsageEvent],
                sinks: Sequence[str]) -> None:
        if not events or not sinks:
            return
        now = wall_ms()
        params: list[object] = []
        recent = self._recent
        for event in events:
            data = encode_event(event).decode()
            recent.put(event.call_id, data, event)
            for sink in sinks:
                params += (sink, event.call_id, data, now, now, now)
        rows = len(events) * len(sinks)
        # One statement is one atomic transaction: no BEGIN/COMMIT round needed.
        sql = _INSERT_HEAD + ", ".join([_INSERT_ROW] * rows) + _INSERT_TAIL
        conn.execute(sql, params)

    async def enqueue(self, event: UsageEvent, sinks: Sequence[str]) -> None:
        await self.enqueue_many([event], sinks)

    async def enqueue_many(self, events: Sequence[UsageEvent], sinks: Sequence[str]) -> None:
        if len(events) > CALLER_INSERT_MAX_EVENTS or not self._insert_now(events, sinks):
            # On the writer thread, ahead of its background work: the file is busy (the
            # insert may wait on the write lock, and the loop must not wait with it), or
            # the batch is big enough that running it beside the loop, which sqlite3
            # lets it do, is worth the two thread hops.
            await self._write(self.enqueue_many_sync, events, sinks, urgent=True)
        self._maybe_checkpoint()  # also while nothing is delivered (a sink is down)

    def _insert_now(self, events: Sequence[UsageEvent], sinks: Sequence[str]) -> bool:
        """The insert on the caller's thread (the event loop) when no write holds the
        file, so it cannot wait: one INSERT of tens of microseconds, without the two
        thread hops of the writer's round trip, which cost more than the insert. False
        (nothing written) when a write of this process or another holds the file."""
        if self._closed or not self.insert_on_caller or not events or not sinks:
            return False
        try:
            self._caller_writes.run(lambda conn: self._insert(conn, events, sinks))
        except sqlite_writer.FileBusy:
            return False
        return True

    # -- worker side ---------------------------------------------------------------

    async def claim(self, sink: str, limit: int, lease_s: float, *,
                    ignore_backoff: bool = False) -> list[OutboxRow]:
        return await self._write(self._claim, sink, limit, lease_s, ignore_backoff)

    def _claim(self, sink: str, limit: int, lease_s: float,
               ignore_backoff: bool) -> list[OutboxRow]:
        conn = self._conn()
        now = wall_ms()
        until = now + int(lease_s * 1000)
        with _write_transaction(conn):
            sql = _CLAIM_FLUSH if ignore_backoff else _CLAIM_DUE
            (found,) = conn.execute(sql, (sink, now, limit)).fetchone()
            raw: list[list[Any]] = orjson.loads(found)  # [id, call_id, event, attempts]
            if raw:
                conn.execute(_CLAIM_LEASE, (self.owner, until, until, now,
                                            _ids_json([r[0] for r in raw])))
        rows: list[OutboxRow] = []
        corrupt: dict[int, str] = {}
        recent = self._recent
        for row_id, call_id, data, attempts in raw:
            try:
                event = recent.get(call_id, data) or decode_event(data)
                rows.append(OutboxRow(row_id, sink, event, attempts + 1))
            except (ValueError, KeyError, TypeError) as exc:
                corrupt[row_id] = clip_error(f"unreadable event {call_id}: {exc!r}")
        if corrupt:
            self._mark_dead(corrupt)
        rows.sort(key=lambda r: r.id)
        return rows

    async def mark_delivered(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write(self._mark_delivered, ids)
            self._maybe_checkpoint()

    def _mark_delivered(self, ids: Sequence[int]) -> None:
        now = wall_ms()
        self._conn().execute(
            f"""UPDATE outbox SET state = 'delivered', delivered_at_ms = ?, updated_at_ms = ?,
                owner = NULL, lease_until_ms = NULL
            WHERE id IN {_IDS} AND state != 'delivered'""", (now, now, _ids_json(ids)))

    async def mark_retry(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        if ids:
            await self._write(self._mark_retry, ids, error, delay_s)

    def _mark_retry(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        now = wall_ms()
        self._conn().execute(
            f"""UPDATE outbox SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                next_attempt_at_ms = ?, last_error = ?, updated_at_ms = ?
            WHERE id IN {_IDS} AND state = 'inflight' AND owner = ?""",
            (now + int(delay_s * 1000), clip_error(error), now, _ids_json(ids), self.owner))

    async def mark_dead(self, reasons: dict[int, str]) -> None:
        if reasons:
            await self._write(self._mark_dead, reasons)

    def _mark_dead(self, reasons: dict[int, str]) -> None:
        conn = self._conn()
        now = wall_ms()
        with _write_transaction(conn):
            conn.executemany(
                """UPDATE outbox SET state = 'dead', last_error = ?, owner = NULL,
                    lease_until_ms = NULL, updated_at_ms = ?
                WHERE id = ? AND state = 'inflight' AND owner = ?""",
                [(clip_error(reason), now, row_id, self.owner)
                 for row_id, reason in reasons.items()])

    async def release(self, ids: Sequence[int], delay_s: float = 0.0) -> None:
        if ids:
            await self._write(self._release, ids, delay_s)

    def _release(self, ids: Sequence[int], delay_s: float) -> None:
        now = wall_ms()
        self._conn().execute(
            f"""UPDATE outbox SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                next_attempt_at_ms = ?, attempts = max(attempts - 1, 0), updated_at_ms = ?
            WHERE id IN {_IDS} AND state = 'inflight' AND owner = ?""",
            (now + int(delay_s * 1000), now, _ids_json(ids), self.owner))

    # -- operators -----------------------------------------------------------------

    async def stats(self, sink: str | None = None) -> OutboxStats:
        return await self._background(self._stats, sink)

    def _stats(self, sink: str | None) -> OutboxStats:
        conn = self._conn()
        where, args = ("WHERE sink = ?", (sink,)) if sink is not None else ("", ())
        counts = {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0}
        oldest: int | None = None
        for state, count, first_ms in conn.execute(
                f"SELECT state, count(*), min(created_at_ms) FROM outbox {where} GROUP BY state",
                args):
            counts[state] = count
            if state in ("pending", "inflight") and (oldest is None or first_ms < oldest):
                oldest = first_ms
        error_row = conn.execute(
            f"""SELECT last_error FROM outbox
            WHERE state IN ('pending', 'inflight', 'dead') AND last_error IS NOT NULL
            {"AND sink = ?" if sink is not None else ""}
            ORDER BY updated_at_ms DESC LIMIT 1""", args).fetchone()
        return OutboxStats(
            pending=counts["pending"], inflight=counts["inflight"],
            delivered=counts["delivered"], dead=counts["dead"],
            oldest_pending_age_s=None if oldest is None else max(0, wall_ms() - oldest) / 1000,
            last_error=None if error_row is None else error_row[0])

    async def dead_rows(self, limit: int = 100, sink: str | None = None) -> list[DeadRow]:
        return await self._background(self._dead_rows, limit, sink)

    def _dead_rows(self, limit: int, sink: str | None) -> list[DeadRow]:
        where, args = ("AND sink = ?", (sink,)) if sink is not None else ("", ())
        cursor = self._conn().execute(
            f"""SELECT id, sink, call_id, coalesce(last_error, ''), attempts, created_at_ms
            FROM outbox WHERE state = 'dead' {where} ORDER BY id LIMIT ?""", (*args, limit))
        return [DeadRow(*row) for row in cursor]

    async def retry_dead(self, ids: Sequence[int] | None = None) -> int:
        return await self._write(self._retry_dead, ids)

    def _retry_dead(self, ids: Sequence[int] | None) -> int:
        now = wall_ms()
        where, args = (f"AND id IN {_IDS}", (_ids_json(ids),)) if ids is not None else ("", ())
        cursor = self._conn().execute(
            f"""UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?,
                updated_at_ms = ?
            WHERE state = 'dead' {where}""", (now, now, *args))
        return cursor.rowcount

    async def replay(self, since_ms: int, sink: str | None = None) -> int:
        return await self._write(self._replay, since_ms, sink)

    def _replay(self, since_ms: int, sink: str | None) -> int:
        now = wall_ms()
        where, args = ("AND sink = ?", (sink,)) if sink is not None else ("", ())
        cursor = self._conn().execute(
            f"""UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at_ms = ?,
                delivered_at_ms = NULL, updated_at_ms = ?
            WHERE state = 'delivered' AND created_at_ms >= ? {where}""",
            (now, now, since_ms, *args))
        return cursor.rowcount

    async def purge_delivered(self, before_ms: int) -> int:
        return await self._write(self._purge_delivered, before_ms)

    def _purge_delivered(self, before_ms: int) -> int:
        cursor = self._conn().execute(
            "DELETE FROM outbox WHERE state = 'delivered' AND delivered_at_ms < ?",
            (before_ms,))
        return cursor.rowcount
