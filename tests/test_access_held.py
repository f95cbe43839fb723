"""Held (unattributed) calls end to end: the real proxy over HTTP holds them, the
`tallygate outbox` commands list them and assign them to a customer, and the running
gateway then delivers them to the Lago stand-in, once, on the right subscription."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tallygate.cli import main
from tests.fakes.lago_server import FakeLago
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema
from tests.proxy_harness import (
    CALL_ID_HEADER,
    config_dict,
    http,
    lago_env,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.test_access_keys import chat, generate, ledger_rows, mock_entry


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "outbox.db")
        return
    schema = unique_pg_schema()
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        asyncio.run(drop_pg_schema(schema))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_held_calls_are_listed_then_assigned_and_billed_once(
        tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeLago() as lago:
        cfg = config_dict([mock_entry()], tmp_path, lago=True,
                          general={"database_url": db_url})
        cfg["access_settings"] = {"unattributed": "hold"}
        with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
            base = proxy.base_url
            assert http("POST", base + "/customer/new", {
                "customer_id": "acme", "external_subscription_id": "sub_acme",
                "max_budget": 10}).status == 200
            key = generate(base, key_alias="no-payer")["key"]   # no customer on the key
            replies = [chat(base, key) for _ in range(2)]
            assert [r.status for r in replies] == [200, 200]
            first, second = (r.headers[CALL_ID_HEADER] for r in replies)

            # Durable before the answer: the held rows, with their events, are there
            # already, without waiting for the settlements queued after answers.
            db = proxy.gateway.keys.db
            assert db is not None
            held = proxy.call(db.fetch("SELECT call_id, event FROM access_ledger "
                                       "WHERE status = 'unattributed'"))
            assert {r["call_id"] for r in held} == {first, second}
            assert all(first in r["event"] or second in r["event"] for r in held)
            assert proxy.outbox_stats().pending == 0          # nothing queued for Lago
            cost = Decimal(str(ledger_rows(base)["logs"][0]["spend"]))

            code, out = cli(capsys, "outbox", "status", "--db", db_url)
            assert code == 0 and "held:        2 unattributed call(s)" in out
            code, out = cli(capsys, "outbox", "held", "--db", db_url)
            assert code == 0
            rows = {line.split()[0]: line.split() for line in out.splitlines()[1:3]}
            assert set(rows) == {first, second}
            assert rows[first][3] == "m" and Decimal(rows[first][4]) == cost
            assert rows[first][5] == "no-payer"
            assert "2 call(s) held unattributed" in out
            code, out = cli(capsys, "reconcile", "--since", "1d", "--no-lago", "--db", db_url)
            assert code == 1 and f"{first}: held unattributed, not billed" in out

            # Assign one to acme: billed to acme's subscription, delivered by the gateway.
            code, out = cli(capsys, "outbox", "assign", "--id", first, "--customer", "acme",
                            "--db", db_url)
            assert code == 0, out
            assert f"{first}: billed to acme (subscription sub_acme)" in out
            wait_for(lambda: first in lago.events)
            event = lago.events[first]
            assert event.external_subscription_id == "sub_acme"
            assert "assigned" in event.properties["flags"]
            assert "unattributed" not in event.properties["flags"]
            assert Decimal(event.properties["response_cost"]) == cost
            acme = ledger_rows(base, customer_id="acme")["logs"]
            assert [(r["call_id"], r["billed_to"], r["status"]) for r in acme] == [
                (first, "sub_acme", "billed")]
            info = http("GET", f"{base}/customer/info?customer_id=acme").json()
            assert Decimal(str(info["spend"])) == cost

            # Not held any more: a second assign changes nothing.
            code, out = cli(capsys, "outbox", "assign", "--id", first, "--customer", "other",
                            "--db", db_url)
            assert code == 1 and f"{first}: not a held call" in out

            # The rest, to another customer and an explicit subscription.
            code, out = cli(capsys, "outbox", "assign", "--all", "--customer", "globex",
                            "--subscription", "sub_globex_9", "--db", db_url)
            assert code == 0 and "1 held call(s) queued for lago" in out
            wait_for(lambda: second in lago.events)
            assert lago.events[second].external_subscription_id == "sub_globex_9"
            wait_for(lambda: proxy.outbox_stats("lago").delivered == 2)

            code, out = cli(capsys, "outbox", "held", "--db", db_url)
            assert code == 0 and "no held calls" in out
            code, out = cli(capsys, "outbox", "status", "--db", db_url)
            assert "held:        0 unattributed" in out
            code, out = cli(capsys, "reconcile", "--since", "1d", "--no-lago", "--db", db_url)
            assert code == 0, out
        assert lago.count(first) == 1 and lago.count(second) == 1
        assert lago.schema_violations == []


def test_status_of_an_outbox_without_access_tables_creates_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from tallygate.metering.sqlite_outbox import SQLiteOutbox

    path = tmp_path / "sdk.db"

    async def make() -> None:
        box = SQLiteOutbox(path)
        await box.open()
        await box.close()

    asyncio.run(make())
    code, out = cli(capsys, "outbox", "status", "--db", str(path))
    assert code == 0 and "pending:     0" in out and "held" not in out
    tables = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "access_ledger" not in tables
