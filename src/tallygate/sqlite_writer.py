"""One writer thread per SQLite file in a process.

Every write to a file (outbox inserts, claims and marks, budget reservations and
settlements) runs on that file's one thread: writes of one process never wait on each
other's lock (only other processes' writes can make them wait, on the busy timeout),
and the event loop never blocks on a statement (sqlite3 releases the GIL while one
runs). Users ``acquire`` the thread when they open and ``release`` it when they close;
the last one out stops it. A forked worker gets threads of its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_writers: dict[tuple[int, str], tuple[ThreadPoolExecutor, int]] = {}


def _key(path: str) -> tuple[int, str]:
    return os.getpid(), os.path.realpath(path)


def acquire(path: str) -> ThreadPoolExecutor:
    """The writer thread of ``path`` (started on first use); pair with ``release``."""
    key = _key(path)
    with _lock:
        executor, users = _writers.get(key, (None, 0))
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tallygate-writer")
        _writers[key] = (executor, users + 1)
        return executor


def release(path: str) -> None:
    key = _key(path)
    with _lock:
        executor, users = _writers.get(key, (None, 0))
        if executor is None:
            return
        if users > 1:
            _writers[key] = (executor, users - 1)
            return
        del _writers[key]
    executor.shutdown(wait=False)  # it finishes what is queued, then ends


async def run(executor: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on the writer thread, awaited from the loop."""
    return await asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(fn, *args))
