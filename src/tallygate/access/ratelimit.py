"""Requests and tokens per minute, per key, team and deployment: in-process or Redis.

A sliding-window counter: the current minute's count plus the previous minute's,
weighted by how much of it still lies inside the last 60 seconds. A request is admitted
when one more fits under ``rpm``; for tokens, while the window's usage is below
``tpm`` (a call's size is only known at its end). The call's estimated tokens are
counted at once, so concurrent calls see them, and corrected when it settles.

All limits of a call are checked, then all are counted, in one step: under the loop
(in-process, no awaits between) or in one Lua script (Redis, shared by gateways; the
clock is Redis's own ``TIME``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WINDOW_S = 60
Kind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str          # key | team | deployment
    ident: str
    kind: Kind
    limit: int
    cost: int           # 1 request, or the call's estimated tokens
    # The counter's name, made once (it is read for every call the limit counts).
    base: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base", f"tg:rl:{self.scope}:{self.ident}:{self.kind}")


@dataclass(frozen=True, slots=True)
class Window:
    curr: float
    prev: float
    frac: float         # how far into the current minute, 0..1

    @property
    def used(self) -> float:
        return self.prev * (1 - self.frac) + self.curr


@dataclass(frozen=True, slots=True)
class Decision:
    ok: bool
    failed: Limit | None
    headers: dict[str, str]
    retry_after_s: int = 0


def _fits(limit: Limit, w: Window) -> bool:
    if limit.kind == "requests":
        return w.used + limit.cost <= limit.limit
    return w.used < limit.limit


def _retry_after(limit: Limit, w: Window) -> int:
    """Seconds until the limit would let this call through (an estimate, at least 1)."""
    room = limit.limit - (limit.cost if limit.kind == "requests" else 0)
    left_in_window = (1 - w.frac) * WINDOW_S
    if w.curr > room or w.prev == 0:
        # Only the next window helps: then used = curr * (1 - t/60).
        if w.curr <= 0:
            return max(1, math.ceil(left_in_window))
        t = WINDOW_S * max(0.0, 1 - max(room, 0) / w.curr)
        return max(1, math.ceil(left_in_window + t))
    t = WINDOW_S * (1 - (room - w.curr) / w.prev)
    return max(1, math.ceil(t - w.frac * WINDOW_S))


def _reset_text(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60)}s"
    return f"{seconds:.0f}s" if seconds >= 1 else f"{int(seconds * 1000)}ms"


def _headers(limits: Sequence[Limit], windows: Sequence[Window], admitted: bool
             ) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the tightest request and token limit."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        best: tuple[float, Limit, Window] | None = None
        for limit, w in zip(limits, windows, strict=True):
            if limit.kind != kind:
                continue
            used = w.used + (limit.cost if admitted else 0)
            remaining = max(limit.limit - used, 0.0)
            if best is None or remaining < best[0]:
                best = (remaining, limit, w)
        if best is not None:
            remaining, limit, w = best
            out[f"x-ratelimit-limit-{kind}"] = str(limit.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(int(remaining))
            out[f"x-ratelimit-reset-{kind}"] = _reset_text((1 - w.frac) * WINDOW_S)
    return out


def decide(limits: Sequence[Limit], windows: Sequence[Window]) -> Decision:
    for limit, w in zip(limits, windows, strict=True):
        if not _fits(limit, w):
            retry = _retry_after(limit, w)
            headers = _headers(limits, windows, admitted=False)
            headers["retry-after"] = str(retry)
            return Decision(False, limit, headers, retry)
    return Decision(True, None, _headers(limits, windows, admitted=True))


class LocalLimiter:
    """One process's limits: a dict of per-minute counters, no I/O."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float, float]] = {}  # base -> (minute, curr, prev)

    def _window(self, base: str, minute: int, frac: float) -> Window:
        item = self._counts.get(base)
        if item is None:
            return Window(0, 0, frac)
        m, curr, prev = item
        if m == minute:
            return Window(curr, prev, frac)
        if m == minute - 1:
            return Window(0, curr, frac)
        return Window(0, 0, frac)

    def _add(self, base: str, minute: int, amount: float) -> None:
        w = self._window(base, minute, 0)
        self._counts[base] = (minute, max(w.curr + amount, 0), w.prev)

    async def acquire(self, limits: Sequence[Limit]) -> Decision:
        now = time.time()
        minute = int(now // WINDOW_S)
        frac = (now - minute * WINDOW_S) / WINDOW_S
        windows = [self._window(limit.base, minute, frac) for limit in limits]
        decision = decide(limits, windows)
        if decision.ok:
            for limit in limits:
                self._add(limit.base, minute, limit.cost)
        if len(self._counts) > 200_000:
            self._counts = {k: v for k, v in self._counts.items() if v[0] >= minute - 1}
        return decision

    async def adjust(self, limits: Sequence[Limit], delta: int) -> None:
        """Correct the token counts by ``delta`` (real minus estimated)."""
        minute = int(time.time() // WINDOW_S)
        for limit in limits:
            self._add(limit.base, minute, delta)

    async def close(self) -> None:
        return None


# KEYS: one base name per limit. ARGV: limit, cost, kind ("r"|"t") per limit.
# Returns {1, frac, curr1, prev1, ...} when admitted (counts before this call), or
# {0, i, frac, curr_i, prev_i} for the first limit that refused.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local w = math.floor(now / 60)
local frac = (now - w * 60) / 60
local seen = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[3 * i - 2])
  local cost = tonumber(ARGV[3 * i - 1])
  local curr = tonumber(redis.call('GET', KEYS[i] .. ':' .. w) or '0')
  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (w - 1)) or '0')
  local used = prev * (1 - frac) + curr
  if (ARGV[3 * i] == 'r' and used + cost > limit) or (ARGV[3 * i] == 't' and used >= limit) then
    return {0, i, tostring(frac), tostring(curr), tostring(prev)}
  end
  seen[2 * i - 1] = tostring(curr)
  seen[2 * i] = tostring(prev)
end
for i = 1, #KEYS do
  local k = KEYS[i] .. ':' .. w
  redis.call('INCRBY', k, tonumber(ARGV[3 * i - 1]))
  redis.call('EXPIRE', k, 150)
end
local out = {1, tostring(frac)}
for i = 1, #seen do out[#out + 1] = seen[i] end
return out
"""

_LUA_ADJUST = """
local t = redis.call('TIME')
local w = math.floor(tonumber(t[1]) / 60)
for i = 1, #KEYS do
  local k = KEYS[i] .. ':' .. w
  redis.call('INCRBY', k, tonumber(ARGV[1]))
  redis.call('EXPIRE', k, 150)
end
return 1
"""


class RedisLimiter:
    """Limits shared by every gateway on one Redis: one script call per admission."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._redis: Any = aioredis.from_url(url)
        self._acquire = self._redis.register_script(_LUA)
        self._adjust = self._redis.register_script(_LUA_ADJUST)

    async def acquire(self, limits: Sequence[Limit]) -> Decision:
        argv: list[Any] = []
        for limit in limits:
            argv += [limit.limit, limit.cost, "r" if limit.kind == "requests" else "t"]
        raw = await self._acquire(keys=[limit.base for limit in limits], args=argv)
        if int(raw[0]) == 1:
            frac = float(raw[1])
            windows = [Window(float(raw[2 + 2 * i]), float(raw[3 + 2 * i]), frac)
                       for i in range(len(limits))]
            return Decision(True, None, _headers(limits, windows, admitted=True))
        index = int(raw[1]) - 1
        failed = limits[index]
        w = Window(float(raw[3]), float(raw[4]), float(raw[2]))
        retry = _retry_after(failed, w)
        headers = _headers([failed], [w], admitted=False)
        headers["retry-after"] = str(retry)
        return Decision(False, failed, headers, retry)

    async def adjust(self, limits: Sequence[Limit], delta: int) -> None:
        if limits and delta:
            await self._adjust(keys=[limit.base for limit in limits], args=[delta])

    async def close(self) -> None:
        await self._redis.aclose()
