"""On SQLite a billed call's settlement is written by the outbox insert itself (the
``SQLITE_SETTLE`` trigger of ``tallygate.access.ledger_sink``): the ledger row, the
budget's spend and the release of the reservation, once, in the same statement as the
call's usage event, with no ledger row left in the outbox for the lane."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from tallygate.access import budgets
from tallygate.access.db import SQLiteDatabase
from tallygate.access.ledger_sink import LedgerSink
from tallygate.access.settlement import LEDGER_SINK, settlement_data, with_ledger_row
from tallygate.event import UsageEvent
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import make_event

SCOPES = [("key", "k1"), ("team", "t1")]


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def _open(path: Path) -> tuple[SQLiteOutbox, SQLiteDatabase]:
    outbox = SQLiteOutbox(path)
    await outbox.open()
    db = SQLiteDatabase(str(path))
    await db.open()
    await LedgerSink(db).settle_in_sqlite_inserts()
    for scope, ident in SCOPES:
        await db.execute("INSERT INTO access_budgets (scope, id, max_micros, spend_micros, "
                         "reserved_micros) VALUES (?, ?, 10000000, 0, 0)", scope, ident)
    return outbox, db


def _settled(event: UsageEvent, *, reserved: bool = True, row: bool = True) -> UsageEvent:
    data = settlement_data(key_token="k1", key_alias="alias", team_id="t1",
                           customer_id="cust-1", scopes=SCOPES,
                           reserved=SCOPES if reserved else ())
    return replace(event, settlement=with_ledger_row(event, data) if row else data)


async def test_the_insert_writes_the_ledger_row_and_moves_the_reservation(
        tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    outbox, db = await _open(path)
    try:
        a, b = make_event(cost="0.25"), make_event(cost="0.125")
        assert await budgets.reserve_many(db, [(a.call_id, SCOPES, 500_000),
                                               (b.call_id, SCOPES, 500_000)]) == [None, None]
        # b reserved nothing on its budgets (say the key had none): its spend still counts.
        await db.execute("DELETE FROM access_reservations WHERE call_id = ?", b.call_id)
        await db.execute("UPDATE access_budgets SET reserved_micros = 500000")
        events = [_settled(a), _settled(b, reserved=False)]
        await outbox.enqueue_many(events, ["lago", LEDGER_SINK])
        # The same insert again (a retried write): nothing counts twice.
        await outbox.enqueue_many(events, ["lago", LEDGER_SINK])

        assert _rows(path, "SELECT scope, spend_micros, reserved_micros FROM access_budgets "
                           "ORDER BY scope") == [("key", 375_000, 0), ("team", 375_000, 0)]
        assert _rows(path, "SELECT call_id FROM access_reservations") == []
        ledger = _rows(path, "SELECT call_id, cost, key_token, team_id, input_tokens, "
                             "cache_read_tokens, output_tokens, status FROM access_ledger "
                             "ORDER BY cost DESC")
        assert ledger == [(a.call_id, "0.25", "k1", "t1", 100, 20, 40, "billed"),
                          (b.call_id, "0.125", "k1", "t1", 100, 20, 40, "billed")]
        # Lago's rows are stored; the ledger's never were (nothing for the lane to do).
        assert sorted(_rows(path, "SELECT sink, call_id FROM outbox")) == sorted(
            [("lago", a.call_id), ("lago", b.call_id)])
        # The dashboard's rollup (triggers on the ledger) saw each call once.
        assert _rows(path, "SELECT sum(calls), sum(cost_dollars), sum(cost_pico) "
                           "FROM access_spend_daily") == [(2, 0, 375_000_000_000)]
    finally:
        await outbox.close()
        await db.close()


async def test_a_settlement_without_its_row_is_left_to_the_ledger_sink(
        tmp_path: Path) -> None:
    """An older tallygate's settlement (no ledger row written out) is stored as a row of
    the ledger sink and delivered by it, as before; a call settled both ways counts once."""
    path = tmp_path / "gw.db"
    outbox, db = await _open(path)
    try:
        old, new = make_event(cost="1"), make_event(cost="2")
        await outbox.enqueue_many([_settled(old, reserved=False, row=False),
                                   _settled(new, reserved=False)], ["lago", LEDGER_SINK])
        assert _rows(path, "SELECT call_id FROM outbox WHERE sink = 'ledger'") == [
            (old.call_id,)]
        assert _rows(path, "SELECT call_id FROM access_ledger") == [(new.call_id,)]
        claimed = await outbox.claim(LEDGER_SINK, 10, 30.0)
        result = await LedgerSink(db).send([r.event for r in claimed]
                                           + [_settled(new, reserved=False)])
        assert sorted(result.delivered) == sorted([old.call_id, new.call_id])
        assert _rows(path, "SELECT spend_micros FROM access_budgets WHERE scope = 'key'"
                     ) == [(3_000_000,)]
        assert len(_rows(path, "SELECT call_id FROM access_ledger")) == 2
    finally:
        await outbox.close()
        await db.close()


async def test_an_unpriced_call_is_written_with_no_cost_and_spends_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    outbox, db = await _open(path)
    try:
        event = replace(make_event(), cost=None)
        await outbox.enqueue_many([_settled(event, reserved=False)], ["lago", LEDGER_SINK])
        assert _rows(path, "SELECT call_id, cost FROM access_ledger") == [
            (event.call_id, None)]
        assert _rows(path, "SELECT DISTINCT spend_micros FROM access_budgets") == [(0,)]
        assert Decimal(0) == sum(Decimal(c or 0) for (c,) in _rows(
            path, "SELECT cost FROM access_ledger"))
    finally:
        await outbox.close()
        await db.close()
