"""Many workers, one truth: a limit means what it says with ``--workers N`` and no Redis.

The worker processes count in one shared memory table made before they fork; a call on
a new connection may reach any worker (SO_REUSEPORT), and exactly ``rpm_limit`` pass.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from tallygate.access.ratelimit import Limit
from tallygate.access.shared_limits import SharedCounters, SharedLimiter
from tests.proxy_harness import MASTER_KEY, cli_env, config_dict, http, run_cli
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
