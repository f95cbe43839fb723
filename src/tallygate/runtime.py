"""The SDK's background machinery: one event loop thread that runs the sync API's calls
and the delivery worker, the outbox, and the sinks named in callbacks.

The sync API is a thin wrapper: it runs the async core on this loop. Events are written
to the outbox (SQLite by default, ``TALLYGATE_DATABASE_URL`` to move it) and delivered in
the background; at interpreter exit the outbox is drained for a bounded time and what is
left stays on disk for the next process.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from tallygate.event import UsageEvent
from tallygate.sinks.base import Sink
from tallygate.sinks.factory import build_sink

log = logging.getLogger("tallygate.runtime")
T = TypeVar("T")

DEFAULT_FLUSH_TIMEOUT_S = 10.0


def default_database_url() -> str:
    url = os.environ.get("TALLYGATE_DATABASE_URL")
    if url:
        return url
    return str(Path.home() / ".tallygate" / "outbox.db")


class Runtime:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sinks: dict[str, Sink] = {}
        self._outbox: Any = None
        self._worker: Any = None
        self._atexit = False

    # -- the loop thread -------------------------------------------------------------
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name="tallygate-io", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
                if not self._atexit:
                    _at_exit(self.shutdown)
                    self._atexit = True
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime loop and wait for it (the sync API's bridge)."""
        return self.submit(coro).result()

    async def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the runtime loop from any loop (outbox and worker live there)."""
        loop = self.loop()
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    # -- sinks, outbox, delivery -----------------------------------------------------
    def ensure_sinks(self, names: Sequence[str]) -> None:
        """Build the named sinks now, so a missing setting fails here, naming it."""
        new = [n for n in names if n not in self._sinks]
        if not new:
            return
        built = {n: build_sink(n, os.environ) for n in new}
        self.run(self._add_sinks(built))

    async def aensure_sinks(self, names: Sequence[str]) -> None:
        """``ensure_sinks`` for async code, including code running on the runtime loop
        itself (the sync API's calls), where waiting on the loop would deadlock."""
        new = [n for n in names if n not in self._sinks]
        if not new:
            return
        built = {n: build_sink(n, os.environ) for n in new}
        await self.on_loop(self._add_sinks(built))

    async def _add_sinks(self, built: dict[str, Sink]) -> None:
        from tallygate.metering.factory import open_outbox

        # Two calls may have built the same sink at once: the first one in wins.
        built = {n: s for n, s in built.items() if n not in self._sinks}
        if not built:
            return
        if self._outbox is None:
            url = default_database_url()
            if "://" not in url:
                Path(url).parent.mkdir(parents=True, exist_ok=True)
            self._outbox = await open_outbox(url)
        if self._worker is not None:
            await self._worker.stop(0)
        self._sinks.update(built)
        self._start_worker()

    def _start_worker(self) -> None:
        """A delivery worker for every sink built so far, on this (the runtime) loop."""
        from tallygate.metering.delivery import DeliveryWorker

        self._worker = DeliveryWorker(self._outbox, list(self._sinks.values()))
        self._worker.start()

    async def enqueue(self, event: UsageEvent, sinks: Sequence[str]) -> None:
        async def write() -> None:
            await self._outbox.enqueue(event, sinks)
            self._worker.notify()

        await self.on_loop(write())

    async def _drain(self, timeout_s: float) -> None:
        if self._worker is not None:
            await self._worker.stop(timeout_s)
            self._worker = None
            if self._sinks:
                self._start_worker()

    def flush(self, timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> None:
        """Deliver what is pending, for up to ``timeout_s`` seconds."""
        if self._loop is not None and self._worker is not None:
            self.run(self._drain(timeout_s))

    async def _close(self, timeout_s: float) -> None:
        from tallygate import transport

        if self._worker is not None:
            await self._worker.stop(timeout_s)
            self._worker = None
        for sink in self._sinks.values():
            await sink.aclose()
        self._sinks.clear()
        if self._outbox is not None:
            await self._outbox.close()
            self._outbox = None
        await transport.close_session()

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Drain and close everything (runs at interpreter exit)."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("TALLYGATE_FLUSH_TIMEOUT", DEFAULT_FLUSH_TIMEOUT_S))
        loop = self._loop
        if loop is None or not loop.is_running():
            return
        try:
            self.run(self._close(timeout_s))
        except Exception:
            log.exception("tallygate runtime did not shut down cleanly")
        loop.call_soon_threadsafe(loop.stop)
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if thread is None or not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None


def _at_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit while thread pools still take work.

    ``atexit`` handlers run after ``concurrent.futures`` has stopped every executor (it
    hooks ``threading``'s exit), and the SQLite outbox works through one: a drain from
    ``atexit`` could not read the outbox. ``threading``'s exit hooks run newest first,
    so one registered now runs before the executors stop.
    """
    import concurrent.futures.thread  # noqa: F401  # its exit hook must come before ours

    register = getattr(threading, "_register_atexit", None)
    if register is None:
        atexit.register(fn)
        return
    try:
        register(fn)
    except RuntimeError:  # already shutting down
        atexit.register(fn)


runtime = Runtime()
