"""The outbox's internal ``ledger`` sink: writes each call's settlement to the access
tables (same database as the outbox), delivered by the same DeliveryWorker as Lago.

A batch is one transaction. A redelivery (a crash between the write and the outbox's
mark) finds the ledger rows there and changes nothing, so spend counts once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tallygate.access import budgets
from tallygate.access.db import Database
from tallygate.access.settlement import LEDGER_SINK, settlement_of
from tallygate.event import UsageEvent
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

    async def aclose(self) -> None:
        """The access database belongs to the policy, which closes it."""
