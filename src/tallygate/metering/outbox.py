"""The Outbox interface: a durable queue of (event, sink) rows.

A finished call's event is appended once per sink before the response's last byte
leaves. Delivery workers claim rows with a lease, so that several workers (threads,
processes or machines sharing one Postgres) never send the same row at once, and a
crashed worker's rows come back when its lease runs out.

Each Outbox instance is one lease owner: ``mark_retry``, ``mark_dead`` and ``release``
only touch rows this instance still holds (a row whose lease ran out and was claimed
by another worker is that worker's now). ``mark_delivered`` applies whoever holds the
row, because a delivery that happened is the truth. ``attempts`` counts claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from tallygate.event import UsageEvent

RowState = Literal["pending", "inflight", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    sink: str
    event: UsageEvent
    attempts: int


@dataclass(frozen=True, slots=True)
class DeadRow:
    id: int
    sink: str
    call_id: str
    reason: str
    attempts: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    inflight: int
    delivered: int
    dead: int
    oldest_pending_age_s: float | None
    last_error: str | None


class Outbox(Protocol):
    async def open(self) -> None:
        """Connect and create or migrate the schema (forward-only)."""
        ...

    async def close(self) -> None:
        ...

    async def enqueue(self, event: UsageEvent, sinks: Sequence[str]) -> None:
        """Durably append one row per sink. Returns once the rows survive a kill -9."""
        ...

    async def enqueue_many(self, events: Sequence[UsageEvent], sinks: Sequence[str]) -> None:
        """``enqueue`` for several events in one transaction (group commit)."""
        ...

    async def claim(self, sink: str, limit: int, lease_s: float, *,
                    ignore_backoff: bool = False) -> list[OutboxRow]:
        """Take up to ``limit`` due rows of ``sink`` for this worker, oldest first.

        ``ignore_backoff`` also takes pending rows whose retry delay has not passed (a
        flush on shutdown); rows under another worker's live lease are never taken.
        """
        ...

    async def mark_delivered(self, ids: Sequence[int]) -> None:
        ...

    async def mark_retry(self, ids: Sequence[int], error: str, delay_s: float) -> None:
        """Give rows back as pending, due again in ``delay_s`` seconds."""
        ...

    async def mark_dead(self, reasons: dict[int, str]) -> None:
        ...

    async def release(self, ids: Sequence[int], delay_s: float = 0.0) -> None:
        """Give held rows back unsent: pending, due in ``delay_s``, the claim not counted."""
        ...

    async def stats(self, sink: str | None = None) -> OutboxStats:
        ...

    async def dead_rows(self, limit: int = 100, sink: str | None = None) -> list[DeadRow]:
        ...

    async def retry_dead(self, ids: Sequence[int] | None = None) -> int:
        """Make dead rows pending again (all of them when ``ids`` is None)."""
        ...

    async def replay(self, since_ms: int, sink: str | None = None) -> int:
        """Make rows delivered and created since ``since_ms`` pending again (Lago dedupes)."""
        ...

    async def purge_delivered(self, before_ms: int) -> int:
        """Delete delivered rows delivered before ``before_ms``; returns how many."""
        ...
