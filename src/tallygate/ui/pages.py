"""The spend pages: the overview (the whole gateway's, or one virtual key's own) and
the customers."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import quote

from tallygate.access.budgets import from_micros
from tallygate.ui import queries
from tallygate.ui.charts import chart_with_table, meter
from tallygate.ui.html import Cell, Html, Table, esc, link
from tallygate.ui.view import AGG_COLUMNS, Page, Range, View, agg_cells, call_table, parse_range

BREAKDOWN_TITLES = {"customer_id": "customer", "model": "model group", "provider": "provider",
                    "key_token": "key", "team_id": "team"}


def _range_picker(view: View, r: Range, path: str) -> Html:
    links = "".join(
        f'<a href="{path}?range={name}" class="{"on" if r.name == name else ""}">{label}</a>'
        for name, label in (("today", "Today"), ("7d", "7 days"), ("30d", "30 days")))
    return Html(f'<div class="ranges">{links}<form method="get" action="{path}" '
                f'class="inline"><input type="hidden" name="range" value="custom">'
                f'from <input type="date" name="from" value="{esc(view.arg("from"))}"> to '
                f'<input type="date" name="to" value="{esc(view.arg("to"))}"> '
                f'<button>Show</button></form></div>')


def _cards(o: queries.Overview) -> Html:
    t = o.total
    items = [("spend (USD)", str(t.cost), ""), ("calls", str(t.calls), ""),
             ("tokens", str(t.tokens), ""),
             ("unknown price", str(t.unpriced), "risk" if t.unpriced else ""),
             ("estimated usage", str(t.estimated), "risk" if t.estimated else ""),
             ("held (unattributed)", str(o.held.calls), "risk" if o.held.calls else "")]
    cards = "".join(f'<div class="card {cls}" data-card="{esc(name)}">{esc(name)}'
                    f'<b>{esc(value)}</b></div>' for name, value, cls in items)
    note = ""
    if t.inexact:
        note = (f"<p>{t.inexact} call(s) cost finer than 10^-12 USD; these totals are "
                "rounded down there (`tallygate usage` sums the ledger exactly).</p>")
    return Html(f'<div class="cards">{cards}</div>{note}')


def _series(view: View, r: Range, o: queries.Overview, tables: dict[str, Table]) -> Html:
    table = Table("over_time", ("period", *AGG_COLUMNS))
    points_cost = []
    points_calls = []
    for bucket, agg in sorted(o.series.items()):
        label = r.label(bucket)
        table.rows.append([label, *agg_cells(agg)])
        points_cost.append((label, agg.cost))
        points_calls.append((label, agg.calls))
    tables[table.name] = table
    per = "hour" if r.bucket_ms == queries.HOUR_MS else "day"
    calls_table = Table("calls_over_time", ("period", "calls"),
                        [[label, n] for label, n in points_calls])
    tables[calls_table.name] = calls_table
    return Html(chart_with_table(f"Spend per {per}", table, points_cost, view.query, " USD")
                + chart_with_table(f"Calls per {per}", calls_table, points_calls, view.query))


async def _breakdowns(view: View, o: queries.Overview, tables: dict[str, Table]) -> Html:
    aliases = await queries.key_aliases(view.db)
    parts: list[str] = []
    for dim, title in BREAKDOWN_TITLES.items():
        groups = sorted(o.by[dim].items(), key=lambda kv: (-kv[1].cost, -kv[1].calls, kv[0]))
        table = Table(f"by_{title.replace(' ', '_')}", (title, *AGG_COLUMNS))
        for label, agg in groups:
            shown = (aliases.get(label, label[:12]) if dim == "key_token" else label) or "(none)"
            cell = (link(f"/ui/customers/{quote(label, safe='')}", shown)
                    if dim == "customer_id" and label and view.session.is_master else shown)
            table.rows.append([cell, *agg_cells(agg)])
        tables[table.name] = table
        if dim in ("customer_id", "model"):
            top = [(row[0].text if isinstance(row[0], Cell) else str(row[0]), agg.cost)
                   for row, (_, agg) in zip(table.rows[:10], groups[:10], strict=True)]
            parts.append(chart_with_table(f"Top {title}s by spend", table, top, view.query,
                                          " USD", ranked=True))
        else:
            parts.append(f"<h2>By {esc(title)}</h2>{table.html(view.query)}")
    return Html("".join(parts))


async def overview(view: View) -> Page:
    r = parse_range(view)
    own = None if view.session.is_master else view.session.token
    o = await queries.overview(view.db, r.since_ms, r.until_ms, r.bucket_ms, key_token=own)
    tables: dict[str, Table] = {}
    body: list[str] = [_range_picker(view, r, "/ui"), _cards(o), _series(view, r, o, tables)]
    recent = await queries.recent_calls(view.db, key_token=own, limit=25)
    states = await queries.delivery_states(view.db, _sinks(view),
                                           [str(c["call_id"]) for c in recent])
    recent_table = call_table("recent_calls", recent, states)
    tables[recent_table.name] = recent_table
    body.append(f"<h2>Recent calls</h2>{recent_table.html(view.query)}")
    if view.session.is_master:
        body.append(await _breakdowns(view, o, tables))
    else:
        model = Table("by_model_group", ("model group", *AGG_COLUMNS))
        for label, agg in sorted(o.by["model"].items(), key=lambda kv: -kv[1].cost):
            model.rows.append([label, *agg_cells(agg)])
        tables[model.name] = model
        body.append(f"<h2>By model group</h2>{model.html(view.query)}")
    risky = await queries.risky_calls(view.db, r.since_ms, r.until_ms, key_token=own)
    risk_table = call_table("billing_risks", risky_rows(risky), {},
                            empty="no unknown-price or estimated-usage calls")
    tables[risk_table.name] = risk_table
    body.append(f"<h2>Unknown-price and estimated-usage calls</h2>"
                f"{risk_table.html(view.query)}")
    title = "Overview" if view.session.is_master else "Your spend"
    return Page(title, Html("".join(body)), tables)


def risky_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The risk list's rows in the call table's shape (it reads fewer columns)."""
    blank = {"user_id": None, "team_id": None, "input_tokens": "", "cache_read_tokens": "",
             "cache_write_tokens": "", "output_tokens": "", "status": ""}
    return [{**blank, **r} for r in rows]


def _sinks(view: View) -> list[str]:
    return [s.name for s in view.gw.sinks]


async def customers(view: View) -> Page:
    r = parse_range(view, "30d")
    o = await queries.overview(view.db, r.since_ms, r.until_ms, r.bucket_ms)
    spend = o.by["customer_id"]
    keys, _ = await view.policy.store.list_keys(size=10_000) if view.policy.store else ([], 0)
    key_count: dict[str, int] = {}
    for k in keys:
        if k.customer_id:
            key_count[k.customer_id] = key_count.get(k.customer_id, 0) + 1
    table = Table("customers", ("customer", "alias", "Lago subscription", "budget",
                                "budget left (USD)", f"calls ({r.name})",
                                f"spend ({r.name}, USD)", "keys", "blocked"))
    known = set()
    for c in await queries.customers(view.db):
        known.add(c.ident)
        agg = spend.get(c.ident, queries.Agg())
        left = "" if c.limit is None else str(c.limit - c.spend)
        table.rows.append([link(f"/ui/customers/{quote(c.ident, safe='')}", c.ident),
                           c.alias or "", c.subscription or "",
                           _meter_cell(c.spend, c.limit), left, agg.calls, agg.cost,
                           key_count.get(c.ident, 0), "yes" if c.blocked else ""])
    for ident, agg in sorted(spend.items()):
        if ident not in known:   # billed by the request's user with no customer record
            table.rows.append([link(f"/ui/customers/{quote(ident, safe='')}", ident)
                               if ident else "(none: held or unbilled)", "", "",
                               "", "", agg.calls, agg.cost, key_count.get(ident, 0), ""])
    body = Html(_range_picker(view, r, "/ui/customers") + table.html(view.query))
    return Page("Customers", body, {table.name: table})


def _meter_cell(used: Decimal | None, limit: Decimal | None) -> Cell:
    used = used or Decimal(0)
    text = f"{used}" + (f" / {limit}" if limit is not None else "")
    return Cell(text, meter(used, limit))


async def customer(view: View, ident: str) -> Page:
    r = parse_range(view, "30d")
    o = await queries.overview(view.db, r.since_ms, r.until_ms, r.bucket_ms,
                               customer_id=ident)
    record = await view.policy.store.customer(ident, cached=False) if view.policy.store else None
    tables: dict[str, Table] = {}
    info = Table("customer", ("customer", "alias", "Lago subscription", "budget", "blocked"))
    if record is not None:
        info.rows.append([ident, record.alias or "", record.external_subscription_id or "",
                          _meter_cell(from_micros(record.budget.spend_micros),
                                      from_micros(record.budget.max_micros)),
                          "yes" if record.blocked else ""])
    else:
        info.rows.append([ident, "", "(no customer record: billed by name)", "", ""])
    tables[info.name] = info
    keys, _ = (await view.policy.store.list_keys(customer_id=ident, size=1000)
               if view.policy.store else ([], 0))
    key_table = Table("customer_keys", ("key", "alias", "blocked"),
                      [[k.key_name, k.key_alias or "", "yes" if k.blocked else ""]
                       for k in keys], empty="no keys")
    tables[key_table.name] = key_table
    calls = await queries.recent_calls(view.db, customer_id=ident, limit=100)
    states = await queries.delivery_states(view.db, _sinks(view),
                                           [str(c["call_id"]) for c in calls])
    call_t = call_table("customer_calls", calls, states)
    tables[call_t.name] = call_t
    body = Html(_range_picker(view, r, f"/ui/customers/{quote(ident, safe='')}")
                + info.html(view.query) + _cards(o) + _series(view, r, o, tables)
                + f"<h2>Keys</h2>{key_table.html(view.query)}"
                + "<h2>Recent calls (call id = Lago transaction_id)</h2>"
                + call_t.html(view.query)
                + f'<p><a href="/ui/calls?customer={quote(ident, safe="")}">all its calls'
                  "</a></p>")
    return Page(f"Customer {ident}", body, tables)
