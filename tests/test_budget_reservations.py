"""Budget reservations of one group commit on SQLite: one transaction for the batch, each
call taken as if one after the other, a refused call changing nothing."""

from __future__ import annotations

from pathlib import Path

from tallygate.access import budgets
from tallygate.access.budgets import Exceeded
from tallygate.access.db import SQLiteDatabase, wall_ms


async def _db(tmp_path: Path) -> SQLiteDatabase:
    db = SQLiteDatabase(str(tmp_path / "access.db"))
    await db.open()
    return db


async def _budget(db: SQLiteDatabase, scope: str, ident: str, max_micros: int | None, *,
                  spend: int = 0, reset_at_ms: int | None = None,
                  duration_s: int | None = None) -> None:
    await db.execute("INSERT INTO access_budgets (scope, id, max_micros, duration_s, "
                     "spend_micros, reserved_micros, reset_at_ms) VALUES (?, ?, ?, ?, ?, 0, ?)",
                     scope, ident, max_micros, duration_s, spend, reset_at_ms)


async def _row(db: SQLiteDatabase, scope: str, ident: str) -> tuple[int, int, int | None]:
    rows = await db.fetch("SELECT spend_micros, reserved_micros, reset_at_ms FROM "
                          "access_budgets WHERE scope = ? AND id = ?", scope, ident)
    r = rows[0]
    return r["spend_micros"], r["reserved_micros"], r["reset_at_ms"]


async def _held(db: SQLiteDatabase) -> dict[str, int]:
    rows = await db.fetch("SELECT call_id, amount_micros FROM access_reservations")
    return {r["call_id"]: r["amount_micros"] for r in rows}


async def test_a_batch_takes_calls_in_order_until_the_budget_is_used_up(
        tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        await _budget(db, "key", "k", 250, spend=50)
        key = [("key", "k")]
        results = await budgets.reserve_many(db, [
            ("c1", key, 100), ("c2", key, 100), ("c3", key, 100), ("c4", key, 100)])
        # 50 spent: c1 (50 < 250), c2 (150 < 250), c3 (250 is not below 250: refused)
        assert results[:2] == [None, None]
        assert results[2] == Exceeded("key", "k", 250, 50, 200)
        assert results[3] == Exceeded("key", "k", 250, 50, 200)
        assert await _row(db, "key", "k") == (50, 200, None)
        assert await _held(db) == {"c1": 100, "c2": 100}
    finally:
        await db.close()


async def test_a_call_is_refused_whole_when_one_of_its_budgets_is_used_up(
        tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        await _budget(db, "key", "k", None)           # no maximum
        await _budget(db, "team", "t", 100, spend=100)  # used up
        both = [("team", "t"), ("key", "k")]
        results = await budgets.reserve_many(db, [
            ("c1", both, 10), ("c2", [("key", "k")], 10), ("c3", [], 10),
            ("c4", [("user", "nobody")], 10)])
        assert results == [Exceeded("team", "t", 100, 100, 0), None, None, None]
        assert await _row(db, "key", "k") == (0, 10, None)   # c2 only
        assert await _row(db, "team", "t") == (100, 0, None)
        # a call with no budgets is not written; one whose scopes have none is held
        assert await _held(db) == {"c2": 10, "c4": 10}
    finally:
        await db.close()


async def test_a_budget_whose_period_is_over_starts_again(tmp_path: Path) -> None:
    db = await _db(tmp_path)
    try:
        now = wall_ms()
        await _budget(db, "key", "k", 100, spend=100, reset_at_ms=now - 1000,
                      duration_s=60)
        await _budget(db, "key", "spent", 100, spend=100, reset_at_ms=now + 60_000,
                      duration_s=60)
        results = await budgets.reserve_many(db, [
            ("c1", [("key", "k")], 30), ("c2", [("key", "spent")], 30)])
        assert results[0] is None
        assert results[1] == Exceeded("key", "spent", 100, 100, 0)
        spend, reserved, reset_at = await _row(db, "key", "k")
        assert (spend, reserved) == (0, 30)
        assert reset_at is not None and reset_at >= now + 59_000
        assert await _row(db, "key", "spent") == (100, 0, now + 60_000)  # untouched
    finally:
        await db.close()
