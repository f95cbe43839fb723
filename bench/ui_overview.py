"""How fast the dashboard's overview renders for 30 days over a big ledger.

    .venv/bin/python bench/ui_overview.py [--rows 1000000] [--backend sqlite|postgres|both]
                                          [--write BENCHMARKS.md]

Fills a ledger with ``--rows`` calls spread over the last 30 days (40 keys, 20
customers, 5 teams, 4 model groups, 2 providers, a few unpriced and estimated calls)
the way an older tallygate left it (access migrations 1-2), then starts the real proxy
on it, which runs migration 3 (the hourly rollup, filled from those rows), signs in
with the master key and times ``GET /ui?range=30d`` end to end over HTTP. The target:
median under 300 ms on each backend. ``--write`` puts the figures into a section of
BENCHMARKS.md (between markers, the rest of the file left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tallygate.access.db import VERSION_TABLE, _migrate_sqlite, _migrations
from tallygate.config import parse_config
from tallygate.proxy.app import create_app

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_MS = 300.0
COLS = ("call_id", "ts_ms", "key_token", "key_alias", "user_id", "team_id", "customer_id",
        "billed_to", "end_user", "model", "provider", "provider_model", "kind",
        "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "cost",
        "status", "flags")
MODELS = (("gpt-4o-mini", "openai", Decimal("0.00000015"), Decimal("0.0000006")),
          ("gpt-4o", "openai", Decimal("0.0000025"), Decimal("0.00001")),
          ("claude-sonnet", "anthropic", Decimal("0.000003"), Decimal("0.000015")),
          ("claude-haiku", "anthropic", Decimal("0.0000008"), Decimal("0.000004")))
MARK_START = "<!-- ui-overview-bench -->"
MARK_END = "<!-- /ui-overview-bench -->"


def ledger_rows(n: int, now_ms: int) -> list[tuple[Any, ...]]:
    rng = random.Random(14)
    start = now_ms - 30 * 86_400_000
    rows = []
    for i in range(n):
        k = rng.randrange(40)
        model, provider, pin, pout = MODELS[rng.randrange(4)]
        tin, tout = rng.randrange(50, 4000), rng.randrange(10, 800)
        unpriced = rng.random() < 0.02
        cost = None if unpriced else str((pin * tin + pout * tout).normalize())
        flags = "unknown_price" if unpriced else ("estimated_usage" if rng.random() < 0.01
                                                  else "")
        customer = f"customer-{k % 20}"
        rows.append((f"tg-bench-{i:08d}", start + rng.randrange(30 * 86_400_000),
                     f"{k:064x}", f"key-{k}", None, f"team-{k % 5}", customer, customer,
                     None, model, provider, model, "chat", tin, 0, 0, tout, cost,
                     "billed", flags))
    return rows


def fill_sqlite(path: str, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    _migrate_sqlite(conn, path, VERSION_TABLE, _migrations("sqlite")[:2])
    conn.executemany(f"INSERT INTO access_ledger ({', '.join(COLS)}) VALUES "
                     f"({', '.join('?' for _ in COLS)})", rows)
    conn.execute("COMMIT")
    conn.close()


async def fill_postgres(schema: str, rows: list[tuple[Any, ...]]) -> None:
    import asyncpg

    from tallygate.access.db import PostgresDatabase

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path TO "{schema}"')
        await PostgresDatabase(PG_DSN, schema)._migrate(conn, VERSION_TABLE,
                                                        _migrations("postgres")[:2])
        await conn.copy_records_to_table("access_ledger", records=rows, columns=list(COLS),
                                         schema_name=schema)
        await conn.execute(f'ANALYZE "{schema}".access_ledger')
    finally:
        await conn.close()


async def drop_postgres(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def time_overview(database_url: str, tmp: Path, repeat: int) -> dict[str, float]:
    cfg = {"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
           "general_settings": {"master_key": "sk-bench-master", "database_url": database_url,
                                "jsonl_path": str(tmp / "usage.jsonl")}}
    settings = parse_config(cfg, {}, config_path=tmp / "config.yaml")
    started = time.perf_counter()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()   # the gateway starts: migration 3 fills the rollup
    migrate_s = time.perf_counter() - started
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(base + "/ui/login", data={"key": "sk-bench-master"},
                                 allow_redirects=False) as r:
                assert r.status == 303, r.status
            times = []
            for _ in range(repeat + 2):
                t0 = time.perf_counter()
                async with http.get(base + "/ui?range=30d") as r:
                    body = await r.text()
                    assert r.status == 200 and "Overview" in body, r.status
                times.append((time.perf_counter() - t0) * 1000)
            times = times[2:]   # the first two warm the connection and caches
    finally:
        await runner.cleanup()
    return {"migrate_s": round(migrate_s, 2), "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(sorted(times)[int(len(times) * 0.95) - 1], 1),
            "max_ms": round(max(times), 1)}


async def run(backend: str, n: int, repeat: int) -> dict[str, Any]:
    rows = ledger_rows(n, int(time.time() * 1000))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        if backend == "sqlite":
            url = str(tmp / "outbox.db")
            fill_sqlite(url, rows)
        else:
            schema = f"ui_bench_{int(time.time())}"
            url = f"{PG_DSN}?schema={schema}"
            await fill_postgres(schema, rows)
        fill_s = time.perf_counter() - t0
        try:
            result = await time_overview(url, tmp, repeat)
        finally:
            if backend == "postgres":
                await drop_postgres(schema)
    return {"backend": backend, "rows": n, "fill_s": round(fill_s, 1), **result,
            "target_ms": TARGET_MS, "ok": result["median_ms"] < TARGET_MS}


def write_section(path: Path, results: list[dict[str, Any]]) -> None:
    lines = [MARK_START, "## Dashboard overview (`bench/ui_overview.py`)", "",
             "`GET /ui?range=30d` over HTTP, signed in, on a ledger of "
             f"{results[0]['rows']:,} calls over 30 days (target: median under "
             f"{TARGET_MS:.0f} ms).", "",
             "| backend | rows | median ms | p95 ms | max ms | migration 3 (fill rollup) s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['rows']:,} | {r['median_ms']} | {r['p95_ms']} | "
                     f"{r['max_ms']} | {r['migrate_s']} |")
    lines.append(MARK_END)
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines)
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    results = [asyncio.run(run(b, args.rows, args.repeat)) for b in backends]
    for r in results:
        print(json.dumps(r))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ui_overview.json").write_text(json.dumps(results, indent=2))
    if args.write is not None:
        write_section(args.write, results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
