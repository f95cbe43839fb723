"""What a page handler gets (the request, its session, the database) and gives back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tallygate.access.db import Database, Row
from tallygate.access.policy import VirtualKeyPolicy
from tallygate.proxy.gateway import Gateway
from tallygate.ui.html import Cell, Html, Table, esc
from tallygate.ui.queries import DAY_MS, HOUR_MS, Agg
from tallygate.ui.session import Session


@dataclass(slots=True)
class Page:
    title: str
    body: Html
    tables: dict[str, Table] = field(default_factory=dict)


@dataclass(slots=True)
class View:
    request: web.Request
    gw: Gateway
    session: Session
    csrf: str

    @property
    def policy(self) -> VirtualKeyPolicy:
        return self.gw.keys

    @property
    def db(self) -> Database:
        assert self.gw.keys.db is not None, "gateway not started"
        return self.gw.keys.db

    @property
    def query(self) -> list[tuple[str, str]]:
        return list(self.request.query.items())

    def arg(self, name: str, default: str = "") -> str:
        return self.request.query.get(name, default)


def when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True, slots=True)
class Range:
    name: str
    since_ms: int
    until_ms: int
    bucket_ms: int

    def label(self, bucket: int) -> str:
        fmt = "%m-%d %H:00" if self.bucket_ms == HOUR_MS else "%Y-%m-%d"
        return datetime.fromtimestamp(bucket / 1000, UTC).strftime(fmt)


def _day(text: str) -> int | None:
    try:
        moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp() * 1000)


def parse_range(view: View, default: str = "7d") -> Range:
    """today / 7d / 30d / custom (from, to: whole UTC days, ``to`` inclusive)."""
    now = int(time.time() * 1000)
    today = now - now % DAY_MS
    name = view.arg("range", default)
    if name == "custom":
        start, end = _day(view.arg("from")), _day(view.arg("to"))
        if start is not None and end is not None and end >= start:
            until = end + DAY_MS
            bucket = HOUR_MS if until - start <= 2 * DAY_MS else DAY_MS
            return Range(name, start, until, bucket)
        name = default
    if name == "today":
        return Range(name, today, now - now % HOUR_MS + HOUR_MS, HOUR_MS)
    days = 30 if name == "30d" else 7
    return Range("30d" if days == 30 else "7d", today - (days - 1) * DAY_MS,
                 today + DAY_MS, DAY_MS)


AGG_COLUMNS = ("calls", "input tokens", "cache read", "cache write", "output tokens",
               "cost (USD)", "unknown price", "estimated usage")


def agg_cells(a: Agg) -> list[Any]:
    cost = f"{a.cost}" + (" + unknown" if a.unpriced else "")
    return [a.calls, a.input_tokens, a.cache_read_tokens, a.cache_write_tokens,
            a.output_tokens, cost, a.unpriced, a.estimated]


CALL_COLUMNS = ("call id", "time (UTC)", "key", "customer", "model", "provider",
                "input", "cache read", "cache write", "output", "cost (USD)", "status",
                "flags", "delivery")


def call_table(name: str, rows: Sequence[Row], states: dict[str, dict[str, str]],
               empty: str = "no calls yet") -> Table:
    table = Table(name, CALL_COLUMNS, empty=empty)
    for r in rows:
        delivery = ", ".join(f"{s}: {st}" for s, st in sorted(states.get(r["call_id"],
                                                                          {}).items()))
        cost = r["cost"] if r["cost"] is not None else "unknown"
        table.rows.append([
            Cell(r["call_id"], Html(f'<code class="call">{esc(r["call_id"])}</code>')),
            when(r["ts_ms"]), r["key_alias"] or "", r["customer_id"] or "", r["model"],
            r["provider"], r["input_tokens"], r["cache_read_tokens"],
            r["cache_write_tokens"], r["output_tokens"],
            Cell(cost, Html(f'<span class="cost">{esc(cost)}</span>')), r["status"],
            r["flags"].replace(",", ", "),
            delivery or ("held" if r["status"] == "unattributed" else "-")])
    return table
