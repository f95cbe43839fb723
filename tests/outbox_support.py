"""Shared pieces of the outbox and delivery tests: events, a scripted sink, Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tallygate.event import UsageEvent, new_call_id, now_ms
from tallygate.sinks.base import BatchResult
from tallygate.usage import Usage

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def make_event(call_id: str | None = None, *, cost: str = "0.00123") -> UsageEvent:
    t = now_ms()
    return UsageEvent(
        call_id=call_id or new_call_id(), started_at_ms=t - 250, finished_at_ms=t,
        model="gpt-4o-mini", provider="openai", provider_model="gpt-4o-mini-2024-07-18",
        usage=Usage(input_tokens=100, cache_read_tokens=20, output_tokens=40,
                    reasoning_tokens=10),
        cost=Decimal(cost), customer="cust-1", key_id="key-1",
        flags=frozenset({"stream"}), metadata={"team": "a"})


class ScriptedSink:
    """A test double of a remote sink: records what it gets, answers as scripted.

    The first ``raise_times`` sends raise, the next ``pause_times`` report paused, the
    next ``fail_times`` ask for a retry (with ``retry_after``); after that it delivers
    everything except ``dead_ids``. ``delay_s`` makes every send slow.
    """

    def __init__(self, name: str = "lago", *, max_batch: int = 100, fail_times: int = 0,
                 retry_after: float | None = None, pause_times: int = 0,
                 raise_times: int = 0, dead_ids: Sequence[str] = (),
                 delay_s: float = 0.0) -> None:
        self.name = name
        self.max_batch = max_batch
        self.fail_times = fail_times
        self.retry_after = retry_after
        self.pause_times = pause_times
        self.raise_times = raise_times
        self.dead_ids = set(dead_ids)
        self.delay_s = delay_s
        self.batches: list[list[str]] = []
        self.delivered: list[str] = []
        self.changed = asyncio.Event()

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        ids = [e.call_id for e in events]
        self.batches.append(ids)
        self.changed.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.raise_times > 0:
            self.raise_times -= 1
            raise RuntimeError("sink bug")
        if self.pause_times > 0:
            self.pause_times -= 1
            return BatchResult.all_retry(events, "401 unauthorized", paused=True)
        if self.fail_times > 0:
            self.fail_times -= 1
            return BatchResult.all_retry(events, "503 from lago", retry_after=self.retry_after)
        result = BatchResult()
        for call_id in ids:
            if call_id in self.dead_ids:
                result.dead[call_id] = "422 invalid code"
            else:
                result.delivered.append(call_id)
                self.delivered.append(call_id)
        return result

    async def aclose(self) -> None:
        return None


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    """Poll ``predicate()`` (sync or async) until true; fail the test after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def unique_pg_schema() -> str:
    return f"tg_test_{uuid.uuid4().hex[:12]}"


async def drop_pg_schema(name: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def claim_all_in_process(path: str, sink: str, limit: int, start: Any, out: Any) -> None:
    """Run in a child process: claim until nothing is left, send back the ids.

    ``start`` is a barrier, so that the processes claim at the same time.
    """
    from tallygate.metering.sqlite_outbox import SQLiteOutbox

    async def run() -> list[int]:
        outbox = SQLiteOutbox(path)
        await outbox.open()
        ids: list[int] = []
        start.wait()
        try:
            while rows := await outbox.claim(sink, limit, 60):
                ids += [r.id for r in rows]
        finally:
            await outbox.close()
        return ids

    out.put(asyncio.run(run()))


@pytest.fixture(name="url",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend_url_fixture(request: pytest.FixtureRequest,
                              tmp_path: Path) -> AsyncIterator[str]:
    """A database URL for each backend: a SQLite file, then a PostgreSQL schema of its own
    (dropped after the test)."""
    if request.param == "sqlite":
        yield str(tmp_path / "outbox.db")
        return
    schema = unique_pg_schema()
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        await drop_pg_schema(schema)
