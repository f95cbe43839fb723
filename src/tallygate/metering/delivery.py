"""The delivery worker: moves outbox rows into their sinks, one asyncio task per sink.

Nothing is dropped here. A row leaves the pending set only when its sink reports it
delivered or dead (a permanent rejection), or when ``max_attempts`` is set and used up.
Everything else (errors, rate limits, a sink that raises, a paused sink, a stop in the
middle of a send) puts the row back for a later attempt; a resend is safe because Lago
deduplicates on the event's call id and timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.metering.backoff import full_jitter
from tallygate.metering.outbox import Outbox, OutboxRow, OutboxStats
from tallygate.metering.rowcodec import clip_error, wall_ms
from tallygate.sinks.base import BatchResult, Sink

logger = logging.getLogger("tallygate.delivery")

DAY_S = 86_400.0
LEASE_ENV = "TALLYGATE_OUTBOX_LEASE_S"
DEFAULT_LEASE_S = 60.0


def default_lease_s(environ: Mapping[str, str] | None = None) -> float:
    """The claim lease: ``$TALLYGATE_OUTBOX_LEASE_S`` seconds, else 60.

    It is how long the rows of a worker that died mid-send (kill -9, OOM) wait before
    another worker, or the restarted process, takes them again.
    """
    raw = ((os.environ if environ is None else environ).get(LEASE_ENV) or "").strip()
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{LEASE_ENV} must be a number of seconds, got {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{LEASE_ENV} must be a positive number of seconds, got {raw!r}")
    return value


@dataclass(slots=True)
class SinkCounters:
    """What one sink's deliveries did since start; read by metrics and readiness."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    batches: int = 0
    send_failures: int = 0          # sends that raised or timed out (sink bugs, hangs)
    consecutive_failures: int = 0   # batches in a row that delivered nothing
    last_error: str | None = None
    last_error_at_ms: int | None = None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class SinkStatus:
    name: str
    counters: SinkCounters
    paused: bool
    degraded: bool
    outbox: OutboxStats | None      # None when the outbox could not be read


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    running: bool
    sinks: dict[str, SinkStatus]

    @property
    def paused(self) -> bool:
        return any(s.paused for s in self.sinks.values())

    @property
    def degraded(self) -> bool:
        return any(s.degraded for s in self.sinks.values())


@dataclass(slots=True)
class _Lane:
    """One sink's delivery state inside the worker."""

    sink: Sink
    batch_size: int
    counters: SinkCounters = field(default_factory=SinkCounters)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    unblock: asyncio.Event = field(default_factory=asyncio.Event)   # resume() ends a wait
    held: list[int] = field(default_factory=list)   # claimed, not yet marked
    blocked_until: float = 0.0                       # loop time; pause or backoff
    claims: int = 0                                  # claims begun
    idle_claim: int = 0                              # the last claim that found nothing
    idled: asyncio.Event = field(default_factory=asyncio.Event)
    # Set while a flush_sink() waits: a reader is waiting, so the lane skips its linger.
    flush_now: asyncio.Event = field(default_factory=asyncio.Event)
    flush_waiters: int = 0

    def note_error(self, error: str) -> None:
        self.counters.last_error = clip_error(error)
        self.counters.last_error_at_ms = wall_ms()


class DeliveryWorker:
    """Delivers outbox rows to ``sinks``; see the module doc for the guarantees.

    Call ``start()`` on the loop that should run it, ``notify()`` after each enqueue
    (from any thread), and ``await stop()`` on shutdown. The caller owns the outbox and
    the sinks: the worker neither opens nor closes them.
    """

    def __init__(self, outbox: Outbox, sinks: Sequence[Sink], *,
                 batch_size: int | None = None, lease_s: float | None = None,
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 60.0,
                 max_attempts: int | None = None, poll_interval_s: float = 1.0,
                 linger_s: float = 0.05,
                 pause_recheck_s: float = 30.0, send_timeout_s: float | None = None,
                 delivered_retention_s: float | None = 7 * DAY_S,
                 purge_interval_s: float = 600.0, rng: random.Random | None = None,
                 on_delivered: Callable[[str, Sequence[UsageEvent]], None] | None = None
                 ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 or None")
        if lease_s is None:
            lease_s = default_lease_s()
        # A send must end well inside its lease, or another worker may take the rows
        # while they are still being sent.
        self.send_timeout_s = send_timeout_s if send_timeout_s is not None else lease_s / 2
        if self.send_timeout_s >= lease_s:
            raise ValueError("send_timeout_s must be shorter than lease_s")
        self.outbox = outbox
        self.lease_s = lease_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.max_attempts = max_attempts
        self.poll_interval_s = poll_interval_s
        self.linger_s = linger_s
        self.pause_recheck_s = pause_recheck_s
        self.delivered_retention_s = delivered_retention_s
        self.purge_interval_s = purge_interval_s
        self._rng = rng or random.Random()
        # Told of each batch's delivered events (the delivery-lag metric); never raises.
        self._on_delivered = on_delivered
        self._sinks = list(sinks)
        self._batch_size = batch_size
        self._lanes: dict[str, _Lane] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._notify_scheduled = False
        self._stop: asyncio.Event | None = None
        self._drain_deadline: float | None = None

    # -- control -----------------------------------------------------------------

    def start(self) -> None:
        """Start one task per sink on the running loop."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        self._drain_deadline = None
        for sink in self._sinks:
            size = self._batch_size or sink.max_batch
            lane = self._lanes.get(sink.name) or _Lane(sink, max(1, min(size, sink.max_batch)))
            lane.wake = asyncio.Event()
            lane.unblock = asyncio.Event()
            lane.wake.set()  # look at the outbox at once: rows may be left from a last run
            self._lanes[sink.name] = lane
            self._tasks.append(asyncio.create_task(
                self._run_lane(lane), name=f"tallygate-delivery-{sink.name}"))
        if self.delivered_retention_s is not None:
            self._tasks.append(asyncio.create_task(self._purge_loop(),
                                                   name="tallygate-outbox-purge"))

    def notify(self) -> None:
        """Wake the sink tasks now. Cheap, and safe to call from any thread."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake_all()
            return
        if self._notify_scheduled:
            return  # a wake-up is already on its way
        self._notify_scheduled = True
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # the loop is closed: nothing left to wake
            self._notify_scheduled = False

    def _wake_all(self) -> None:
        self._notify_scheduled = False
        for lane in self._lanes.values():
            lane.wake.set()

    def resume(self, sink: str | None = None) -> None:
        """End a pause or backoff now (after an operator fixed the sink's key, say)."""
        for lane in self._lanes.values():
            if sink is None or lane.sink.name == sink:
                lane.blocked_until = 0.0
                lane.counters.paused = False
                lane.unblock.set()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Deliver what is due for up to ``drain_timeout_s``, then stop.

        Rows not sent stay pending for the next start; rows claimed but not finished
        are released at once rather than left for their lease to run out.
        """
        if not self._tasks or self._stop is None or self._loop is None:
            return
        self._drain_deadline = self._loop.time() + drain_timeout_s
        self._stop.set()
        _, unfinished = await asyncio.wait(self._tasks, timeout=drain_timeout_s)
        for task in unfinished:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.error("delivery task ended with an error", exc_info=result)
        self._tasks = []
        for lane in self._lanes.values():
            if lane.held:
                held, lane.held = lane.held, []
                try:
                    await self.outbox.release(held)
                except Exception:
                    logger.exception("could not release %d rows of sink %s; they come back "
                                     "when their lease runs out", len(held), lane.sink.name)
        self._loop = None
        self._loop_thread = None

    async def flush_sink(self, sink: str, timeout_s: float = 5.0) -> bool:
        """Wait until ``sink`` has delivered every row due when this was called (a claim
        begun after the call found nothing); False when it did not in ``timeout_s``
        (paused, backing off, or rows another process holds)."""
        lane = self._lanes.get(sink)
        if lane is None or not self._tasks or self._loop is None:
            return False
        target = lane.claims + 1
        deadline = self._loop.time() + timeout_s
        lane.flush_waiters += 1
        lane.flush_now.set()
        try:
            while lane.idle_claim < target:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return False
                lane.idled.clear()
                lane.wake.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lane.idled.wait(), remaining)
            return True
        finally:
            lane.flush_waiters -= 1
            if not lane.flush_waiters:
                lane.flush_now.clear()

    # -- state -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def sink_counters(self) -> dict[str, SinkCounters]:
        return {name: lane.counters for name, lane in self._lanes.items()}

    @property
    def paused(self) -> bool:
        return any(lane.counters.paused for lane in self._lanes.values())

    @property
    def degraded(self) -> bool:
        return any(lane.counters.paused or lane.counters.consecutive_failures > 0
                   for lane in self._lanes.values())

    async def status(self) -> WorkerStatus:
        sinks: dict[str, SinkStatus] = {}
        for sink in self._sinks:
            lane = self._lanes.get(sink.name)
            counters = lane.counters if lane is not None else SinkCounters()
            stats: OutboxStats | None
            try:
                stats = await self.outbox.stats(sink.name)
            except Exception as exc:
                logger.warning("outbox stats failed for sink %s: %r", sink.name, exc)
                stats = None
            sinks[sink.name] = SinkStatus(
                name=sink.name, counters=counters, paused=counters.paused,
                degraded=counters.paused or counters.consecutive_failures > 0,
                outbox=stats)
        return WorkerStatus(running=self.running, sinks=sinks)

    # -- the loop of one sink ------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    async def _run_lane(self, lane: _Lane) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            wait = lane.blocked_until - self._now()
            if wait > 0:  # paused or backing off: notify() does not cut this short
                lane.unblock.clear()
                await _wait_any(self._stop, lane.unblock, timeout=wait)
                continue
            lane.wake.clear()
            try:
                claimed = await self._deliver_batch(lane)
            except Exception as exc:
                lane.note_error(f"outbox error: {exc!r}")
                logger.exception("outbox call failed for sink %s; retrying in %.1fs",
                                 lane.sink.name, self.poll_interval_s)
                await _wait_any(self._stop, timeout=self.poll_interval_s)
                continue
            if claimed == 0:
                await _wait_any(self._stop, lane.wake, timeout=self.poll_interval_s)
                woken = lane.wake.is_set()
            else:
                woken = claimed < lane.batch_size
            if woken and self.linger_s > 0:
                # Let a batch build up: under load one send carries many events, and a
                # lone call does not cost a claim, a send and a mark of its own at once.
                # Not while a reader waits in flush_sink (a dashboard page, say).
                await _wait_any(self._stop, lane.flush_now, timeout=self.linger_s)
        await self._drain_lane(lane)

    async def _drain_lane(self, lane: _Lane) -> None:
        """On stop: keep delivering until nothing is left, time is up or the sink fails.

        A drain is a flush: it also sends rows still waiting out a retry delay (set by
        an earlier process, say), unless this sink is paused or failing right now.
        """
        while (self._drain_deadline is not None and self._now() < self._drain_deadline
               and lane.blocked_until <= self._now()):
            try:
                if await self._deliver_batch(lane, flush=True) == 0:
                    return
            except Exception:
                logger.exception("outbox call failed while draining sink %s", lane.sink.name)
                return

    async def _deliver_batch(self, lane: _Lane, *, flush: bool = False) -> int:
        """Claim, send and settle one batch; returns how many rows were claimed."""
        lane.claims += 1
        claim = lane.claims
        rows = await self.outbox.claim(lane.sink.name, lane.batch_size, self.lease_s,
                                       ignore_backoff=flush)
        if not rows:
            lane.idle_claim = claim
            lane.idled.set()
            return 0
        lane.held = [r.id for r in rows]
        result = await self._send(lane, rows)
        await self._settle(lane, rows, result)
        lane.held = []
        return len(rows)

    async def _send(self, lane: _Lane, rows: list[OutboxRow]) -> BatchResult:
        events = [r.event for r in rows]
        name = lane.sink.name
        try:
            return await asyncio.wait_for(lane.sink.send(events), self.send_timeout_s)
        except TimeoutError:
            lane.counters.send_failures += 1
            logger.warning("sink %s did not answer in %.1fs; will retry call ids %s",
                           name, self.send_timeout_s, [e.call_id for e in events])
            return BatchResult.all_retry(events, f"send timed out after {self.send_timeout_s}s")
        except Exception as exc:
            # A sink must report failures in its BatchResult; raising is a bug in it.
            lane.counters.send_failures += 1
            logger.exception("sink %s raised; will retry call ids %s",
                             name, [e.call_id for e in events])
            return BatchResult.all_retry(events, f"sink raised {type(exc).__name__}: {exc}")

    async def _settle(self, lane: _Lane, rows: list[OutboxRow], result: BatchResult) -> None:
        """Write the fate of each row of the batch back to the outbox."""
        by_call = {r.event.call_id: r for r in rows}
        seen: set[str] = set()
        delivered: list[int] = []
        dead: dict[int, str] = {}
        retry: list[OutboxRow] = []
        for call_id in result.delivered:
            if call_id in by_call and call_id not in seen:
                seen.add(call_id)
                delivered.append(by_call[call_id].id)
        for call_id, reason in result.dead.items():
            if call_id in by_call and call_id not in seen:
                seen.add(call_id)
                dead[by_call[call_id].id] = reason
        for call_id in result.retry:
            if call_id in by_call and call_id not in seen:
                seen.add(call_id)
                retry.append(by_call[call_id])
        unreported = [r for r in rows if r.event.call_id not in seen]
        if unreported:
            logger.warning("sink %s did not report call ids %s; they will be retried",
                           lane.sink.name, [r.event.call_id for r in unreported])
            retry += unreported
        error = result.error or ("sink did not report the event" if unreported else None)
        if error:
            lane.note_error(error)

        c = lane.counters
        await self.outbox.mark_delivered(delivered)
        c.delivered += len(delivered)
        if delivered and self._on_delivered is not None:
            done = set(delivered)
            try:
                self._on_delivered(lane.sink.name, [r.event for r in rows if r.id in done])
            except Exception:
                logger.exception("the delivered-events hook of sink %s failed", lane.sink.name)
        c.batches += 1
        if dead:
            for row_id, reason in dead.items():
                logger.warning("sink %s rejected row %d for good: %s",
                               lane.sink.name, row_id, reason)
            await self.outbox.mark_dead(dead)
            c.dead += len(dead)
        if result.paused:
            await self._pause(lane, retry, error)
            return
        delay = await self._retry(lane, retry, error or "retry", result.retry_after)
        if delivered:
            c.consecutive_failures = 0
            c.paused = False
        elif delay is not None:
            # The sink failed the whole batch; do not hammer it with the next one.
            c.consecutive_failures += 1
            lane.blocked_until = self._now() + delay

    async def _pause(self, lane: _Lane, rows: list[OutboxRow], error: str | None) -> None:
        """The sink needs an operator: give the rows back uncounted, ask again later."""
        await self.outbox.release([r.id for r in rows])
        if not lane.counters.paused:
            logger.error("sink %s paused: %s; nothing is dropped, rechecking every %.0fs",
                         lane.sink.name, error or "no reason given", self.pause_recheck_s)
        lane.counters.paused = True
        lane.counters.consecutive_failures += 1
        lane.blocked_until = self._now() + self.pause_recheck_s

    async def _retry(self, lane: _Lane, rows: list[OutboxRow], error: str,
                     retry_after: float | None) -> float | None:
        """Put rows back with a delay (or dead-letter them past max_attempts).

        Returns the delay, or None when no row was put back.
        """
        limit = self.max_attempts
        give_up = {r.id: r for r in rows if limit is not None and r.attempts >= limit}
        again = [r for r in rows if r.id not in give_up]
        if give_up:
            logger.warning("sink %s: giving up on call ids %s after %d attempts: %s",
                           lane.sink.name, [r.event.call_id for r in give_up.values()],
                           limit, error)
            await self.outbox.mark_dead(
                {r.id: f"gave up after {r.attempts} attempts: {error}"
                 for r in give_up.values()})
            lane.counters.dead += len(give_up)
        if not again:
            return None
        # One delay for the whole batch keeps it together for the next send.
        if retry_after is not None:
            delay = max(0.0, retry_after)
        else:
            delay = full_jitter(max(r.attempts for r in again), self.backoff_base_s,
                                self.backoff_cap_s, self._rng)
        await self.outbox.mark_retry([r.id for r in again], error, delay)
        lane.counters.retried += len(again)
        logger.info("sink %s: %d events to retry in %.2fs: %s",
                    lane.sink.name, len(again), delay, error)
        return delay

    async def _purge_loop(self) -> None:
        assert self._stop is not None and self.delivered_retention_s is not None
        while not await _wait_any(self._stop, timeout=self.purge_interval_s):
            try:
                purged = await self.outbox.purge_delivered(
                    wall_ms() - int(self.delivered_retention_s * 1000))
            except Exception:
                logger.exception("purging delivered outbox rows failed")
                continue
            if purged:
                logger.info("purged %d delivered outbox rows", purged)


async def _wait_any(*events: asyncio.Event, timeout: float) -> bool:
    """Wait until one of ``events`` is set or ``timeout`` passes; True if one was set."""
    if any(e.is_set() for e in events):
        return True
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
    return bool(done)
