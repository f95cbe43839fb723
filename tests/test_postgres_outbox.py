"""PostgresOutbox on the real server, in a schema of its own per test."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tallygate.errors import ConfigError
from tallygate.event import now_ms
from tallygate.metering.factory import open_outbox
from tallygate.metering.postgres_outbox import PostgresOutbox
from tests.outbox_support import PG_DSN, drop_pg_schema, make_event, unique_pg_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = unique_pg_schema()
    yield name
    await drop_pg_schema(name)


@pytest.fixture
async def outbox(schema: str) -> AsyncIterator[PostgresOutbox]:
    box = PostgresOutbox(PG_DSN, schema=schema)
    await box.open()
    yield box
    await box.close()


async def _row(schema: str, row_id: int) -> asyncpg.Record:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetchrow(f'SELECT * FROM "{schema}".outbox WHERE id = $1', row_id)
    finally:
        await conn.close()


async def test_event_round_trips_and_enqueue_is_idempotent(outbox: PostgresOutbox) -> None:
    event = make_event()
    await outbox.enqueue(event, ["lago", "jsonl"])
    await outbox.enqueue(event, ["lago", "jsonl"])
    await outbox.enqueue_many([event, event], ["lago"])  # duplicates inside one insert too
    assert (await outbox.stats()).pending == 2
    [row] = await outbox.claim("lago", 10, 60)
    assert row.event == event and row.attempts == 1


async def test_concurrent_enqueues_are_group_committed(outbox: PostgresOutbox) -> None:
    events = [make_event() for _ in range(500)]
    await asyncio.gather(*(outbox.enqueue(e, ["lago"]) for e in events))
    assert (await outbox.stats()).pending == 500
    rows = await outbox.claim("lago", 1000, 60)
    assert {r.event.call_id for r in rows} == {e.call_id for e in events}


async def test_enqueue_from_another_threads_loop_hops_to_the_pool_loop(
        outbox: PostgresOutbox) -> None:
    event = make_event()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            asyncio.run(outbox.enqueue(event, ["lago"]))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    # Join off the loop: the other thread needs this loop to run its insert.
    await asyncio.to_thread(thread.join)
    assert errors == []
    assert [r.event.call_id for r in await outbox.claim("lago", 10, 60)] == [event.call_id]


async def test_two_pools_never_claim_the_same_row(outbox: PostgresOutbox, schema: str) -> None:
    await outbox.enqueue_many([make_event() for _ in range(1000)], ["lago"])
    other = PostgresOutbox(PG_DSN, schema=schema)
    await other.open()

    async def drain(box: PostgresOutbox) -> list[int]:
        ids: list[int] = []
        while rows := await box.claim("lago", 7, 60):
            ids += [r.id for r in rows]
        return ids

    try:
        got = await asyncio.gather(drain(outbox), drain(outbox), drain(other), drain(other))
    finally:
        await other.close()
    all_ids = [i for ids in got for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 1000
    assert sum(1 for ids in got if ids) >= 2


async def test_expired_lease_returns_rows_to_another_owner(
        outbox: PostgresOutbox, schema: str) -> None:
    await outbox.enqueue(make_event(), ["lago"])
    [row] = await outbox.claim("lago", 10, 0.05)
    assert await outbox.claim("lago", 10, 60) == []
    await asyncio.sleep(0.1)
    other = PostgresOutbox(PG_DSN, schema=schema)
    await other.open()
    try:
        [again] = await other.claim("lago", 10, 60)
        assert (again.id, again.attempts) == (row.id, 2)
        await outbox.mark_retry([row.id], "stale", 0)  # no longer the owner: ignored
        stored = await _row(schema, row.id)
        assert (stored["state"], stored["owner"]) == ("inflight", other.owner)
        await other.release([again.id])
        assert (await _row(schema, row.id))["attempts"] == 1
    finally:
        await other.close()


async def test_retry_dead_replay_stats(outbox: PostgresOutbox, schema: str) -> None:
    events = [make_event() for _ in range(4)]
    await outbox.enqueue_many(events, ["lago"])
    rows = await outbox.claim("lago", 10, 60)
    await outbox.mark_retry([rows[0].id], "503", 30)
    stored = await _row(schema, rows[0].id)
    assert stored["next_attempt_at_ms"] >= now_ms() + 29_000
    await outbox.mark_dead({rows[1].id: "422 bad code"})
    await outbox.mark_delivered([rows[2].id, rows[3].id])
    stats = await outbox.stats("lago")
    assert (stats.pending, stats.inflight, stats.delivered, stats.dead) == (1, 0, 2, 1)
    assert stats.last_error == "422 bad code"
    assert stats.oldest_pending_age_s is not None
    [dead] = await outbox.dead_rows()
    assert (dead.id, dead.call_id, dead.reason, dead.attempts) == (
        rows[1].id, events[1].call_id, "422 bad code", 1)
    assert await outbox.retry_dead([rows[0].id]) == 0
    assert await outbox.retry_dead() == 1
    assert await outbox.replay(0, sink="other") == 0
    assert await outbox.replay(0) == 2
    assert len(await outbox.claim("lago", 10, 60)) == 3   # the retried dead + 2 replayed
    assert await outbox.purge_delivered(now_ms() + 1) == 0


async def test_two_gateways_migrating_at_once(schema: str) -> None:
    boxes = [PostgresOutbox(PG_DSN, schema=schema) for _ in range(3)]
    await asyncio.gather(*(b.open() for b in boxes))
    for b in boxes:
        await b.close()
    conn = await asyncpg.connect(PG_DSN)
    try:
        versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_version')
        assert [v["version"] for v in versions] == [1]
        await conn.execute(f'INSERT INTO "{schema}".schema_version VALUES (99, 0)')
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="newer"):
        await PostgresOutbox(PG_DSN, schema=schema).open()


async def test_factory_opens_postgres_in_the_schema_of_the_url(schema: str) -> None:
    box = await open_outbox(f"{PG_DSN}?schema={schema}&application_name=tg")
    assert isinstance(box, PostgresOutbox) and box.schema == schema
    assert box.dsn == f"{PG_DSN}?application_name=tg"
    await box.close()
    with pytest.raises(ConfigError):
        PostgresOutbox(PG_DSN, schema="bad; drop")


async def test_enqueue_latency_is_printed(outbox: PostgresOutbox) -> None:
    samples = []
    for _ in range(200):
        event = make_event()
        start = time.perf_counter()
        await outbox.enqueue(event, ["lago"])
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(f"\npostgres enqueue (serial) p50={samples[100] * 1e6:.0f}us "
          f"p99={samples[198] * 1e6:.0f}us")
