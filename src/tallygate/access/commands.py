"""``tallygate usage`` and ``tallygate reconcile``: the spend ledger from the shell.

    tallygate usage --by customer --since 7d [--db URL]
    tallygate reconcile --since 1d [--db URL] [--no-lago]

``reconcile`` compares the ledger with the outbox rows (and, when LAGO_API_BASE and
LAGO_API_KEY are set, with the events Lago lists) and prints every difference; exit
status 1 when there is one. Exit 2: the database cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tallygate.access import ledger
from tallygate.access.db import Database, SQLiteDatabase, database_for
from tallygate.access.lago_api import LagoReader, lago_base
from tallygate.errors import ConfigError
from tallygate.event import format_decimal
from tallygate.metering.commands import DATABASE_ENV, DEFAULT_DB, parse_since

EXIT_OK, EXIT_DIFF, EXIT_ERROR = 0, 1, 2
Handler = Callable[[argparse.Namespace, Database, TextIO], Awaitable[int]]


def add_access_commands(subparsers: Any) -> None:
    usage = subparsers.add_parser("usage", help="spend from the local ledger, grouped")
    usage.add_argument("--by", choices=sorted(ledger.GROUP_COLUMNS), default="customer")
    usage.add_argument("--since", type=parse_since, default=None,
                       help="a duration (30m, 1h, 7d) or ISO time; default: everything")
    usage.add_argument("--unattributed", action="store_true",
                       help="list the held (unattributed) calls instead")
    usage.add_argument("--db", default=None, help=f"default: ${DATABASE_ENV}, else {DEFAULT_DB}")
    usage.set_defaults(handler=lambda args: run(_usage, args))

    rec = subparsers.add_parser("reconcile",
                                help="compare the ledger, the outbox and Lago; list differences")
    rec.add_argument("--since", type=parse_since, required=True,
                     help="a duration (30m, 1h, 7d) or ISO time")
    rec.add_argument("--no-lago", action="store_true", help="do not ask Lago")
    rec.add_argument("--db", default=None, help=f"default: ${DATABASE_ENV}, else {DEFAULT_DB}")
    rec.set_defaults(handler=lambda args: run(_reconcile, args))


def run(handler: Handler, args: argparse.Namespace, out: TextIO | None = None) -> int:
    url = args.db or os.environ.get(DATABASE_ENV) or DEFAULT_DB
    try:
        db = database_for(url)
    except ConfigError as exc:
        print(f"tallygate: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    if isinstance(db, SQLiteDatabase) and not Path(db.path).exists():
        print(f"tallygate: no database at {db.path}", file=sys.stderr)
        return EXIT_ERROR
    return asyncio.run(_run(handler, args, db, out or sys.stdout))


async def _run(handler: Handler, args: argparse.Namespace, db: Database, out: TextIO) -> int:
    try:
        await db.open()
    except Exception as exc:
        print(f"tallygate: cannot open {db.label}: {type(exc).__name__}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return await handler(args, db, out)
    finally:
        await db.close()


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _usage(args: argparse.Namespace, db: Database, out: TextIO) -> int:
    if args.unattributed:
        found = await ledger.rows(db, since_ms=args.since, filters={"status": "unattributed"})
        print(f"{len(found)} unattributed call(s) held (not sent to Lago)", file=out)
        for r in found:
            print(f"  {_when(r['ts_ms'])}  {r['call_id']}  {r['model']}  "
                  f"cost {r['cost'] or 'unknown'}  key {r['key_alias'] or '-'}", file=out)
        return EXIT_OK
    groups, total = await ledger.grouped(db, args.by, since_ms=args.since)
    header = {"key": "key", "customer": "customer"}.get(args.by, args.by)
    rows = []
    for g in groups:
        label = g.label if g.label is not None else "(none)"
        if args.by == "key" and g.label is not None:
            label = g.extra.get("key_alias") or f"{g.label[:12]}..."
        rows.append((str(label), g))
    width = max([len(header), 5, *(len(label) for label, _ in rows)])
    print(f"{header:<{width}}  {'calls':>7}  {'prompt_tok':>11}  {'compl_tok':>10}  "
          f"{'cost_usd':>14}", file=out)
    for label, g in [*rows, ("TOTAL", total)]:
        cost = format_decimal(g.cost) + ("*" if g.unpriced else "")
        print(f"{label:<{width}}  {g.calls:>7}  {g.input_tokens:>11}  {g.output_tokens:>10}  "
              f"{cost:>14}", file=out)
    if total.unpriced:
        print(f"* {total.unpriced} call(s) with no known price are not in the cost", file=out)
    return EXIT_OK


async def _outbox_rows(db: Database, since_ms: int) -> dict[str, dict[str, str]]:
    """call_id -> {sink: state} from the outbox table beside the ledger."""
    found = await db.fetch("SELECT call_id, sink, state FROM outbox WHERE created_at_ms >= ?",
                           since_ms - 60_000)
    out: dict[str, dict[str, str]] = {}
    for r in found:
        out.setdefault(r["call_id"], {})[r["sink"]] = r["state"]
    return out


async def _reconcile(args: argparse.Namespace, db: Database, out: TextIO) -> int:
    since = int(args.since)
    rows = await ledger.rows(db, since_ms=since)
    in_ledger = {r["call_id"]: r for r in rows}
    try:
        outbox = await _outbox_rows(db, since)
    except Exception as exc:
        print(f"cannot read the outbox: {type(exc).__name__}", file=out)
        return EXIT_ERROR
    diffs: list[str] = []
    for call_id, r in in_ledger.items():
        sinks = outbox.get(call_id)
        if r["status"] == "unattributed":
            diffs.append(f"{call_id}: held unattributed, not billed (tallygate outbox "
                         "assign --id ... --customer C)")
            continue
        if not sinks:
            diffs.append(f"{call_id}: in the ledger, not in the outbox")
            continue
        for sink, state in sorted(sinks.items()):
            if state != "delivered":
                diffs.append(f"{call_id}: {sink} row is {state}, not delivered")
        if r["status"] == "billed" and "lago" not in sinks and any(
                "lago" in s for s in outbox.values()):
            diffs.append(f"{call_id}: billed in the ledger but never queued for Lago")
    for call_id in sorted(set(outbox) - set(in_ledger)):
        created = outbox[call_id]
        diffs.append(f"{call_id}: in the outbox ({', '.join(sorted(created))}), "
                     "not in the ledger")
    lago_note = "Lago: not asked"
    base = None if args.no_lago else lago_base(os.environ)
    if base is not None:
        reader = LagoReader(*base)
        try:
            iso = datetime.fromtimestamp(since / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            events = await reader.events(iso)
            lago_note = f"Lago: {len(events)} event(s) listed"
            for call_id, r in in_ledger.items():
                if r["status"] != "billed":
                    continue
                ev = events.get(call_id)
                if ev is None:
                    diffs.append(f"{call_id}: billed to {r['billed_to']}, not in Lago")
                elif ev.get("external_subscription_id") != r["billed_to"]:
                    diffs.append(f"{call_id}: Lago has subscription "
                                 f"{ev.get('external_subscription_id')}, ledger "
                                 f"{r['billed_to']}")
        except Exception as exc:
            lago_note = f"Lago: unreachable ({type(exc).__name__})"
        finally:
            await reader.close()
    total = ledger.Totals()
    for r in rows:
        total.add(r)
    print(f"since {_when(since)} UTC: {len(rows)} call(s) in the ledger, cost "
          f"{format_decimal(total.cost)} USD; {len(outbox)} call(s) in the outbox; "
          f"{lago_note}", file=out)
    if not diffs:
        print("no differences", file=out)
        return EXIT_OK
    print(f"{len(diffs)} difference(s):", file=out)
    for line in diffs:
        print(f"  {line}", file=out)
    return EXIT_DIFF
