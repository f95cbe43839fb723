"""Outbox benchmark: enqueue latency (p50/p99) and delivery throughput.

    .venv/bin/python bench/outbox_bench.py [--n 5000] [--pg postgresql://...] [--no-pg]

Enqueue is measured one call at a time (the request path of one call), and for
Postgres also with 64 concurrent callers (group commit). Delivery throughput is
events per second from a full outbox into a sink that accepts everything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import asyncpg

from tallygate.event import UsageEvent, new_call_id, now_ms
from tallygate.metering.delivery import DeliveryWorker
from tallygate.metering.outbox import Outbox
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tallygate.sinks.base import BatchResult
from tallygate.usage import Usage


def make_event() -> UsageEvent:
    t = now_ms()
    return UsageEvent(call_id=new_call_id(), started_at_ms=t - 300, finished_at_ms=t,
                      model="gpt-4o-mini", provider="openai", provider_model="gpt-4o-mini",
                      usage=Usage(input_tokens=812, cache_read_tokens=128, output_tokens=96),
                      cost=Decimal("0.000211"), customer="cust-42", key_id="key-7")


class AcceptAllSink:
    name = "lago"
    max_batch = 100

    def __init__(self, expected: int) -> None:
        self.count = 0
        self.expected = expected
        self.all_in = asyncio.Event()

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        self.count += len(events)
        if self.count >= self.expected:
            self.all_in.set()
        return BatchResult(delivered=[e.call_id for e in events])

    async def aclose(self) -> None:
        return None


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    mean = statistics.fmean(ordered)
    return f"p50={p50 * 1e6:7.0f}us  p99={p99 * 1e6:7.0f}us  mean={mean * 1e6:7.0f}us"


async def serial_enqueue(outbox: Outbox, n: int) -> list[float]:
    events = [make_event() for _ in range(n)]
    samples = []
    for event in events:
        start = time.perf_counter()
        await outbox.enqueue(event, ["lago"])
        samples.append(time.perf_counter() - start)
    return samples


async def concurrent_enqueue(outbox: Outbox, n: int, callers: int) -> tuple[list[float], float]:
    events = [make_event() for _ in range(n)]
    samples: list[float] = []

    async def caller(chunk: list[UsageEvent]) -> None:
        for event in chunk:
            start = time.perf_counter()
            await outbox.enqueue(event, ["lago"])
            samples.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller(events[i::callers]) for i in range(callers)))
    return samples, n / (time.perf_counter() - start)


async def delivery_rate(outbox: Outbox, expected: int) -> float:
    sink = AcceptAllSink(expected)
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=0.05)
    start = time.perf_counter()
    worker.start()
    await sink.all_in.wait()
    elapsed = time.perf_counter() - start
    await worker.stop()
    return expected / elapsed


async def bench_sqlite(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = SQLiteOutbox(Path(tmp) / "bench.db")
        await outbox.open()
        try:
            await serial_enqueue(outbox, 200)  # warm up
            samples = await serial_enqueue(outbox, n)
            print(f"sqlite   enqueue (serial, {n}):       {percentiles(samples)}")
            rate = await delivery_rate(outbox, n + 200)
            print(f"sqlite   delivery: {rate:,.0f} events/s")
        finally:
            await outbox.close()


async def bench_postgres(dsn: str, n: int) -> None:
    schema = f"tg_bench_{uuid.uuid4().hex[:10]}"
    outbox = PostgresOutbox(dsn, schema=schema)
    await outbox.open()
    try:
        await serial_enqueue(outbox, 100)
        samples = await serial_enqueue(outbox, n)
        print(f"postgres enqueue (serial, {n}):       {percentiles(samples)}")
        samples, rate = await concurrent_enqueue(outbox, n, 64)
        print(f"postgres enqueue (64 callers, {n}):   {percentiles(samples)}  "
              f"{rate:,.0f} enqueues/s")
        rate = await delivery_rate(outbox, 2 * n + 100)
        print(f"postgres delivery: {rate:,.0f} events/s")
    finally:
        await outbox.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    await bench_sqlite(args.n)
    if not args.no_pg:
        await bench_postgres(args.pg, args.n)


if __name__ == "__main__":
    asyncio.run(main())
