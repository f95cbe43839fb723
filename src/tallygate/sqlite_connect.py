"""Opening the shared SQLite file: WAL mode, normal sync, a busy timeout.

Several processes (proxy workers, CLI commands) open one file at once. Switching a new
file to WAL needs a moment of exclusive access and SQLite answers "database is locked"
at once, without waiting on the busy timeout, when another process holds it: retry.
"""

from __future__ import annotations

import sqlite3
import time

WAL_SWITCH_TRIES = 100


def connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                           # only so that close() may close every thread's connection;
                           # each one is still used by its own thread only
                           check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        for attempt in range(WAL_SWITCH_TRIES):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == WAL_SWITCH_TRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        # NORMAL in WAL mode: a commit survives the process being killed (kill -9);
        # only an OS crash or power loss can take the last commits.
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn
