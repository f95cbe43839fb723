"""The Sink interface: deliver a batch of events, and say what became of each one.

A sink never raises for a delivery failure; it reports it in a ``BatchResult`` so that
the delivery worker can retry, dead-letter or pause without losing anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tallygate.event import UsageEvent


@dataclass(slots=True)
class BatchResult:
    """The fate of each event of a batch, by call id.

    Every call id of the batch is in exactly one of ``delivered``, ``dead`` or
    ``retry``. ``retry_after`` (seconds) is the earliest the retries may go again, when
    the sink was told (429 ``Retry-After``/``X-RateLimit-Reset``). ``paused`` means the
    sink cannot deliver anything until an operator acts (401/403): nothing is dropped.
    """

    delivered: list[str] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)
    retry_after: float | None = None
    paused: bool = False
    error: str | None = None

    @classmethod
    def all_retry(cls, events: Sequence[UsageEvent], error: str,
                  retry_after: float | None = None, paused: bool = False) -> BatchResult:
        return cls(retry=[e.call_id for e in events], error=error,
                   retry_after=retry_after, paused=paused)


@runtime_checkable
class Sink(Protocol):
    """A destination for usage events. ``name`` keys its rows in the outbox."""

    name: str
    max_batch: int

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        """Deliver ``events``; report every one in the result; never raise for I/O."""
        ...

    async def aclose(self) -> None:
        ...
