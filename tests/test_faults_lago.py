"""Issue 4, Lago misbehaving: usage is never lost and never billed twice.

An in-process proxy (real aiohttp server, real SQLite outbox, real delivery worker)
in front of the mock model, real HTTP calls on 127.0.0.1, and FakeLago breaking in
the ways a real Lago does: 500s for a while, the port closed, the answer lost after
the batch was stored, 5 s per request.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fault_support import (
    Outcome,
    assert_exactly_once,
    await_delivered,
    load,
    mock_config,
    ok_call_ids,
    until,
)
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
)

pytestmark = pytest.mark.slow

CALLS = 500


@pytest.mark.parametrize("fault", ["http_500", "port_closed"])
async def test_lago_fault_window_during_500_calls(tmp_path: Path, lago: FakeLago,
                                                  fault: str) -> None:
    """Lago fails for a window in the middle of 500 calls; afterwards it holds exactly
    one event per call id the client saw, and every call was answered 200."""
    settings = proxy_settings(tmp_path, mock_config(tmp_path), lago_env(lago))
    with run_proxy(settings) as proxy:
        lane = proxy.gateway.worker.sink_counters
        outcomes: list[Outcome] = []
        # Spaced out (about 1 s in all), so that the window sits inside the load.
        task = asyncio.create_task(load(proxy.base_url, CALLS, concurrency=10,
                                        pause_s=0.02, outcomes=outcomes))
        await until(lambda: len(outcomes) >= 100 and lane()["lago"].delivered > 0, 30,
                    "100 calls and a first delivery")
        assert not task.done()
        opened_at = len(outcomes)
        if fault == "http_500":
            lago.fail_with(500)             # every request, until clear_faults()
        else:
            await lago.astop()              # connection refused on the same port
        # The window must really catch deliveries: wait for a failed batch.
        await until(lambda: lane()["lago"].retried > 0, 20, "a failed delivery")
        await until(lambda: len(outcomes) >= opened_at + 200 or task.done(), 30,
                    "calls during the window")
        during_window = len(outcomes) - opened_at
        error = lane()["lago"].last_error or ""
        assert ("500" in error) if fault == "http_500" else ("unreachable" in error), error
        if fault == "http_500":
            lago.clear_faults()
        else:
            await lago.astart()
        await asyncio.wait_for(task, 60)

        assert during_window >= 100, during_window
        assert len(outcomes) == CALLS
        assert [o for o in outcomes if o.status != 200] == [], "Lago's fault reached a client"
        call_ids = ok_call_ids(outcomes)
        await await_delivered(lago, call_ids, timeout=30)
        await until(lambda: proxy.outbox_stats("lago").delivered == CALLS, 10, "rows marked")
        assert_exactly_once(lago, call_ids)
        stats = proxy.outbox_stats("lago")
        assert (stats.delivered, stats.pending, stats.inflight, stats.dead) == (CALLS, 0, 0, 0)


async def test_lago_stores_then_drops_the_connection(tmp_path: Path, lago: FakeLago) -> None:
    """Lago stores a batch but the answer never arrives: the resend gets 422
    value_already_exist per event, and those count as delivered, not as duplicates."""
    settings = proxy_settings(tmp_path, mock_config(tmp_path), lago_env(lago))
    lago.drop_after_store = 2
    with run_proxy(settings) as proxy:
        outcomes = await load(proxy.base_url, 120, concurrency=16)
        call_ids = ok_call_ids(outcomes)
        assert len(call_ids) == 120
        await await_delivered(lago, call_ids, timeout=20)
        await until(lambda: proxy.outbox_stats("lago").delivered == 120, 20, "all rows delivered")
        assert lago.drop_after_store == 0, "Lago never dropped a connection: a weaker test"

        assert_exactly_once(lago, call_ids)
        stats = proxy.outbox_stats("lago")
        assert (stats.delivered, stats.pending, stats.inflight, stats.dead) == (120, 0, 0, 0)
        # The dropped batches really were sent again (and deduplicated by Lago).
        sent: dict[str, int] = {}
        for req in lago.requests_to("/api/v1/events/batch"):
            for ev in req.body["events"]:
                sent[ev["transaction_id"]] = sent.get(ev["transaction_id"], 0) + 1
        resent = [tid for tid, n in sent.items() if n > 1]
        assert resent, "no event was sent twice: the drop did not force a resend"
        counters = proxy.gateway.worker.sink_counters()["lago"]
        assert counters.dead == 0 and counters.delivered == 120


async def test_slow_lago_does_not_slow_the_calls(tmp_path: Path, lago: FakeLago) -> None:
    """The response never waits on Lago: with Lago taking 5 s per request, the calls'
    p50 stays within 50 ms of the p50 with a fast Lago, and no call takes 1 s."""
    settings = proxy_settings(tmp_path, mock_config(tmp_path), lago_env(lago))
    with run_proxy(settings) as proxy:
        fast = await load(proxy.base_url, 60, concurrency=4)
        await await_delivered(lago, ok_call_ids(fast), timeout=10)
        # Lago turns slow; wait until a delivery is stuck in it before the next calls.
        lago.slow = 5.0
        requests_before = len(lago.requests)
        first = await load(proxy.base_url, 1, concurrency=1)
        await until(lambda: len(lago.requests) > requests_before, 10, "a slow delivery")
        slow = await load(proxy.base_url, 60, concurrency=4)
        # Every one of those calls ran while that delivery was still waiting on Lago.
        assert time.monotonic() < lago.requests[requests_before].at + lago.slow
        assert all(o.status == 200 for o in fast + slow)
        p50_fast = statistics.median(o.latency_s for o in fast)
        p50_slow = statistics.median(o.latency_s for o in slow)
        worst = max(o.latency_s for o in slow)
        assert p50_slow < p50_fast + 0.05, (p50_fast, p50_slow)
        assert worst < 1.0, worst
        lago.slow = 0.0
        call_ids = ok_call_ids(fast + first + slow)
        await await_delivered(lago, call_ids, timeout=30)
        assert_exactly_once(lago, call_ids)
