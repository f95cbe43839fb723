"""The access tables' database: the outbox's own SQLite file or PostgreSQL database.

SQL is written once with ``?`` placeholders; the Postgres backend renumbers them to
``$1, $2, ...``. Postgres connections set ``search_path`` to the outbox's schema
(``tallygate`` unless the URL says ``?schema=name``), so table names are the same in
both. SQLite reads run on the caller's thread with its own connection (WAL, like the
outbox: a read never waits on a writer); the hot-path writes (reserve, settle, with a
hand-written statement per dialect in ``budgets.py``) run through ``write``: on the
file's one writer thread (``tallygate.sqlite_writer``), off the event loop, except an
urgent one (a call waits on it) that finds the file free, which runs where it is.

Migrations are forward-only and recorded in ``tallygate_access_schema_version``,
separate from the outbox's ``schema_version``. Other tables that live in this database
(the Responses API's stored responses) bring their own steps and version table to
``Database.migrate``.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tallygate import sqlite_writer
from tallygate.access import spend_rollup
from tallygate.errors import ConfigError
from tallygate.sqlite_connect import connect

T = TypeVar("T")
Dialect = Literal["sqlite", "postgres"]
Row = dict[str, Any]

VERSION_TABLE = "tallygate_access_schema_version"
BUSY_TIMEOUT_S = 10.0
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_LOCK_KEY = "tallygate.access.migrate"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


Steps = tuple[tuple[int, tuple[str, ...]], ...]  # (version, statements), ascending


def _migrations(d: Dialect) -> Steps:
    big = "INTEGER" if d == "sqlite" else "bigint"
    ledger_id = ("INTEGER PRIMARY KEY AUTOINCREMENT" if d == "sqlite"
                 else "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
    return (
        (1, (
            f"""CREATE TABLE access_keys (
                token TEXT PRIMARY KEY,
                key_alias TEXT,
                key_name TEXT NOT NULL,
                user_id TEXT, team_id TEXT, customer_id TEXT,
                models TEXT NOT NULL DEFAULT '[]',
                rpm_limit {big}, tpm_limit {big},
                expires_at_ms {big},
                metadata TEXT NOT NULL DEFAULT '{{}}',
                blocked INTEGER NOT NULL DEFAULT 0,
                created_at_ms {big} NOT NULL, updated_at_ms {big} NOT NULL)""",
            "CREATE UNIQUE INDEX access_keys_alias ON access_keys (key_alias)",
            "CREATE INDEX access_keys_user ON access_keys (user_id)",
            "CREATE INDEX access_keys_team ON access_keys (team_id)",
            f"""CREATE TABLE access_teams (
                team_id TEXT PRIMARY KEY, team_alias TEXT,
                models TEXT NOT NULL DEFAULT '[]',
                rpm_limit {big}, tpm_limit {big},
                metadata TEXT NOT NULL DEFAULT '{{}}',
                blocked INTEGER NOT NULL DEFAULT 0,
                created_at_ms {big} NOT NULL, updated_at_ms {big} NOT NULL)""",
            f"""CREATE TABLE access_customers (
                customer_id TEXT PRIMARY KEY, alias TEXT,
                external_subscription_id TEXT,
                metadata TEXT NOT NULL DEFAULT '{{}}',
                blocked INTEGER NOT NULL DEFAULT 0,
                created_at_ms {big} NOT NULL, updated_at_ms {big} NOT NULL)""",
            # One row per budgeted thing: scope is key | team | customer; money in
            # integer micro-USD; reset_at_ms is when spend next goes back to zero.
            f"""CREATE TABLE access_budgets (
                scope TEXT NOT NULL, id TEXT NOT NULL,
                max_micros {big}, duration_s {big},
                spend_micros {big} NOT NULL DEFAULT 0,
                reserved_micros {big} NOT NULL DEFAULT 0,
                reset_at_ms {big},
                PRIMARY KEY (scope, id))""",
            f"""CREATE TABLE access_reservations (
                call_id TEXT PRIMARY KEY,
                scopes TEXT NOT NULL,
                amount_micros {big} NOT NULL,
                created_at_ms {big} NOT NULL)""",
            f"""CREATE TABLE access_ledger (
                seq {ledger_id},
                call_id TEXT NOT NULL UNIQUE,
                ts_ms {big} NOT NULL,
                key_token TEXT, key_alias TEXT,
                user_id TEXT, team_id TEXT, customer_id TEXT,
                billed_to TEXT, end_user TEXT,
                model TEXT NOT NULL, provider TEXT NOT NULL, provider_model TEXT NOT NULL,
                kind TEXT NOT NULL,
                input_tokens {big} NOT NULL, cache_read_tokens {big} NOT NULL,
                cache_write_tokens {big} NOT NULL, output_tokens {big} NOT NULL,
                cost TEXT,
                status TEXT NOT NULL,
                flags TEXT NOT NULL DEFAULT '')""",
            "CREATE INDEX access_ledger_ts ON access_ledger (ts_ms)",
            "CREATE INDEX access_ledger_customer ON access_ledger (customer_id, ts_ms)",
            "CREATE INDEX access_ledger_key ON access_ledger (key_token, ts_ms)",
            "CREATE INDEX access_ledger_status ON access_ledger (status, ts_ms)",
        )),
        # A held (unattributed) call keeps its whole UsageEvent (JSON) in its ledger
        # row, so that `tallygate outbox assign` can bill it later.
        (2, ("ALTER TABLE access_ledger ADD COLUMN event TEXT",)),
        # The daily spend rollup the dashboard reads, kept by triggers (spend_rollup.py).
        (3, spend_rollup.migration(d)),
        # The dashboard's calls list filtered by model group, newest first (ui/calls.py).
        (4, ("CREATE INDEX access_ledger_model ON access_ledger (model, ts_ms)",)),
        # The hourly spend rollup beside the daily one (today per hour, two-day ranges).
        (5, spend_rollup.migration_hourly(d)),
    )


class Database:
    """What the access store needs from either backend."""

    dialect: Dialect
    label: str

    async def open(self, *, migrate: bool = True) -> None:
        """Connect; ``migrate=False`` only reads what is there (a status command)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def migrate(self, version_table: str, steps: Steps) -> None:
        """Apply the ``steps`` newer than ``version_table`` records, forward only, in one
        transaction (under an advisory lock on PostgreSQL: gateways may start together)."""
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None


# --- SQLite ---------------------------------------------------------------------------


class SQLiteDatabase(Database):
    dialect: Dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.label = str(Path(path))
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._writer: sqlite_writer.Writer | None = None
        # Urgent writes run on the caller's thread (the event loop) when no write holds
        # the file; the forked workers of --workers N turn it off.
        self.write_on_caller = True
        self._caller_writes = sqlite_writer.CallerWrites(path)

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("access database is closed")
            conn = connect(self.path, BUSY_TIMEOUT_S)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` under BEGIN IMMEDIATE (the write lock first), commit or roll back."""
        return _in_transaction(self.conn(), fn)

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, urgent: bool = False) -> T:
        """``transaction(fn)`` on the file's writer thread, awaited from the loop;
        ``urgent``: a call waits on it to answer (see ``tallygate.sqlite_writer``), and
        it runs right here instead when nothing holds the file."""
        if urgent and self.write_on_caller:
            try:
                return self._caller_writes.run(lambda conn: _in_transaction(conn, fn))
            except sqlite_writer.FileBusy:
                pass
        if self._writer is None:
            self._writer = sqlite_writer.acquire(self.path)
        return await sqlite_writer.run(self._writer, self.transaction, fn, urgent=urgent)

    async def open(self, *, migrate: bool = True) -> None:
        if migrate:
            await self.migrate(VERSION_TABLE, _migrations("sqlite"))

    async def migrate(self, version_table: str, steps: Steps) -> None:
        self.transaction(lambda conn: _migrate_sqlite(conn, self.label, version_table, steps))

    async def close(self) -> None:
        self._closed = True
        self._caller_writes.close()
        if self._writer is not None:
            self._writer = None
            sqlite_writer.release(self.path)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    async def execute(self, sql: str, *args: Any) -> int:
        return self.conn().execute(sql, args).rowcount

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cur = self.conn().execute(sql, args)
        names = [c[0] for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` under BEGIN IMMEDIATE on ``conn``: commit after it, roll back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if conn.in_transaction:  # ``fn`` may have rolled back itself
        conn.execute("COMMIT")
    return result


def _migrate_sqlite(conn: sqlite3.Connection, label: str, version_table: str,
                    steps: Steps) -> None:
    conn.execute(f"""CREATE TABLE IF NOT EXISTS {version_table} (
        version INTEGER PRIMARY KEY, applied_at_ms INTEGER NOT NULL)""")
    current = conn.execute(f"SELECT max(version) FROM {version_table}").fetchone()[0] or 0
    if current > steps[-1][0]:
        raise ConfigError(f"tables of {version_table} in {label} are at version {current}, "
                          f"newer than this tallygate knows ({steps[-1][0]}); upgrade tallygate")
    for version, statements in steps:
        if version > current:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"INSERT INTO {version_table} VALUES (?, ?)", (version, wall_ms()))


# --- PostgreSQL -------------------------------------------------------------------------

_QMARK = re.compile(r"\?")


def to_dollar(sql: str) -> str:
    counter = iter(range(1, 10_000))
    return _QMARK.sub(lambda _: f"${next(counter)}", sql)


class PostgresDatabase(Database):
    dialect: Dialect = "postgres"

    def __init__(self, dsn: str, schema: str = "tallygate", pool_max_size: int = 10) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
        self.dsn = dsn
        self.schema = schema
        self.label = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
        self._pool_max_size = pool_max_size
        self.pool: Any = None
        self._sql_cache: dict[str, str] = {}

    async def open(self, *, migrate: bool = True) -> None:
        import asyncpg

        if self.pool is not None:
            return
        if not migrate:
            self.pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=2, server_settings={"search_path": self.schema})
            return
        # The schema may not exist yet: create it on a plain connection first.
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                   f"{_MIGRATION_LOCK_KEY}:{self.schema}")
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
                await self._migrate(conn, VERSION_TABLE, _migrations("postgres"))
        finally:
            await conn.close()
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self._pool_max_size,
            server_settings={"search_path": self.schema})

    async def _migrate(self, conn: Any, version_table: str, steps: Steps) -> None:
        await conn.execute(f"""CREATE TABLE IF NOT EXISTS {version_table} (
            version integer PRIMARY KEY, applied_at_ms bigint NOT NULL)""")
        current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {version_table}")
        if current > steps[-1][0]:
            raise ConfigError(f"tables of {version_table} in schema {self.schema} are at "
                              f"version {current}, newer than this tallygate knows "
                              f"({steps[-1][0]})")
        for version, statements in steps:
            if version > current:
                for statement in statements:
                    await conn.execute(statement)
                await conn.execute(f"INSERT INTO {version_table} VALUES ($1, $2)",
                                   version, wall_ms())

    async def migrate(self, version_table: str, steps: Steps) -> None:
        assert self.pool is not None, "open() the database first"
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"{version_table}:{self.schema}")
            await self._migrate(conn, version_table, steps)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    def sql(self, text: str) -> str:
        out = self._sql_cache.get(text)
        if out is None:
            out = self._sql_cache[text] = to_dollar(text)
        return out

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.pool.execute(self.sql(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self.pool.fetch(self.sql(sql), *args)]


def database_for(url_or_path: str | Path) -> Database:
    """The access database beside the outbox that ``url_or_path`` names (same rules as
    the outbox: postgresql://...?schema=name, sqlite:///path or a plain path)."""
    text = str(url_or_path)
    if text.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schemas = [v for k, v in query if k == "schema"]
        dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query
                                                         if k != "schema"])))
        return PostgresDatabase(dsn, schemas[-1]) if schemas else PostgresDatabase(dsn)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    elif "://" in text:
        raise ConfigError(f"unsupported database URL scheme {text.split('://', 1)[0]!r}")
    if not text or text == ":memory:":
        raise ConfigError(f"the access tables need a file path, got {text!r}")
    return SQLiteDatabase(text)


def placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)
