"""How fast the dashboard's pages answer over a big ledger (issue 14: under 300 ms).

    .venv/bin/python bench/ui_overview.py [--rows 1000000] [--backend sqlite|postgres|both]
                                          [--repeat 10] [--write BENCHMARKS.md]

Fills a ledger with ``--rows`` calls spread over the last 30 days (40 keys, 20
customers with budgets, 5 teams, 5 model groups one of them rare, 2 providers, a few
unpriced, estimated and held calls) the way an older tallygate left it (access
migrations 1-2), then starts the real proxy on it, which runs the newer migrations (3
fills the daily rollup from those rows, 4 adds the calls list's index, 5 fills the
hourly rollup), signs in with
the master key (and with one virtual key) and times each page end to end over HTTP:
the overview (30 days, 7 days, today per hour, two custom days per hour), customers,
one customer, keys, billing, models, the calls list with filters and a deep keyset
page, and CSV exports (a page's table, and a whole filtered calls list streamed: its
first byte and its end).

Writes bench/results/ui_overview.json and prints a markdown section for BENCHMARKS.md;
``--write FILE`` also puts that section into FILE between markers. The figures are
only as quiet as the machine: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tallygate.access.db import VERSION_TABLE, _migrate_sqlite, _migrations
from tallygate.access.keys import hash_key
from tallygate.config import parse_config
from tallygate.proxy.app import create_app

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_MS = 300.0
DAY_MS = 86_400_000
COLS = ("call_id", "ts_ms", "key_token", "key_alias", "user_id", "team_id", "customer_id",
        "billed_to", "end_user", "model", "provider", "provider_model", "kind",
        "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "cost",
        "status", "flags")
MODELS = (("gpt-4o-mini", "openai", Decimal("0.00000015"), Decimal("0.0000006")),
          ("gpt-4o", "openai", Decimal("0.0000025"), Decimal("0.00001")),
          ("claude-sonnet", "anthropic", Decimal("0.000003"), Decimal("0.000015")),
          ("claude-haiku", "anthropic", Decimal("0.0000008"), Decimal("0.000004")))
RARE = ("o1-rare", "openai", Decimal("0.000015"), Decimal("0.00006"))   # 1 call in 1000
KEYS, CUSTOMERS, TEAMS = 40, 20, 5
MASTER = "sk-bench-master"
MARK_START = "<!-- ui-overview-bench -->"
MARK_END = "<!-- /ui-overview-bench -->"
RESULTS = Path(__file__).parent / "results" / "ui_overview.json"


def plain_key(k: int) -> str:
    return f"sk-bench-key-{k}"


def ledger_rows(n: int, now_ms: int) -> list[tuple[Any, ...]]:
    rng = random.Random(14)
    start = now_ms - 30 * DAY_MS
    rows = []
    for i in range(n):
        k = rng.randrange(KEYS)
        model, provider, pin, pout = RARE if rng.random() < 0.001 else MODELS[rng.randrange(4)]
        tin, tout = rng.randrange(50, 4000), rng.randrange(10, 800)
        unpriced = rng.random() < 0.02
        cost = None if unpriced else str((pin * tin + pout * tout).normalize())
        flags = "unknown_price" if unpriced else ("estimated_usage" if rng.random() < 0.01
                                                  else "")
        held = rng.random() < 0.002
        customer = None if held else f"customer-{k % CUSTOMERS}"
        rows.append((f"tg-bench-{i:08d}", start + rng.randrange(30 * DAY_MS),
                     hash_key(plain_key(k)), f"key-{k}", None, f"team-{k % TEAMS}",
                     customer, customer, None, model, provider, model, "chat", tin, 0, 0,
                     tout, cost, "unattributed" if held else "billed", flags))
    return rows


def access_rows(now_ms: int) -> dict[str, list[tuple[Any, ...]]]:
    """Keys, customers, teams and their budgets, as the admin API would have made them."""
    keys = [(hash_key(plain_key(k)), f"key-{k}", f"sk-...{k:04d}", None, f"team-{k % TEAMS}",
             f"customer-{k % CUSTOMERS}", "[]", 600, 100_000, None, "{}", 0, now_ms, now_ms)
            for k in range(KEYS)]
    customers = [(f"customer-{c}", f"Customer {c}", f"sub-{c}", "{}", 0, now_ms, now_ms)
                 for c in range(CUSTOMERS)]
    teams = [(f"team-{t}", f"Team {t}", "[]", None, None, "{}", 0, now_ms, now_ms)
             for t in range(TEAMS)]
    budgets = [("customer", f"customer-{c}", 5_000_000_000, 30 * 86_400, 1_234_567_890, 0,
                now_ms + DAY_MS) for c in range(CUSTOMERS)]
    budgets += [("key", hash_key(plain_key(k)), 500_000_000, None, 12_345_678, 0, None)
                for k in range(KEYS)]
    return {"access_keys": keys, "access_customers": customers, "access_teams": teams,
            "access_budgets": budgets}


def fill_sqlite(path: str, rows: list[tuple[Any, ...]], now_ms: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    _migrate_sqlite(conn, path, VERSION_TABLE, _migrations("sqlite")[:2])
    conn.executemany(f"INSERT INTO access_ledger ({', '.join(COLS)}) VALUES "
                     f"({', '.join('?' for _ in COLS)})", rows)
    for table, values in access_rows(now_ms).items():
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in values[0])})",
                         values)
    conn.execute("COMMIT")
    conn.close()


async def fill_postgres(schema: str, rows: list[tuple[Any, ...]], now_ms: int) -> None:
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
        for table, values in access_rows(now_ms).items():
            await conn.copy_records_to_table(table, records=values, schema_name=schema)
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


def pages(now_ms: int) -> list[tuple[str, str, bool]]:
    """(name, path, as the virtual key) of every page timed."""
    day = datetime.fromtimestamp(now_ms / 1000 - 86_400, UTC).strftime("%Y-%m-%d")
    today = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m-%d")
    middle = now_ms - 15 * DAY_MS
    return [
        ("overview, 30 days", "/ui?range=30d", False),
        ("overview, 7 days", "/ui?range=7d", False),
        ("overview, today per hour", "/ui?range=today", False),
        ("overview, 2 custom days per hour", f"/ui?range=custom&from={day}&to={today}", False),
        ("overview, a virtual key's own, 30 days", "/ui?range=30d", True),
        ("customers", "/ui/customers", False),
        ("one customer, 30 days", "/ui/customers/customer-3?range=30d", False),
        ("keys and teams", "/ui/keys", False),
        ("billing health", "/ui/billing", False),
        ("models", "/ui/models", False),
        ("calls, no filter", "/ui/calls", False),
        ("calls, customer + model", "/ui/calls?customer=customer-3&model=gpt-4o", False),
        ("calls, key alias + status", "/ui/calls?key=key-7&status=billed", False),
        ("calls, rare model (0.1%)", "/ui/calls?model=o1-rare", False),
        ("calls, risks only", "/ui/calls?risk=1", False),
        ("calls, held only", "/ui/calls?status=unattributed", False),
        ("calls, a page 15 days back (keyset)", f"/ui/calls?before={middle}.{2**62}", False),
        ("CSV, overview's by-customer table", "/ui?range=30d&csv=by_customer", False),
    ]


STREAMED = ("CSV streamed, one customer's calls, 30 days",
            "/ui/calls?csv=calls&customer=customer-3")


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[float, float, int]:
    """(ms to the first body bytes, ms to the end, body bytes) of one GET."""
    t0 = time.perf_counter()
    async with http.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        first = None
        size = 0
        async for chunk in r.content.iter_any():
            if first is None:
                first = time.perf_counter()
            size += len(chunk)
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000, size


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[max(int(len(ordered) * 0.95) - 1, 0)], 1),
            "max_ms": round(ordered[-1], 1)}


async def time_pages(database_url: str, tmp: Path, repeat: int, now_ms: int
                     ) -> tuple[float, list[dict[str, Any]]]:
    cfg = {"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
           "general_settings": {"master_key": MASTER, "database_url": database_url,
                                "jsonl_path": str(tmp / "usage.jsonl")}}
    settings = parse_config(cfg, {}, config_path=tmp / "config.yaml")
    started = time.perf_counter()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()   # the gateway starts: migration 3 fills the rollups, 4 indexes
    migrate_s = time.perf_counter() - started
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    base = f"http://127.0.0.1:{port}"
    out: list[dict[str, Any]] = []
    try:
        sessions = {}
        for as_key, key in ((False, MASTER), (True, plain_key(7))):
            http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            async with http.post(base + "/ui/login", data={"key": key},
                                 allow_redirects=False) as r:
                assert r.status == 303, r.status
            sessions[as_key] = http
        for name, path, as_key in pages(now_ms):
            http = sessions[as_key]
            times = [(await _get(http, base + path))[1] for _ in range(repeat + 2)][2:]
            out.append({"page": name, "path": path, **_stats(times),
                        "ok": statistics.median(times) < TARGET_MS})
        name, path = STREAMED
        runs = [await _get(sessions[False], base + path) for _ in range(max(repeat // 3, 2) + 1)]
        runs = runs[1:]
        first = _stats([r[0] for r in runs])
        total = _stats([r[1] for r in runs])
        lines = (await _get_text(sessions[False], base + path)).count("\n") - 1
        out.append({"page": name, "path": path, **first, "total_median_ms": total["median_ms"],
                    "rows": lines, "bytes": runs[-1][2],
                    "rows_per_s": round(lines / (total["median_ms"] / 1000)),
                    "ok": first["median_ms"] < TARGET_MS})
        for http in sessions.values():
            await http.close()
    finally:
        await runner.cleanup()
    return migrate_s, out


async def _get_text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as r:
        return await r.text()


async def run(backend: str, n: int, repeat: int) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    rows = ledger_rows(n, now_ms)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        if backend == "sqlite":
            url = str(tmp / "outbox.db")
            fill_sqlite(url, rows, now_ms)
        else:
            schema = f"ui_bench_{int(time.time())}"
            url = f"{PG_DSN}?schema={schema}"
            await fill_postgres(schema, rows, now_ms)
        fill_s = time.perf_counter() - t0
        del rows
        load_before = os.getloadavg()[0]
        try:
            migrate_s, timed = await time_pages(url, tmp, repeat, now_ms)
        finally:
            if backend == "postgres":
                await drop_postgres(schema)
    return {"backend": backend, "rows": n, "fill_s": round(fill_s, 1),
            "migrate_s": round(migrate_s, 2), "target_ms": TARGET_MS,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "pages": timed, "ok": all(p["ok"] for p in timed)}


def markdown(results: list[dict[str, Any]], taken: str) -> str:
    backends = [r["backend"] for r in results]
    rows = results[0]["rows"]
    lines = [MARK_START, "## Dashboard pages (`bench/ui_overview.py`)", "",
             f"Every page over HTTP, signed in, on a ledger of {rows:,} calls over 30 days "
             f"(target: median under {TARGET_MS:.0f} ms each; {taken}). Median / p95 ms.",
             "", "| page | " + " | ".join(backends) + " |",
             "|---|" + "---:|" * len(backends)]
    by_page = [{p["page"]: p for p in r["pages"]} for r in results]
    for p in results[0]["pages"]:
        cells = []
        for table in by_page:
            q = table[p["page"]]
            cell = f"{q['median_ms']} / {q['p95_ms']}"
            if "total_median_ms" in q:
                cell = (f"first byte {cell}; all {q['rows']:,} rows "
                        f"{q['total_median_ms']:,} ms")
            cells.append(cell if q["ok"] else f"**{cell}**")
        lines.append(f"| {p['page']} | " + " | ".join(cells) + " |")
    lines += ["", "| backend | fill (s) | start-up with migrations 3-5 (s) | "
              "load average (1 min) before / after |", "|---|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['fill_s']} | {r['migrate_s']} | "
                     f"{r['load_avg_1m'][0]} / {r['load_avg_1m'][1]} |")
    lines.append(MARK_END)
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    taken = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = [asyncio.run(run(b, args.rows, args.repeat)) for b in backends]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"taken": taken, "machine": platform.platform(),
                                   "cpus": os.cpu_count(), "results": results}, indent=2))
    section = markdown(results, f"taken {taken}, {os.cpu_count()} cores")
    print(section)
    if args.write is not None:
        write_section(args.write, section)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
