"""What the outbox backends share: how an event is stored, clocks, owner ids."""

from __future__ import annotations

import os
import socket
import time
import uuid

import orjson

from tallygate.event import UsageEvent

ERROR_MAX_CHARS = 1000  # a stored error is for an operator to read, not a full dump


# The key of an outbox row's stored dict that carries the call's settlement: it rides
# with the event in the same atomic insert, and sinks (which send ``to_dict()``) never
# see it.
SETTLEMENT_KEY = "_settlement"


def encode_event(event: UsageEvent) -> bytes:
    data = event.to_dict()
    if event.settlement is not None:
        data[SETTLEMENT_KEY] = dict(event.settlement)
    return orjson.dumps(data)


def decode_event(data: bytes | str) -> UsageEvent:
    raw = orjson.loads(data)
    settlement = raw.get(SETTLEMENT_KEY)
    return UsageEvent.from_dict(raw, settlement if isinstance(settlement, dict) else None)


def wall_ms() -> int:
    """Wall-clock milliseconds: leases and due times must agree across processes."""
    return time.time_ns() // 1_000_000


def new_owner_id() -> str:
    """Who holds a lease: readable in ``outbox status`` and unique per Outbox instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def clip_error(error: str) -> str:
    return error if len(error) <= ERROR_MAX_CHARS else error[: ERROR_MAX_CHARS - 3] + "..."
