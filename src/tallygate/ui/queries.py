"""What the dashboard reads, all from the shared database (never one process's memory).

Spend over time comes from the daily and hourly rollups (access/spend_rollup.py); single
calls from
the ledger; keys, teams and customers through access/keys.py's store; held calls,
assigning them and reconciling through the same functions as the ``tallygate outbox``
and ``tallygate reconcile`` commands.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tallygate.access import commands as access_commands
from tallygate.access import held as held_calls
from tallygate.access.budgets import from_micros
from tallygate.access.db import Database, Row, placeholders
from tallygate.access.spend_rollup import FOLD_PG, PICO_DIGITS, ledger_select, rollup_source
from tallygate.metering.outbox import Outbox

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass(slots=True)
class Agg:
    """Calls, tokens by bucket and exact cost of a group of ledger rows."""
    calls: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    dollars: int = 0
    pico: int = 0
    unpriced: int = 0
    estimated: int = 0
    inexact: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        self.calls += int(row["calls"])
        self.input_tokens += int(row["input_tokens"])
        self.cache_read_tokens += int(row["cache_read_tokens"])
        self.cache_write_tokens += int(row["cache_write_tokens"])
        self.output_tokens += int(row["output_tokens"])
        self.dollars += int(row["cost_dollars"])
        self.pico += int(row["cost_pico"])
        self.unpriced += int(row["unpriced"])
        self.estimated += int(row["estimated"])
        self.inexact += int(row["inexact"])

    @property
    def cost(self) -> Decimal:
        total = Decimal(self.dollars) + Decimal(self.pico).scaleb(-PICO_DIGITS)
        return total.normalize() if total else Decimal(0)

    @property
    def tokens(self) -> int:
        return (self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
                + self.output_tokens)


BREAKDOWNS = ("customer_id", "model", "provider", "key_token", "team_id")


@dataclass(slots=True)
class Overview:
    bucket_ms: int
    series: dict[int, Agg] = field(default_factory=dict)
    by: dict[str, dict[str, Agg]] = field(default_factory=dict)
    total: Agg = field(default_factory=Agg)
    held: Agg = field(default_factory=Agg)


_SUMS = ", ".join(f"sum({m}) AS {m}" for m in (
    "calls", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
    "cost_dollars", "cost_pico", "unpriced", "estimated", "inexact"))


async def overview(db: Database, since_ms: int, until_ms: int, bucket_ms: int, *,
                   key_token: str | None = None, customer_id: str | None = None) -> Overview:
    """Spend per time bucket and per customer, model, provider, key and team: from the
    daily rollup when the range is whole days counted per day, from the hourly one when
    it is whole hours counted per hour or more (today, two custom days), else from the
    ledger's rows in that range. Each grouping is its own GROUP BY, so the database adds
    and Python gets a few rows."""
    unit = next((u for u in (DAY_MS, HOUR_MS) if bucket_ms % u == 0
                 and since_ms % u == 0 and until_ms % u == 0), None)
    source_args: list[Any] = []
    if unit is not None:
        table = rollup_source(db.dialect, unit)
        if db.dialect == "postgres":
            await db.execute(FOLD_PG)   # keeps the deltas the next read adds up few
    else:
        table = f"({ledger_select(db.dialect)} WHERE l.ts_ms >= ? AND l.ts_ms < ?) r"
        source_args = [since_ms, until_ms]
    where = "start_ms >= ? AND start_ms < ?"
    args: list[Any] = [since_ms, until_ms]
    if key_token is not None:
        where += " AND key_token = ?"
        args.append(key_token)
    if customer_id is not None:
        where += " AND customer_id = ?"
        args.append(customer_id)

    async def grouped(expr: str, *head: Any) -> list[tuple[str, Agg]]:
        rows = await db.fetch(f"SELECT {expr} AS label, {_SUMS} FROM {table} WHERE {where} "
                              "GROUP BY 1", *head, *source_args, *args)
        out: list[tuple[str, Agg]] = []
        for row in rows:
            agg = Agg()
            agg.add(row)
            if agg.calls or agg.dollars or agg.pico:   # not a group whose rows moved away
                out.append((str(row["label"]), agg))
        return out

    out = Overview(bucket_ms)
    start = since_ms - since_ms % bucket_ms
    for t in range(start, until_ms, bucket_ms):
        out.series[t] = Agg()
    for label, agg in await grouped("(start_ms / ?) * ?", bucket_ms, bucket_ms):
        out.series[int(label)] = agg
    for label, agg in await grouped("status"):
        out.total.add(_as_row(agg))
        if label == held_calls.HELD:
            out.held = agg
    for name in BREAKDOWNS:
        out.by[name] = dict(await grouped(name))
    return out


def _as_row(a: Agg) -> dict[str, int]:
    return {"calls": a.calls, "input_tokens": a.input_tokens,
            "cache_read_tokens": a.cache_read_tokens,
            "cache_write_tokens": a.cache_write_tokens, "output_tokens": a.output_tokens,
            "cost_dollars": a.dollars, "cost_pico": a.pico, "unpriced": a.unpriced,
            "estimated": a.estimated, "inexact": a.inexact}


async def key_aliases(db: Database) -> dict[str, str]:
    rows = await db.fetch("SELECT token, key_alias, key_name FROM access_keys")
    return {str(r["token"]): str(r["key_alias"] or r["key_name"]) for r in rows}


async def risky_calls(db: Database, since_ms: int, until_ms: int, *,
                      key_token: str | None = None, limit: int = 50) -> list[Row]:
    """Calls with no known price or with estimated usage: billing risks."""
    sql = ("SELECT call_id, ts_ms, key_alias, customer_id, model, provider, cost, flags "
           "FROM access_ledger WHERE (cost IS NULL OR flags LIKE '%estimated_usage%') "
           "AND ts_ms >= ? AND ts_ms < ?")
    args: list[Any] = [since_ms, until_ms]
    if key_token is not None:
        sql += " AND key_token = ?"
        args.append(key_token)
    sql += " ORDER BY ts_ms DESC LIMIT ?"
    return await db.fetch(sql, *args, limit)


async def recent_calls(db: Database, *, customer_id: str | None = None,
                       key_token: str | None = None, limit: int = 50) -> list[Row]:
    sql = "SELECT * FROM access_ledger"
    parts: list[str] = []
    args: list[Any] = []
    for column, value in (("customer_id", customer_id), ("key_token", key_token)):
        if value is not None:
            parts.append(f"{column} = ?")
            args.append(value)
    if parts:
        sql += " WHERE " + " AND ".join(parts)
    return await db.fetch(sql + " ORDER BY ts_ms DESC, seq DESC LIMIT ?", *args, limit)


async def delivery_states(db: Database, sinks: Sequence[str],
                          call_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """call_id -> {sink: outbox state} for these calls."""
    if not call_ids or not sinks:
        return {}
    rows = await db.fetch(
        f"SELECT call_id, sink, state FROM outbox WHERE sink IN ({placeholders(sinks)}) "
        f"AND call_id IN ({placeholders(call_ids)})", *sinks, *call_ids)
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        out.setdefault(str(r["call_id"]), {})[str(r["sink"])] = str(r["state"])
    return out


@dataclass(frozen=True, slots=True)
class Budgeted:
    ident: str
    alias: str | None
    subscription: str | None
    blocked: bool
    spend: Decimal
    limit: Decimal | None
    rpm: int | None = None
    tpm: int | None = None


async def customers(db: Database) -> list[Budgeted]:
    rows = await db.fetch(
        """SELECT c.customer_id, c.alias, c.external_subscription_id, c.blocked,
        b.max_micros, b.spend_micros FROM access_customers c
        LEFT JOIN access_budgets b ON b.scope = 'customer' AND b.id = c.customer_id
        ORDER BY c.customer_id""")
    return [Budgeted(str(r["customer_id"]), r["alias"], r["external_subscription_id"],
                     bool(r["blocked"]), from_micros(r["spend_micros"] or 0) or Decimal(0),
                     from_micros(r["max_micros"])) for r in rows]


async def teams(db: Database) -> list[Budgeted]:
    rows = await db.fetch(
        """SELECT t.team_id, t.team_alias, t.blocked, t.rpm_limit, t.tpm_limit,
        b.max_micros, b.spend_micros FROM access_teams t
        LEFT JOIN access_budgets b ON b.scope = 'team' AND b.id = t.team_id
        ORDER BY t.team_id""")
    return [Budgeted(str(r["team_id"]), r["team_alias"], None, bool(r["blocked"]),
                     from_micros(r["spend_micros"] or 0) or Decimal(0),
                     from_micros(r["max_micros"]), r["rpm_limit"], r["tpm_limit"])
            for r in rows]


async def last_used(db: Database, tokens: Sequence[str]) -> dict[str, int]:
    """token -> the newest ledger time of each key (one index probe per key)."""
    out: dict[str, int] = {}
    for token in tokens:
        row = await db.fetchone("SELECT max(ts_ms) AS t FROM access_ledger WHERE key_token = ?",
                                token)
        if row and row["t"] is not None:
            out[token] = int(row["t"])
    return out


# --- held calls and reconcile, through the commands' own code ---------------------------


async def held_rows(db: Database, limit: int = 100) -> list[Row]:
    return await held_calls._held_rows(db, None, None, limit)


async def assign_held(db: Database, outbox: Outbox, call_ids: Sequence[str], customer: str,
                      subscription: str | None) -> tuple[bool, list[str]]:
    """``tallygate outbox assign --id ... --customer C``; (all done, its report lines)."""
    args = argparse.Namespace(all=False, ids=list(call_ids), customer=customer,
                              subscription=subscription or None, sink="lago")
    out = io.StringIO()
    code = await held_calls._assign(args, db, outbox, out)
    return code == held_calls.EXIT_OK, out.getvalue().splitlines()


async def reconcile(db: Database, since_ms: int) -> tuple[bool, list[str]]:
    """``tallygate reconcile --since``: (no differences, its report lines)."""
    out = io.StringIO()
    code = await access_commands._reconcile(
        argparse.Namespace(since=since_ms, no_lago=False), db, out)
    return code == access_commands.EXIT_OK, out.getvalue().splitlines()
