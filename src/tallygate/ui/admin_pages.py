"""The operator's pages: keys and teams (with their actions), billing health (outbox,
dead letters, held calls, reconcile) and models with their deployments and prices."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from tallygate.access.budgets import from_micros
from tallygate.errors import TallygateError
from tallygate.metering.commands import parse_since
from tallygate.providers.base import Deployment
from tallygate.ui import queries
from tallygate.ui.charts import meter
from tallygate.ui.html import Cell, Html, Table, esc, form
from tallygate.ui.view import Page, View, when

MTOK = Decimal(1_000_000)


def _flash(view: View) -> Html:
    done, error = view.arg("done"), view.arg("error")
    if error:
        return Html(f'<p class="flash error" role="alert">{esc(error)}</p>')
    return Html(f'<p class="flash" role="status">{esc(done)}</p>' if done else "")


def _budget_cell(spend_micros: int, max_micros: int | None) -> Cell:
    used = from_micros(spend_micros) or Decimal(0)
    limit = from_micros(max_micros)
    left = "" if limit is None else f"; left {limit - used}"
    return Cell(f"{used}" + ("" if limit is None else f" / {limit}"),
                Html(meter(used, limit) + esc(left)))


_FIELD = '<input name="{0}" placeholder="{1}" size="{2}" value="{3}">'


def _input(name: str, placeholder: str, size: int = 10, value: Any = "") -> str:
    return _FIELD.format(name, esc(placeholder), size, esc("" if value is None else value))


async def keys(view: View) -> Page:
    store = view.policy.store
    assert store is not None
    records, total = await store.list_keys(size=1000)
    used = await queries.last_used(view.db, [k.token for k in records])
    table = Table("keys", ("alias", "key", "owner", "budget used", "rpm", "tpm",
                           "last used (UTC)", "blocked", "actions"), empty="no keys yet")
    for k in records:
        owner = ", ".join(f"{n}: {v}" for n, v in (("customer", k.customer_id),
                                                   ("team", k.team_id), ("user", k.user_id))
                          if v)
        token = f'<input type="hidden" name="token" value="{esc(k.token)}">'
        max_budget = from_micros(k.budget.max_micros)
        actions = (
            form("/ui/keys/update", view.csrf,
                 token + _input("max_budget", "max budget", 8, max_budget)
                 + _input("rpm_limit", "rpm", 5, k.rpm_limit)
                 + _input("tpm_limit", "tpm", 7, k.tpm_limit), "Save", cls="inline")
            + form("/ui/keys/block", view.csrf,
                   token + f'<input type="hidden" name="blocked" '
                           f'value="{"0" if k.blocked else "1"}">',
                   "Unblock" if k.blocked else "Block", cls="inline")
            + form("/ui/keys/delete", view.csrf, token, "Delete", cls="inline"))
        actions = Html(actions)
        table.rows.append([k.key_alias or "", k.key_name, owner,
                           _budget_cell(k.budget.spend_micros, k.budget.max_micros),
                           k.rpm_limit or "", k.tpm_limit or "", when(used.get(k.token)),
                           "yes" if k.blocked else "", Cell("", actions)])
    teams = Table("teams", ("team", "alias", "budget used", "rpm", "tpm", "blocked"),
                  empty="no teams")
    for t in await queries.teams(view.db):
        teams.rows.append([t.ident, t.alias or "", Cell(
            f"{t.spend}", meter(t.spend, t.limit)), t.rpm or "", t.tpm or "",
            "yes" if t.blocked else ""])
    create = form("/ui/keys/create", view.csrf,
                  _input("key_alias", "alias", 14) + _input("customer_id", "customer", 12)
                  + _input("team_id", "team", 10) + _input("max_budget", "max budget USD", 10)
                  + _input("budget_duration", "budget period (30d)", 12)
                  + _input("rpm_limit", "rpm", 6) + _input("tpm_limit", "tpm", 8)
                  + _input("models", "models (comma separated)", 18),
                  "Create key", cls="create")
    body = Html(f"{_flash(view)}<section><h2>Create a key</h2>{create}</section>"
                f"<h2>Keys ({total})</h2>{table.html(view.query)}"
                f"<h2>Teams</h2>{teams.html(view.query)}")
    return Page("Keys and teams", body, {"keys": table, "teams": teams})


def key_spec(data: Mapping[str, str]) -> dict[str, Any]:
    """A form's fields as the admin API's key spec (empty fields left out)."""
    spec: dict[str, Any] = {}
    for name in ("key_alias", "customer_id", "team_id", "budget_duration"):
        if data.get(name, "").strip():
            spec[name] = data[name].strip()
    for name in ("rpm_limit", "tpm_limit"):
        text = data.get(name, "").strip()
        if text:
            if not text.isdigit():
                raise ValueError(f"{name} must be a whole number")
            spec[name] = int(text)
    if data.get("max_budget", "").strip():
        spec["max_budget"] = data["max_budget"].strip()
    models = [m.strip() for m in data.get("models", "").split(",") if m.strip()]
    if models:
        spec["models"] = models
    return spec


def created_page(view: View, plain: str, alias: str | None) -> Page:
    """The one page that shows a new key, once (sent with Cache-Control: no-store)."""
    body = Html(
        f'<section><p>Key <b>{esc(alias or "")}</b> created. Copy it now: it is not '
        f'shown again.</p><p><code class="key" id="new-key">{esc(plain)}</code> '
        f'<button type="button" data-copy="new-key">Copy</button></p>'
        f'<p><a href="/ui/keys">Back to keys</a></p></section>')
    return Page("New key", body)


async def billing(view: View) -> Page:
    outbox = view.gw.outbox
    assert outbox is not None
    tables: dict[str, Table] = {}
    status = await view.gw.worker.status() if view.gw.worker is not None else None
    sinks = Table("outbox", ("sink", "pending", "in flight", "delivered", "dead",
                             "oldest undelivered (s)", "last error",
                             "paused by 401/403 (this gateway)"))
    for sink in view.gw.sinks:
        s = await outbox.stats(sink.name)
        paused = status is not None and sink.name in status.sinks and \
            status.sinks[sink.name].paused
        age = "" if s.oldest_pending_age_s is None else f"{s.oldest_pending_age_s:.1f}"
        sinks.rows.append([sink.name, s.pending, s.inflight, s.delivered, s.dead, age,
                           s.last_error or "", "yes" if paused else ""])
    tables[sinks.name] = sinks
    dead = Table("dead_letters", ("row", "sink", "call id", "attempts", "created (UTC)",
                                  "reason", "retry"), empty="no dead letters")
    for d in await outbox.dead_rows(200):
        retry = form("/ui/billing/retry", view.csrf,
                     f'<input type="hidden" name="id" value="{d.id}">', "Retry",
                     cls="inline")
        dead.rows.append([d.id, d.sink, d.call_id, d.attempts, when(d.created_at_ms),
                          d.reason, Cell("", retry)])
    tables[dead.name] = dead
    held = Table("held_calls", ("call id", "time (UTC)", "key", "model", "cost (USD)",
                                "end user", "assign to"), empty="no held calls")
    for r in await queries.held_rows(view.db):
        assign = form("/ui/billing/assign", view.csrf,
                      f'<input type="hidden" name="call_id" value="{esc(r["call_id"])}">'
                      + _input("customer", "customer", 12)
                      + _input("subscription", "subscription (optional)", 16),
                      "Assign", cls="inline")
        held.rows.append([r["call_id"], when(r["ts_ms"]), r["key_alias"] or "", r["model"],
                          r["cost"] or "unknown", r["end_user"] or "", Cell("", assign)])
    tables[held.name] = held
    body = [str(_flash(view)), "<h2>Outbox per sink</h2>", sinks.html(view.query),
            "<h2>Dead letters</h2>", dead.html(view.query),
            "<h2>Held (unattributed) calls</h2>", held.html(view.query),
            await _reconcile(view, tables)]
    return Page("Billing health", Html("".join(body)), tables)


async def _reconcile(view: View, tables: dict[str, Table]) -> str:
    since_text = view.arg("reconcile")
    picker = (f'<form method="get" action="/ui/billing">since <input name="reconcile" '
              f'value="{esc(since_text or "1d")}" size="8"> <button>Reconcile</button>'
              "</form>")
    out = f"<h2>Reconcile: ledger vs outbox vs Lago</h2>{picker}"
    if not since_text:
        return out
    try:
        since = parse_since(since_text)
    except Exception:
        return out + f'<p class="flash error">{esc(since_text)} is not a duration or time</p>'
    clean, lines = await queries.reconcile(view.db, since)
    if clean:
        lines = [*lines[:1], *lines[2:]]  # the report says "no differences"
    table = Table("reconcile", ("difference",), [[line.strip()] for line in lines[1:]
                                                 if line.startswith("  ")],
                  empty="no differences")
    tables[table.name] = table
    summary = lines[0] if lines else ""
    return out + f"<p>{esc(summary)}</p>" + table.html(view.query)


def _price_cells(view: View, d: Deployment) -> list[Any]:
    if d.price is not None and not d.price.is_empty():
        p = d.price
        rates = [p.input_cost_per_token, p.output_cost_per_token,
                 p.cache_read_input_token_cost]
        return ["config", *("" if r is None else f"{(r * MTOK).normalize():f}" for r in rates)]
    try:
        from importlib.metadata import version

        import genai_prices

        from tallygate.providers.registry import get_provider

        pid = get_provider(d.provider).price_provider
        if pid is None:
            return ["unknown (no library price)", "", "", ""]
        model = d.base_model or d.model
        price = genai_prices.calc_price(genai_prices.Usage(input_tokens=0), model,
                                        provider_id=pid).model_price
        cells = [getattr(price, n, None) for n in ("input_mtok", "output_mtok",
                                                   "cache_read_mtok")]
        return [f"genai-prices {version('genai-prices')}",
                *("" if c is None else (f"{c.normalize():f}" if isinstance(c, Decimal)
                                        else "tiered") for c in cells)]
    except (LookupError, TallygateError, ValueError):
        return ["unknown (flagged unknown_price)", "", "", ""]


async def models(view: View) -> Page:
    table = Table("deployments", ("model group", "deployment", "provider", "model",
                                  "api base", "price source", "input per 1M",
                                  "output per 1M", "cache read per 1M"))
    for group, deployments in view.gw.settings.models.items():
        for i, d in enumerate(deployments):
            base = urlsplit(d.api_base).netloc if d.api_base else ""
            table.rows.append([group, i, d.provider, d.model, base, *_price_cells(view, d)])
    return Page("Models and deployments", Html(
        "<p>Deployment health and cooldowns appear here once the router is on main.</p>"
        + table.html(view.query)), {table.name: table})
