"""Group commit: many concurrent callers, one write at a time.

Each caller waits for its own item to be written. One batch is written at a time: the
items that arrive while it is written (or while the loop is busy with other handlers)
are the next batch, so under load one commit serves many calls and a lone call pays for
exactly one, without waiting. (A batch per turn of the loop, several in flight, queued
on SQLite's one writer as batches of one or two; a commit costs about what the pages it
touches do, however many rows share them, so that was two to three times the CPU per
call.)

One bad item never fails the others: when a batch's write raises, each item is written
again alone and only those that fail alone fail (so ``run`` must be all-or-nothing for
a batch, as one transaction is). ``run`` may also fail a single item by returning an
exception as that item's result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger("tallygate.metering")

T = TypeVar("T")
R = TypeVar("R")


class GroupCall(Generic[T, R]):
    """Runs ``run`` once for every item submitted in one loop turn; ``run`` returns one
    result per item, in order, and each caller gets its own."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]],
                 *, linger_s: float = 0.0,
                 on_error: Callable[[T, BaseException], None] | None = None) -> None:
        """``linger_s`` > 0 waits that long for more items before running: for work
        nobody waits on (``call_nowait``), bigger batches for the same commit.
        ``on_error`` hears of a ``call_nowait`` item that could not be written."""
        self._run_batch = run
        self._linger_s = linger_s
        self._on_error = on_error
        self._pending: list[tuple[T, asyncio.Future[R] | None]] = []
        self._scheduled = False
        self._writing: asyncio.Task[None] | None = None  # the batch being written

    async def call(self, item: T) -> R:
        """Return ``item``'s result once the batch holding it is written (or raise what
        the write raised)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._add(item, future)
        return await future

    def call_nowait(self, item: T) -> None:
        """Queue ``item`` for the next batch and return at once; ``run`` reports its own
        failures (``wait_idle`` waits for it at shutdown)."""
        self._add(item, None)

    def _add(self, item: T, future: asyncio.Future[R] | None) -> None:
        self._pending.append((item, future))
        if not self._scheduled and self._writing is None:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._linger_s > 0:
                loop.call_later(self._linger_s, self._flush)
            else:
                # call_soon: let the other handlers that are ready this turn add theirs.
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._writing is not None:
            return  # the batch under way starts the next one when it is done
        batch, self._pending = self._pending, []
        if batch:
            self._writing = asyncio.get_running_loop().create_task(self._run(batch))
            self._writing.add_done_callback(self._batch_done)

    def _batch_done(self, _: asyncio.Task[None]) -> None:
        self._writing = None
        if self._pending and not self._scheduled:
            # What came meanwhile, at once: it has waited for a whole write already.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        results: list[R | BaseException]
        try:
            results = list(await self._write([item for item, _ in batch]))
        except Exception as exc:
            results = [exc] if len(batch) == 1 else await self._each_alone(batch)
        except BaseException as exc:  # cancelled: the callers hear of it, then it goes on
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
            raise
        for (item, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                if future is None:
                    self._report(item, result)
                elif not future.done():
                    future.set_exception(result)
            elif future is not None and not future.done():
                future.set_result(result)

    async def _each_alone(self, batch: list[tuple[T, asyncio.Future[R] | None]]
                          ) -> list[R | BaseException]:
        """One bad item must not fail the others: each is written again on its own."""
        results: list[R | BaseException] = []
        for item, _ in batch:
            try:
                results.extend(await self._write([item]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _write(self, items: Sequence[T]) -> Sequence[R | BaseException]:
        results = await self._run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"{len(results)} results for {len(items)} items")
        return results

    def _report(self, item: T, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(item, exc)
        else:
            log.error("a queued write failed: %s", exc, exc_info=exc)

    async def wait_idle(self) -> None:
        """Wait for the batches under way (shutdown)."""
        while self._pending or self._writing is not None:
            if self._pending:
                self._flush()  # do not wait out the linger
            if self._writing is not None:
                await asyncio.gather(self._writing, return_exceptions=True)
            await asyncio.sleep(0)


class GroupCommitter(GroupCall[T, None]):
    """A GroupCall whose write has no per-item result."""

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[None]], *,
                 linger_s: float = 0.0,
                 on_error: Callable[[T, BaseException], None] | None = None) -> None:
        async def run(items: Sequence[T]) -> Sequence[None]:
            await write(items)
            return [None] * len(items)

        super().__init__(run, linger_s=linger_s, on_error=on_error)

    async def submit(self, item: T) -> None:
        """Return once ``item`` is written (raise what the write raised)."""
        await self.call(item)

    def submit_nowait(self, item: T) -> None:
        self.call_nowait(item)

