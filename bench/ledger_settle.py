"""What the dashboard's aggregates cost each settlement (the ledger sink's write).

    .venv/bin/python bench/ledger_settle.py [--backend sqlite|postgres|both] [--rounds 5]

``budgets.settle_many`` (what the ``ledger`` outbox sink runs: the ledger row, the budget
spend, the reservation release, in one transaction) timed on four databases side by
side, in alternating rounds so that a busy machine slows them alike:

- ``ledger only``: access migrations 1-2 (no rollup);
- ``+ daily rollup``: migration 3 (the daily rollup's trigger, the risk index);
- ``+ model index``: migrations 3-4 (the calls list's index);
- ``+ hourly rollup``: migrations 3-5, what tallygate runs now (SQLite: a second upsert
  per ledger write; PostgreSQL: the same one delta row, per hour).

Batches of 1 (a lone call) and of 200 (the sink's largest batch). Figures are the median
over rounds of microseconds per settlement; the difference between the rows is what the
dashboard's aggregates add to a settlement. Writes bench/results/ledger_settle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tallygate.access import budgets
from tallygate.access.db import (
    VERSION_TABLE,
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    _migrations,
    database_for,
)

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
VARIANTS = {"ledger only (migrations 1-2)": 2, "+ daily rollup, risk index (3)": 3,
            "+ model index (3-4)": 4, "+ hourly rollup (3-5, now)": 5}
RESULTS = Path(__file__).parent / "results" / "ledger_settle.json"


async def _open_at(url: str, version: int) -> Database:
    db = database_for(url)
    steps = _migrations(db.dialect)[:version]
    if isinstance(db, SQLiteDatabase):
        from tallygate.access.db import _migrate_sqlite

        db.transaction(lambda conn: _migrate_sqlite(conn, db.label, VERSION_TABLE, steps))
        return db
    assert isinstance(db, PostgresDatabase)
    import asyncpg

    conn = await asyncpg.connect(db.dsn)
    try:
        async with conn.transaction():   # as open() migrates (migration 5 locks a table)
            await conn.execute(f'CREATE SCHEMA "{db.schema}"')
            await conn.execute(f'SET LOCAL search_path TO "{db.schema}"')
            await db._migrate(conn, VERSION_TABLE, steps)
    finally:
        await conn.close()
    await db.open(migrate=False)
    return db


def _items(prefix: str, start: int, n: int, now_ms: int) -> list[budgets.Settlement]:
    out: list[budgets.Settlement] = []
    for i in range(start, start + n):
        k, c = i % 40, i % 20
        token, customer = f"{k:064x}", f"customer-{c}"
        row = (f"{prefix}-{i}", now_ms + i, token, f"key-{k}", None, f"team-{k % 5}",
               customer, customer, None, "gpt-4o-mini", "openai", "gpt-4o-mini", "chat",
               1200, 0, 0, 300, "0.00036", "billed", "", None)
        out.append((row[0], [("key", token), ("customer", customer)], [], 360, row))
    return out


async def _budgets(db: Database) -> None:
    for k in range(40):
        await db.execute("INSERT INTO access_budgets (scope, id, max_micros) VALUES (?, ?, ?)",
                         "key", f"{k:064x}", 10**12)
    for c in range(20):
        await db.execute("INSERT INTO access_budgets (scope, id, max_micros) VALUES (?, ?, ?)",
                         "customer", f"customer-{c}", 10**12)


async def _time(db: Database, items: list[budgets.Settlement], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(items), batch):
        await budgets.settle_many(db, items[i:i + batch])
    return (time.perf_counter() - t0) / len(items) * 1e6


async def run(backend: str, rounds: int) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    counts = {1: 300 if backend == "postgres" else 1000, 200: 10_000}
    with tempfile.TemporaryDirectory() as d:
        urls = {}
        for name, version in VARIANTS.items():
            if backend == "sqlite":
                urls[name] = str(Path(d) / f"v{version}.db")
            else:
                urls[name] = f"{PG_DSN}?schema=settle_bench_{version}_{os.getpid()}"
        dbs: dict[str, Database] = {}
        try:
            for name, version in VARIANTS.items():
                dbs[name] = await _open_at(urls[name], version)
            for db in dbs.values():
                await _budgets(db)
            figures: dict[str, dict[int, list[float]]] = {n: {1: [], 200: []} for n in dbs}
            done = 0
            for _ in range(rounds):
                for batch, n in counts.items():
                    for name, db in dbs.items():
                        items = _items("tg-settle", done, n, now_ms)
                        figures[name][batch].append(await _time(db, items, batch))
                    done += n
        finally:
            for db in dbs.values():
                await db.close()
            if backend == "postgres":
                import asyncpg

                conn = await asyncpg.connect(PG_DSN)
                for url in urls.values():
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("=", 1)[1]}" '
                                       "CASCADE")
                await conn.close()
    return {"backend": backend, "rounds": rounds, "settlements_per_round": counts,
            "us_per_settlement": {name: {f"batch {b}": round(statistics.median(v), 1)
                                         for b, v in per.items()}
                                  for name, per in figures.items()}}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| µs per settlement (median of rounds) | " + " | ".join(
        f"{r['backend']}, batch {b}" for r in results for b in (1, 200)) + " |",
        "|---|" + "---:|" * (2 * len(results))]
    for name in VARIANTS:
        lines.append(f"| {name} | " + " | ".join(
            str(r["us_per_settlement"][name][f"batch {b}"]) for r in results
            for b in (1, 200)) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = [asyncio.run(run(b, args.rounds)) for b in backends]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"load_avg_1m": os.getloadavg()[0], "results": results},
                                  indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
