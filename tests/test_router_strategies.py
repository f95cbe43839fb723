"""Load-balancing strategies do what they say, measured through the real proxy against
stand-in upstreams: latency-based prefers the fast deployment while still sampling the
slow one, usage-based keeps each deployment within its rpm, least-busy sends to the one
with fewest calls in flight, weights weigh, cost-based picks the cheapest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
)
from tests.router_support import check_billing, cost, priced, router_config, run_load


@pytest.fixture(name="fakes")
def fakes_fixture() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with run_in_thread(FakeOpenAI()) as a, run_in_thread(FakeOpenAI()) as b:
        a.require_api_key = b.require_api_key = UPSTREAM_KEY
        yield a, b


def _served(tmp_path: Path, lago: FakeLago, models: list[dict[str, Any]],
            router: dict[str, Any], n: int, concurrency: int,
            **load: Any) -> Counter[str]:
    settings = proxy_settings(tmp_path, router_config(tmp_path, models, router),
                              lago_env(lago))
    with run_proxy(settings) as proxy:
        replies, _ = run_load(proxy.base_url, n, concurrency=concurrency, **load)
        assert {r.status for r in replies} == {200}, [r.body for r in replies][:3]
        return Counter(r.headers["x-litellm-model-id"] for r in replies)


def test_latency_based_prefers_the_fast_one_and_still_samples_the_slow(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    fast, slow = fakes
    fast.latency, slow.latency = 0.005, 0.05   # ten times slower
    models = [priced("g", fast.base_url, "fast", "0.000001", "0.000001"),
              priced("g", slow.base_url, "slow", "0.000001", "0.000001")]
    served = _served(tmp_path, lago, models, {"routing_strategy": "latency-based-routing"},
                     300, 4)
    assert served["fast"] + served["slow"] == 300
    assert served["slow"] < 0.2 * 300, served
    assert served["slow"] >= 1, served          # sampled, not forgotten


def test_latency_based_streams_by_time_to_first_token(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    quick, late = fakes
    late.latency = 0.06                         # before the first token
    quick.stream_chunks = late.stream_chunks = 4
    quick.chunk_delay = 0.02                    # quick to start, slow to finish
    models = [priced("g", quick.base_url, "quick-start", "0.000001", "0.000001"),
              priced("g", late.base_url, "late-start", "0.000001", "0.000001")]
    served = _served(tmp_path, lago, models, {"routing_strategy": "latency-based-routing"},
                     80, 4, stream=True)
    assert served["late-start"] < 0.2 * 80, served


def test_usage_based_keeps_each_deployment_within_its_rpm(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    models = [priced("g", a.base_url, "rpm-30", "0.000001", "0.000002", rpm=30),
              priced("g", b.base_url, "rpm-10", "0.000003", "0.000004", rpm=10)]
    settings = proxy_settings(tmp_path, router_config(
        tmp_path, models, {"routing_strategy": "usage-based-routing-v2"}), lago_env(lago))
    with run_proxy(settings) as proxy:
        replies, _ = run_load(proxy.base_url, 40, concurrency=4)
        assert {r.status for r in replies} == {200}
        served = check_billing(lago, replies, {"rpm-30": cost("0.000001", "0.000002"),
                                               "rpm-10": cost("0.000003", "0.000004")})
        assert served == {"rpm-30": 30, "rpm-10": 10}
        # Spread by use relative to each limit while both had room, not filled in turn.
        assert len(a.received) == 30 and len(b.received) == 10
        first_ten = Counter(r.headers["x-litellm-model-id"] for r in replies[:12])
        assert first_ten["rpm-10"] >= 1
        over, _ = run_load(proxy.base_url, 1, concurrency=1)
        assert over[0].status == 429
        assert "every deployment of model 'g'" in over[0].body["error"]["message"]


def test_least_busy_sends_to_the_one_with_fewest_calls_in_flight(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    quick, sluggish = fakes
    quick.latency, sluggish.latency = 0.005, 0.2
    models = [priced("g", quick.base_url, "quick", "0.000001", "0.000001"),
              priced("g", sluggish.base_url, "sluggish", "0.000001", "0.000001")]
    served = _served(tmp_path, lago, models, {"routing_strategy": "least-busy"}, 120, 6)
    # The sluggish one holds its calls 40 times longer, so it is busy when asked.
    assert served["quick"] > 0.75 * 120, served


def test_simple_shuffle_honours_weight(tmp_path: Path, lago: FakeLago,
                                       fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    models = [priced("g", a.base_url, "heavy", "0.000001", "0.000001", weight=9),
              priced("g", b.base_url, "light", "0.000001", "0.000001", weight=1)]
    served = _served(tmp_path, lago, models, {}, 300, 10)
    # Expected 270/30; P(heavy <= 240) is far below 1e-6.
    assert served["heavy"] > 240 and served["light"] >= 1, served


def test_cost_based_sends_to_the_cheapest(tmp_path: Path, lago: FakeLago,
                                          fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    models = [priced("g", a.base_url, "dear", "0.00001", "0.00002"),
              priced("g", b.base_url, "cheap", "0.000001", "0.000002")]
    served = _served(tmp_path, lago, models, {"routing_strategy": "cost-based-routing"},
                     40, 4)
    assert served == {"cheap": 40}
