"""Budgets that hold under concurrency: reserve before a call, settle or release after.

Money here is integer micro-USD. A call is admitted while a budget's ``spend + reserved``
is below its maximum, and its worst-case cost is added to ``reserved`` in the same
atomic step (SQLite: one ``BEGIN IMMEDIATE`` transaction; PostgreSQL: one statement
whose ``FOR UPDATE`` locks the budget rows in a fixed order). So concurrent calls can
pass a budget by at most one call's reservation. Settling moves the reservation to the
real cost and writes the ledger row in the same transaction, once per call id (the
ledger row is the proof: a second settlement of a call finds it and changes nothing);
a failed call releases it.
A budget whose ``reset_at_ms`` has passed starts again from zero on its next use.

Reservations are also stored (``access_reservations``), so that a gateway killed
mid-call does not hold budget forever: ``sweep_stale`` gives back old ones.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import orjson

from tallygate.access.db import Database, PostgresDatabase, SQLiteDatabase, wall_ms
from tallygate.errors import BadRequestError

MICROS = Decimal(1_000_000)
Scope = tuple[str, str]  # ("key" | "team" | "customer", id)

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "mo": 2_592_000}


def to_micros(usd: Decimal) -> int:
    """USD -> micro-USD, rounded up (a budget never undercounts)."""
    return int((usd * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(micros: int | None) -> Decimal | None:
    return None if micros is None else Decimal(micros) / MICROS


def parse_usd(value: Any, field: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequestError(f"{field} must be a number", param=field)
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BadRequestError(f"{field} must be a number", param=field) from None
    if not number.is_finite() or number < 0:
        raise BadRequestError(f"{field} must be a non-negative number", param=field)
    return number


def parse_duration_s(value: Any, field: str) -> int | None:
    """``30s``, ``10m``, ``1h``, ``30d``, ``1w``, ``1mo`` (30 days) -> seconds."""
    if value is None or value == "":
        return None
    match = _DURATION.match(str(value))
    if not match or int(match.group(1)) == 0:
        raise BadRequestError(f"{field} must be a duration like 30s, 10m, 1h, 30d, 1mo",
                              param=field)
    return int(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(frozen=True, slots=True)
class Exceeded:
    scope: str
    id: str
    max_micros: int
    spend_micros: int
    reserved_micros: int


# --- reserve ----------------------------------------------------------------------------

_SQLITE_RESERVE = """UPDATE access_budgets SET
    spend_micros = CASE WHEN reset_at_ms IS NOT NULL AND reset_at_ms <= ?1 THEN 0
                        ELSE spend_micros END,
    reset_at_ms = CASE WHEN reset_at_ms IS NOT NULL AND reset_at_ms <= ?1
                       THEN ?1 + duration_s * 1000 ELSE reset_at_ms END,
    reserved_micros = reserved_micros + ?2
WHERE scope = ?3 AND id = ?4
RETURNING max_micros, spend_micros, reserved_micros"""

_PG_RESERVE = """
WITH cur AS (
    SELECT b.scope, b.id, b.max_micros, b.reserved_micros,
        (b.reset_at_ms IS NOT NULL AND b.reset_at_ms <= $5) AS due,
        CASE WHEN b.reset_at_ms IS NOT NULL AND b.reset_at_ms <= $5 THEN 0
             ELSE b.spend_micros END AS spend
    FROM access_budgets b
    JOIN unnest($1::text[], $2::text[]) AS t(scope, id) ON b.scope = t.scope AND b.id = t.id
    ORDER BY b.scope, b.id
    FOR UPDATE OF b
), bad AS (
    SELECT scope, id, max_micros, spend, reserved_micros FROM cur
    WHERE max_micros IS NOT NULL AND spend + reserved_micros >= max_micros
), upd AS (
    UPDATE access_budgets b SET
        spend_micros = CASE WHEN cur.due THEN 0 ELSE b.spend_micros END,
        reset_at_ms = CASE WHEN cur.due THEN $5 + b.duration_s * 1000 ELSE b.reset_at_ms END,
        reserved_micros = b.reserved_micros + $3
    FROM cur WHERE b.scope = cur.scope AND b.id = cur.id AND NOT EXISTS (SELECT 1 FROM bad)
    RETURNING b.scope
), ins AS (
    INSERT INTO access_reservations (call_id, scopes, amount_micros, created_at_ms)
    SELECT $4, $6, $3, $5 WHERE NOT EXISTS (SELECT 1 FROM bad)
    ON CONFLICT (call_id) DO NOTHING
    RETURNING 1
)
SELECT scope, id, max_micros, spend, reserved_micros FROM bad"""


Reservation = tuple[str, Sequence[Scope], int]  # (call_id, scopes, amount_micros)


async def reserve_many(db: Database, items: Sequence[Reservation]
                       ) -> list[Exceeded | Exception | None]:
    """Reserve each call's amount on every budget of its scopes, all or none per call,
    as if one call after the other; a call's result is the first budget that is used up
    (nothing reserved for it), else None, or the exception that failed that call alone.
    On SQLite they share one transaction (one commit), each under a savepoint so that a
    refused or failed call rolls back alone."""
    now = wall_ms()
    if isinstance(db, SQLiteDatabase):
        return await db.write(lambda conn: [
            _reserve_sqlite(conn, call_id, scopes, amount, now) if scopes else None
            for call_id, scopes, amount in items], urgent=True)
    assert isinstance(db, PostgresDatabase)
    out: list[Exceeded | Exception | None] = []
    for call_id, scopes, amount in items:
        try:  # each call is one statement: a failure fails that call only
            out.append(await _reserve_pg(db, call_id, scopes, amount, now) if scopes else None)
        except Exception as exc:
            out.append(exc)
    return out


async def _reserve_pg(db: PostgresDatabase, call_id: str, scopes: Sequence[Scope],
                      amount_micros: int, now: int) -> Exceeded | None:
    scopes_json = orjson.dumps([list(s) for s in scopes]).decode()
    rows = await db.pool.fetch(_PG_RESERVE, [s for s, _ in scopes], [i for _, i in scopes],
                               amount_micros, call_id, now, scopes_json)
    if not rows:
        return None
    r = min(rows, key=lambda r: (r["scope"], r["id"]))
    return Exceeded(r["scope"], r["id"], r["max_micros"], r["spend"], r["reserved_micros"])


def _reserve_sqlite(conn: sqlite3.Connection, call_id: str, scopes: Sequence[Scope],
                    amount: int, now: int) -> Exceeded | Exception | None:
    """One call's reservation inside the caller's transaction, under its own savepoint
    (a call that fails rolls back alone, its exception its result)."""
    conn.execute("SAVEPOINT reserve")
    try:
        return _reserve_sqlite_step(conn, call_id, scopes, amount, now)
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK TO reserve")
        conn.execute("RELEASE reserve")
        return exc


def _reserve_sqlite_step(conn: sqlite3.Connection, call_id: str, scopes: Sequence[Scope],
                         amount: int, now: int) -> Exceeded | None:
    for scope, ident in sorted(scopes):
        row = conn.execute(_SQLITE_RESERVE, (now, amount, scope, ident)).fetchone()
        if row is None:
            continue
        max_micros, spend, reserved = row
        if max_micros is not None and spend + reserved - amount >= max_micros:
            conn.execute("ROLLBACK TO reserve")
            conn.execute("RELEASE reserve")
            return Exceeded(scope, ident, max_micros, spend, reserved - amount)
    scopes_json = orjson.dumps([list(s) for s in scopes]).decode()
    conn.execute("""INSERT INTO access_reservations VALUES (?, ?, ?, ?)
        ON CONFLICT (call_id) DO NOTHING""", (call_id, scopes_json, amount, now))
    conn.execute("RELEASE reserve")
    return None


async def grow(db: Database, call_id: str, scopes: Sequence[Scope],
               extra_micros: int) -> Exceeded | None:
    """Raise a call's reservation by ``extra_micros`` on every budget of its scopes (a
    fallback moved it to a dearer model), all or none, under the same rule as
    ``reserve_many``: a budget takes it while its spend and reservations are below its
    maximum. Returns the first budget it does not fit (nothing changed), else None.
    The settlement later gives back the whole, grown reservation."""
    if isinstance(db, SQLiteDatabase):
        # On the writer thread, ahead of delivery work: the call waits on it.
        return await db.write(lambda conn: _grow_sqlite(conn, call_id, scopes, extra_micros),
                              urgent=True)
    assert isinstance(db, PostgresDatabase)
    async with db.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT b.scope, b.id, b.max_micros, b.spend_micros, b.reserved_micros
            FROM access_budgets b
            JOIN unnest($1::text[], $2::text[]) AS t(scope, id)
              ON b.scope = t.scope AND b.id = t.id
            ORDER BY b.scope, b.id FOR UPDATE OF b""",
            [sc for sc, _ in scopes], [i for _, i in scopes])
        for r in rows:
            if r["max_micros"] is not None and (r["spend_micros"] + r["reserved_micros"]
                                                >= r["max_micros"]):
                return Exceeded(r["scope"], r["id"], r["max_micros"], r["spend_micros"],
                                r["reserved_micros"])
        await conn.execute(
            """UPDATE access_budgets b SET reserved_micros = b.reserved_micros + $3
            FROM unnest($1::text[], $2::text[]) AS t(scope, id)
            WHERE b.scope = t.scope AND b.id = t.id""",
            [sc for sc, _ in scopes], [i for _, i in scopes], extra_micros)
        await conn.execute("UPDATE access_reservations SET amount_micros = amount_micros + $1 "
                           "WHERE call_id = $2", extra_micros, call_id)
    return None


def _grow_sqlite(conn: sqlite3.Connection, call_id: str, scopes: Sequence[Scope],
                 extra: int) -> Exceeded | None:
    for scope, ident in sorted(scopes):
        row = conn.execute("""UPDATE access_budgets SET reserved_micros = reserved_micros + ?
            WHERE scope = ? AND id = ? RETURNING max_micros, spend_micros, reserved_micros""",
                           (extra, scope, ident)).fetchone()
        if row is None:
            continue
        max_micros, spend, reserved = row
        if max_micros is not None and spend + reserved - extra >= max_micros:
            conn.execute("ROLLBACK")
            return Exceeded(scope, ident, max_micros, spend, reserved - extra)
    conn.execute("UPDATE access_reservations SET amount_micros = amount_micros + ? "
                 "WHERE call_id = ?", (extra, call_id))
    return None


# --- settle / release -------------------------------------------------------------------

LEDGER_COLUMNS = ("call_id", "ts_ms", "key_token", "key_alias", "user_id", "team_id",
                  "customer_id", "billed_to", "end_user", "model", "provider",
                  "provider_model", "kind", "input_tokens", "cache_read_tokens",
                  "cache_write_tokens", "output_tokens", "cost", "status", "flags", "event")

_LEDGER_INSERT_SQLITE = (f"INSERT INTO access_ledger ({', '.join(LEDGER_COLUMNS)}) VALUES "
                         f"({', '.join('?' for _ in LEDGER_COLUMNS)}) "
                         "ON CONFLICT (call_id) DO NOTHING")
# The same for many rows at once: a JSON array of rows (LEDGER_COLUMNS order).
_LEDGER_BULK_SQLITE = (
    f"INSERT INTO access_ledger ({', '.join(LEDGER_COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(LEDGER_COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT (call_id) DO NOTHING")
_LEDGER_PRESENT_SQLITE = ("SELECT call_id FROM access_ledger "
                          "WHERE call_id IN (SELECT value FROM json_each(?))")

# The ledger row goes in first: only a call with no row yet moves its reservation to
# its spend, so a settlement delivered twice (a redelivery after a crash) counts once.
_PG_SETTLE = f"""
WITH ins AS (
    INSERT INTO access_ledger ({', '.join(LEDGER_COLUMNS)})
    SELECT {', '.join(f'${i}' for i in range(6, 6 + len(LEDGER_COLUMNS)))}
    WHERE ${6 + len(LEDGER_COLUMNS)}::bool
    ON CONFLICT (call_id) DO NOTHING
    RETURNING 1
), go AS (
    SELECT (NOT ${6 + len(LEDGER_COLUMNS)}::bool OR EXISTS (SELECT 1 FROM ins)) AS ok
), del AS (
    DELETE FROM access_reservations WHERE call_id = $1 AND (SELECT ok FROM go)
    RETURNING amount_micros
), upd AS (
    UPDATE access_budgets b SET
        spend_micros = b.spend_micros + $5,
        reserved_micros = greatest(b.reserved_micros - CASE WHEN t.held
            THEN coalesce((SELECT amount_micros FROM del), 0) ELSE 0 END, 0)
    FROM unnest($2::text[], $3::text[], $4::bool[]) AS t(scope, id, held)
    WHERE b.scope = t.scope AND b.id = t.id AND (SELECT ok FROM go)
    RETURNING 1
)
SELECT ok FROM go"""


async def settle(db: Database, call_id: str, scopes: Sequence[Scope],
                 reserved: Sequence[Scope], cost_micros: int,
                 ledger_row: Sequence[Any] | None, *, urgent: bool = False) -> None:
    """Move the call's reservation to its real cost on every budget in ``scopes`` and
    write its ledger row, in one transaction. ``cost_micros`` 0 and no ledger row is a
    release. A call whose ledger row is already there is left alone (settled once).
    ``urgent``: a caller waits on it to answer (a failed call's release)."""
    held = set(reserved)
    if isinstance(db, SQLiteDatabase):
        await db.write(lambda conn: _settle_sqlite(conn, call_id, scopes, held, cost_micros,
                                                   ledger_row), urgent=urgent)
        return
    assert isinstance(db, PostgresDatabase)
    await db.pool.fetchval(_PG_SETTLE, *_pg_settle_args(call_id, scopes, reserved,
                                                        cost_micros, ledger_row))


Settlement = tuple[str, Sequence[Scope], Sequence[Scope], int, Sequence[Any] | None]


# A ledger batch is written in transactions of this many calls on SQLite: the writes a
# call waits on (outbox inserts, reservations) go in between, not after the whole batch.
SQLITE_SETTLE_CHUNK = 32


async def settle_many(db: Database, items: Sequence[Settlement], *,
                      urgent: bool = False) -> None:
    """``settle`` for many calls (call_id, scopes, reserved, cost_micros, ledger_row): one
    commit serves every call that finished together (on SQLite, one per chunk of
    ``SQLITE_SETTLE_CHUNK``). Each call is all or nothing, and settled once whatever
    is retried. ``urgent``: a caller waits on it (not the ledger sink's batches)."""
    if isinstance(db, SQLiteDatabase):
        for start in range(0, len(items), SQLITE_SETTLE_CHUNK):
            await db.write(functools.partial(
                _settle_many_sqlite, items=items[start:start + SQLITE_SETTLE_CHUNK]),
                urgent=urgent)
        return
    assert isinstance(db, PostgresDatabase)
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.executemany(_PG_SETTLE, [_pg_settle_args(*item) for item in items])


def _pg_settle_args(call_id: str, scopes: Sequence[Scope], reserved: Sequence[Scope],
                    cost_micros: int, ledger_row: Sequence[Any] | None) -> list[Any]:
    held = set(reserved)
    row = list(ledger_row) if ledger_row is not None else [None] * len(LEDGER_COLUMNS)
    if ledger_row is None:
        row[0], row[1], row[9:13] = call_id, 0, ["", "", "", ""]
        row[13:17] = [0, 0, 0, 0]
        row[18], row[19] = "", ""
    return [call_id, [s for s, _ in scopes], [i for _, i in scopes],
            [s in held for s in scopes], cost_micros, *row, ledger_row is not None]


def _settle_many_sqlite(conn: sqlite3.Connection, items: Sequence[Settlement]) -> None:
    """Every call's ledger row in one INSERT (one statement, so the writer thread hands
    the GIL back and forth once, not once a row), then the budgets of those with scopes.
    A call whose row is there already (a redelivery) changes nothing."""
    fresh: dict[str, tuple[Settlement, Sequence[Any]]] = {}
    for item in items:
        row = item[4]
        if row is None:  # a release: no ledger row
            _settle_sqlite(conn, item[0], item[1], set(item[2]), item[3], None)
        else:
            fresh.setdefault(item[0], (item, row))  # a call twice in a batch counts once
    if not fresh:
        return
    ids = orjson.dumps(list(fresh)).decode()
    for (call_id,) in conn.execute(_LEDGER_PRESENT_SQLITE, (ids,)).fetchall():
        del fresh[call_id]
    if not fresh:
        return
    rows = orjson.dumps([list(row) for _, row in fresh.values()]).decode()
    conn.execute(_LEDGER_BULK_SQLITE, (rows,))
    for (call_id, scopes, reserved, cost, _), _row in fresh.values():
        if scopes:
            _move_reservation(conn, call_id, scopes, set(reserved), cost)


def _settle_sqlite(conn: sqlite3.Connection, call_id: str, scopes: Sequence[Scope],
                   held: set[Scope], cost: int, ledger_row: Sequence[Any] | None) -> None:
    if ledger_row is not None and conn.execute(_LEDGER_INSERT_SQLITE,
                                               tuple(ledger_row)).rowcount == 0:
        return  # settled before (a redelivery after a crash): nothing counts twice
    _move_reservation(conn, call_id, scopes, held, cost)


def _move_reservation(conn: sqlite3.Connection, call_id: str, scopes: Sequence[Scope],
                      held: set[Scope], cost: int) -> None:
    amount = 0
    if held:  # only calls that reserved have a reservation row
        deleted = conn.execute("DELETE FROM access_reservations WHERE call_id = ? "
                               "RETURNING amount_micros", (call_id,)).fetchone()
        amount = deleted[0] if deleted else 0
    for scope, ident in scopes:
        give_back = amount if (scope, ident) in held else 0
        if cost or give_back:
            conn.execute("""UPDATE access_budgets SET spend_micros = spend_micros + ?,
                reserved_micros = max(reserved_micros - ?, 0) WHERE scope = ? AND id = ?""",
                         (cost, give_back, scope, ident))


async def sweep_stale(db: Database, older_than_ms: int) -> int:
    """Give back reservations older than ``older_than_ms`` (their gateway died)."""
    cutoff = wall_ms() - older_than_ms
    rows = await db.fetch("SELECT call_id, scopes FROM access_reservations "
                          "WHERE created_at_ms < ?", cutoff)
    for row in rows:
        scopes = [(str(s), str(i)) for s, i in orjson.loads(row["scopes"])]
        await settle(db, row["call_id"], scopes, scopes, 0, None)
    return len(rows)
