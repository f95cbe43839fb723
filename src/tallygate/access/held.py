"""Held calls: served, but with no customer to bill (``access_settings.unattributed:
hold``). Each keeps its whole UsageEvent in its ledger row (status ``unattributed``);
nothing goes to Lago until an operator names the payer:

    tallygate outbox held [--since 7d] [--limit N]
    tallygate outbox assign (--id CALL_ID ... | --all) --customer C [--subscription S]

``assign`` writes the event, now billed to the customer's subscription, into the outbox
for the Lago sink (a running gateway's delivery worker sends it within its poll
interval), then marks the ledger row ``billed`` to that customer and adds its cost to
the customer's budget. The outbox write comes first and is idempotent per call
(one row per sink and call id, and Lago deduplicates on the call id), so an
interrupted ``assign`` is safely run again; a call already queued for Lago keeps the
payer it was queued with.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from tallygate.access.budgets import to_micros
from tallygate.access.db import Database, Row, database_for, placeholders
from tallygate.event import FLAG_UNATTRIBUTED, UsageEvent
from tallygate.metering.outbox import Outbox
from tallygate.metering.rowcodec import decode_event

FLAG_ASSIGNED = "assigned"  # billed by `tallygate outbox assign`, after being held
HELD = "unattributed"
EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2

Command = Callable[..., argparse.ArgumentParser]


def add_held_commands(command: Command, parse_since: Callable[[str], int]) -> None:
    """Add ``held`` and ``assign`` to ``tallygate outbox`` (``command`` is its factory)."""
    held = command("held", "list calls held unattributed (served, no customer billed)",
                   held_command)
    held.add_argument("--since", type=parse_since, default=None,
                      help="a duration (30m, 1h, 7d) or ISO time; default: all")
    held.add_argument("--limit", type=int, default=100, help="at most this many (100)")

    assign = command("assign", "bill held calls to a customer: queue them for Lago",
                     assign_command)
    which = assign.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", nargs="+", action="extend", metavar="CALL_ID",
                       help="these call ids (from `outbox held`)")
    which.add_argument("--all", action="store_true", help="every held call")
    assign.add_argument("--customer", required=True, help="the customer that pays")
    assign.add_argument("--subscription", default=None,
                        help="Lago external_subscription_id to bill (default: the "
                             "customer's external_subscription_id, else the customer id)")
    assign.add_argument("--sink", default="lago", help="the sink to queue for (lago)")


def _db_url(args: argparse.Namespace) -> str:
    from tallygate.metering.commands import default_db

    return str(args.db or default_db())


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def held_count(db_url: str) -> int | None:
    """How many calls are held, or None when there are no access tables (an outbox
    that only an SDK process uses). Reads only: creates nothing."""
    db = database_for(db_url)
    try:
        await db.open(migrate=False)
        row = await db.fetchone("SELECT count(*) AS n FROM access_ledger WHERE status = ?",
                                HELD)
        return int(row["n"]) if row else 0
    except Exception:
        return None
    finally:
        await db.close()


async def _held_rows(db: Database, call_ids: list[str] | None, since_ms: int | None = None,
                     limit: int | None = None) -> list[Row]:
    sql = "SELECT * FROM access_ledger WHERE status = ?"
    args: list[Any] = [HELD]
    if call_ids is not None:
        sql += f" AND call_id IN ({placeholders(call_ids)})"
        args += call_ids
    if since_ms is not None:
        sql += " AND ts_ms >= ?"
        args.append(since_ms)
    sql += " ORDER BY ts_ms, seq"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return await db.fetch(sql, *args)


async def held_command(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    db = database_for(_db_url(args))
    await db.open()
    try:
        rows = await _held_rows(db, None, args.since, args.limit)
        total = await db.fetchone(
            "SELECT count(*) AS n FROM access_ledger WHERE status = ?", HELD)
    finally:
        await db.close()
    count = int(total["n"]) if total else 0
    if not rows:
        print("no held calls", file=out)
        return EXIT_OK
    print(f"{'call_id':<35}  {'finished (UTC)':<19}  {'model':<20}  {'cost_usd':>12}  "
          f"{'key':<16}  end_user", file=out)
    for r in rows:
        print(f"{r['call_id']:<35}  {_when(r['ts_ms']):<19}  {r['model']:<20}  "
              f"{r['cost'] or 'unknown':>12}  {r['key_alias'] or '-':<16}  "
              f"{r['end_user'] or '-'}", file=out)
    print(f"{count} call(s) held unattributed (not sent to Lago); bill them with "
          "`tallygate outbox assign --id CALL_ID --customer C`", file=out)
    if len(rows) < count and args.since is None:
        print(f"(showing the first {len(rows)}; use --limit for more)", file=out)
    return EXIT_OK


async def _billed_to(db: Database, customer: str, subscription: str | None) -> str:
    if subscription:
        return subscription
    row = await db.fetchone("SELECT external_subscription_id AS s FROM access_customers "
                            "WHERE customer_id = ?", customer)
    return str(row["s"]) if row and row["s"] else customer


async def _queued(db: Database, sink: str, call_id: str) -> UsageEvent | None:
    """The event already in the outbox for ``sink`` (an earlier, interrupted assign)."""
    row = await db.fetchone("SELECT event FROM outbox WHERE sink = ? AND call_id = ?",
                            sink, call_id)
    return None if row is None else decode_event(row["event"])


async def assign_command(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    db = database_for(_db_url(args))
    await db.open()
    try:
        return await _assign(args, db, outbox, out)
    finally:
        await db.close()


async def _assign(args: argparse.Namespace, db: Database, outbox: Outbox, out: TextIO) -> int:
    ids: list[str] | None = None if args.all else sorted(set(args.ids))
    rows = await _held_rows(db, ids)
    billed_to = await _billed_to(db, args.customer, args.subscription)
    done = 0
    skipped: list[str] = []
    for r in rows:
        if not r.get("event"):
            skipped.append(f"{r['call_id']}: held before tallygate kept the event; "
                           "cannot be billed from here")
            continue
        event = decode_event(r["event"])
        queued = await _queued(db, args.sink, event.call_id)
        if queued is None:
            queued = replace(event, customer=billed_to,
                             flags=(event.flags - {FLAG_UNATTRIBUTED}) | {FLAG_ASSIGNED})
            await outbox.enqueue(queued, [args.sink])   # durable first
        elif queued.customer != billed_to:
            skipped.append(f"{event.call_id}: already queued for {args.sink}, billed to "
                           f"{queued.customer}; left as it is")
            continue
        await _mark_billed(db, r, args.customer, billed_to, queued)
        done += 1
        print(f"{event.call_id}: billed to {args.customer} (subscription {billed_to}), "
              f"cost {r['cost'] or 'unknown'}", file=out)
    print(f"{done} held call(s) queued for {args.sink}", file=out)
    for line in skipped:
        print(line, file=out)
    missing = sorted(set(ids) - {str(r["call_id"]) for r in rows}) if ids is not None else []
    for call_id in missing:
        print(f"{call_id}: not a held call", file=out)
    if done:
        print("a running gateway delivers them within a second; `tallygate outbox status` "
              "shows the progress", file=out)
    return EXIT_OK if done and not missing and not skipped else EXIT_NO_MATCH


async def _mark_billed(db: Database, row: Row, customer: str, billed_to: str,
                       event: UsageEvent) -> None:
    flags = ",".join(sorted(event.flags))
    changed = await db.execute(
        "UPDATE access_ledger SET status = 'billed', customer_id = ?, billed_to = ?, "
        "flags = ? WHERE call_id = ? AND status = ?",
        customer, billed_to, flags, row["call_id"], HELD)
    if changed and row["cost"] is not None:
        # The customer's budget counts what it is now billed for.
        await db.execute("UPDATE access_budgets SET spend_micros = spend_micros + ? "
                         "WHERE scope = 'customer' AND id = ?",
                         to_micros(Decimal(row["cost"])), customer)
