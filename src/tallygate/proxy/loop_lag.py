"""Event-loop lag, sampled: how long the loop takes to run a callback posted to it.

A probe that waits was kept waiting by whatever held the loop (a callback, a
synchronous database call, JSON work): at one call at a time that is the task's hold
time; under load it also counts the other callbacks ready before it. Off unless
``TALLYGATE_LOOP_LAG_SAMPLE_MS`` is set (the benchmark sets it); then
``GET /debug/loop-lag`` returns the figures since the last reset (``?reset=1`` starts a
new window), with the garbage collector's passes in it; ``?sampling=off`` stops the
probes and ``?sampling=on`` starts them again (a probe a millisecond costs the gateway
throughput of its own: the benchmark measures speed with them off, lag with them on).
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

ENV = "TALLYGATE_LOOP_LAG_SAMPLE_MS"
MAX_SAMPLES = 1_000_000
STALL_S = 0.0005  # the bar: nothing holds the loop longer than 0.5 ms


def interval_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """The sampling interval in seconds, or None when sampling is off."""
    raw = ((os.environ if environ is None else environ).get(ENV) or "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        return None
    return ms / 1000 if ms > 0 else None


class LoopLagSampler:
    """A thread that, every ``interval``, asks the loop to run a callback and records
    how long the loop took to get to it: the rest of whatever held it then. (A timer
    on the loop would not do: uvloop's clock and timers are in whole milliseconds.)"""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lags: list[float] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._arrived = threading.Event()
        self._thread: threading.Thread | None = None
        self._gc_base = _gc_collections()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop = threading.Event()  # each thread its own: a stopped one stays stopped
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name="tallygate-loop-lag", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        while not stop.wait(self.interval_s):
            self._arrived.clear()
            try:
                loop.call_soon_threadsafe(self._record, stop, time.perf_counter())
            except RuntimeError:  # the loop closed
                return
            self._arrived.wait(1.0)  # one probe in flight at a time

    def _record(self, stop: threading.Event, sent: float) -> None:
        # A probe posted just before ``stop`` runs after it: it belongs to no window.
        if not stop.is_set() and len(self._lags) < MAX_SAMPLES:
            self._lags.append(time.perf_counter() - sent)
        self._arrived.set()

    def stop(self) -> None:
        self._stop.set()
        self._arrived.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def figures(self, reset: bool = False) -> dict[str, Any]:
        lags = sorted(self._lags)
        collections = [now - then for now, then in zip(_gc_collections(), self._gc_base,
                                                       strict=True)]
        if reset:
            self._lags = []
            self._gc_base = _gc_collections()
        n = len(lags)

        def at(p: float) -> float:
            return round(lags[min(n - 1, int(p * n))] * 1000, 3) if n else 0.0

        return {"interval_ms": self.interval_s * 1000, "samples": n,
                "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999),
                "max_ms": round(lags[-1] * 1000, 3) if n else 0.0,
                "over_0_5ms": sum(1 for lag in lags if lag > STALL_S),
                # What the garbage collector did in the window (a full collection is a
                # stall of its own) and how many start-up objects it no longer walks.
                "gc_collections": collections, "gc_frozen": gc.get_freeze_count(),
                "gc_thresholds": list(gc.get_threshold())}


def _gc_collections() -> list[int]:
    return [int(generation["collections"]) for generation in gc.get_stats()]
