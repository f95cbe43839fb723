"""Fault tests of the router against real stand-in upstreams on loopback (issue 12).

Each scenario sends ``CALLS`` calls, 20 at a time, through the real proxy with a virtual
key whose customer has a budget, while one deployment of a two-deployment group fails
in one way (refusing connections, 500s in bursts, 429 with Retry-After, slower than its
timeout), or a whole group is down with a fallback group up, or the model's context
window is too small with a context-window fallback. Each must show:

- zero failed client calls (a healthy deployment or fallback exists);
- calls sent to the failing deployment bounded by ``allowed_fails`` per cooldown window
  (plus the calls already in flight when it trips);
- every successful call billed exactly once, at the answering deployment's price;
- no budget reservation left behind, and the budget spent the sum of the bills.

1,000 calls a scenario at 20 concurrent, the issue's figure (``TALLYGATE_ROUTER_FAULT_CALLS``
sets another count); ``pytest -rP`` shows each scenario's figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallygate.access.budgets import to_micros
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeError, run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    RunningProxy,
    free_port,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
)
from tests.router_support import (
    Reply,
    budgeted_key,
    check_billing,
    cost,
    priced,
    reservations_left,
    router_config,
    run_load,
    spend_micros,
)

CALLS = int(os.environ.get("TALLYGATE_ROUTER_FAULT_CALLS", "1000"))
CONCURRENCY = 20
ALLOWED_FAILS = 2
COOLDOWN_S = 1.0
A_IN, A_OUT = "0.000001", "0.000002"      # the failing deployment's price
B_IN, B_OUT = "0.000003", "0.000004"      # the healthy one's
C_IN, C_OUT = "0.00001", "0.00002"        # the fallback group's (dearer)
BODY = {"max_tokens": 20}                  # a bound, so budget reservations are priced
ROUTER = {"allowed_fails": ALLOWED_FAILS, "cooldown_time": COOLDOWN_S, "num_retries": 2}


@pytest.fixture(name="good")
def good_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="bad")
def bad_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


def _closed() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connections refused


def _run(tmp_path: Path, lago: FakeLago, models: list[dict[str, Any]],
         router: dict[str, Any]) -> tuple[RunningProxy, list[Reply], float, Any]:
    settings = proxy_settings(tmp_path, router_config(tmp_path, models, router),
                              lago_env(lago))
    cm = run_proxy(settings)
    proxy = cm.__enter__()
    key = budgeted_key(proxy.base_url)
    replies, took = run_load(proxy.base_url, CALLS, concurrency=CONCURRENCY, key=key,
                             body=BODY)
    return proxy, replies, took, cm


def _held_to_promises(proxy: RunningProxy, lago: FakeLago, replies: list[Reply],
                      prices: dict[str, Decimal]) -> Any:
    statuses = {r.status for r in replies}
    assert statuses == {200}, [(r.status, r.body) for r in replies if r.status != 200][:3]
    served = check_billing(lago, replies, prices)
    assert reservations_left(proxy) == (0, 0)
    assert spend_micros(proxy, "acme") == sum(
        to_micros(prices[r.headers["x-litellm-model-id"]]) for r in replies)
    return served


def _bound(took: float, per_window: int) -> int:
    """Calls a failing deployment may get: per cooldown window, the failures that trip
    it plus those in flight at that moment."""
    windows = math.ceil(took / COOLDOWN_S) + 1
    return windows * per_window


def _report(name: str, took: float, sent: int, bound: int) -> None:
    # Shown with ``pytest -rP``: the figures of each scenario.
    print(f"{name}: {CALLS} calls in {took:.2f}s ({CALLS / took:.0f}/s), "
          f"{sent} sent to the failing deployment (bound {bound})")


def _failures(proxy: RunningProxy, model_id: str) -> int:
    return sum(proxy.gateway.router.stats[model_id].failures.values())


def test_a_deployment_refusing_connections(tmp_path: Path, lago: FakeLago,
                                           good: FakeOpenAI) -> None:
    models = [priced("g", _closed(), "down", A_IN, A_OUT),
              priced("g", good.base_url, "up", B_IN, B_OUT)]
    proxy, replies, took, cm = _run(tmp_path, lago, models, ROUTER)
    try:
        served = _held_to_promises(proxy, lago, replies, {"up": cost(B_IN, B_OUT)})
        assert served == {"up": CALLS}
        sent = _failures(proxy, "down")  # a refused connection reaches no server to count
        bound = _bound(took, ALLOWED_FAILS + 1 + CONCURRENCY)
        _report("refused", took, sent, bound)
        assert 1 <= sent <= bound, (sent, took)
        assert len(good.received) == CALLS
    finally:
        cm.__exit__(None, None, None)


def test_a_deployment_answering_500_in_bursts(tmp_path: Path, lago: FakeLago,
                                              good: FakeOpenAI, bad: FakeOpenAI) -> None:
    bad.fail_in_bursts(500, every=40, burst=15)
    models = [priced("g", bad.base_url, "bursty", A_IN, A_OUT),
              priced("g", good.base_url, "up", B_IN, B_OUT)]
    proxy, replies, took, cm = _run(tmp_path, lago, models, ROUTER)
    try:
        prices = {"bursty": cost(A_IN, A_OUT), "up": cost(B_IN, B_OUT)}
        served = _held_to_promises(proxy, lago, replies, prices)
        assert served["bursty"] == bad.answered and served["up"] == len(good.received)
        failed = len(bad.received) - bad.answered
        bound = _bound(took, ALLOWED_FAILS + 1 + CONCURRENCY)
        _report("500 bursts", took, failed, bound)
        assert 1 <= failed <= bound, (failed, took)
        # Retried: every failed attempt was answered elsewhere (a retry may land on the
        # bursty one again, so at least one attempt each).
        assert sum(served.values()) == CALLS
    finally:
        cm.__exit__(None, None, None)


def test_a_deployment_answering_429_with_retry_after(tmp_path: Path, lago: FakeLago,
                                                     good: FakeOpenAI,
                                                     bad: FakeOpenAI) -> None:
    bad.fail_in_bursts(429, every=1, burst=1, headers={"Retry-After": "1"})
    models = [priced("g", bad.base_url, "limited", A_IN, A_OUT),
              priced("g", good.base_url, "up", B_IN, B_OUT)]
    proxy, replies, took, cm = _run(tmp_path, lago, models, ROUTER)
    try:
        served = _held_to_promises(proxy, lago, replies, {"up": cost(B_IN, B_OUT)})
        assert served == {"up": CALLS}
        # A 429 with Retry-After takes it out at once, for that long: one call a window
        # (and those in flight with it).
        sent = len(bad.received)
        bound = _bound(took, 1 + CONCURRENCY)
        _report("429 Retry-After", took, sent, bound)
        assert 1 <= sent <= bound, (sent, took)
    finally:
        cm.__exit__(None, None, None)


def test_a_deployment_slower_than_its_timeout(tmp_path: Path, lago: FakeLago,
                                              good: FakeOpenAI, bad: FakeOpenAI) -> None:
    bad.latency = 2.0
    models = [priced("g", bad.base_url, "slow", A_IN, A_OUT, timeout=0.2),
              priced("g", good.base_url, "up", B_IN, B_OUT)]
    proxy, replies, took, cm = _run(tmp_path, lago, models, ROUTER)
    try:
        served = _held_to_promises(proxy, lago, replies, {"up": cost(B_IN, B_OUT)})
        assert served == {"up": CALLS}
        # Counted by the router: an attempt may time out before the stand-in reads it.
        failures = proxy.gateway.router.stats["slow"].failures
        assert set(failures) == {"timeout"} and failures["timeout"] >= len(bad.received)
        sent = failures["timeout"]
        bound = _bound(took, ALLOWED_FAILS + 1 + CONCURRENCY)
        _report("timeout", took, sent, bound)
        assert 1 <= sent <= bound, (sent, took)
    finally:
        cm.__exit__(None, None, None)


def test_a_group_all_down_falls_back_to_a_group_that_is_up(tmp_path: Path, lago: FakeLago,
                                                           good: FakeOpenAI) -> None:
    models = [priced("g", _closed(), "down-1", A_IN, A_OUT),
              priced("g", _closed(), "down-2", A_IN, A_OUT),
              priced("backup", good.base_url, "backup-1", C_IN, C_OUT)]
    proxy, replies, took, cm = _run(tmp_path, lago, models,
                                    {**ROUTER, "fallbacks": [{"g": ["backup"]}]})
    try:
        served = _held_to_promises(proxy, lago, replies, {"backup-1": cost(C_IN, C_OUT)})
        assert served == {"backup-1": CALLS}
        for reply in replies:
            assert reply.headers["x-litellm-attempted-fallbacks"] == "1"
            assert reply.headers["x-litellm-model-group"] == "backup"
            props = lago.events[reply.headers["x-tallygate-call-id"]].properties
            assert props["fallbacks"] == 1 and props["fallback_group"] == "backup"
            assert props["model_group"] == "g"   # the name the client asked for
        sent = _failures(proxy, "down-1") + _failures(proxy, "down-2")
        bound = _bound(took, 2 * (ALLOWED_FAILS + 1) + CONCURRENCY)
        _report("group down, fallback up", took, sent, bound)
        assert sent <= bound, (sent, took)
        # Most calls found both cooling down and went straight to the fallback.
        assert sent < CALLS
    finally:
        cm.__exit__(None, None, None)


def test_a_context_window_error_goes_to_the_context_window_fallback(
        tmp_path: Path, lago: FakeLago, good: FakeOpenAI, bad: FakeOpenAI) -> None:
    error = bad.error_body(400, "This model's maximum context length is 8192 tokens. "
                                "However, your messages resulted in 9000 tokens.", None)
    error["error"]["code"] = "context_length_exceeded"
    too_long = FakeError(400, error)
    bad.fault = lambda n: too_long
    models = [priced("small", bad.base_url, "small-1", A_IN, A_OUT),
              priced("large", good.base_url, "large-1", C_IN, C_OUT)]
    settings = proxy_settings(tmp_path, router_config(
        tmp_path, models, {**ROUTER, "context_window_fallbacks": [{"small": ["large"]}]}),
        lago_env(lago))
    with run_proxy(settings) as proxy:
        key = budgeted_key(proxy.base_url)
        replies, _ = run_load(proxy.base_url, CALLS, concurrency=CONCURRENCY, key=key,
                              body=BODY, model="small")
        served = _held_to_promises(proxy, lago, replies, {"large-1": cost(C_IN, C_OUT)})
        assert served == {"large-1": CALLS}
        # Never retried on the small model: one attempt each, then the fallback.
        assert len(bad.received) == CALLS
        assert all(r.headers["x-litellm-attempted-retries"] == "0" for r in replies)
