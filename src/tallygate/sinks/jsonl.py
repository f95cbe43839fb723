"""The ``jsonl`` sink: one JSON line per call appended to a local file.

Delivery is at-least-once (a crash between the write and the outbox update can repeat a
line); readers dedupe on ``call_id``, which is unique per call.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from tallygate.event import UsageEvent
from tallygate.sinks.base import BatchResult

DEFAULT_JSONL_PATH = "tallygate-usage.jsonl"


class JsonlSink:
    name = "jsonl"
    max_batch = 500

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JsonlSink:
        return cls(environ.get("TALLYGATE_JSONL_PATH") or DEFAULT_JSONL_PATH)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        data = b"".join(orjson.dumps(e.to_dict()) + b"\n" for e in events)
        try:
            await asyncio.to_thread(self._append, data)
        except OSError as exc:
            return BatchResult.all_retry(events, f"cannot write {self.path}: {exc.strerror}")
        return BatchResult(delivered=[e.call_id for e in events])

    async def aclose(self) -> None:
        return None
