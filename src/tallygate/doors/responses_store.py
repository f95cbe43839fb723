"""Stored responses: what ``previous_response_id``, ``GET /v1/responses/{id}`` and its
``input_items`` read, kept in the gateway's own database (the SQLite file or the
PostgreSQL schema of the outbox and access tables), so that every gateway sharing it
sees them and a follow-up works whichever provider the model group routes it to.

A row belongs to the credential that made it (``owner``: a virtual key's hash, or the
master key, or the open proxy) and to its payer (``customer``): anyone else gets a 404,
never its content. Rows expire (``general_settings.responses_retention_period``,
30 days by default): an expired row is not found, and a sweep deletes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.access.db import Database, Steps, wall_ms
from tallygate.providers.base import Deployment

log = logging.getLogger("tallygate.proxy")

VERSION_TABLE = "tallygate_responses_schema_version"
SWEEP_INTERVAL_S = 3600.0
MAX_CHAIN = 1000  # previous_response_id links followed at most


def _migrations(dialect: str) -> Steps:
    big = "INTEGER" if dialect == "sqlite" else "bigint"
    return (
        (1, (
            f"""CREATE TABLE stored_responses (
                id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                customer TEXT,
                model TEXT NOT NULL,
                upstream TEXT,
                previous_id TEXT,
                input_items TEXT NOT NULL,
                response TEXT NOT NULL,
                created_at_ms {big} NOT NULL,
                expires_at_ms {big} NOT NULL)""",
            "CREATE INDEX stored_responses_expiry ON stored_responses (expires_at_ms)",
        )),
    )


def upstream_of(deployment: Deployment) -> str:
    """Where a natively answered response lives: the same account at the same API base
    (a fingerprint; the key itself is never stored)."""
    raw = f"{deployment.provider}|{deployment.api_base or ''}|{deployment.api_key or ''}"
    return deployment.provider + ":" + hashlib.sha256(raw.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str
    customer: str | None
    model: str
    #: ``upstream_of`` the deployment that stored it too (native and store), else None
    upstream: str | None
    previous_id: str | None
    input_items: list[dict[str, Any]]
    response: dict[str, Any]

    def conversation(self) -> list[dict[str, Any]]:
        """Its input items and then its output items."""
        output = self.response.get("output")
        return [*self.input_items, *(output if isinstance(output, list) else ())]


_COLUMNS = ("id, owner, customer, model, upstream, previous_id, input_items, response, "
            "created_at_ms, expires_at_ms")


def _record(row: Mapping[str, Any]) -> StoredResponse:
    return StoredResponse(id=row["id"], owner=row["owner"], customer=row["customer"],
                          model=row["model"], upstream=row["upstream"],
                          previous_id=row["previous_id"],
                          input_items=orjson.loads(row["input_items"]),
                          response=orjson.loads(row["response"]))


class ResponseStore:
    def __init__(self, retention_s: float) -> None:
        self.retention_ms = int(retention_s * 1000)
        self.db: Database | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def open(self, db: Database) -> None:
        await db.migrate(VERSION_TABLE, _migrations(db.dialect))
        self.db = db
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_forever(),
                                            name="tallygate-responses-sweep")

    async def close(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.db = None

    def _db(self) -> Database:
        assert self.db is not None, "response store not open"
        return self.db

    async def save(self, record: StoredResponse) -> None:
        now = wall_ms()
        await self._db().execute(
            f"""INSERT INTO stored_responses ({_COLUMNS})
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,
                    customer = excluded.customer, model = excluded.model,
                    upstream = excluded.upstream, previous_id = excluded.previous_id,
                    input_items = excluded.input_items, response = excluded.response,
                    created_at_ms = excluded.created_at_ms,
                    expires_at_ms = excluded.expires_at_ms""",
            record.id, record.owner, record.customer, record.model, record.upstream,
            record.previous_id, orjson.dumps(record.input_items).decode(),
            orjson.dumps(record.response).decode(), now, now + self.retention_ms)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The response if ``owner`` made it and it has not expired, else None."""
        row = await self._db().fetchone(
            f"SELECT {_COLUMNS} FROM stored_responses WHERE id = ? AND owner = ? "
            "AND expires_at_ms > ?", response_id, owner, wall_ms())
        return _record(row) if row is not None else None

    async def chain(self, response_id: str, owner: str,
                    customer: str | None) -> list[StoredResponse] | None:
        """The conversation up to ``response_id``, oldest first; None when that response
        is not this owner's and payer's (or is gone). Links that expired end the chain."""
        out: list[StoredResponse] = []
        next_id: str | None = response_id
        while next_id is not None and len(out) < MAX_CHAIN:
            record = await self.get(next_id, owner)
            if record is None or record.customer != customer:
                if not out:
                    return None
                break
            out.append(record)
            next_id = record.previous_id
        out.reverse()
        return out

    async def delete(self, response_id: str, owner: str) -> bool:
        count = await self._db().execute(
            "DELETE FROM stored_responses WHERE id = ? AND owner = ? AND expires_at_ms > ?",
            response_id, owner, wall_ms())
        return count > 0

    async def sweep(self) -> int:
        count = await self._db().execute(
            "DELETE FROM stored_responses WHERE expires_at_ms <= ?", wall_ms())
        if count:
            log.info("deleted %d expired stored response(s)", count)
        return count

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                log.exception("could not delete expired stored responses")
