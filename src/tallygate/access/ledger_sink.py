"""The outbox's internal ``ledger`` sink: writes each call's settlement to the access
tables (same database as the outbox), delivered by the same DeliveryWorker as Lago. On
SQLite the outbox's insert itself writes it (``SQLITE_SETTLE``, below).

A batch is one transaction. A redelivery (a crash between the write and the outbox's
mark) finds the ledger rows there and changes nothing, so spend counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tallygate.access import budgets
from tallygate.access.db import Database, SQLiteDatabase
from tallygate.access.settlement import LEDGER_SINK, settlement_of
from tallygate.event import UsageEvent
from tallygate.metering.rowcodec import SETTLEMENT_KEY
from tallygate.sinks.base import BatchResult

log = logging.getLogger("tallygate.access")


class LedgerSink:
    name = LEDGER_SINK
    max_batch = 200

    def __init__(self, db: Database) -> None:
        self.db = db

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        result = BatchResult()
        items: list[budgets.Settlement] = []
        for event in events:
            if event.settlement is None:
                result.dead[event.call_id] = "no settlement stored with the event"
                continue
            try:
                items.append(settlement_of(event, event.settlement))
            except (KeyError, TypeError, ValueError) as exc:
                result.dead[event.call_id] = f"unreadable settlement: {exc!r}"
        if not items:
            return result
        try:
            await budgets.settle_many(self.db, items)
        except Exception as exc:
            if len(items) == 1:
                result.retry.append(items[0][0])
                result.error = f"ledger write failed: {exc!r}"
                return result
            # One bad settlement must not hold back the others: each alone.
            for item in items:
                try:
                    await budgets.settle_many(self.db, [item])
                except Exception as alone:
                    result.retry.append(item[0])
                    result.error = f"ledger write failed: {alone!r}"
                else:
                    result.delivered.append(item[0])
            return result
        result.delivered.extend(item[0] for item in items)
        return result

    async def settle_in_sqlite_inserts(self) -> None:
        """On SQLite, have the outbox's inserts settle the calls (``SQLITE_SETTLE``).
        The gateway calls it once the outbox and the access tables are in the file."""
        if isinstance(self.db, SQLiteDatabase):
            await self.db.write(lambda conn: conn.execute(SQLITE_SETTLE))

    async def aclose(self) -> None:
        """The access database belongs to the policy, which closes it."""


# On SQLite the ledger sink's rows settle themselves: a trigger on the outbox writes the
# call's ledger row and moves its reservation to its spend (only when that row is new),
# from the settlement the event carries, inside the outbox's own INSERT, and skips the
# row itself. One statement, all in SQLite: no claim, no settle transaction and no mark
# on the writer thread, and the spend is there when the call is answered. A settlement
# with no ledger row written out (``settlement.with_ledger_row``; an older tallygate's,
# or a test's) is stored and delivered by the lane like any sink's row.
_SETTLEMENT = f"'$.{SETTLEMENT_KEY}"
_PAIRS = ("(SELECT json_extract(p.value, '$[0]'), json_extract(p.value, '$[1]') "
          f"FROM json_each(NEW.event, {_SETTLEMENT}.{{}}') p)")
_FRESH = "NOT EXISTS (SELECT 1 FROM access_ledger WHERE call_id = NEW.call_id)"
_ROW_VALUES = ", ".join(f"json_extract(r.row, '$[{i}]')"
                        for i in range(len(budgets.LEDGER_COLUMNS)))
SQLITE_SETTLE_TRIGGER = "outbox_ledger_settle_v1"
SQLITE_SETTLE = f"""
CREATE TRIGGER IF NOT EXISTS {SQLITE_SETTLE_TRIGGER} BEFORE INSERT ON outbox
WHEN NEW.sink = '{LEDGER_SINK}' AND json_type(NEW.event, {_SETTLEMENT}.row') = 'array'
BEGIN
  UPDATE access_budgets SET
    spend_micros = spend_micros + json_extract(NEW.event, {_SETTLEMENT}.cost_micros'),
    reserved_micros = max(reserved_micros - CASE WHEN (scope, id) IN {_PAIRS.format('reserved')}
      THEN coalesce((SELECT amount_micros FROM access_reservations
                     WHERE call_id = NEW.call_id), 0) ELSE 0 END, 0)
  WHERE (scope, id) IN {_PAIRS.format('scopes')} AND {_FRESH};
  DELETE FROM access_reservations WHERE call_id = NEW.call_id AND {_FRESH};
  INSERT INTO access_ledger ({", ".join(budgets.LEDGER_COLUMNS)})
  SELECT {_ROW_VALUES} FROM (SELECT json_extract(NEW.event, {_SETTLEMENT}.row') AS row) AS r
  WHERE true ON CONFLICT (call_id) DO NOTHING;
  SELECT RAISE(IGNORE);
END"""
