"""Outbox delivery throughput into the Lago stand-in over HTTP, SQLite and PostgreSQL.

Fills an outbox with N events, then times the DeliveryWorker with the real LagoSink
(batches of 100 to ``POST /api/v1/events/batch``) until bench/lago_counter.py has all N;
and, for comparison, the same from SQLite with one ``POST /api/v1/events`` per event.
bench/outbox_bench.py measures the enqueue latency and in-process delivery; this adds
the HTTP hop to (a stand-in for) Lago. Needs the Lago stand-in running:

    .venv/bin/python bench/outbox_lago.py --lago http://127.0.0.1:18300 --lago-key KEY
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outbox_bench import make_event

from tallygate.metering.delivery import DeliveryWorker
from tallygate.metering.outbox import Outbox
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tallygate.sinks.lago import LagoSettings, LagoSink


def lago_stats(base: str, reset: bool = False) -> dict[str, int]:
    req = urllib.request.Request(base + ("/_reset" if reset else "/_stats"),
                                 method="POST" if reset else "GET",
                                 data=b"" if reset else None)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


async def deliver(outbox: Outbox, n: int, base: str, key: str, *,
                  single_event: bool = False) -> float:
    await asyncio.to_thread(lago_stats, base, True)
    events = [make_event() for _ in range(n)]
    for i in range(0, n, 500):
        await outbox.enqueue_many(events[i:i + 500], ["lago"])
    sink = LagoSink(LagoSettings(api_base=base, api_key=key, event_code="llm_usage",
                                 single_event_mode=single_event))
    worker = DeliveryWorker(outbox, [sink], poll_interval_s=0.02)
    start = time.perf_counter()
    worker.start()
    deadline = start + 120
    while time.perf_counter() < deadline:
        got = (await asyncio.to_thread(lago_stats, base))["unique"]
        if got >= n:
            break
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - start
    await worker.stop()
    await sink.aclose()
    got = (await asyncio.to_thread(lago_stats, base))["unique"]
    if got < n:
        raise SystemExit(f"only {got} of {n} events reached the Lago stand-in")
    return n / elapsed


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--lago", default="http://127.0.0.1:18300")
    p.add_argument("--lago-key", default="lago-bench-key")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    a = p.parse_args()
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sq = SQLiteOutbox(Path(tmp) / "bench.db")
        await sq.open()
        try:
            out["sqlite_events_per_s"] = await deliver(sq, a.n, a.lago, a.lago_key)
        finally:
            await sq.close()
        # The one-POST-per-event way (LiteLLM's, and ours for old Lago), for comparison.
        single = SQLiteOutbox(Path(tmp) / "single.db")
        await single.open()
        try:
            out["sqlite_single_event_per_s"] = await deliver(
                single, a.n, a.lago, a.lago_key, single_event=True)
        finally:
            await single.close()
    schema = f"tg_bench_{uuid.uuid4().hex[:10]}"
    pg = PostgresOutbox(a.pg, schema=schema)
    await pg.open()
    try:
        out["postgres_events_per_s"] = await deliver(pg, a.n, a.lago, a.lago_key)
    finally:
        await pg.close()
        conn = await asyncpg.connect(a.pg)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    out["n"] = a.n
    print("OUTBOXJSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
