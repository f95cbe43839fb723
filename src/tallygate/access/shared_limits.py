"""Rate-limit counters shared by the worker processes of one gateway, without Redis.

``tallygate --workers N`` forks N processes; each counting alone would let N times the
limit through. The parent makes one anonymous shared memory map and one lock before it
forks, so every worker reads and writes the same per-minute counters. A slot holds a
counter's key digest, its minute and the current and previous minute's counts: the
same sliding window as ``LocalLimiter``, with the same decisions (``ratelimit.decide``).

The lock is held for a few microseconds (no I/O, no awaits inside it). Redis stays the
way to share limits between gateways on several machines.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

from tallygate.access.ratelimit import WINDOW_S, Decision, Limit, Window, decide

_SLOT = 40              # digest (16) + minute (8) + curr (8) + prev (8)
_PROBES = 32            # open addressing: slots tried before the oldest one is taken
_EMPTY = bytes(16)


class SharedCounters:
    """A fixed table of per-minute counters in shared memory. Make it before forking."""

    def __init__(self, slots: int = 1 << 16) -> None:
        self.slots = slots
        # mmap(-1, ...) is anonymous and MAP_SHARED: forked children see the same pages.
        self._mm = mmap.mmap(-1, slots * _SLOT)
        self._view = memoryview(self._mm)
        self._floats = self._view.cast("d")   # 5 doubles per slot: [digest x2, minute, curr, prev]
        self.lock: Any = multiprocessing.get_context("fork").Lock()

    def _find(self, digest: bytes, minute: int) -> int:
        """The slot of ``digest``: its own, else a free or stale one on its probe path
        (a key unseen for two minutes has nothing left to count), else the stalest."""
        start = int.from_bytes(digest[:8], "little") % self.slots
        floats = self._floats
        view = self._view
        free = -1
        stalest, stalest_minute = start, float("inf")
        for i in range(_PROBES):
            slot = (start + i) % self.slots
            at = slot * _SLOT
            held = view[at:at + 16]
            if held == digest:
                return slot
            if held == _EMPTY:
                # Slots are never emptied, so the key is not stored past this one.
                if free < 0:
                    free = slot
                break
            if free < 0:
                slot_minute = floats[slot * 5 + 2]
                if slot_minute < minute - 1:
                    free = slot
                elif slot_minute < stalest_minute:
                    stalest, stalest_minute = slot, slot_minute
        slot = free if free >= 0 else stalest
        at = slot * _SLOT
        view[at:at + 16] = digest
        floats[slot * 5 + 2] = float(minute)
        floats[slot * 5 + 3] = 0.0
        floats[slot * 5 + 4] = 0.0
        return slot

    def window(self, digest: bytes, minute: int, frac: float) -> tuple[int, Window]:
        slot = self._find(digest, minute)
        f = self._floats
        m, curr, prev = int(f[slot * 5 + 2]), f[slot * 5 + 3], f[slot * 5 + 4]
        if m == minute:
            return slot, Window(curr, prev, frac)
        if m == minute - 1:
            return slot, Window(0, curr, frac)
        return slot, Window(0, 0, frac)

    def add(self, slot: int, minute: int, w: Window, amount: float) -> None:
        f = self._floats
        f[slot * 5 + 2] = float(minute)
        f[slot * 5 + 3] = max(w.curr + amount, 0.0)
        f[slot * 5 + 4] = w.prev


def _digest(base: str) -> bytes:
    digest = hashlib.blake2b(base.encode(), digest_size=16).digest()
    return digest if digest != _EMPTY else b"\x01" + digest[1:]


class SharedLimiter:
    """The limiter of a worker whose gateway forked several: counts in SharedCounters."""

    def __init__(self, counters: SharedCounters) -> None:
        self._c = counters

    async def acquire(self, limits: Sequence[Limit]) -> Decision:
        now = time.time()
        minute = int(now // WINDOW_S)
        frac = (now - minute * WINDOW_S) / WINDOW_S
        digests = [_digest(limit.base) for limit in limits]
        with self._c.lock:
            found = [self._c.window(d, minute, frac) for d in digests]
            windows = [w for _, w in found]
            decision = decide(limits, windows)
            if decision.ok:
                for limit, (slot, w) in zip(limits, found, strict=True):
                    self._c.add(slot, minute, w, limit.cost)
        return decision

    async def adjust(self, limits: Sequence[Limit], delta: int) -> None:
        """Correct the token counts by ``delta`` (real minus estimated)."""
        if not limits or not delta:
            return
        minute = int(time.time() // WINDOW_S)
        with self._c.lock:
            for limit in limits:
                slot, w = self._c.window(_digest(limit.base), minute, 0.0)
                self._c.add(slot, minute, w, delta)

    async def close(self) -> None:
        return None
