"""Event-loop lag, sampled: how late a timer due every ``interval`` actually runs.

A timer that fires late was kept waiting by whatever held the loop (a callback, a
synchronous database call, JSON work): at one call at a time its lateness is that
task's hold time. Off unless ``TALLYGATE_LOOP_LAG_SAMPLE_MS`` is set (the benchmark
sets it); then ``GET /debug/loop-lag`` returns the figures since the last reset
(``?reset=1`` starts a new window).
"""

from __future__ import annotations

import asyncio
import os
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
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lags: list[float] = []
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        if len(self._lags) < MAX_SAMPLES:
            self._lags.append(max(self._loop.time() - self._due, 0.0))
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def figures(self, reset: bool = False) -> dict[str, Any]:
        lags = sorted(self._lags)
        if reset:
            self._lags = []
        n = len(lags)

        def at(p: float) -> float:
            return round(lags[min(n - 1, int(p * n))] * 1000, 3) if n else 0.0

        return {"interval_ms": self.interval_s * 1000, "samples": n,
                "p50_ms": at(0.5), "p99_ms": at(0.99), "p999_ms": at(0.999),
                "max_ms": round(lags[-1] * 1000, 3) if n else 0.0,
                "over_0_5ms": sum(1 for lag in lags if lag > STALL_S)}
