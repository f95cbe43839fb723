"""The Outbox in PostgreSQL, shared by every gateway process and machine.

Claims use ``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint rows without
waiting on each other. Times (due, lease, created) come from the database clock, so
machines with skewed clocks still agree on when a lease runs out.

Enqueue uses group commit: concurrent callers put their rows on a queue, a writer task
inserts everything waiting in one statement (one transaction, one round trip), and each
caller's future resolves once that commit is done. Under load, per-call cost falls as
the batches grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.metering.outbox import DeadRow, OutboxRow, OutboxStats
from tallygate.metering.rowcodec import clip_error, decode_event, encode_event, new_owner_id

T = TypeVar("T")

# statement_timestamp(): one "now" per statement, from the database clock.
_NOW_MS = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK_KEY = "tallygate.outbox.migrate"


def _migrations(s: str) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """Forward-only, like the SQLite ones: never edit a released step, add one."""
    return (
        (1, (
            f"""CREATE TABLE {s}.outbox (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                sink text NOT NULL,
                call_id text NOT NULL,
                event jsonb NOT NULL,
                state text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
                attempts integer NOT NULL DEFAULT 0,
                next_attempt_at_ms bigint NOT NULL,
                lease_until_ms bigint,
                owner text,
                last_error text,
                created_at_ms bigint NOT NULL,
                updated_at_ms bigint NOT NULL,
                delivered_at_ms bigint,
                UNIQUE (sink, call_id)
            )""",
            # A claimed row's next_attempt_at_ms is its lease end (see SQLite outbox).
            f"""CREATE INDEX outbox_due ON {s}.outbox (sink, next_attempt_at_ms, id)
                WHERE state IN ('pending', 'inflight')""",
            f"CREATE INDEX outbox_state ON {s}.outbox (state, created_at_ms)",
        )),
    )


def _count(status: str) -> int:
    """The row count of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


@dataclass(slots=True)
class _PendingInsert:
    sinks: list[str]
    call_ids: list[str]
    events: list[str]
    done: asyncio.Future[None]


class PostgresOutbox:
    """A durable outbox in the tables of ``schema`` in the database at ``dsn``."""

    def __init__(self, dsn: str, *, schema: str = "tallygate", pool_min_size: int = 1,
                 pool_max_size: int = 10, max_group_rows: int = 1000) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"outbox schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
        self.dsn = dsn
        self.schema = schema
        self.owner = new_owner_id()
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._max_group_rows = max_group_rows
        self._pool: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_PendingInsert] | None = None
        self._writer: asyncio.Task[None] | None = None
        s = f'"{schema}"'
        self._t = f"{s}.outbox"
        self._migration_steps = _migrations(s)

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self._pool_min_size,
                                               max_size=self._pool_max_size)
        try:
            await self._migrate()
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_groups(self._queue),
                                           name="tallygate-outbox-writer")

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Two gateways starting together: the second waits here, then finds the
            # schema current and does nothing.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"{_MIGRATION_LOCK_KEY}:{self.schema}")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await conn.execute(f"""CREATE TABLE IF NOT EXISTS "{self.schema}".schema_version (
                version integer PRIMARY KEY, applied_at_ms bigint NOT NULL)""")
            current = await conn.fetchval(
                f'SELECT coalesce(max(version), 0) FROM "{self.schema}".schema_version')
            latest = self._migration_steps[-1][0]
            if current > latest:
                raise ConfigError(f"outbox schema {self.schema} is at version {current}, newer "
                                  f"than this tallygate knows ({latest}); upgrade tallygate")
            for version, statements in self._migration_steps:
                if version > current:
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        f'INSERT INTO "{self.schema}".schema_version VALUES ($1, {_NOW_MS})',
                        version)

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._queue is not None:
            await self._queue.join()  # every enqueued row committed first
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        pool, self._pool = self._pool, None
        await pool.close()

    async def _on_own_loop(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` on the loop that owns the pool, from whatever loop calls us."""
        if self._pool is None or self._loop is None:
            raise RuntimeError("PostgresOutbox is not open")
        if asyncio.get_running_loop() is self._loop:
            return await fn()
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(fn), self._loop)
        return await asyncio.wrap_future(future)

    # -- request path: group commit ----------------------------------------------

    async def enqueue(self, event: UsageEvent, sinks: Sequence[str]) -> None:
        await self.enqueue_many([event], sinks)

    async def enqueue_many(self, events: Sequence[UsageEvent], sinks: Sequence[str]) -> None:
        if not events or not sinks:
            return
        # Encode here, so that an unencodable event fails its own caller only.
        encoded = [(e.call_id, encode_event(e).decode()) for e in events]
        item_sinks: list[str] = []
        call_ids: list[str] = []
        data: list[str] = []
        for call_id, text in encoded:
            for sink in sinks:
                item_sinks.append(sink)
                call_ids.append(call_id)
                data.append(text)

        async def put_and_wait() -> None:
            if self._queue is None:
                raise RuntimeError("PostgresOutbox is not open")
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(_PendingInsert(item_sinks, call_ids, data, done))
            await done

        await self._on_own_loop(put_and_wait)

    async def _write_groups(self, queue: asyncio.Queue[_PendingInsert]) -> None:
        while True:
            group = [await queue.get()]
            rows = len(group[0].sinks)
            while rows < self._max_group_rows and not queue.empty():
                item = queue.get_nowait()
                group.append(item)
                rows += len(item.sinks)
            try:
                await self._insert_group(group)
            except Exception as exc:
                if len(group) == 1:
                    _fail(group[0], exc)
                else:
                    # One event jsonb refuses must not fail the others: one insert each
                    # (each is one atomic statement; a row already there is left alone).
                    for item in group:
                        try:
                            await self._insert_group([item])
                        except Exception as alone:
                            _fail(item, alone)
                        else:
                            _done(item)
            else:
                for item in group:
                    _done(item)
            finally:
                for _ in group:
                    queue.task_done()

    async def _insert_group(self, group: list[_PendingInsert]) -> None:
        sinks = [s for item in group for s in item.sinks]
        call_ids = [c for item in group for c in item.call_ids]
        events = [e for item in group for e in item.events]
        await self._pool.execute(
            f"""INSERT INTO {self._t} (sink, call_id, event, next_attempt_at_ms,
                created_at_ms, updated_at_ms)
            SELECT s, c, e::jsonb, {_NOW_MS}, {_NOW_MS}, {_NOW_MS}
            FROM unnest($1::text[], $2::text[], $3::text[]) AS t(s, c, e)
            ON CONFLICT (sink, call_id) DO NOTHING""", sinks, call_ids, events)

    # -- worker side ---------------------------------------------------------------

    async def claim(self, sink: str, limit: int, lease_s: float, *,
                    ignore_backoff: bool = False) -> list[OutboxRow]:
        due = f"next_attempt_at_ms <= {_NOW_MS}"
        if ignore_backoff:
            due = f"({due} OR state = 'pending')"

        async def run() -> list[OutboxRow]:
            raw = await self._pool.fetch(
                f"""UPDATE {self._t} SET state = 'inflight', owner = $1,
                    lease_until_ms = {_NOW_MS} + $2, next_attempt_at_ms = {_NOW_MS} + $2,
                    attempts = attempts + 1, updated_at_ms = {_NOW_MS}
                WHERE id IN (
                    SELECT id FROM {self._t}
                    WHERE sink = $3 AND state IN ('pending', 'inflight')
                        AND {due}
                    ORDER BY next_attempt_at_ms, id LIMIT $4
                    FOR UPDATE SKIP LOCKED)
                RETURNING id, sink, call_id, event, attempts""",
                self.owner, int(lease_s * 1000), sink, limit)
            rows: list[OutboxRow] = []
            corrupt: dict[int, str] = {}
            for r in raw:
                try:
                    rows.append(OutboxRow(r["id"], r["sink"], decode_event(r["event"]),
                                          r["attempts"]))
                except (ValueError, KeyError, TypeError) as exc:
                    corrupt[r["id"]] = clip_error(f"unreadable event {r['call_id']}: {exc!r}")
            if corrupt:
                await self._mark_dead(corrupt)
            rows.sort(key=lambda row: row.id)
            return rows

        return await self._on_own_loop(run)

    async def mark_delivered(self, ids: Sequence[int]) -> None:
        if ids:
            await self._on_own_loop(lambda: self._pool.execute(
                f"""UPDATE {self._t} SET state = 'delivered', delivered_at_ms = {_NOW_MS},
                    updated_at_ms = {_NOW_MS}, owner = NULL, lease_until_ms = NULL
                WHERE id = ANY($1::bigint[]) AND state <> 'delivered'""", list(ids)))

    async def mark_retry(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        if ids:
            await self._on_own_loop(lambda: self._pool.execute(
                f"""UPDATE {self._t} SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                    next_attempt_at_ms = {_NOW_MS} + $2, last_error = $3,
                    updated_at_ms = {_NOW_MS}
                WHERE id = ANY($1::bigint[]) AND state = 'inflight' AND owner = $4""",
                list(ids), int(delay_s * 1000), clip_error(error), self.owner))

    async def mark_dead(self, reasons: dict[int, str]) -> None:
        if reasons:
            await self._on_own_loop(lambda: self._mark_dead(reasons))

    async def _mark_dead(self, reasons: dict[int, str]) -> None:
        await self._pool.execute(
            f"""UPDATE {self._t} AS o SET state = 'dead', last_error = t.reason, owner = NULL,
                lease_until_ms = NULL, updated_at_ms = {_NOW_MS}
            FROM unnest($1::bigint[], $2::text[]) AS t(id, reason)
            WHERE o.id = t.id AND o.state = 'inflight' AND o.owner = $3""",
            list(reasons), [clip_error(r) for r in reasons.values()], self.owner)

    async def release(self, ids: Sequence[int], delay_s: float = 0.0) -> None:
        if ids:
            await self._on_own_loop(lambda: self._pool.execute(
                f"""UPDATE {self._t} SET state = 'pending', owner = NULL, lease_until_ms = NULL,
                    next_attempt_at_ms = {_NOW_MS} + $2, attempts = greatest(attempts - 1, 0),
                    updated_at_ms = {_NOW_MS}
                WHERE id = ANY($1::bigint[]) AND state = 'inflight' AND owner = $3""",
                list(ids), int(delay_s * 1000), self.owner))

    # -- operators -----------------------------------------------------------------

    async def stats(self, sink: str | None = None) -> OutboxStats:
        async def run() -> OutboxStats:
            async with self._pool.acquire() as conn:
                counts = {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0}
                oldest: int | None = None
                for r in await conn.fetch(
                        f"""SELECT state, count(*) AS n, min(created_at_ms) AS first_ms,
                            {_NOW_MS} AS now_ms
                        FROM {self._t} WHERE $1::text IS NULL OR sink = $1
                        GROUP BY state""", sink):
                    counts[r["state"]] = r["n"]
                    if r["state"] in ("pending", "inflight"):
                        age = r["now_ms"] - r["first_ms"]
                        oldest = age if oldest is None else max(oldest, age)
                last_error = await conn.fetchval(
                    f"""SELECT last_error FROM {self._t}
                    WHERE state IN ('pending', 'inflight', 'dead') AND last_error IS NOT NULL
                        AND ($1::text IS NULL OR sink = $1)
                    ORDER BY updated_at_ms DESC LIMIT 1""", sink)
            return OutboxStats(
                pending=counts["pending"], inflight=counts["inflight"],
                delivered=counts["delivered"], dead=counts["dead"],
                oldest_pending_age_s=None if oldest is None else max(0, oldest) / 1000,
                last_error=last_error)

        return await self._on_own_loop(run)

    async def dead_rows(self, limit: int = 100, sink: str | None = None) -> list[DeadRow]:
        async def run() -> list[DeadRow]:
            raw = await self._pool.fetch(
                f"""SELECT id, sink, call_id, coalesce(last_error, '') AS reason, attempts,
                    created_at_ms
                FROM {self._t} WHERE state = 'dead' AND ($2::text IS NULL OR sink = $2)
                ORDER BY id LIMIT $1""", limit, sink)
            return [DeadRow(r["id"], r["sink"], r["call_id"], r["reason"], r["attempts"],
                            r["created_at_ms"]) for r in raw]

        return await self._on_own_loop(run)

    async def retry_dead(self, ids: Sequence[int] | None = None) -> int:
        status: str = await self._on_own_loop(lambda: self._pool.execute(
            f"""UPDATE {self._t} SET state = 'pending', attempts = 0,
                next_attempt_at_ms = {_NOW_MS}, updated_at_ms = {_NOW_MS}
            WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))""",
            None if ids is None else list(ids)))
        return _count(status)

    async def replay(self, since_ms: int, sink: str | None = None) -> int:
        status: str = await self._on_own_loop(lambda: self._pool.execute(
            f"""UPDATE {self._t} SET state = 'pending', attempts = 0,
                next_attempt_at_ms = {_NOW_MS}, delivered_at_ms = NULL,
                updated_at_ms = {_NOW_MS}
            WHERE state = 'delivered' AND created_at_ms >= $1
                AND ($2::text IS NULL OR sink = $2)""", since_ms, sink))
        return _count(status)

    async def purge_delivered(self, before_ms: int) -> int:
        status: str = await self._on_own_loop(lambda: self._pool.execute(
            f"DELETE FROM {self._t} WHERE state = 'delivered' AND delivered_at_ms < $1",
            before_ms))
        return _count(status)


def _done(item: _PendingInsert) -> None:
    if not item.done.done():
        item.done.set_result(None)


def _fail(item: _PendingInsert, exc: BaseException) -> None:
    if not item.done.done():
        item.done.set_exception(exc)


async def _as_coroutine(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
