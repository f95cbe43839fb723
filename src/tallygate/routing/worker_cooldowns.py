"""Cooldowns shared by the worker processes of one gateway, without Redis.

``tallygate --workers N`` forks N processes; each cooling deployments down alone would
let a failing deployment take ``allowed_fails`` failures in every worker. The parent
makes one ``CooldownTable`` (an anonymous shared memory map and a lock) before it forks,
as ``tallygate.access.shared_limits`` does for rate limits, so every worker counts the
same failures and sees the same cooldowns.

A slot per deployment id holds the id's digest, the minute its failures were counted
in, that count, the end of its cooldown and why. A version number in the header grows
with every cooldown written: a worker's hot path compares it with the one it last read
(one read of shared memory) and reloads its local copy only when it changed, so a
cooldown set by one worker holds in the others from their next call on. Redis
(``router_settings.redis_url``) stays the way to share them between machines.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import multiprocessing
import time
from typing import Any, get_args

from tallygate.routing.cooldowns import Cooldowns, CooldownState, minute
from tallygate.routing.settings import ErrorKind

log = logging.getLogger("tallygate.routing")

_DOUBLES = 6                    # per slot: digest (2 doubles' room), minute, fails, until, reason
_SLOT = _DOUBLES * 8
_EMPTY = bytes(16)
_REASONS: tuple[ErrorKind, ...] = get_args(ErrorKind)


def _digest(model_id: str) -> bytes:
    digest = hashlib.blake2b(model_id.encode(), digest_size=16).digest()
    return digest if digest != _EMPTY else b"\x01" + digest[1:]


class CooldownTable:
    """Per-deployment failure counts and cooldowns in shared memory. Make it before
    forking; ``slots`` must exceed the number of deployments (the parent knows them)."""

    def __init__(self, slots: int = 1024) -> None:
        self.slots = max(int(slots), 8)
        # Slot 0 is the header (its first double: the version); deployments from 1 on.
        self._mm = mmap.mmap(-1, (self.slots + 1) * _SLOT)
        self._view = memoryview(self._mm)
        self._d = self._view.cast("d")
        self.lock: Any = multiprocessing.get_context("fork").Lock()

    @property
    def version(self) -> float:
        return self._d[0]

    def find(self, digest: bytes, *, claim: bool) -> int | None:
        """The slot of ``digest``; with ``claim`` (under the lock) a free one is taken for
        it. None: not stored (or, claiming, the table is full)."""
        start = int.from_bytes(digest[:8], "little") % self.slots
        view = self._view
        for i in range(self.slots):
            slot = (start + i) % self.slots + 1
            at = slot * _SLOT
            held = view[at:at + 16]
            if held == digest:
                return slot
            if held == _EMPTY:  # slots are never emptied: the digest is not further on
                if not claim:
                    return None
                view[at:at + 16] = digest
                return slot
        return None

    def count(self, slot: int, this_minute: int) -> int:
        """One more failure in ``this_minute`` (under the lock); the minute's count."""
        d, base = self._d, slot * _DOUBLES
        count = d[base + 3] + 1 if d[base + 2] == this_minute else 1
        d[base + 2], d[base + 3] = float(this_minute), float(count)
        return int(count)

    def failures(self, slot: int, this_minute: int) -> int:
        d, base = self._d, slot * _DOUBLES
        return int(d[base + 3]) if d[base + 2] == this_minute else 0

    def cooldown(self, slot: int) -> tuple[float, ErrorKind]:
        d, base = self._d, slot * _DOUBLES
        return d[base + 4], _REASONS[int(d[base + 5])]

    def cool(self, slot: int, until: float, reason: ErrorKind) -> None:
        """Cool down until ``until`` unless already cooling longer (under the lock)."""
        d, base = self._d, slot * _DOUBLES
        if d[base + 4] < until:
            d[base + 4], d[base + 5] = until, float(_REASONS.index(reason))
            d[0] += 1.0


class WorkerCooldowns(Cooldowns):
    """The cooldowns of a worker whose gateway forked several: kept in CooldownTable,
    with a local copy that the hot path reads."""

    def __init__(self, table: CooldownTable) -> None:
        super().__init__()
        self._t = table
        self._seen = -1.0
        self._ids: list[str] = []
        self._slots: dict[str, int] = {}
        self._warned = False

    def _slot(self, model_id: str, *, claim: bool = False) -> int | None:
        slot = self._slots.get(model_id)
        if slot is None:
            slot = self._t.find(_digest(model_id), claim=claim)
            if slot is not None:
                self._slots[model_id] = slot
        return slot

    def _sync(self) -> None:
        """Reload the local copy when another worker (or this one) wrote a cooldown."""
        version = self._t.version
        if version == self._seen:
            return
        self._seen = version
        now = time.time()
        cooling: dict[str, CooldownState] = {}
        for model_id in self._ids:
            slot = self._slot(model_id)
            if slot is None:  # not in the table (full): this worker's own, if any
                own = self._cooling.get(model_id)
                if own is not None:
                    cooling[model_id] = own
                continue
            until, reason = self._t.cooldown(slot)
            if until > now:
                cooling[model_id] = CooldownState(until, reason)
        self._cooling = cooling

    # -- reads ---------------------------------------------------------------------------

    def any(self) -> bool:
        self._sync()
        return bool(self._cooling)

    def state(self, model_id: str, now: float) -> CooldownState | None:
        self._sync()
        return super().state(model_id, now)

    def failures(self, model_id: str, now: float) -> int:
        slot = self._slot(model_id)
        return self._t.failures(slot, minute(now)) if slot is not None else 0

    # -- writes --------------------------------------------------------------------------

    async def failed(self, model_id: str, kind: ErrorKind, allowed: int, cooldown_s: float,
                     at_once_s: float | None) -> float | None:
        now = time.time()
        m = minute(now)
        with self._t.lock:  # microseconds: no I/O, no await inside
            slot = self._slot(model_id, claim=True)
            if slot is not None:
                count = self._t.count(slot, m)
                seconds = at_once_s if at_once_s else (
                    cooldown_s if count > allowed else None)
                if seconds:
                    self._t.cool(slot, now + seconds, kind)
        if slot is None:
            if not self._warned:
                self._warned = True
                log.warning("router: the workers' cooldown table is full; deployment %s is "
                            "cooled down by each worker on its own", model_id)
            return await super().failed(model_id, kind, allowed, cooldown_s, at_once_s)
        self._fails[model_id] = (m, count)
        self._sync()
        return seconds

    async def start(self, model_ids: list[str]) -> None:
        self._ids = list(dict.fromkeys(model_ids))
        self._sync()
