"""Router state shared through Redis: cooldowns and failure counts of every gateway.

A failed attempt counts in Redis (one script call: count, and cool down when due), so
``allowed_fails`` holds across gateways. Each gateway keeps a local copy of the
cooldowns, refreshed from Redis every half second and at each failure, so the hot path
stays a dict read. Redis being away never fails a call: the gateway then counts on its
own and says so in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from tallygate.routing.cooldowns import Cooldowns, CooldownState, minute
from tallygate.routing.settings import ErrorKind

log = logging.getLogger("tallygate.routing")

POLL_INTERVAL_S = 0.5
_PREFIX = "tg:rt"

# KEYS: failure counter of this minute, cooldown key. ARGV: allowed, cooldown ms,
# at-once ms (0: none), now ms, reason. Returns {failures, cooldown ms applied}.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
local ms = 0
if tonumber(ARGV[3]) > 0 then
  ms = tonumber(ARGV[3])
elseif n > tonumber(ARGV[1]) then
  ms = tonumber(ARGV[2])
end
if ms > 0 then
  local untilms = tonumber(ARGV[4]) + ms
  local cur = redis.call('GET', KEYS[2])
  local curms = 0
  if cur then curms = tonumber(string.match(cur, '^(%d+)')) or 0 end
  if untilms > curms then
    redis.call('SET', KEYS[2], untilms .. '|' .. ARGV[5], 'PX', ms)
  end
end
return {n, ms}
"""


def _cooldown_key(model_id: str) -> str:
    return f"{_PREFIX}:cd:{model_id}"


def _fails_key(model_id: str, m: int) -> str:
    return f"{_PREFIX}:fails:{model_id}:{m}"


def _parse(raw: Any) -> CooldownState | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    until, _, reason = text.partition("|")
    try:
        return CooldownState(int(until) / 1000, reason or "server")  # type: ignore[arg-type]
    except ValueError:
        return None


class RedisCooldowns(Cooldowns):
    shared = True

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.from_url(url)
        self._failed_script = self._redis.register_script(_FAILED)
        self._ids: list[str] = []
        self._poller: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    def _warn(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("router: Redis unreachable (%s: %s); cooldowns are this gateway's "
                        "own until it is back", what, type(exc).__name__)

    async def failed(self, model_id: str, kind: ErrorKind, allowed: int, cooldown_s: float,
                     at_once_s: float | None) -> float | None:
        now = time.time()
        try:
            count, ms = await self._failed_script(
                keys=[_fails_key(model_id, minute(now)), _cooldown_key(model_id)],
                args=[allowed, int(cooldown_s * 1000), int((at_once_s or 0) * 1000),
                      int(now * 1000), kind])
        except Exception as exc:
            self._warn("counting a failure", exc)
            return await super().failed(model_id, kind, allowed, cooldown_s, at_once_s)
        self._fails[model_id] = (minute(now), int(count))
        if int(ms) > 0:
            self._cool(model_id, now + int(ms) / 1000, kind)
            return int(ms) / 1000
        return None

    async def refresh(self) -> None:
        """Read every deployment's cooldown and failure count from Redis."""
        if not self._ids:
            return
        m = minute(time.time())
        keys = [_cooldown_key(i) for i in self._ids] + [_fails_key(i, m) for i in self._ids]
        values = await self._redis.mget(keys)
        n = len(self._ids)
        for model_id, raw, fails in zip(self._ids, values[:n], values[n:], strict=True):
            state = _parse(raw)
            if state is None:
                self._cooling.pop(model_id, None)
            else:
                self._cooling[model_id] = state
            if fails is not None:
                self._fails[model_id] = (m, int(fails))

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn("reading cooldowns", exc)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def start(self, model_ids: list[str]) -> None:
        self._ids = list(model_ids)
        with contextlib.suppress(Exception):
            await self.refresh()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._redis.aclose()
