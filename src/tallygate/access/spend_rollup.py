"""The ledger's hourly spend rollup: ``access_spend_hourly``, kept by database triggers.

One row per (hour, key, customer, team, model, provider, status) with the calls, token
buckets and cost of that hour's ledger rows, so that the dashboard's overview over a month
of a million calls reads a few thousand rows instead of the ledger. Triggers on
``access_ledger`` keep it in the same transaction as every ledger write, from any
gateway or command (an insert adds, an update such as ``outbox assign`` moves the row
from its old group to its new one, a delete subtracts): no process memory involved.

Cost is exact: the decimal text is split into whole dollars and picodollars (10^-12),
two integers that sum without rounding. A cost with more than 12 decimals is counted
in ``inexact``; readers then sum that range from the ledger instead.
"""

from __future__ import annotations

from typing import Literal

Dialect = Literal["sqlite", "postgres"]
TABLE = "access_spend_hourly"
HOUR_MS = 3_600_000
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


def _values(d: Dialect, r: str, sign: str) -> list[str]:
    """The rollup row's column values for the ledger row alias ``r`` (NEW, OLD or a table)."""
    dollars, pico, inexact = (_sqlite_parts if d == "sqlite" else _pg_parts)(f"{r}.cost")
    mul = "" if sign == "1" else f"{sign} * "
    return [f"({r}.ts_ms / {HOUR_MS}) * {HOUR_MS}",
            *(f"coalesce({r}.{dim}, '')" for dim in DIMENSIONS),
            sign, f"{mul}{r}.input_tokens", f"{mul}{r}.cache_read_tokens",
            f"{mul}{r}.cache_write_tokens", f"{mul}{r}.output_tokens",
            f"{mul}{dollars}", f"{mul}{pico}",
            f"{mul}(CASE WHEN {r}.cost IS NULL THEN 1 ELSE 0 END)",
            f"{mul}(CASE WHEN {r}.flags LIKE '%estimated_usage%' THEN 1 ELSE 0 END)",
            f"{mul}{inexact}"]


_CONFLICT = (f"ON CONFLICT (hour_ms, {', '.join(DIMENSIONS)}) DO UPDATE SET "
             + ", ".join(f"{m} = {TABLE}.{m} + excluded.{m}" for m in MEASURES))


def _upsert(d: Dialect, r: str, sign: str) -> str:
    return (f"INSERT INTO {TABLE} VALUES ({', '.join(_values(d, r, sign))}) {_CONFLICT}")


def migration(d: Dialect) -> tuple[str, ...]:
    """The forward-only step that adds the rollup, fills it from the ledger, and its
    triggers; plus the index the overview's list of billing risks reads."""
    big = "INTEGER" if d == "sqlite" else "bigint"
    create = (f"CREATE TABLE {TABLE} (hour_ms {big} NOT NULL, "
              + ", ".join(f"{dim} TEXT NOT NULL" for dim in DIMENSIONS) + ", "
              + ", ".join(f"{m} {big} NOT NULL" for m in MEASURES)
              + f", PRIMARY KEY (hour_ms, {', '.join(DIMENSIONS)}))")
    values = _values(d, "l", "1")
    sums = [values[0], *values[1:1 + len(DIMENSIONS)], "count(*)",
            *(f"sum({v})" for v in values[2 + len(DIMENSIONS):])]
    fill = (f"INSERT INTO {TABLE} SELECT {', '.join(sums)} FROM access_ledger l "
            f"GROUP BY {', '.join(str(i) for i in range(1, 2 + len(DIMENSIONS)))}")
    risk = ("CREATE INDEX access_ledger_risk ON access_ledger (ts_ms) "
            "WHERE cost IS NULL OR flags LIKE '%estimated_usage%'")
    triggers: tuple[str, ...]
    if d == "sqlite":
        triggers = (
            f"CREATE TRIGGER access_spend_ins AFTER INSERT ON access_ledger BEGIN "
            f"{_upsert(d, 'NEW', '1')}; END",
            f"CREATE TRIGGER access_spend_upd AFTER UPDATE ON access_ledger BEGIN "
            f"{_upsert(d, 'OLD', '-1')}; {_upsert(d, 'NEW', '1')}; END",
            f"CREATE TRIGGER access_spend_del AFTER DELETE ON access_ledger BEGIN "
            f"{_upsert(d, 'OLD', '-1')}; END",
        )
    else:
        triggers = (
            f"""CREATE FUNCTION access_spend_apply() RETURNS trigger AS $fn$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') THEN {_upsert(d, 'OLD', '-1')}; END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') THEN {_upsert(d, 'NEW', '1')}; END IF;
                RETURN NULL;
            END $fn$ LANGUAGE plpgsql""",
            "CREATE TRIGGER access_spend_trg AFTER INSERT OR UPDATE OR DELETE "
            "ON access_ledger FOR EACH ROW EXECUTE FUNCTION access_spend_apply()",
        )
    return (create, fill, risk, *triggers)
