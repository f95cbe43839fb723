"""Group commit: many concurrent callers, one write per turn of the event loop.

Each caller waits for its own item to be written; items that arrive while the loop is
busy with other handlers are written together, so under load one commit serves many
calls and a lone call pays for exactly one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCall(Generic[T, R]):
    """Runs ``run`` once for every item submitted in one loop turn; ``run`` returns one
    result per item, in order, and each caller gets its own."""

    def __init__(self, run: Callable[[Sequence[T]], Awaitable[Sequence[R]]], *,
                 linger_s: float = 0.0) -> None:
        """``linger_s`` > 0 waits that long for more items before running: for work
        nobody waits on (``call_nowait``), bigger batches for the same commit."""
        self._run_batch = run
        self._linger_s = linger_s
        self._pending: list[tuple[T, asyncio.Future[R] | None]] = []
        self._scheduled = False
        self._running: set[asyncio.Task[None]] = set()

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
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            if self._linger_s > 0:
                loop.call_later(self._linger_s, self._flush)
            else:
                # call_soon: let the other handlers that are ready this turn add theirs.
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for {len(batch)} items")
        except BaseException as exc:
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future is not None and not future.done():
                future.set_result(result)

    async def wait_idle(self) -> None:
        """Wait for the batches under way (shutdown)."""
        while self._pending or self._running:
            if self._pending:
                self._flush()  # do not wait out the linger
            await asyncio.gather(*self._running, return_exceptions=True)
            await asyncio.sleep(0)


class GroupCommitter(GroupCall[T, None]):
    """A GroupCall whose write has no per-item result."""

    def __init__(self, write: Callable[[Sequence[T]], Awaitable[None]], *,
                 linger_s: float = 0.0) -> None:
        async def run(items: Sequence[T]) -> Sequence[None]:
            await write(items)
            return [None] * len(items)

        super().__init__(run, linger_s=linger_s)

    async def submit(self, item: T) -> None:
        """Return once ``item`` is written (raise what the write raised)."""
        await self.call(item)

    def submit_nowait(self, item: T) -> None:
        self.call_nowait(item)
