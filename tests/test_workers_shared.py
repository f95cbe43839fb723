"""Many workers, one truth: a limit means what it says with ``--workers N`` and no Redis.

The worker processes count in one shared memory table made before they fork; a call on
a new connection may reach any worker (SO_REUSEPORT), and exactly ``rpm_limit`` pass.
Deployment cooldowns are shared the same way: ``allowed_fails`` counts every worker's
failures.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from tallygate.access.ratelimit import Limit
from tallygate.access.shared_limits import SharedCounters, SharedLimiter
from tallygate.routing.worker_cooldowns import CooldownTable, WorkerCooldowns
from tests.fakes.openai_server import FakeOpenAI, run_in_thread
from tests.proxy_harness import MASTER_KEY, UPSTREAM_KEY, cli_env, config_dict, http, run_cli
from tests.router_support import priced
from tests.test_access_keys import mock_entry


def _admit_many(counters: SharedCounters, n: int, limit: Limit, out: Any) -> None:
    async def run() -> int:
        limiter = SharedLimiter(counters)
        return sum([(await limiter.acquire([limit])).ok for _ in range(n)])

    out.put(asyncio.run(run()))


def test_forked_processes_share_one_count() -> None:
    counters = SharedCounters(slots=64)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    limit = Limit("key", "k1", "requests", 25, 1)
    procs = [ctx.Process(target=_admit_many, args=(counters, 20, limit, out)) for _ in range(4)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    assert admitted == 25  # 80 tries by 4 processes, one limit of 25


def _fail_many(table: CooldownTable, n: int, out: Any) -> None:
    async def run() -> int:
        cooldowns = WorkerCooldowns(table)
        await cooldowns.start(["d1", "d2"])
        cooled = 0
        for _ in range(n):
            cooled += bool(await cooldowns.failed("d1", "server", 50, 30.0, None))
        return cooled

    out.put(asyncio.run(run()))


def test_forked_processes_count_one_deployments_failures_together() -> None:
    _clear_of_a_minute_end(5)   # failures count per wall-clock minute
    table = CooldownTable(slots=8)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_fail_many, args=(table, 25, out)) for _ in range(4)]
    for p in procs:
        p.start()
    cooled = sum(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    # 100 failures in all, allowed 50: the 51st to the 100th each (re)start the cooldown.
    assert cooled == 50
    seen = WorkerCooldowns(table)
    asyncio.run(seen.start(["d1", "d2"]))
    now = time.time()
    assert seen.failures("d1", now) == 100 and seen.failures("d2", now) == 0
    assert seen.any() and seen.cooling("d1", now) and not seen.cooling("d2", now)
    state = seen.state("d1", now)
    assert state is not None and state.reason == "server" and state.until > now + 25


async def test_a_full_table_evicts_the_stalest_and_keys_stay_apart() -> None:
    limiter = SharedLimiter(SharedCounters(slots=8))
    # Far more keys than slots: each key still gets its own count while it is held.
    for i in range(40):
        limit = Limit("key", f"k{i}", "requests", 2, 1)
        assert (await limiter.acquire([limit])).ok
        assert (await limiter.acquire([limit])).ok
        assert not (await limiter.acquire([limit])).ok
    tokens = Limit("key", "tok", "tokens", 100, 90)
    assert (await limiter.acquire([tokens])).ok
    await limiter.adjust([tokens], 20)   # the call used 110 in the end
    assert not (await limiter.acquire([tokens])).ok


@pytest.mark.parametrize("workers", [2, 4])
def test_rpm_limit_holds_across_worker_processes(tmp_path: Path, workers: int) -> None:
    cfg = config_dict([mock_entry()], tmp_path, lago=False)
    with run_cli(tmp_path, cfg, cli_env(), workers=workers) as proxy:
        reply = http("POST", proxy.base_url + "/key/generate",
                     {"customer_id": "acme", "rpm_limit": 5})
        assert reply.status == 200, reply.text
        key = reply.json()["key"]
        team = http("POST", proxy.base_url + "/team/new", {"team_alias": "t", "rpm_limit": 3})
        assert team.status == 200, team.text
        team_key = http("POST", proxy.base_url + "/key/generate",
                        {"customer_id": "beta", "team_id": team.json()["team_id"]}).json()["key"]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        # urllib opens a new connection per call: the kernel spreads them over the workers.
        statuses = [http("POST", proxy.base_url + "/v1/chat/completions", body, key=key).status
                    for _ in range(20)]
        assert statuses.count(200) == 5 and statuses.count(429) == 15, statuses
        team_statuses = [http("POST", proxy.base_url + "/v1/chat/completions", body,
                              key=team_key).status for _ in range(10)]
        assert team_statuses.count(200) == 3, team_statuses
        # The master key has no limit of its own.
        assert http("POST", proxy.base_url + "/v1/chat/completions",
                    {**body, "user": "c"}, key=MASTER_KEY).status == 200


def _samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


def test_metrics_cover_every_worker_and_counters_only_grow(tmp_path: Path) -> None:
    # A deployment that refuses connections gives upstream errors; "m" answers.
    dead = {"model_name": "dead", "litellm_params": {"model": "openai/x",
                                                      "api_base": "http://127.0.0.1:9/v1",
                                                      "api_key": "k"}}
    cfg = config_dict([mock_entry(), dead], tmp_path, lago=False,
                      general={"metrics_customer_labels": 10})
    with run_cli(tmp_path, cfg, cli_env(), workers=2) as proxy:
        reply = http("POST", proxy.base_url + "/key/generate",
                     {"customer_id": "acme", "rpm_limit": 7})
        key = reply.json()["key"]
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        statuses = [http("POST", proxy.base_url + "/v1/chat/completions", body, key=key).status
                    for _ in range(12)]
        assert statuses.count(200) == 7
        stream = http("POST", proxy.base_url + "/v1/chat/completions",
                      {**body, "stream": True, "user": "s"})
        assert stream.status == 200
        assert http("POST", proxy.base_url + "/v1/chat/completions",
                    {**body, "model": "dead", "user": "d"}).status == 502
        seen: list[dict[str, float]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = http("GET", proxy.base_url + "/metrics").text
            requests = _samples(text, "tallygate_requests_total")
            seen.append(requests)
            if sum(requests.values()) >= 14 and len(seen) >= 8:
                break
            time.sleep(0.3)
        totals = [sum(s.values()) for s in seen]
        assert totals[-1] == 14, totals  # 12 + the stream + the failed call: every worker's
        assert totals == sorted(totals)  # never a drop, whichever worker answered
        for earlier, later in itertools.pairwise(seen):
            assert all(later.get(k, 0) >= v for k, v in earlier.items())
        assert seen[-1]['tallygate_requests_total{route="chat",model="m",status="429"}'] == 5
        # The failed call's three attempts (one try, the router's two retries), each counted.
        assert _samples(text, "tallygate_upstream_errors_total") == {
            'tallygate_upstream_errors_total{provider="openai",status="502"}': 3.0}
        ttft = _samples(text, "tallygate_time_to_first_token_seconds_count")
        assert ttft == {'tallygate_time_to_first_token_seconds_count'
                        '{model="m",deployment="mock/m"}': 1.0}
        calls = _samples(text, "tallygate_call_duration_seconds_count")
        assert calls == {'tallygate_call_duration_seconds_count'
                         '{model="m",deployment="mock/m"}': 8.0}
        tokens = _samples(text, "tallygate_tokens_total")
        assert any('customer="acme"' in k for k in tokens)
        assert "tallygate_outbox_oldest_pending_age_seconds" in text
        lag = _samples(text, "tallygate_delivery_lag_seconds_count")
        assert sum(lag.values()) >= 1  # the JSONL sink delivered some already


def _clear_of_a_minute_end(margin_s: float = 15.0) -> None:
    """Failures count per wall-clock minute: start where the test cannot straddle two."""
    left = 60 - time.time() % 60
    if left < margin_s:
        time.sleep(left + 0.5)


def test_cooldowns_hold_across_worker_processes(tmp_path: Path) -> None:
    # Two workers, no Redis: the deployment answering 500 gets allowed_fails + 1 calls
    # in all (the failures of both workers counted together), then none while it cools
    # down, in whichever worker a call lands (each call a new connection).
    with run_in_thread(FakeOpenAI()) as bad, run_in_thread(FakeOpenAI()) as good:
        bad.require_api_key = good.require_api_key = UPSTREAM_KEY
        bad.fail_in_bursts(500, every=1, burst=1)
        models = [priced("g", bad.base_url, "bad", "0.000001", "0.000001"),
                  priced("g", good.base_url, "good", "0.000002", "0.000002")]
        cfg = config_dict(models, tmp_path, lago=False)
        cfg["router_settings"] = {"allowed_fails": 2, "cooldown_time": 120, "num_retries": 2}
        _clear_of_a_minute_end()
        with run_cli(tmp_path, cfg, cli_env(), workers=2) as proxy:
            body = {"model": "g", "messages": [{"role": "user", "content": "hi"}],
                    "user": "c"}
            replies = [http("POST", proxy.base_url + "/v1/chat/completions", body)
                       for _ in range(40)]
            assert [r.status for r in replies] == [200] * 40, replies[0].text
            assert {r.headers["x-litellm-model-id"] for r in replies} == {"good"}
            assert len(bad.received) == 3   # allowed_fails 2: cooled down at the third
            assert len(good.received) == 40
            # Every worker shows it cooling down, with the failures both counted.
            for _ in range(10):
                ready = http("GET", proxy.base_url + "/health/readiness").json()
                state = {d["model_id"]: d for d in ready["router"]["deployments"]}
                assert state["bad"]["cooling_down"] is True, state["bad"]
                assert state["bad"]["failures_this_minute"] == 3
                assert state["good"]["cooling_down"] is False
