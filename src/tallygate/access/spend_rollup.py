"""The ledger's spend rollups the dashboard reads, kept in the ledger write's transaction.

``access_spend_daily`` (access migration 3) and ``access_spend_hourly`` (migration 5)
hold one row per (UTC day or hour, key, customer, team, model, provider, status) with the
calls, token buckets and cost of those ledger rows, so that the overview over a month of
a million calls reads a few thousand rows instead of the ledger, and today per hour a
few hundred. Ranges that are neither whole days nor whole hours read the ledger itself
through ``ledger_select``, in the same shape. Triggers on ``access_ledger`` keep the
rollups in the transaction of every ledger write, from any gateway or command (an
insert adds, an update such as ``outbox assign`` moves the row from its old group to
its new one, a delete subtracts).

On SQLite the triggers upsert both rollups. On PostgreSQL they append one delta row per
ledger change (per hour since migration 5) to ``access_spend_delta``, so that gateways
writing at once never wait on one shared rollup row; readers add the unfolded deltas to
either rollup and fold them in now and then (``FOLD_PG``).

Cost is exact: the decimal text is split into whole dollars and picodollars (10^-12),
two integers that sum without rounding. A cost with more than 12 decimals is counted
in ``inexact`` and the dashboard says its totals are rounded there.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]
DAILY = "access_spend_daily"
DELTA = "access_spend_delta"   # PostgreSQL: rows the triggers append, not yet folded in
HOURLY = "access_spend_hourly"
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
TABLES = ((DAILY, DAY_MS), (HOURLY, HOUR_MS))   # what the triggers keep now
Tables = tuple[tuple[str, int], ...]
PICO_DIGITS = 12
DIMENSIONS = ("key_token", "customer_id", "team_id", "model", "provider", "status")
MEASURES = ("calls", "input_tokens", "cache_read_tokens", "cache_write_tokens",
            "output_tokens", "cost_dollars", "cost_pico", "unpriced", "estimated", "inexact")


def _sqlite_parts(c: str) -> tuple[str, str, str]:
    """SQL for (whole dollars, picodollars, inexact 0/1) of the decimal text ``c``."""
    dot = f"instr({c}, '.')"
    frac = f"substr({c}, {dot} + 1)"
    dollars = (f"(CASE WHEN {c} IS NULL THEN 0 WHEN {dot} > 0 "
               f"THEN CAST(substr({c}, 1, {dot} - 1) AS INTEGER) ELSE CAST({c} AS INTEGER) END)")
    pico = (f"(CASE WHEN {c} IS NULL OR {dot} = 0 THEN 0 ELSE CAST(substr({frac} || "
            f"'{'0' * PICO_DIGITS}', 1, {PICO_DIGITS}) AS INTEGER) END)")
    inexact = (f"(CASE WHEN {c} IS NOT NULL AND {dot} > 0 "
               f"AND length(rtrim({frac}, '0')) > {PICO_DIGITS} THEN 1 ELSE 0 END)")
    return dollars, pico, inexact


def _pg_parts(c: str) -> tuple[str, str, str]:
    n = f"({c})::numeric"
    dollars = f"coalesce(trunc({n}), 0)::bigint"
    pico = f"coalesce(trunc(({n} - trunc({n})) * 1e{PICO_DIGITS}), 0)::bigint"
    inexact = (f"(CASE WHEN {c} IS NOT NULL AND {n} * 1e{PICO_DIGITS} <> "
               f"trunc({n} * 1e{PICO_DIGITS}) THEN 1 ELSE 0 END)")
    return dollars, pico, inexact


def _values(d: Dialect, r: str, sign: str, unit_ms: int) -> list[str]:
    """The rollup row's column values for the ledger row alias ``r`` (NEW, OLD or a table)."""
    dollars, pico, inexact = (_sqlite_parts if d == "sqlite" else _pg_parts)(f"{r}.cost")
    mul = "" if sign == "1" else f"{sign} * "
    return [f"({r}.ts_ms / {unit_ms}) * {unit_ms}",
            *(f"coalesce({r}.{dim}, '')" for dim in DIMENSIONS),
            sign, f"{mul}{r}.input_tokens", f"{mul}{r}.cache_read_tokens",
            f"{mul}{r}.cache_write_tokens", f"{mul}{r}.output_tokens",
            f"{mul}{dollars}", f"{mul}{pico}",
            f"{mul}(CASE WHEN {r}.cost IS NULL THEN 1 ELSE 0 END)",
            f"{mul}(CASE WHEN {r}.flags LIKE '%estimated_usage%' THEN 1 ELSE 0 END)",
            f"{mul}{inexact}"]


def _upsert_one(d: Dialect, r: str, sign: str, table: str, unit_ms: int) -> str:
    conflict = (f"ON CONFLICT (start_ms, {', '.join(DIMENSIONS)}) DO UPDATE SET "
                + ", ".join(f"{m} = {table}.{m} + excluded.{m}" for m in MEASURES))
    return f"INSERT INTO {table} VALUES ({', '.join(_values(d, r, sign, unit_ms))}) {conflict}"


def _upsert(d: Dialect, r: str, sign: str, tables: Tables = TABLES) -> str:
    return "; ".join(_upsert_one(d, r, sign, table, unit) for table, unit in tables)


def _append(r: str, sign: str, unit_ms: int = HOUR_MS) -> str:
    """PostgreSQL's trigger: append a delta row. Gateways writing the ledger at once then
    never wait on (or deadlock over) one shared rollup row; readers fold the deltas in."""
    return f"INSERT INTO {DELTA} VALUES ({', '.join(_values('postgres', r, sign, unit_ms))})"


# Fold the deltas into the rollups: each folder takes rows no other folder holds
# (SKIP LOCKED) and upserts in key order, so two folders never deadlock either.
_KEY = ", ".join(["start_ms", *DIMENSIONS])
_DIMS = ", ".join(DIMENSIONS)
_SUMS = ", ".join(f"sum({m})" for m in MEASURES)


def _fold_into(table: str, unit_ms: int) -> str:
    return (f"INSERT INTO {table} SELECT (start_ms / {unit_ms}) * {unit_ms}, {_DIMS}, {_SUMS} "
            f"FROM taken GROUP BY 1, {_DIMS} ORDER BY 1, {_DIMS} ON CONFLICT ({_KEY}) "
            f"DO UPDATE SET {', '.join(f'{m} = {table}.{m} + excluded.{m}' for m in MEASURES)}")


def _fold(limit: str) -> str:
    return f"""WITH taken AS (
    DELETE FROM {DELTA} WHERE ctid IN (
        SELECT ctid FROM {DELTA} {limit} FOR UPDATE SKIP LOCKED)
    RETURNING *), daily AS ({_fold_into(DAILY, DAY_MS)})
{_fold_into(HOURLY, HOUR_MS)}"""


FOLD_PG = _fold("LIMIT 200000")


def rollup_source(d: Dialect, unit_ms: int) -> str:
    """The table expression with every whole day's (``DAY_MS``) or hour's (``HOUR_MS``)
    spend: the rollup and, on PostgreSQL, the unfolded deltas (kept per hour, so they
    fall in the right bucket of either; read them with ``start_ms`` ranges and buckets
    that are whole units)."""
    table = DAILY if unit_ms == DAY_MS else HOURLY
    if d == "sqlite":
        return table
    return f"(SELECT * FROM {table} UNION ALL SELECT * FROM {DELTA}) d"


def ledger_select(d: Dialect) -> str:
    """The ledger's rows in the rollup's columns (``start_ms`` = the call's own time),
    for ranges the daily rollup cannot answer; add ``WHERE l.ts_ms ...``."""
    names = ["start_ms", *DIMENSIONS, *MEASURES]
    values = _values(d, "l", "1", 1)
    return "SELECT " + ", ".join(f"{v} AS {n}" for v, n in zip(values, names, strict=True)) \
        + " FROM access_ledger l"


def _create_and_fill(d: Dialect, tables: Tables) -> list[str]:
    big = "INTEGER" if d == "sqlite" else "bigint"
    made: list[str] = []
    for table, unit in tables:
        made.append(f"CREATE TABLE {table} (start_ms {big} NOT NULL, "
                    + ", ".join(f"{dim} TEXT NOT NULL" for dim in DIMENSIONS) + ", "
                    + ", ".join(f"{m} {big} NOT NULL" for m in MEASURES)
                    + f", PRIMARY KEY (start_ms, {', '.join(DIMENSIONS)}))"
                    # one B-tree per upsert, not a table and its key's index
                    + (" WITHOUT ROWID" if d == "sqlite" else ""))
        values = _values(d, "l", "1", unit)
        sums = [values[0], *values[1:1 + len(DIMENSIONS)], "count(*)",
                *(f"sum({v})" for v in values[2 + len(DIMENSIONS):])]
        made.append(f"INSERT INTO {table} SELECT {', '.join(sums)} FROM access_ledger l "
                    f"GROUP BY {', '.join(str(i) for i in range(1, 2 + len(DIMENSIONS)))}")
    return made


def _sqlite_triggers(tables: Tables) -> tuple[str, ...]:
    d: Dialect = "sqlite"
    return (
        f"CREATE TRIGGER access_spend_ins AFTER INSERT ON access_ledger BEGIN "
        f"{_upsert(d, 'NEW', '1', tables)}; END",
        f"CREATE TRIGGER access_spend_upd AFTER UPDATE ON access_ledger BEGIN "
        f"{_upsert(d, 'OLD', '-1', tables)}; {_upsert(d, 'NEW', '1', tables)}; END",
        f"CREATE TRIGGER access_spend_del AFTER DELETE ON access_ledger BEGIN "
        f"{_upsert(d, 'OLD', '-1', tables)}; END",
    )


def _pg_function(create: str, unit_ms: int) -> str:
    return f"""{create} FUNCTION access_spend_apply() RETURNS trigger AS $fn$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') THEN {_append('OLD', '-1', unit_ms)}; END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') THEN {_append('NEW', '1', unit_ms)}; END IF;
                RETURN NULL;
            END $fn$ LANGUAGE plpgsql"""


def migration(d: Dialect) -> tuple[str, ...]:
    """Access migration 3 (released: never changes): the daily rollup, filled from the
    ledger, and its triggers; plus the index the overview's list of billing risks reads."""
    daily: Tables = ((DAILY, DAY_MS),)
    made = _create_and_fill(d, daily)
    risk = ("CREATE INDEX access_ledger_risk ON access_ledger (ts_ms) "
            "WHERE cost IS NULL OR flags LIKE '%estimated_usage%'")
    triggers: tuple[str, ...]
    if d == "sqlite":
        triggers = _sqlite_triggers(daily)
    else:
        triggers = (
            f"CREATE TABLE {DELTA} (LIKE {DAILY})",
            _pg_function("CREATE", DAY_MS),
            "CREATE TRIGGER access_spend_trg AFTER INSERT OR UPDATE OR DELETE "
            "ON access_ledger FOR EACH ROW EXECUTE FUNCTION access_spend_apply()",
        )
    return (*made, risk, *triggers)


def migration_hourly(d: Dialect) -> tuple[str, ...]:
    """Access migration 5: the hourly rollup (today and two-day ranges per hour), filled
    from the ledger; the triggers then keep both rollups. On PostgreSQL the ledger is
    locked against writes for the step (an older gateway still running would otherwise
    append a day-sized delta after the fold), the day-sized deltas are folded into the
    daily rollup first, and the trigger appends hour-sized deltas from then on."""
    if d == "sqlite":   # the migration's transaction holds SQLite's write lock already
        return (*_create_and_fill(d, ((HOURLY, HOUR_MS),)),
                "DROP TRIGGER access_spend_ins", "DROP TRIGGER access_spend_upd",
                "DROP TRIGGER access_spend_del", *_sqlite_triggers(TABLES))
    fold_daily = (f"WITH taken AS (DELETE FROM {DELTA} RETURNING *) "
                  + _fold_into(DAILY, DAY_MS))
    return ("LOCK TABLE access_ledger IN SHARE ROW EXCLUSIVE MODE", fold_daily,
            *_create_and_fill(d, ((HOURLY, HOUR_MS),)),
            _pg_function("CREATE OR REPLACE", HOUR_MS))
