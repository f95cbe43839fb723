"""Cooldowns: a deployment that keeps failing leaves rotation for a while.

A deployment whose failures this minute (a wall-clock minute, the same on every
gateway) pass ``allowed_fails``, or that answered 429 with a ``Retry-After``, is cooled
down: no call is sent to it until the time is up. The check on the hot path is one dict
read; counting happens only when an attempt fails. ``Cooldowns`` keeps the state in the
process; ``tallygate.routing.worker_cooldowns.WorkerCooldowns`` shares it between the
worker processes of one gateway, ``tallygate.routing.shared.RedisCooldowns`` between
gateways.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tallygate.routing.settings import ErrorKind


def minute(now: float) -> int:
    return int(now // 60)


@dataclass(frozen=True, slots=True)
class CooldownState:
    until: float                 # wall-clock seconds
    reason: ErrorKind


class Cooldowns:
    """In-process cooldowns and failure counts, per deployment id."""

    shared = False

    def __init__(self) -> None:
        self._cooling: dict[str, CooldownState] = {}
        self._fails: dict[str, tuple[int, int]] = {}  # id -> (minute, failures in it)

    # -- reads (hot path) ----------------------------------------------------------------

    def any(self) -> bool:
        """Whether any deployment may be cooling down (expired ones are dropped as they
        are seen), so the hot path can skip the per-deployment checks."""
        return bool(self._cooling)

    def cooling(self, model_id: str, now: float) -> bool:
        state = self._cooling.get(model_id)
        if state is None:
            return False
        if state.until > now:
            return True
        if not self.shared:
            del self._cooling[model_id]  # shared: the next refresh drops it
        return False

    def state(self, model_id: str, now: float) -> CooldownState | None:
        state = self._cooling.get(model_id)
        return state if state is not None and state.until > now else None

    def failures(self, model_id: str, now: float) -> int:
        """Failures counted in the current minute."""
        item = self._fails.get(model_id)
        return item[1] if item is not None and item[0] == minute(now) else 0

    # -- writes (a failed attempt) ---------------------------------------------------------

    def _count(self, model_id: str, now: float) -> int:
        m = minute(now)
        item = self._fails.get(model_id)
        count = item[1] + 1 if item is not None and item[0] == m else 1
        self._fails[model_id] = (m, count)
        return count

    def _cool(self, model_id: str, until: float, reason: ErrorKind) -> None:
        current = self._cooling.get(model_id)
        if current is None or current.until < until:
            self._cooling[model_id] = CooldownState(until, reason)

    async def failed(self, model_id: str, kind: ErrorKind, allowed: int, cooldown_s: float,
                     at_once_s: float | None) -> float | None:
        """Count a failure; cool the deployment down when its failures this minute pass
        ``allowed`` (for ``cooldown_s``), or at once for ``at_once_s``. Returns the
        cooldown applied, or None."""
        now = time.time()
        count = self._count(model_id, now)
        seconds = at_once_s if at_once_s else (cooldown_s if count > allowed else None)
        if seconds:
            self._cool(model_id, now + seconds, kind)
        return seconds

    async def start(self, model_ids: list[str]) -> None:
        return None

    async def close(self) -> None:
        return None
