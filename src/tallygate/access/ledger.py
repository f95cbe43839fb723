"""The local spend ledger: one row per billed call, written with its budget settle.

Costs are stored as decimal strings and summed as Decimal (never a float). Unattributed
calls are kept with ``status = 'unattributed'`` (held: not sent to Lago, never dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tallygate.access.db import Database, Row

GroupBy = Literal["customer", "key", "model", "team", "user"]
GROUP_COLUMNS: Mapping[str, str] = {"customer": "customer_id", "key": "key_token",
                                    "model": "model", "team": "team_id", "user": "user_id"}
FILTER_COLUMNS = ("key_token", "key_alias", "user_id", "team_id", "customer_id", "model",
                  "status", "end_user")


@dataclass(slots=True)
class Totals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    unpriced: int = 0
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Mapping[str, Any]) -> None:
        self.calls += 1
        self.input_tokens += int(row["input_tokens"] + row["cache_read_tokens"]
                                 + row["cache_write_tokens"])
        self.output_tokens += int(row["output_tokens"])
        if row["cost"] is None:
            self.unpriced += 1
        else:
            self.cost += Decimal(row["cost"])


def _where(since_ms: int | None, until_ms: int | None,
           filters: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    parts: list[str] = []
    args: list[Any] = []
    if since_ms is not None:
        parts.append("ts_ms >= ?")
        args.append(since_ms)
    if until_ms is not None:
        parts.append("ts_ms < ?")
        args.append(until_ms)
    for column in FILTER_COLUMNS:
        value = filters.get(column)
        if value is not None:
            parts.append(f"{column} = ?")
            args.append(value)
    return (f"WHERE {' AND '.join(parts)}" if parts else ""), args


async def rows(db: Database, *, since_ms: int | None = None, until_ms: int | None = None,
               filters: Mapping[str, str | None] | None = None,
               limit: int | None = None) -> list[Row]:
    where, args = _where(since_ms, until_ms, filters or {})
    tail = ""
    if limit is not None:
        tail = " LIMIT ?"
        args.append(limit)
    return await db.fetch(f"SELECT * FROM access_ledger {where} ORDER BY ts_ms, seq{tail}",
                          *args)


async def grouped(db: Database, by: str, *, since_ms: int | None = None,
                  until_ms: int | None = None,
                  filters: Mapping[str, str | None] | None = None
                  ) -> tuple[list[Totals], Totals]:
    """Totals per group (dearest first) and the grand total."""
    column = GROUP_COLUMNS[by]
    where, args = _where(since_ms, until_ms, filters or {})
    found = await db.fetch(
        f"""SELECT {column} AS label, key_alias, input_tokens, cache_read_tokens,
            cache_write_tokens, output_tokens, cost FROM access_ledger {where}""", *args)
    groups: dict[str | None, Totals] = {}
    total = Totals()
    for row in found:
        group = groups.get(row["label"])
        if group is None:
            group = groups[row["label"]] = Totals(label=row["label"])
            if by == "key":
                group.extra["key_alias"] = row["key_alias"]
        group.add(row)
        total.add(row)
    ordered = sorted(groups.values(), key=lambda t: (-t.cost, str(t.label)))
    return ordered, total


def row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    from tallygate.access.keys import iso, money

    return {
        "request_id": row["call_id"], "call_id": row["call_id"],
        "startTime": iso(row["ts_ms"]), "api_key": row["key_token"],
        "key_alias": row["key_alias"], "user": row["user_id"], "team_id": row["team_id"],
        "customer_id": row["customer_id"], "billed_to": row["billed_to"],
        "end_user": row["end_user"], "model": row["model"], "provider": row["provider"],
        "prompt_tokens": (row["input_tokens"] + row["cache_read_tokens"]
                          + row["cache_write_tokens"]),
        "completion_tokens": row["output_tokens"],
        "cache_read_tokens": row["cache_read_tokens"],
        "cache_write_tokens": row["cache_write_tokens"],
        "spend": money(None if row["cost"] is None else Decimal(row["cost"])),
        "status": row["status"], "flags": [f for f in row["flags"].split(",") if f],
    }


def totals_json(t: Totals) -> dict[str, Any]:
    from tallygate.access.keys import money

    return {"calls": t.calls, "prompt_tokens": t.input_tokens,
            "completion_tokens": t.output_tokens, "spend": money(t.cost),
            "unpriced_calls": t.unpriced}


def call_ids(found: Sequence[Row]) -> set[str]:
    return {str(r["call_id"]) for r in found}
