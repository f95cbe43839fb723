"""The events this process wrote to its outbox moments ago, kept to skip decoding them.

Under load a delivery worker claims rows its own process inserted tens of milliseconds
before; parsing each row's JSON back into a ``UsageEvent`` (once per sink) took about
6% of the gateway's CPU. The cache maps a call id to the exact text stored and the event it
was made from: a claimed row uses the event only when its stored text is that same text
(any other row, such as one written by another process or before a restart, is decoded),
so what a sink receives is always what the row holds. Bounded: the oldest go first.
"""

from __future__ import annotations

import threading

from tallygate.event import UsageEvent

DEFAULT_SIZE = 2048


class RecentEvents:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._items: dict[str, tuple[str, UsageEvent]] = {}
        self._lock = threading.Lock()   # enqueues and claims may run on different threads

    def put(self, call_id: str, text: str, event: UsageEvent) -> None:
        with self._lock:
            items = self._items
            items.pop(call_id, None)
            items[call_id] = (text, event)
            while len(items) > self._size:
                del items[next(iter(items))]

    def get(self, call_id: str, text: str) -> UsageEvent | None:
        """The event whose stored text is exactly ``text``, if this process wrote it."""
        hit = self._items.get(call_id)
        if hit is not None and hit[0] == text:
            return hit[1]
        return None
