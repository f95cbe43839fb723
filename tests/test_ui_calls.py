"""The dashboard's calls list (/ui/calls): filters, keyset pages that show every matching
call once, newest first, and its streamed CSV holding exactly the filtered ledger; over
real HTTP against the proxy, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import random
import re
from html import unescape
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tallygate.access import ledger
from tallygate.access.db import SQLiteDatabase, database_for
from tallygate.config import parse_config
from tallygate.proxy.app import create_app
from tallygate.ui import calls
from tests.outbox_support import backend_url_fixture  # noqa: F401 (the url fixture)
from tests.proxy_harness import free_port

MASTER = "sk-calls-master"
NOW = 1_800_000_000_000
COLS = ("call_id, ts_ms, key_token, key_alias, customer_id, team_id, model, provider, "
        "provider_model, kind, input_tokens, cache_read_tokens, cache_write_tokens, "
        "output_tokens, cost, status, flags")


async def _fill(url: str, now_ms: int) -> None:
    db = database_for(url)
    await db.open()
    try:
        await db.execute("INSERT INTO access_keys (token, key_alias, key_name, "
                         "created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)",
                         "tok-a", "alpha", "sk-...aaaa", now_ms, now_ms)
        rng = random.Random(7)
        for i in range(700):
            # Many calls share a millisecond: pages must break ties on seq.
            ts = now_ms - rng.randrange(0, 40) * 3_600_000 - rng.randrange(3)
            cost = None if rng.random() < 0.05 else f"0.000{rng.randrange(1, 999)}"
            await db.execute(
                f"INSERT INTO access_ledger ({COLS}) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                f"call-{i:04d}", ts, rng.choice(["tok-a", "tok-b"]), None,
                rng.choice(["acme", "globex"]), None, rng.choice(["gpt", "claude", "rare"]),
                "p", "pm", "chat", 10, 0, 0, 5, cost,
                rng.choice(["billed"] * 9 + ["unattributed"]),
                rng.choice(["", "", "estimated_usage"]))
    finally:
        await db.close()


async def _expected(url: str, since: int, **where: str) -> list[str]:
    db = database_for(url)
    await db.open()
    try:
        found = await ledger.rows(db, since_ms=since, filters=where)
    finally:
        await db.close()
    ordered = sorted(found, key=lambda r: (r["ts_ms"], r["seq"]), reverse=True)
    return [str(r["call_id"]) for r in ordered]


async def _start(url: str, tmp_path: Path) -> tuple[web.AppRunner, str]:
    cfg = {"model_list": [{"model_name": "m", "litellm_params": {"model": "mock/m"}}],
           "general_settings": {"master_key": MASTER, "database_url": url,
                                "jsonl_path": str(tmp_path / "usage.jsonl")}}
    app = create_app(parse_config(cfg, {}, config_path=tmp_path / "config.yaml"))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def _call_ids(page: str) -> list[str]:
    table = page.split('data-table="calls"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<code class="call">([^<]+)</code>', table)


async def _all_pages(http: aiohttp.ClientSession, base: str, path: str) -> list[str]:
    seen: list[str] = []
    while True:
        async with http.get(base + path) as r:
            assert r.status == 200
            text = await r.text()
        ids = _call_ids(text)
        assert len(ids) <= calls.PAGE_SIZE
        seen += ids
        older = re.search(r'<a href="(/ui/calls\?[^"]+)" rel="next">', text)
        if older is None:
            return seen
        path = unescape(older.group(1))


async def test_calls_list_pages_filters_and_streams_the_exact_ledger(url: str,
                                                                    tmp_path: Path) -> None:
    import time

    now = int(time.time() * 1000)
    await _fill(url, now)
    day = 86_400_000
    since = now - now % day - 29 * day   # the default range: 30 days
    runner, base = await _start(url, tmp_path)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(base + "/ui/login", data={"key": MASTER},
                                 allow_redirects=False) as r:
                assert r.status == 303
            cases: list[tuple[str, dict[str, str]]] = [
                ("/ui/calls", {}),
                ("/ui/calls?customer=acme&model=gpt", {"customer_id": "acme",
                                                       "model": "gpt"}),
                ("/ui/calls?key=alpha&status=unattributed", {"key_token": "tok-a",
                                                             "status": "unattributed"}),
            ]
            for path, where in cases:
                want = await _expected(url, since, **where)
                assert len(want) > 0
                got = await _all_pages(http, base, path)
                assert got == want, path          # every call once, newest first
                sep = "&" if "?" in path else "?"
                async with http.get(base + path + sep + "csv=calls") as r:
                    assert r.status == 200 and r.content_type == "text/csv"
                    assert r.headers.get("Cache-Control") == "no-store"
                    body = await r.text()
                lines = list(csv.reader(io.StringIO(body)))
                assert tuple(lines[0]) == calls.CSV_COLUMNS
                assert [line[0] for line in lines[1:]] == want, path
            # The risk filter: unknown price or estimated usage, nothing else.
            db = database_for(url)
            await db.open(migrate=False)
            try:
                risky = {str(r["call_id"]) for r in await ledger.rows(db, since_ms=since)
                         if r["cost"] is None or "estimated_usage" in r["flags"]}
            finally:
                await db.close()
            assert set(await _all_pages(http, base, "/ui/calls?risk=1")) == risky
            # An alias no key has: said so, and no call shown (not every call).
            async with http.get(base + "/ui/calls?key=nobody") as r:
                text = await r.text()
            assert "no key has the alias" in text and _call_ids(text) == []
    finally:
        await runner.cleanup()


async def test_csv_batches_cover_every_row_once_across_ties(url: str) -> None:
    """The keyset batches (the CSV's reads) with a batch smaller than a tie group."""
    await _fill(url, NOW)
    db = database_for(url)
    await db.open(migrate=False)
    try:
        f = calls.CallFilter(NOW - 50 * 3_600_000, NOW + 1)
        got: list[Any] = []
        async for batch in calls.all_rows(db, f, batch=7):
            assert len(batch) <= 7
            got += [r["call_id"] for r in batch]
    finally:
        await db.close()
    assert got == await _expected(url, NOW - 50 * 3_600_000)


async def test_model_filter_reads_its_index(tmp_path: Path) -> None:
    """SQLite's plan for a page filtered by model walks access_ledger_model (migration 4)
    in order: no scan of the range, no sort."""
    path = str(tmp_path / "outbox.db")
    await _fill(path, NOW)
    db = SQLiteDatabase(path)
    await db.open()
    try:
        where, args = calls.CallFilter(0, NOW + 1, (("model", "rare"),)).where(None)
        plan = await db.fetch(f"EXPLAIN QUERY PLAN SELECT * FROM access_ledger WHERE {where} "
                              "ORDER BY ts_ms DESC, seq DESC LIMIT 101", *args)
    finally:
        await db.close()
    text = " | ".join(str(r["detail"]) for r in plan)
    assert "access_ledger_model" in text and "TEMP B-TREE" not in text, text
