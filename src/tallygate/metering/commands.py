"""``tallygate outbox status|dead|retry|replay|held|assign``: the operator's view of the outbox.

``add_outbox_commands(subparsers)`` adds the ``outbox`` command; each subcommand sets
``args.handler``, a plain function ``(args) -> exit code`` that runs the async work.
Exit codes: 0 done, 1 nothing matched (``retry --id`` of rows that are not dead),
2 the outbox could not be opened or an argument is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tallygate.errors import ConfigError
from tallygate.metering.factory import outbox_for
from tallygate.metering.outbox import Outbox
from tallygate.metering.rowcodec import wall_ms
from tallygate.metering.sqlite_outbox import SQLiteOutbox

DATABASE_ENV = "TALLYGATE_DATABASE_URL"
DEFAULT_DB = "./tallygate.db"

EXIT_OK = 0
EXIT_NO_MATCH = 1
EXIT_ERROR = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}

Handler = Callable[[argparse.Namespace, Outbox, TextIO], Awaitable[int]]


def default_db() -> str:
    return os.environ.get(DATABASE_ENV) or DEFAULT_DB


def parse_since(text: str, *, now_ms: int | None = None) -> int:
    """``30m``, ``1h``, ``7d`` (ago) or an ISO 8601 time (UTC if no zone) -> epoch ms."""
    now = wall_ms() if now_ms is None else now_ms
    match = _DURATION.match(text)
    if match:
        return now - int(float(match.group(1)) * _UNIT_S[match.group(2)] * 1000)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration like 30m, 1h, 7d nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def add_outbox_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``outbox`` and its subcommands to an ``add_subparsers()`` object."""
    outbox: argparse.ArgumentParser = subparsers.add_parser(
        "outbox", help="inspect and repair the usage-event outbox")
    outbox.set_defaults(handler=lambda args: _usage(outbox))
    commands = outbox.add_subparsers(dest="outbox_command")

    def command(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument("--db", default=None,
                            help=f"outbox file path or postgresql:// URL (default: "
                                 f"${DATABASE_ENV}, else {DEFAULT_DB})")
        parser.set_defaults(handler=lambda args: run_command(handler, args))
        return parser

    status = command("status", "counts of pending, in-flight, delivered and dead rows",
                     _status)
    status.add_argument("--sink", help="only this sink")

    dead = command("dead", "list rows a sink rejected for good", _dead)
    dead.add_argument("--sink", help="only this sink")
    dead.add_argument("--limit", type=int, default=100, help="at most this many (100)")

    retry = command("retry", "make dead rows pending again", _retry)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", type=int, nargs="+", action="extend",
                       metavar="N", help="these row ids (from `outbox dead`)")
    which.add_argument("--all", action="store_true", help="every dead row")

    replay = command("replay", "send delivered events again (Lago deduplicates them)",
                     _replay)
    replay.add_argument("--since", required=True, type=parse_since,
                        help="events created since: a duration (30m, 1h, 7d) or ISO time")
    replay.add_argument("--sink", help="only this sink")

    # Calls held with no customer to bill (the access ledger): `held`, `assign`.
    from tallygate.access.held import add_held_commands

    add_held_commands(command, parse_since)
    return outbox


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_ERROR


def run_command(handler: Handler, args: argparse.Namespace,
                out: TextIO | None = None) -> int:
    db = args.db or default_db()
    try:
        outbox = outbox_for(db)
    except ConfigError as exc:
        print(f"tallygate outbox: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    if isinstance(outbox, SQLiteOutbox) and not Path(outbox.path).exists():
        # Looking at an outbox must not create an empty one (a typo in --db, say).
        print(f"tallygate outbox: no outbox at {outbox.path}", file=sys.stderr)
        return EXIT_ERROR
    return asyncio.run(_run(handler, args, outbox, db, out or sys.stdout))


async def _run(handler: Handler, args: argparse.Namespace, outbox: Outbox, db: str,
               out: TextIO) -> int:
    try:
        await outbox.open()
    except (OSError, ConfigError) as exc:
        print(f"tallygate outbox: cannot open {_redact(db)}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a database driver error: report it, no traceback
        print(f"tallygate outbox: cannot open {_redact(db)}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        return await handler(args, outbox, out)
    finally:
        await outbox.close()


def _redact(db: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", db)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86_400:.1f}d"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _status(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    stats = await outbox.stats(args.sink)
    title = f"outbox ({args.sink})" if args.sink else "outbox"
    print(title, file=out)
    print(f"  pending:     {stats.pending}", file=out)
    print(f"  in flight:   {stats.inflight}", file=out)
    print(f"  delivered:   {stats.delivered}", file=out)
    print(f"  dead:        {stats.dead}", file=out)
    print(f"  oldest undelivered: {_age(stats.oldest_pending_age_s)}", file=out)
    print(f"  last error:  {stats.last_error or '-'}", file=out)
    if args.sink in (None, "lago"):
        from tallygate.access.held import held_count

        held = await held_count(args.db or default_db())
        if held is not None:
            print(f"  held:        {held} unattributed call(s), not sent to Lago "
                  "(`tallygate outbox held`)", file=out)
    return EXIT_OK


async def _dead(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    rows = await outbox.dead_rows(args.limit, args.sink)
    if not rows:
        print("no dead rows", file=out)
        return EXIT_OK
    print(f"{'id':>8}  {'sink':<12} {'call_id':<36} {'attempts':>8}  {'created (UTC)':<19}"
          "  reason", file=out)
    for row in rows:
        print(f"{row.id:>8}  {row.sink:<12} {row.call_id:<36} {row.attempts:>8}  "
              f"{_when(row.created_at_ms):<19}  {row.reason}", file=out)
    if len(rows) == args.limit:
        print(f"(showing the first {args.limit}; use --limit for more)", file=out)
    return EXIT_OK


async def _retry(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    ids: list[int] | None = None if args.all else sorted(set(args.ids))
    count = await outbox.retry_dead(ids)
    print(f"{count} dead row(s) made pending again", file=out)
    if ids is not None and count < len(ids):
        print(f"{len(ids) - count} of the given ids are not dead rows", file=out)
        return EXIT_NO_MATCH
    return EXIT_OK


async def _replay(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    count = await outbox.replay(args.since, args.sink)
    sink = f" of sink {args.sink}" if args.sink else ""
    print(f"{count} delivered row(s){sink} created since {_when(args.since)} UTC "
          "will be sent again", file=out)
    return EXIT_OK
