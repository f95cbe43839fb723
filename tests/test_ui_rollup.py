"""The daily spend rollup the dashboard reads (access migration 3) against the ledger it
summarises, on SQLite and PostgreSQL: filled from the rows already there when the
migration runs, kept exact (Decimal to the last digit) by the triggers on insert, on
`outbox assign`'s update and on delete."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

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
from tests.outbox_support import backend_url_fixture  # noqa: F401 (the url fixture)

COLS = ("call_id, ts_ms, key_token, key_alias, customer_id, team_id, model, provider, "
        "provider_model, kind, input_tokens, cache_read_tokens, cache_write_tokens, "
        "output_tokens, cost, status, flags")
HOUR = 3_600_000


async def _at_version_2(db: Database, version: int = 2) -> None:
    """The access tables as tallygate made them before the rollup (migrations 1-2), or
    at an other older ``version``."""
    if isinstance(db, SQLiteDatabase):
        from tallygate.access.db import _migrate_sqlite

        db.transaction(lambda conn: _migrate_sqlite(conn, db.label, VERSION_TABLE,
                                                    _migrations("sqlite")[:version]))
        return
    assert isinstance(db, PostgresDatabase)
    import asyncpg

    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{db.schema}"')
        await conn.execute(f'SET search_path TO "{db.schema}"')
        await db._migrate(conn, VERSION_TABLE, _migrations("postgres")[:version])
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


Figures = tuple[int, int, int, int, int, Decimal, int, int]
BUCKETS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens")


def _expected(rows: list[dict[str, Any]], bucket_ms: int) -> dict[str, dict[str, Figures]]:
    """Every grouping the overview shows, summed in Python from the raw ledger rows:
    (calls, the four token buckets, cost as Decimal, unpriced, estimated)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for r in rows:
        labels = {"series": str(r["ts_ms"] // bucket_ms * bucket_ms), "status": r["status"]}
        labels.update({dim: r[dim] or "" for dim in queries.BREAKDOWNS})
        for name, label in labels.items():
            acc = out.setdefault(name, {}).setdefault(label, [0, 0, 0, 0, 0, Decimal(0), 0, 0])
            acc[0] += 1
            for i, col in enumerate(BUCKETS, 1):
                acc[i] += r[col]
            if r["cost"] is None:
                acc[6] += 1
            else:
                acc[5] += Decimal(r["cost"])
            acc[7] += "estimated_usage" in r["flags"]
    return {n: {label: tuple(v) for label, v in groups.items()}  # type: ignore[misc]
            for n, groups in out.items()}


def _got(a: queries.Agg) -> Figures:
    return (a.calls, a.input_tokens, a.cache_read_tokens, a.cache_write_tokens,
            a.output_tokens, a.cost, a.unpriced, a.estimated)


async def _check_exact(db: Database) -> None:
    """Every series bucket, breakdown and total of the overview equals the ledger's own
    rows summed as Decimal: over whole days (the rollup) and part days (the ledger)."""
    day = 86_400_000
    hour = 3_600_000
    for since, until, bucket in ((19_650 * day, 19_700 * day, day),          # daily rollup
                                 (472_300 * hour, 472_350 * hour, hour),      # hourly rollup
                                 (1_700_000_000_000, 1_700_000_000_000 + 5 * day, hour)):
        o = await queries.overview(db, since, until, bucket)
        rows = await ledger.rows(db, since_ms=since, until_ms=until)
        assert rows, (since, until)
        want = _expected(rows, bucket)
        got_series = {str(t): _got(a) for t, a in o.series.items() if a.calls}
        assert got_series == want.get("series", {})
        for dim in queries.BREAKDOWNS:
            assert {k: _got(a) for k, a in o.by[dim].items()} == want.get(dim, {}), dim
        assert o.total.calls == len(rows)
        assert o.total.cost == sum((Decimal(str(r["cost"])) for r in rows
                                    if r["cost"] is not None), Decimal(0))
        assert _got(o.held) == want.get("status", {}).get(
            "unattributed", (0, 0, 0, 0, 0, Decimal(0), 0, 0))


def _settlements(rng: random.Random, start: int, n: int) -> list[Any]:
    """Settlements as the ledger sink writes them (budgets.settle_many)."""
    from tallygate.access.budgets import LEDGER_COLUMNS

    out = []
    for i in range(start, start + n):
        cost = _cost(rng)
        customer = rng.choice(["acme", "globex", "initech"])
        row = dict.fromkeys(LEDGER_COLUMNS)
        row.update(call_id=f"s{i}", ts_ms=1_700_000_000_000 + rng.randrange(0, 30 * 24) * HOUR,
                   key_token=f"k{rng.randrange(3)}", customer_id=customer, billed_to=customer,
                   team_id=rng.choice(["t1", None]), model=rng.choice(["gpt", "claude"]),
                   provider="p", provider_model="pm", kind="chat",
                   input_tokens=rng.randrange(1000), cache_read_tokens=rng.randrange(50),
                   cache_write_tokens=rng.randrange(50), output_tokens=rng.randrange(500),
                   cost=cost, status="billed", flags=rng.choice(["", "estimated_usage"]))
        out.append((row["call_id"], [("customer", customer)], [], 0,
                    tuple(row[c] for c in LEDGER_COLUMNS)))
    return out


async def test_rollup_equals_ledger_after_migration_settlements_and_restart(url: str) -> None:
    """An old database (access migrations 1-2) with rows is migrated at start; then calls
    are settled the way the ledger sink settles them (one redelivered: counted once);
    the gateway restarts; each time every figure of the overview equals the ledger's."""
    from tallygate.access import budgets

    rng = random.Random(1414)
    db = database_for(url)
    await _at_version_2(db)
    if isinstance(db, PostgresDatabase):
        await db.open(migrate=False)
    await _insert(db, rng, 300, 0)
    await db.close()

    db = database_for(url)
    await db.open()                                     # migrations 3 to 5
    try:
        versions = await db.fetch(f"SELECT version FROM {VERSION_TABLE} ORDER BY version")
        assert [r["version"] for r in versions] == [1, 2, 3, 4, 5]
        await _check_exact(db)
        items = _settlements(rng, 0, 250)
        for i in range(0, len(items), 50):
            await budgets.settle_many(db, items[i:i + 50])
        await budgets.settle_many(db, items[:3])        # a redelivery after a crash
        await _check_exact(db)
    finally:
        await db.close()

    db = database_for(url)
    await db.open()                                     # a restart: nothing migrates again
    try:
        await _check_exact(db)
        await budgets.settle_many(db, _settlements(rng, 1000, 40))
        await _check_exact(db)
        n = await db.fetchone("SELECT count(*) AS n FROM access_ledger")
        assert n is not None and n["n"] == 300 + 250 + 40
    finally:
        await db.close()


async def test_hourly_rollup_migration_keeps_a_daily_rollup_in_use_exact(url: str) -> None:
    """A database at migration 4 (the daily rollup only, kept by its triggers; on
    PostgreSQL with day-sized deltas not folded yet) migrates to 5: both rollups equal
    the ledger then, and after more writes of every kind."""
    rng = random.Random(55)
    db = database_for(url)
    await _at_version_2(db, 4)
    if isinstance(db, PostgresDatabase):
        await db.open(migrate=False)
    await _insert(db, rng, 200, 0)                       # through migration 3's triggers
    await db.close()
    db = database_for(url)
    await db.open()                                      # migration 5
    try:
        await _check_exact(db)
        await _insert(db, rng, 100, 1000)
        await db.execute("UPDATE access_ledger SET status = 'billed', customer_id = ? "
                         "WHERE status = 'unattributed'", "hooli")
        await db.execute("DELETE FROM access_ledger WHERE customer_id = ?", "globex")
        await _check_exact(db)
    finally:
        await db.close()
