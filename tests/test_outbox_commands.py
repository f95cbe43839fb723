"""`tallygate outbox ...` against real outbox files (and one Postgres schema)."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tallygate.metering.commands import DATABASE_ENV, add_outbox_commands, parse_since
from tallygate.metering.outbox import Outbox
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tests.outbox_support import PG_DSN, drop_pg_schema, make_event, unique_pg_schema


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tallygate")
    add_outbox_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.handler(args))


async def _fill(box: Outbox) -> list[int]:
    """Two delivered rows, two dead ones, one pending; returns the dead ids."""
    await box.open()
    try:
        await box.enqueue_many([make_event(f"tg-call-{i}") for i in range(5)], ["lago"])
        rows = await box.claim("lago", 4, 60)
        await box.mark_delivered([rows[0].id, rows[1].id])
        await box.mark_dead({rows[2].id: "422 invalid code", rows[3].id: "422 no sub"})
        return [rows[2].id, rows[3].id]
    finally:
        await box.close()


def fill(box: Outbox) -> list[int]:
    return asyncio.run(_fill(box))


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, list[int]]:
    path = str(tmp_path / "tallygate.db")
    return path, fill(SQLiteOutbox(path))


def test_status(db: tuple[str, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["outbox", "status", "--db", db[0]]) == 0
    out = capsys.readouterr().out
    assert "pending:     1" in out and "in flight:   0" in out
    assert "delivered:   2" in out and "dead:        2" in out
    assert "last error:  422" in out and "oldest undelivered: " in out


def test_status_uses_the_database_url_from_the_environment(
        db: tuple[str, list[int]], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_ENV, f"sqlite:///{db[0]}")
    assert run(["outbox", "status", "--sink", "lago"]) == 0
    assert "outbox (lago)" in capsys.readouterr().out


def test_dead_lists_rows(db: tuple[str, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["outbox", "dead", "--db", db[0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "call_id" in lines[0] and "reason" in lines[0]
    assert lines[1].split()[:4] == [str(db[1][0]), "lago", "tg-call-2", "1"]
    assert lines[1].endswith("422 invalid code")
    assert lines[2].endswith("422 no sub")


def test_retry_by_id_then_all(db: tuple[str, list[int]],
                              capsys: pytest.CaptureFixture[str]) -> None:
    path, (first, _) = db
    assert run(["outbox", "retry", "--db", path, "--id", str(first)]) == 0
    assert "1 dead row(s) made pending again" in capsys.readouterr().out
    assert run(["outbox", "retry", "--db", path, "--id", str(first), "999"]) == 1
    assert run(["outbox", "retry", "--db", path, "--all"]) == 0
    assert "1 dead row(s)" in capsys.readouterr().out.splitlines()[-1]
    run(["outbox", "dead", "--db", path])
    assert "no dead rows" in capsys.readouterr().out


def test_retry_needs_ids_or_all(db: tuple[str, list[int]]) -> None:
    with pytest.raises(SystemExit):
        run(["outbox", "retry", "--db", db[0]])


def test_replay_since(db: tuple[str, list[int]], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["outbox", "replay", "--db", db[0], "--since", "1h", "--sink", "lago"]) == 0
    assert "2 delivered row(s) of sink lago" in capsys.readouterr().out
    assert run(["outbox", "replay", "--db", db[0], "--since", "1h"]) == 0
    assert capsys.readouterr().out.startswith("0 delivered")
    run(["outbox", "status", "--db", db[0]])
    assert "pending:     3" in capsys.readouterr().out


def test_a_missing_outbox_file_is_an_error_and_is_not_created(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.db"
    assert run(["outbox", "status", "--db", str(path)]) == 2
    assert "no outbox" in capsys.readouterr().err
    assert not path.exists()
    assert run(["outbox", "status", "--db", "mysql://x/y"]) == 2


def test_unreachable_postgres_is_reported_without_the_password(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["outbox", "status", "--db", "postgresql://u:s3cret@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and "s3cret" not in err and "u:***@" in err


def test_parse_since() -> None:
    now = 1_700_000_000_000
    assert parse_since("30m", now_ms=now) == now - 30 * 60_000
    assert parse_since("1h", now_ms=now) == now - 3_600_000
    assert parse_since("7d", now_ms=now) == now - 7 * 86_400_000
    assert parse_since("90s", now_ms=now) == now - 90_000
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_since("2026-01-02T03:04:05Z") == int(stamp.timestamp() * 1000)
    assert parse_since("2026-01-02T03:04:05") == int(stamp.timestamp() * 1000)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday")


@pytest.mark.postgres
def test_commands_on_postgres(capsys: pytest.CaptureFixture[str]) -> None:
    schema = unique_pg_schema()
    url = f"{PG_DSN}?schema={schema}"
    try:
        dead = fill(PostgresOutbox(PG_DSN, schema=schema))
        assert run(["outbox", "status", "--db", url]) == 0
        assert "dead:        2" in capsys.readouterr().out
        assert run(["outbox", "retry", "--db", url, "--id", *map(str, dead)]) == 0
        assert "2 dead row(s)" in capsys.readouterr().out
        assert run(["outbox", "replay", "--db", url, "--since", "2020-01-01"]) == 0
        assert capsys.readouterr().out.startswith("2 delivered")
    finally:
        asyncio.run(drop_pg_schema(schema))
