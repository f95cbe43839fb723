"""One writer thread per SQLite file in a process, the request path's writes first.

Every write to a file (outbox inserts, claims and marks, budget reservations and
settlements) runs on that file's one thread: writes of one process never wait on each
other's lock (only other processes' writes can make them wait, on the busy timeout),
and the event loop never blocks on a statement (sqlite3 releases the GIL while one
runs). Users ``acquire`` the thread when they open and ``release`` it when they close;
the last one out stops it. A forked worker gets threads of its own.

Two queues: a caller waits on an ``urgent`` write (a call's outbox insert, its budget
reservation) before it answers, while nobody waits on background work (delivery's
claims and marks, ledger batches) but the outbox. When both wait, the thread takes them
in turn: an urgent write waits for at most one background write (they are kept small),
not for every one queued before it, and delivery keeps pace under any load.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], "Future[Any]"]


class Writer:
    """The writer thread of one file: ``submit`` queues a write, urgent ones first."""

    def __init__(self, name: str = "tallygate-writer") -> None:
        self._urgent: collections.deque[_Job] = collections.deque()
        self._background: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._urgent_last = False  # the last write taken was urgent
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], *, urgent: bool) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the writer thread is shut down")
            queue = self._urgent if urgent else self._background
            queue.append((fn, future))
            self._ready.notify()
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Finish what is queued, then end the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _next(self) -> _Job | None:
        with self._ready:
            while not self._urgent and not self._background:
                if self._stopping:
                    return None
                self._ready.wait()
            self._urgent_last = bool(self._urgent) and not (
                self._background and self._urgent_last)
            return (self._urgent if self._urgent_last else self._background).popleft()

    def _run(self) -> None:
        while (job := self._next()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            del fn, future, job  # nothing of a done write stays alive in the thread


_lock = threading.Lock()
_writers: dict[tuple[int, str], tuple[Writer, int]] = {}


def _key(path: str) -> tuple[int, str]:
    return os.getpid(), os.path.realpath(path)


def acquire(path: str) -> Writer:
    """The writer thread of ``path`` (started on first use); pair with ``release``."""
    key = _key(path)
    with _lock:
        writer, users = _writers.get(key, (None, 0))
        if writer is None:
            writer = Writer()
        _writers[key] = (writer, users + 1)
        return writer


def release(path: str) -> None:
    key = _key(path)
    with _lock:
        writer, users = _writers.get(key, (None, 0))
        if writer is None:
            return
        if users > 1:
            _writers[key] = (writer, users - 1)
            return
        del _writers[key]
    writer.shutdown(wait=False)  # it finishes what is queued, then ends


@atexit.register
def _finish_at_exit() -> None:
    # The threads are daemons (an unreleased one must not hang the exit), so what is
    # queued is written here, before the interpreter stops them.
    with _lock:
        writers = [writer for writer, _ in _writers.values()]
    for writer in writers:
        writer.shutdown(wait=True)


async def run(writer: Writer, fn: Callable[..., T], *args: object,
              urgent: bool = False) -> T:
    """``fn(*args)`` on the writer thread, awaited from the loop. ``urgent``: a caller
    answers only after it (the request path); it goes before background work."""
    future = writer.submit(lambda: fn(*args), urgent=urgent)
    return await asyncio.wrap_future(future)
