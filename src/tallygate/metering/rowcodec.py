"""What the outbox backends share: how an event is stored, clocks, owner ids."""

from __future__ import annotations

import os
import socket
import time
import uuid

import orjson

from tallygate.event import UsageEvent

ERROR_MAX_CHARS = 1000  # a stored error is for an operator to read, not a full dump


def encode_event(event: UsageEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def decode_event(data: bytes | str) -> UsageEvent:
    return UsageEvent.from_dict(orjson.loads(data))


def wall_ms() -> int:
    """Wall-clock milliseconds: leases and due times must agree across processes."""
    return time.time_ns() // 1_000_000


def new_owner_id() -> str:
    """Who holds a lease: readable in ``outbox status`` and unique per Outbox instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def clip_error(error: str) -> str:
    return error if len(error) <= ERROR_MAX_CHARS else error[: ERROR_MAX_CHARS - 3] + "..."
