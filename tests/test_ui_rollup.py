"""The daily spend rollup the dashboard reads (access migration 3) against the ledger it
summarises, on SQLite and PostgreSQL: filled from the rows already there when the
migration runs, kept exact (Decimal to the last digit) by the triggers on insert, on
`outbox assign`'s update and on delete."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from tallygate.access import ledger
from tallygate.access.db import (
    VERSION_TABLE,
    Database,
    PostgresDatabase,
    SQLiteDatabase,
    _migrations,
    database_for,
)
from tallygate.ui import queries
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema

COLS = ("call_id, ts_ms, key_token, key_alias, customer_id, team_id, model, provider, "
        "provider_model, kind, input_tokens, cache_read_tokens, cache_write_tokens, "
        "output_tokens, cost, status, flags")
HOUR = 3_600_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "outbox.db")
        return
    schema = unique_pg_schema()
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        await drop_pg_schema(schema)


async def _at_version_2(db: Database) -> None:
    """The access tables as tallygate made them before the rollup (migrations 1-2)."""
    if isinstance(db, SQLiteDatabase):
        from tallygate.access.db import _migrate_sqlite

        db.transaction(lambda conn: _migrate_sqlite(conn, db.label, VERSION_TABLE,
                                                    _migrations("sqlite")[:2]))
        return
    assert isinstance(db, PostgresDatabase)
    import asyncpg

    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"')
        await conn.execute(f'SET search_path TO "{db.schema}"')
        await db._migrate(conn, VERSION_TABLE, _migrations("postgres")[:2])
    finally:
        await conn.close()


def _cost(rng: random.Random) -> str | None:
    if rng.random() < 0.1:
        return None
    return str(Decimal(rng.randrange(1, 10**9)).scaleb(-rng.randrange(6, 12)))


async def _insert(db: Database, rng: random.Random, n: int, start: int) -> None:
    for i in range(n):
        await db.execute(
            f"INSERT INTO access_ledger ({COLS}) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            f"c{start + i}", 1_700_000_000_000 + rng.randrange(0, 30 * 24) * HOUR,
            f"k{rng.randrange(3)}", None, rng.choice(["acme", "globex", None]),
            rng.choice(["t1", None]), rng.choice(["gpt", "claude"]), "p", "pm", "chat",
            rng.randrange(1000), rng.randrange(50), rng.randrange(50), rng.randrange(500),
            _cost(rng), rng.choice(["billed", "billed", "unattributed"]),
            rng.choice(["", "estimated_usage", "stream"]))


async def _check(db: Database) -> None:
    """The overview's totals per customer (from the rollup for whole days, from the
    ledger's rows otherwise) equal the ledger's own exact sums."""
    day = 86_400_000
    for since, until in ((1_690_000_000_000, 1_800_000_000_000),   # part days: the ledger
                         (19_560 * day, 20_834 * day)):            # whole days: daily
        await _check_range(db, since, until)


async def _check_range(db: Database, since: int, until: int) -> None:
    o = await queries.overview(db, since, until, 86_400_000)
    groups, total = await ledger.grouped(db, "customer", since_ms=since, until_ms=until)
    assert o.total.calls == total.calls and o.total.cost == total.cost
    assert o.total.unpriced == total.unpriced
    assert o.total.inexact == 0
    for g in groups:
        agg = o.by["customer_id"][g.label or ""]
        assert (agg.calls, agg.cost, agg.input_tokens + agg.cache_read_tokens
                + agg.cache_write_tokens, agg.output_tokens) == (
            g.calls, g.cost, g.input_tokens, g.output_tokens)
    rows = await ledger.rows(db, since_ms=since, until_ms=until)
    estimated = sum(1 for r in rows if "estimated_usage" in r["flags"])
    held = sum(1 for r in rows if r["status"] == "unattributed")
    assert o.total.estimated == estimated and o.held.calls == held


async def test_rollup_is_filled_by_the_migration_then_kept_exact(url: str) -> None:
    rng = random.Random(14)
    db = database_for(url)
    await _at_version_2(db)
    if isinstance(db, PostgresDatabase):
        await db.open(migrate=False)
        await _insert(db, rng, 150, 0)
        await db.close()
        db = database_for(url)
    else:
        await _insert(db, rng, 150, 0)
    await db.open()                      # migration 3: the rollup, filled from the ledger
    try:
        await _check(db)
        await _insert(db, rng, 150, 1000)                   # the insert trigger
        await _check(db)
        await db.execute("UPDATE access_ledger SET status = 'billed', customer_id = ? "
                         "WHERE status = 'unattributed'", "hooli")   # as `outbox assign`
        await _check(db)
        await db.execute("DELETE FROM access_ledger WHERE customer_id = ?", "globex")
        await _check(db)
        # A cost finer than 10^-12 USD is counted as such, never silently rounded.
        await db.execute(f"INSERT INTO access_ledger ({COLS}) VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         "fine", 1_700_000_000_000, "k0", None, "acme", None, "gpt", "p",
                         "pm", "chat", 1, 0, 0, 1, "0.0000000000001", "billed", "")
        o = await queries.overview(db, 1_690_000_000_000, 1_800_000_000_000, 86_400_000)
        assert o.total.inexact == 1
    finally:
        await db.close()
