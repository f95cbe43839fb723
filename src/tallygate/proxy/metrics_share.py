"""One /metrics for all the worker processes of a gateway.

Each worker writes a snapshot of its counts into a folder the parent made before it
forked (every second, and whenever it serves a scrape); the worker that serves a
scrape renders its own counts plus every other worker's latest snapshot. A worker's
snapshot only grows, and the one serving a scrape writes its own first, so each
counter in the merged text only grows, whichever worker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import orjson

from tallygate.proxy.metrics import Metrics, Snapshot

log = logging.getLogger("tallygate.proxy")

WRITE_INTERVAL_S = 1.0


class MetricsShare:
    def __init__(self, directory: str | Path, metrics: Metrics) -> None:
        self.directory = Path(directory)
        self.metrics = metrics
        self._own = self.directory / f"worker-{os.getpid()}.json"
        self._task: asyncio.Task[None] | None = None

    def write(self) -> None:
        """This worker's snapshot, replaced atomically (a reader never sees half)."""
        tmp = self._own.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(self.metrics.snapshot()))
        os.replace(tmp, self._own)

    def others(self) -> list[Snapshot]:
        out: list[Snapshot] = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path == self._own:
                continue
            try:
                out.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # a worker that died mid-way left nothing readable
        return out

    def render(self) -> str:
        self.write()
        return self.metrics.render(self.others())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            self.write()  # the last counts stay in the sum after this worker is gone
        except OSError:
            log.warning("could not write the last metrics snapshot to %s", self.directory)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL_S)
            try:
                self.write()
            except OSError:
                log.warning("could not write a metrics snapshot to %s", self.directory)
