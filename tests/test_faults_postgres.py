"""Issue 4, several gateways on one Postgres outbox: every event delivered exactly once.

Two real ``tallygate`` CLI processes on different ports share one outbox on the
PostgreSQL server at 127.0.0.1:5432 (a schema of its own per test, via ``?schema=``,
dropped afterwards) while calls go to both of them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fault_support import (
    assert_exactly_once,
    load,
    mock_config,
    ok_call_ids,
    outbox_cli,
    status_counts,
    wait_delivered,
)
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    cli_env,
    http,
    lago_env,
    lago_fixture,
    run_cli,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture(name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    schema = unique_pg_schema()
    yield f"{PG_DSN}?schema={schema}"
    asyncio.run(drop_pg_schema(schema))


async def _states(pg_url: str) -> dict[str, int]:
    schema = pg_url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(PG_DSN)
    try:
        # The lago sink's rows (the ledger sink has one per billed call too).
        rows = await conn.fetch(f'SELECT state, count(*) AS n FROM "{schema}".outbox '
                                "WHERE sink = 'lago' GROUP BY state")
    finally:
        await conn.close()
    return {r["state"]: r["n"] for r in rows}


async def _ledger_ids(pg_url: str) -> set[str]:
    schema = pg_url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(f'SELECT call_id FROM "{schema}".access_ledger')
    finally:
        await conn.close()
    return {r["call_id"] for r in rows}


def states(pg_url: str) -> dict[str, int]:
    return asyncio.run(_states(pg_url))


def lago_delivered(base_url: str) -> int:
    body: Any = http("GET", base_url + "/health/readiness").json()
    return int(body["sinks"]["lago"]["delivered"])


def test_two_gateways_on_one_postgres_deliver_each_event_once(
        tmp_path: Path, lago: FakeLago, pg_url: str) -> None:
    env = cli_env(lago_env(lago))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Same config shape for both; the outbox comes from general_settings.database_url
    # for one and from --db for the other, the two ways an operator points at Postgres.
    cfg_a = mock_config(tmp_path / "a", general={"database_url": pg_url})
    cfg_b = mock_config(tmp_path / "b")
    with run_cli(tmp_path / "a", cfg_a, env) as a, \
            run_cli(tmp_path / "b", cfg_b, env, args=("--db", pg_url)) as b:
        urls = [a.base_url, b.base_url]
        # Phase 1: Lago down; both gateways pile up a backlog in the shared outbox...
        lago.stop()
        first = asyncio.run(load(urls, 200, concurrency=16))
        # ...and race for it when Lago comes back, while phase 2 adds fresh calls.
        lago.start()
        second = asyncio.run(load(urls, 300, concurrency=16))
        ok = ok_call_ids(first + second)
        assert len(ok) == 500
        wait_delivered(lago, ok, timeout=40)
        wait_for(lambda: states(pg_url) == {"delivered": 500}, timeout=15)
        by_a, by_b = lago_delivered(a.base_url), lago_delivered(b.base_url)
        assert a.stop() == 0, a.stderr
        assert b.stop() == 0, b.stderr

    assert_exactly_once(lago, ok)
    assert len(lago.stored) == 500
    # No row was claimed by both: each gateway counts what it delivered, and the two
    # counts add up to the calls, with both gateways taking part.
    assert by_a + by_b == 500, (by_a, by_b)
    # Both gateways delivered settlements too: one ledger row per call, none twice.
    assert asyncio.run(_ledger_ids(pg_url)) == set(ok)
    assert by_a > 0 and by_b > 0, (by_a, by_b)
    # And no event reached Lago in two requests (Lago would dedupe a double send, so
    # its count alone could hide one). A refused connection records no request.
    sent = Counter(ev["transaction_id"] for req in lago.requests_to("/api/v1/events/batch")
                   for ev in req.body["events"])
    assert set(sent) == set(ok)
    assert [tid for tid, n in sent.items() if n > 1] == []

    status = outbox_cli(pg_url, "status", "--sink", "lago")
    assert status.returncode == 0, status.stderr
    counts = status_counts(status.stdout)
    assert (counts["delivered"], counts["pending"], counts["dead"]) == ("500", "0", "0")
