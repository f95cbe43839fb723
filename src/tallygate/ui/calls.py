"""The calls list (``/ui/calls``): the ledger's calls in a range, newest first, filtered by
customer, key, model, status or billing risk; its CSV is every matching call, streamed.

Pages are keyset-paginated (``before=<ts_ms>.<seq>`` of the last row shown), never
``OFFSET``: page 500 of a million calls costs what page 1 costs. Each filter column has
an index that starts with it and goes on with ``ts_ms`` (access migrations 1 and 4; the
risk filter reads the partial index of migration 3), so a page reads about as many index
entries as it shows rows. The CSV is read in the same keyset batches and written as it
is read: its memory stays one batch, and its first bytes leave at once.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from tallygate.access.db import Database, Row, SQLiteDatabase
from tallygate.ui import queries
from tallygate.ui.html import Html, esc, text_of
from tallygate.ui.view import Page, Range, View, call_table, parse_range, when

PAGE_SIZE = 100
CSV_BATCH = 2_000
CSV_NAME = "calls"
# The query argument -> the ledger column it filters (key: the alias, resolved to a token).
FILTERS = {"customer": "customer_id", "key": "key_token", "model": "model",
           "status": "status"}
RISK = "(cost IS NULL OR flags LIKE '%estimated_usage%')"   # = the partial index's WHERE
CSV_COLUMNS = ("call_id", "time_utc", "key_alias", "user_id", "team_id", "customer_id",
               "billed_to", "end_user", "model", "provider", "provider_model", "kind",
               "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
               "cost_usd", "status", "flags")


@dataclass(frozen=True, slots=True)
class CallFilter:
    since_ms: int
    until_ms: int
    equal: tuple[tuple[str, str], ...] = ()   # (ledger column, value)
    risk: bool = False

    def where(self, before: tuple[int, int] | None) -> tuple[str, list[Any]]:
        # One upper bound on ts_ms (SQLite's planner keeps only one for the index range):
        # a page after ``before`` starts at its time.
        until = self.until_ms if before is None else min(self.until_ms, before[0] + 1)
        parts = ["ts_ms >= ?", "ts_ms < ?"]
        args: list[Any] = [self.since_ms, until]
        for column, value in self.equal:
            parts.append(f"{column} = ?")
            args.append(value)
        if self.risk:
            parts.append(RISK)
        if before is not None:   # the OR breaks ties on seq
            parts.append("(ts_ms < ? OR seq < ?)")
            args.extend((before[0], before[1]))
        return " AND ".join(parts), args


async def rows(db: Database, f: CallFilter, *, before: tuple[int, int] | None = None,
               limit: int = PAGE_SIZE) -> list[Row]:
    where, args = f.where(before)
    return await db.fetch(f"SELECT * FROM access_ledger WHERE {where} "
                          "ORDER BY ts_ms DESC, seq DESC LIMIT ?", *args, limit)


def _sqlite_rows(db: SQLiteDatabase, f: CallFilter, before: tuple[int, int] | None,
                 limit: int) -> list[Row]:
    where, args = f.where(before)
    cur = db.conn().execute(f"SELECT * FROM access_ledger WHERE {where} "
                            "ORDER BY ts_ms DESC, seq DESC LIMIT ?", (*args, limit))
    names = [c[0] for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


async def all_rows(db: Database, f: CallFilter, batch: int = CSV_BATCH
                   ) -> AsyncIterator[list[Row]]:
    """Every matching call, newest first, a keyset batch at a time. SQLite's batches are
    read on a worker thread (its own connection): a long export never holds the event
    loop, which serves the chat calls too."""
    before: tuple[int, int] | None = None
    while True:
        if isinstance(db, SQLiteDatabase):
            found = await asyncio.to_thread(_sqlite_rows, db, f, before, batch)
        else:
            found = await rows(db, f, before=before, limit=batch)
        if found:
            yield found
        if len(found) < batch:
            return
        before = (int(found[-1]["ts_ms"]), int(found[-1]["seq"]))


def parse_before(text: str) -> tuple[int, int] | None:
    ts, _, seq = text.partition(".")
    if not (ts.isdigit() and seq.isdigit()):
        return None
    return int(ts), int(seq)


async def call_filter(view: View) -> tuple[CallFilter, Range, list[str]]:
    """The filter the query asks for, its range, and why a part of it cannot match."""
    r = parse_range(view, "30d")
    equal: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, column in FILTERS.items():
        value = view.arg(name).strip()
        if not value:
            continue
        if name == "key":
            row = await view.db.fetchone("SELECT token FROM access_keys WHERE key_alias = ?",
                                         value)
            if row is None:
                problems.append(f"no key has the alias {value!r}")
                value = ""   # matches no call: a key token is never empty
            else:
                value = str(row["token"])
        equal.append((column, value))
    return CallFilter(r.since_ms, r.until_ms, tuple(equal), view.arg("risk") == "1"), r, \
        problems


def _filter_form(view: View) -> Html:
    fields = "".join(
        f'{label} <input name="{name}" value="{esc(view.arg(name))}" size="12"> '
        for name, label in (("customer", "customer"), ("key", "key alias"),
                            ("model", "model group"), ("status", "status")))
    risk = ' checked' if view.arg("risk") == "1" else ""
    ranges = "".join(
        f'<option value="{v}"{" selected" if view.arg("range", "30d") == v else ""}>{t}'
        "</option>" for v, t in (("today", "today"), ("7d", "7 days"), ("30d", "30 days"),
                                 ("custom", "from / to")))
    return Html(
        f'<form method="get" action="/ui/calls" class="filters">{fields}'
        f'<label><input type="checkbox" name="risk" value="1"{risk}> unknown price or '
        f'estimated usage only</label> <select name="range">{ranges}</select> '
        f'from <input type="date" name="from" value="{esc(view.arg("from"))}"> to '
        f'<input type="date" name="to" value="{esc(view.arg("to"))}"> '
        f'<button>Filter</button></form>')


def _query(view: View, **changes: str) -> str:
    kept = {k: v for k, v in view.request.query.items() if k not in ("csv", "before")}
    kept.update(changes)
    return urlencode(kept)


async def page(view: View) -> Page:
    f, _, problems = await call_filter(view)
    before = parse_before(view.arg("before"))
    found = await rows(view.db, f, before=before, limit=PAGE_SIZE + 1)
    more, shown = len(found) > PAGE_SIZE, found[:PAGE_SIZE]
    states = await queries.delivery_states(view.db, [s.name for s in view.gw.sinks],
                                           [str(c["call_id"]) for c in shown])
    table = call_table(CSV_NAME, shown, states, empty="no calls match")
    notes = "".join(f'<p class="flash error" role="alert">{esc(p)}</p>' for p in problems)
    links = [f'<a href="/ui/calls?{esc(_query(view))}">newest</a>'] if before else []
    if more:
        last = shown[-1]
        older = _query(view, before=f"{last['ts_ms']}.{last['seq']}")
        links.append(f'<a href="/ui/calls?{esc(older)}" rel="next">older calls</a>')
    body = Html(f"{_filter_form(view)}{notes}{table.html(view.query)}"
                f'<p class="pager">{" · ".join(links)}</p>'
                f"<p>The CSV link gives every call that matches (the whole range, "
                f"not only this page).</p>")
    return Page("Calls", body, {CSV_NAME: table})


def _csv_line(r: Mapping[str, Any]) -> list[str]:
    return [text_of(v) for v in (
        r["call_id"], when(r["ts_ms"]), r["key_alias"], r["user_id"], r["team_id"],
        r["customer_id"], r["billed_to"], r["end_user"], r["model"], r["provider"],
        r["provider_model"], r["kind"], r["input_tokens"], r["cache_read_tokens"],
        r["cache_write_tokens"], r["output_tokens"], r["cost"], r["status"], r["flags"])]


async def stream_csv(view: View, headers: Mapping[str, str]) -> web.StreamResponse:
    """Every call the filter matches as CSV, written batch by batch as it is read."""
    f, _, _ = await call_filter(view)
    response = web.StreamResponse(headers={
        **headers, "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{CSV_NAME}.csv"'})
    await response.prepare(view.request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    await response.write(out.getvalue().encode())
    async for batch in all_rows(view.db, f):
        out.seek(0)
        out.truncate()
        writer.writerows(_csv_line(r) for r in batch)
        await response.write(out.getvalue().encode())
    await response.write_eof()
    return response
