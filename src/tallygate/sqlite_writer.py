"""One writer thread per SQLite file in a process, the request path's writes first.

Every write to a file (outbox inserts the loop cannot make at once, claims and marks,
budget reservations and settlements) runs on that file's one thread: writes of one
process never wait on each other's lock (only other processes' writes can make them
wait, on the busy timeout), and the event loop never waits on another write (sqlite3
releases the GIL while one runs). Users ``acquire`` the thread when they open and
``release`` it when they close; the last one out stops it. A forked worker gets threads
of its own.

Two queues: a caller waits on an ``urgent`` write (a call's outbox insert, its budget
reservation) before it answers, while nobody waits on background work (delivery's
claims and marks, ledger batches) but the outbox. When both wait, the thread takes them
in turn: an urgent write waits for at most one background write (they are kept small),
not for every one queued before it, and delivery keeps pace under any load.

Between processes (``--workers N``, CLI commands) the writer threads of one file take
turns through an ``flock`` on a lock file beside it, held for each write. SQLite's own
busy handler would also keep them apart, but it polls: a write that finds the file
locked sleeps 1 ms, then 2, 5, 10..., far longer than the write it waits for; the
kernel hands an flock on at once.

``CallerWrites``: a write a caller waits on may instead run on the caller's own thread
(the event loop) when that lock is free at once: a statement of tens of microseconds
costs less than the writer thread's two hops. Never waiting there, it gives way
(``FileBusy``) when any write holds the file.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from tallygate.sqlite_connect import connect

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

T = TypeVar("T")
LOCK_SUFFIX = "-writelock"

_Job = tuple[Callable[[], Any], "Future[Any]"]


class Writer:
    """The writer thread of one file: ``submit`` queues a write, urgent ones first."""

    def __init__(self, path: str | None = None, name: str = "tallygate-writer") -> None:
        """``path``: the database file, whose lock file orders this process's writes
        with other processes' (None, or a file that cannot have one: no lock)."""
        self._lock_fd = open_lock(path)
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
        try:
            while (job := self._next()) is not None:
                fn, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    with self._other_processes_out():
                        result = fn()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                del fn, future, job  # nothing of a done write stays alive in the thread
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)

    @contextlib.contextmanager
    def _other_processes_out(self) -> Iterator[None]:
        fd = self._lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


def try_lock(fd: int) -> bool:
    """Take the lock of ``fd`` (an ``open_lock`` of its own) if nobody holds it: this
    process's writer thread, or another process's."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def open_lock(path: str | None) -> int | None:
    """The lock file of the database at ``path`` (made when missing), or None for an
    in-memory database, a URI, no fcntl, or a folder where it cannot be made."""
    if fcntl is None or not path or path == ":memory:" or path.startswith("file:"):
        return None
    try:
        return os.open(path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None  # SQLite's busy timeout still keeps the writes apart


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
            writer = Writer(path)
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


class FileBusy(Exception):
    """A write holds the SQLite file: nothing was written on the caller's thread."""


class CallerWrites:
    """Writes to the file at ``path`` on the caller's thread, each under the writers'
    lock file tried without waiting, on a connection per calling thread that neither
    waits on SQLite's busy handler nor checkpoints (the background thread does)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._opened = False
        self._closed = False
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` here, or ``FileBusy`` with nothing written: the file is held (by
        this process's writer thread or another process), it has no lock file (in
        memory), or SQLite's own lock is held by a writer that takes no lock file (an
        older tallygate), which ``fn``'s first statement meets at once."""
        if not self._opened:
            self._opened = True
            self._fd = open_lock(self.path)
        fd = self._fd
        if fd is None or self._closed or not try_lock(fd):
            raise FileBusy
        try:
            return fn(self._conn())
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise FileBusy from None
            raise
        finally:
            unlock(fd)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, 0.0)
            conn.execute("PRAGMA wal_autocheckpoint=0")
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
