"""Virtual keys, teams and customers: records, validation and the store with its cache.

A key is ``sk-tg-`` plus 256 random bits; only its SHA-256 (``token``) is stored. The
plain key is returned once, by ``/key/generate``. Lookups on the request path are
served from memory for ``cache_ttl_s`` seconds; this process drops its entry at once
when the key is updated or deleted here, other gateways within the TTL.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from tallygate.access.budgets import (
    from_micros,
    parse_duration_s,
    parse_usd,
    to_micros,
)
from tallygate.access.db import Database, placeholders, wall_ms
from tallygate.errors import BadRequestError, NotFoundError

KEY_PREFIX = "sk-tg-"
_TOKEN = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,200}$")


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token_of(key_or_token: str) -> str:
    """Admin routes take the plain key or its hash (as ``/key/list`` shows it)."""
    return key_or_token if _TOKEN.match(key_or_token) else hash_key(key_or_token)


def masked(key: str) -> str:
    return f"{key[:6]}...{key[-4:]}"


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def money(value: Decimal | None) -> Any:
    """A JSON number with the Decimal's exact digits (never through a float)."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return orjson.Fragment(text.encode())


@dataclass(frozen=True, slots=True)
class Budget:
    max_micros: int | None = None
    duration_s: int | None = None
    spend_micros: int = 0
    reserved_micros: int = 0
    reset_at_ms: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_micros is not None

    def as_json(self) -> dict[str, Any]:
        duration = None if self.duration_s is None else _duration_text(self.duration_s)
        return {"max_budget": money(from_micros(self.max_micros)),
                "budget_duration": duration,
                "spend": money(from_micros(self.spend_micros)),
                "budget_reset_at": iso(self.reset_at_ms)}


def _duration_text(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3600),
                       ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    token: str
    key_name: str
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    customer_id: str | None = None
    models: tuple[str, ...] = ()
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    expires_at_ms: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    blocked: bool = False
    created_at_ms: int = 0
    updated_at_ms: int = 0
    budget: Budget = Budget()

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def as_json(self) -> dict[str, Any]:
        return {"token": self.token, "key_name": self.key_name, "key_alias": self.key_alias,
                "user_id": self.user_id, "team_id": self.team_id,
                "customer_id": self.customer_id, "models": list(self.models),
                "rpm_limit": self.rpm_limit, "tpm_limit": self.tpm_limit,
                "expires": iso(self.expires_at_ms), "metadata": dict(self.metadata),
                "blocked": self.blocked, "created_at": iso(self.created_at_ms),
                "updated_at": iso(self.updated_at_ms), **self.budget.as_json()}


@dataclass(frozen=True, slots=True)
class TeamRecord:
    team_id: str
    team_alias: str | None = None
    models: tuple[str, ...] = ()
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    blocked: bool = False
    created_at_ms: int = 0
    budget: Budget = Budget()

    def as_json(self) -> dict[str, Any]:
        return {"team_id": self.team_id, "team_alias": self.team_alias,
                "models": list(self.models), "rpm_limit": self.rpm_limit,
                "tpm_limit": self.tpm_limit, "metadata": dict(self.metadata),
                "blocked": self.blocked, "created_at": iso(self.created_at_ms),
                **self.budget.as_json()}


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer_id: str
    alias: str | None = None
    external_subscription_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    blocked: bool = False
    created_at_ms: int = 0
    budget: Budget = Budget()

    def as_json(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "user_id": self.customer_id,
                "alias": self.alias,
                "external_subscription_id": self.external_subscription_id,
                "metadata": dict(self.metadata), "blocked": self.blocked,
                "created_at": iso(self.created_at_ms), **self.budget.as_json()}


# --- validation of admin bodies ----------------------------------------------------------


def _text(spec: Mapping[str, Any], name: str) -> str | None:
    value = spec.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{name} must be a string", param=name)
    return value


def _ident(spec: Mapping[str, Any], name: str) -> str | None:
    value = _text(spec, name)
    if value is not None and not _ID.match(value):
        raise BadRequestError(f"{name} may hold letters, digits and _.:@/+- only "
                              "(at most 200)", param=name)
    return value


def _count(spec: Mapping[str, Any], name: str) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(f"{name} must be a non-negative integer", param=name)
    return value


def _models(spec: Mapping[str, Any], name: str = "models") -> tuple[str, ...]:
    value = spec.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise BadRequestError(f"{name} must be a list of model names", param=name)
    return tuple(value)


def _metadata(spec: Mapping[str, Any]) -> dict[str, Any]:
    value = spec.get("metadata")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError("metadata must be an object", param="metadata")
    return value


def _bool(spec: Mapping[str, Any], name: str) -> bool:
    value = spec.get(name, False)
    if not isinstance(value, bool):
        raise BadRequestError(f"{name} must be true or false", param=name)
    return value


def _expires(spec: Mapping[str, Any], now: int) -> int | None:
    duration = spec.get("duration")
    if duration in (None, "", "permanent"):
        return None
    seconds = parse_duration_s(duration, "duration")
    return None if seconds is None else now + seconds * 1000


def _budget_args(spec: Mapping[str, Any]) -> tuple[int | None, int | None]:
    max_usd = parse_usd(spec.get("max_budget"), "max_budget")
    duration = parse_duration_s(spec.get("budget_duration"), "budget_duration")
    return (None if max_usd is None else to_micros(max_usd)), duration


# --- the store --------------------------------------------------------------------------

_KEY_COLS = ("token, key_alias, key_name, user_id, team_id, customer_id, models, rpm_limit, "
             "tpm_limit, expires_at_ms, metadata, blocked, created_at_ms, updated_at_ms")
_BUDGET_COLS = ("b.max_micros, b.duration_s, b.spend_micros, b.reserved_micros, "
                "b.reset_at_ms")


def _budget(row: Mapping[str, Any]) -> Budget:
    return Budget(row.get("max_micros"), row.get("duration_s"), row.get("spend_micros") or 0,
                  row.get("reserved_micros") or 0, row.get("reset_at_ms"))


def _key(row: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(
        token=row["token"], key_name=row["key_name"], key_alias=row["key_alias"],
        user_id=row["user_id"], team_id=row["team_id"], customer_id=row["customer_id"],
        models=tuple(orjson.loads(row["models"])), rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"], expires_at_ms=row["expires_at_ms"],
        metadata=orjson.loads(row["metadata"]), blocked=bool(row["blocked"]),
        created_at_ms=row["created_at_ms"], updated_at_ms=row["updated_at_ms"],
        budget=_budget(row))


def _team(row: Mapping[str, Any]) -> TeamRecord:
    return TeamRecord(
        team_id=row["team_id"], team_alias=row["team_alias"],
        models=tuple(orjson.loads(row["models"])), rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"], metadata=orjson.loads(row["metadata"]),
        blocked=bool(row["blocked"]), created_at_ms=row["created_at_ms"], budget=_budget(row))


def _customer(row: Mapping[str, Any]) -> CustomerRecord:
    return CustomerRecord(
        customer_id=row["customer_id"], alias=row["alias"],
        external_subscription_id=row["external_subscription_id"],
        metadata=orjson.loads(row["metadata"]), blocked=bool(row["blocked"]),
        created_at_ms=row["created_at_ms"], budget=_budget(row))


class _TTLCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, Any]] = {}

    def get(self, name: str) -> tuple[bool, Any]:
        item = self._items.get(name)
        if item is None or item[0] < time.monotonic():
            return False, None
        return True, item[1]

    def put(self, name: str, value: Any) -> None:
        if len(self._items) > 100_000:
            self._items.clear()
        self._items[name] = (time.monotonic() + self.ttl_s, value)

    def drop(self, name: str) -> None:
        self._items.pop(name, None)


class AccessStore:
    """Keys, teams, customers and their budgets in ``db``; cached reads for the hot path."""

    def __init__(self, db: Database, cache_ttl_s: float = 5.0) -> None:
        self.db = db
        self._keys = _TTLCache(cache_ttl_s)
        self._teams = _TTLCache(cache_ttl_s)
        self._customers = _TTLCache(cache_ttl_s)

    # -- budgets ---------------------------------------------------------------------

    async def _set_budget(self, scope: str, ident: str, max_micros: int | None,
                          duration_s: int | None, *, keep: bool) -> None:
        """Create or change the budget row; ``keep`` leaves unset fields alone."""
        now = wall_ms()
        reset = None if duration_s is None else now + duration_s * 1000
        if keep:
            sets: list[str] = []
            args: list[int | None] = []
            if max_micros is not None:
                sets.append("max_micros = ?")
                args.append(max_micros)
            if duration_s is not None:
                sets += ["duration_s = ?", "reset_at_ms = ?"]
                args += [duration_s, reset]
            if sets:
                await self.db.execute(f"UPDATE access_budgets SET {', '.join(sets)} "
                                      "WHERE scope = ? AND id = ?", *args, scope, ident)
            return
        await self.db.execute(
            """INSERT INTO access_budgets (scope, id, max_micros, duration_s, reset_at_ms)
            VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (scope, id) DO UPDATE SET max_micros = excluded.max_micros,
                duration_s = excluded.duration_s, reset_at_ms = excluded.reset_at_ms""",
            scope, ident, max_micros, duration_s, reset)

    # -- keys ------------------------------------------------------------------------

    async def create_key(self, spec: Mapping[str, Any]) -> tuple[str, KeyRecord]:
        now = wall_ms()
        plain = _text(spec, "key") or new_key()
        if len(plain) < 20:
            raise BadRequestError("a custom key must be at least 20 characters", param="key")
        token = hash_key(plain)
        alias = _text(spec, "key_alias")
        max_micros, duration = _budget_args(spec)
        if alias is not None and await self.db.fetchone(
                "SELECT 1 AS x FROM access_keys WHERE key_alias = ?", alias):
            raise BadRequestError(f"a key with key_alias {alias!r} exists", param="key_alias")
        team_id = _ident(spec, "team_id")
        if team_id is not None and await self.team(team_id) is None:
            raise BadRequestError(f"no team {team_id!r}; create it with /team/new",
                                  param="team_id")
        try:
            await self.db.execute(
                f"INSERT INTO access_keys ({_KEY_COLS}) VALUES "
                f"({placeholders(range(14))})",
                token, alias, masked(plain), _ident(spec, "user_id"), team_id,
                _ident(spec, "customer_id"), orjson.dumps(list(_models(spec))).decode(),
                _count(spec, "rpm_limit"), _count(spec, "tpm_limit"), _expires(spec, now),
                orjson.dumps(_metadata(spec)).decode(), int(_bool(spec, "blocked")), now, now)
        except Exception as exc:
            if "unique" in str(exc).lower():
                raise BadRequestError("that key or key_alias already exists") from None
            raise
        await self._set_budget("key", token, max_micros, duration, keep=False)
        record = await self.key(token, cached=False)
        assert record is not None
        return plain, record

    async def key(self, token: str, *, cached: bool = True) -> KeyRecord | None:
        if cached:
            hit, value = self._keys.get(token)
            if hit:
                return value  # type: ignore[no-any-return]
        row = await self.db.fetchone(
            f"""SELECT k.*, {_BUDGET_COLS} FROM access_keys k
            LEFT JOIN access_budgets b ON b.scope = 'key' AND b.id = k.token
            WHERE k.token = ?""", token)
        record = None if row is None else _key(row)
        if record is not None:
            self._keys.put(token, record)
        return record

    async def update_key(self, token: str, spec: Mapping[str, Any]) -> KeyRecord:
        current = await self.key(token, cached=False)
        if current is None:
            raise NotFoundError("no such key", code="key_not_found", param="key")
        sets: list[str] = []
        args: list[Any] = []

        def put(column: str, value: Any) -> None:
            sets.append(f"{column} = ?")
            args.append(value)

        for name in ("key_alias",):
            if name in spec:
                put(name, _text(spec, name))
        for name in ("user_id", "team_id", "customer_id"):
            if name in spec:
                put(name, _ident(spec, name))
        if spec.get("team_id") and await self.team(str(spec["team_id"])) is None:
            raise BadRequestError(f"no team {spec['team_id']!r}", param="team_id")
        if "models" in spec:
            put("models", orjson.dumps(list(_models(spec))).decode())
        for name in ("rpm_limit", "tpm_limit"):
            if name in spec:
                put(name, _count(spec, name))
        if "duration" in spec:
            put("expires_at_ms", _expires(spec, wall_ms()))
        if "metadata" in spec:
            put("metadata", orjson.dumps(_metadata(spec)).decode())
        if "blocked" in spec:
            put("blocked", int(_bool(spec, "blocked")))
        put("updated_at_ms", wall_ms())
        await self.db.execute(f"UPDATE access_keys SET {', '.join(sets)} WHERE token = ?",
                              *args, token)
        if "max_budget" in spec or "budget_duration" in spec:
            max_micros, duration = _budget_args(spec)
            if "max_budget" in spec and max_micros is None:
                await self.db.execute("UPDATE access_budgets SET max_micros = NULL "
                                      "WHERE scope = 'key' AND id = ?", token)
            await self._set_budget("key", token, max_micros, duration, keep=True)
        self._keys.drop(token)
        record = await self.key(token, cached=False)
        assert record is not None
        return record

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        deleted: list[str] = []
        for token in tokens:
            if await self.db.execute("DELETE FROM access_keys WHERE token = ?", token):
                deleted.append(token)
            await self.db.execute("DELETE FROM access_budgets WHERE scope = 'key' AND id = ?",
                                  token)
            self._keys.drop(token)
        return deleted

    async def token_for_alias(self, alias: str) -> str | None:
        row = await self.db.fetchone("SELECT token FROM access_keys WHERE key_alias = ?", alias)
        return None if row is None else str(row["token"])

    async def list_keys(self, *, user_id: str | None = None, team_id: str | None = None,
                        key_alias: str | None = None, customer_id: str | None = None,
                        page: int = 1, size: int = 100) -> tuple[list[KeyRecord], int]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("user_id", user_id), ("team_id", team_id),
                              ("key_alias", key_alias), ("customer_id", customer_id)):
            if value is not None:
                where.append(f"k.{column} = ?")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total_row = await self.db.fetchone(f"SELECT count(*) AS n FROM access_keys k {clause}",
                                           *args)
        rows = await self.db.fetch(
            f"""SELECT k.*, {_BUDGET_COLS} FROM access_keys k
            LEFT JOIN access_budgets b ON b.scope = 'key' AND b.id = k.token
            {clause} ORDER BY k.created_at_ms, k.token LIMIT ? OFFSET ?""",
            *args, size, (page - 1) * size)
        return [_key(r) for r in rows], int(total_row["n"] if total_row else 0)

    # -- teams -----------------------------------------------------------------------

    async def create_team(self, spec: Mapping[str, Any]) -> TeamRecord:
        now = wall_ms()
        team_id = _ident(spec, "team_id") or str(uuid.uuid4())
        max_micros, duration = _budget_args(spec)
        if await self.team(team_id, cached=False) is not None:
            raise BadRequestError(f"team {team_id!r} exists", param="team_id")
        await self.db.execute(
            """INSERT INTO access_teams (team_id, team_alias, models, rpm_limit, tpm_limit,
                metadata, blocked, created_at_ms, updated_at_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            team_id, _text(spec, "team_alias"), orjson.dumps(list(_models(spec))).decode(),
            _count(spec, "rpm_limit"), _count(spec, "tpm_limit"),
            orjson.dumps(_metadata(spec)).decode(), int(_bool(spec, "blocked")), now, now)
        await self._set_budget("team", team_id, max_micros, duration, keep=False)
        self._teams.drop(team_id)
        record = await self.team(team_id, cached=False)
        assert record is not None
        return record

    async def team(self, team_id: str, *, cached: bool = True) -> TeamRecord | None:
        if cached:
            hit, value = self._teams.get(team_id)
            if hit:
                return value  # type: ignore[no-any-return]
        row = await self.db.fetchone(
            f"""SELECT t.*, {_BUDGET_COLS} FROM access_teams t
            LEFT JOIN access_budgets b ON b.scope = 'team' AND b.id = t.team_id
            WHERE t.team_id = ?""", team_id)
        record = None if row is None else _team(row)
        self._teams.put(team_id, record)
        return record

    # -- customers -------------------------------------------------------------------

    async def create_customer(self, spec: Mapping[str, Any]) -> CustomerRecord:
        now = wall_ms()
        # LiteLLM names the customer (its "end user") user_id; customer_id is ours.
        customer_id = _ident(spec, "customer_id") or _ident(spec, "user_id")
        if customer_id is None:
            raise BadRequestError("customer_id (or user_id) is required", param="customer_id")
        max_micros, duration = _budget_args(spec)
        if await self.customer(customer_id, cached=False) is not None:
            raise BadRequestError(f"customer {customer_id!r} exists", param="customer_id")
        await self.db.execute(
            """INSERT INTO access_customers (customer_id, alias, external_subscription_id,
                metadata, blocked, created_at_ms, updated_at_ms)
            VALUES (?, ?, ?, ?, ?, ?, ?)""",
            customer_id, _text(spec, "alias"), _ident(spec, "external_subscription_id"),
            orjson.dumps(_metadata(spec)).decode(), int(_bool(spec, "blocked")), now, now)
        await self._set_budget("customer", customer_id, max_micros, duration, keep=False)
        self._customers.drop(customer_id)
        record = await self.customer(customer_id, cached=False)
        assert record is not None
        return record

    async def customer(self, customer_id: str, *, cached: bool = True
                       ) -> CustomerRecord | None:
        if cached:
            hit, value = self._customers.get(customer_id)
            if hit:
                return value  # type: ignore[no-any-return]
        row = await self.db.fetchone(
            f"""SELECT c.*, {_BUDGET_COLS} FROM access_customers c
            LEFT JOIN access_budgets b ON b.scope = 'customer' AND b.id = c.customer_id
            WHERE c.customer_id = ?""", customer_id)
        record = None if row is None else _customer(row)
        self._customers.put(customer_id, record)
        return record
