"""Health-check-driven routing (LiteLLM's ``general_settings.enable_health_check_routing``
with ``background_health_checks``): a deployment that fails its background health check
gets no calls until a check passes it, unless every deployment of its group failed;
a verdict older than ``health_check_staleness_threshold`` is forgotten;
``health_check_ignore_transient_errors`` leaves 429s out; with
``router_settings.allowed_fails_policy`` the failed checks count toward cooldowns
instead. Checked against stand-in deployments that are down, over real HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tallygate import engine
from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tallygate.providers.base import Deployment
from tallygate.routing import Attempt, Router
from tallygate.routing.health import HealthChecker
from tallygate.routing.settings import DeploymentRouting, HealthRouting, RouterSettings
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import Received, run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    config_dict,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.router_support import MESSAGES, check_billing, cost, priced, router_config, run_load


@pytest.fixture(name="fakes")
def fakes_fixture() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with run_in_thread(FakeOpenAI()) as up, run_in_thread(FakeOpenAI()) as flaky:
        up.require_api_key = flaky.require_api_key = UPSTREAM_KEY
        yield up, flaky


def _client_calls(fake: FakeOpenAI) -> list[Received]:
    """What a fake got from clients (a health check asks "ping" for one token)."""
    return [r for r in fake.received if r.body and r.body.get("messages") == MESSAGES]


@pytest.mark.parametrize("routing", [True, False], ids=["routing-on", "routing-off"])
def test_a_deployment_failing_its_health_check_gets_no_calls_until_one_passes(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI],
        routing: bool) -> None:
    up, flaky = fakes
    flaky.fail_in_bursts(500, every=1, burst=1)   # down from the start
    models = [priced("g", up.base_url, "up", "0.000001", "0.000002"),
              priced("g", flaky.base_url, "flaky", "0.000003", "0.000004")]
    # Cooldowns that never trip: only the health checks may keep calls away from it.
    cfg = router_config(tmp_path, models, {"allowed_fails": 10_000, "num_retries": 2},
                        background_health_checks=True, health_check_interval=0.2,
                        enable_health_check_routing=routing)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        health = proxy.gateway.health
        wait_for(lambda: health.rounds >= 1)
        replies, _ = run_load(proxy.base_url, 40, concurrency=4)
        assert {r.status for r in replies} == {200}
        prices = {"up": cost("0.000001", "0.000002"), "flaky": cost("0.000003", "0.000004")}
        served = check_billing(lago, replies, prices)
        if not routing:
            # The control: without the setting the failing deployment takes calls
            # (each one failed, then retried on "up").
            assert len(_client_calls(flaky)) > 0
            assert served == {"up": 40}
            return
        assert _client_calls(flaky) == [] and served == {"up": 40}
        assert len(flaky.received) >= 1        # it was checked, and failed
        state = {d["model_id"]: d for d in proxy.gateway.router.snapshot()}
        assert state["flaky"]["out_of_rotation_unhealthy"] is True
        assert state["flaky"]["cooling_down"] is False   # health, not a cooldown
        # It comes back: the next passing round returns it to rotation.
        flaky.heal()
        seen = health.rounds
        wait_for(lambda: health.rounds >= seen + 2)
        replies, _ = run_load(proxy.base_url, 40, concurrency=4)
        assert {r.status for r in replies} == {200}
        served = check_billing(lago, replies, prices)
        assert served["flaky"] > 0 and served["flaky"] == len(_client_calls(flaky))


# -- the router and its health checker, without the proxy -------------------------------

def _router(up: FakeOpenAI, flaky: FakeOpenAI, **settings: Any) -> Router:
    models = {"g": (Deployment("openai", "gpt-4o-mini", up.base_url, api_key="k"),
                    Deployment("openai", "gpt-4o-mini", flaky.base_url, api_key="k"))}
    return Router(models, RouterSettings(
        num_retries=0, deployments={"g": (DeploymentRouting("up"),
                                          DeploymentRouting("flaky"))}, **settings))


async def _probe(deployment: Deployment, embedding: bool) -> None:
    await engine.probe(deployment, embedding=embedding)


async def _picks(router: Router, n: int = 40) -> Counter[str]:
    """Which deployment ``n`` calls are sent to (the call itself does nothing)."""
    out: Counter[str] = Counter()

    async def call(att: Attempt) -> None:
        out[att.target.model_id] += 1

    for _ in range(n):
        await router.run(router.resolve("g"), call)
    return out


async def _one_round(router: Router, routing: HealthRouting) -> HealthChecker:
    checker = HealthChecker(router, _probe, interval_s=3600, routing=routing)
    await router.start()
    checker.start()
    for _ in range(500):
        if checker.rounds:
            return checker
        await asyncio.sleep(0.01)
    raise AssertionError("no health round")


async def test_a_stale_verdict_is_forgotten() -> None:
    async with FakeOpenAI() as up, FakeOpenAI() as flaky:
        flaky.fail_in_bursts(503, every=1, burst=1)
        router = _router(up, flaky)
        checker = await _one_round(router, HealthRouting(stale_s=1.0))
        try:
            assert await _picks(router) == {"up": 40}
            await asyncio.sleep(1.2)   # past health_check_staleness_threshold
            assert (await _picks(router))["flaky"] > 0
        finally:
            await checker.stop()
            await router.close()


async def test_every_deployment_unhealthy_still_routes(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tallygate.routing")
    async with FakeOpenAI() as up, FakeOpenAI() as flaky:
        up.fail_in_bursts(500, every=1, burst=1)
        flaky.fail_in_bursts(500, every=1, burst=1)
        router = _router(up, flaky)
        checker = await _one_round(router, HealthRouting(stale_s=60))
        try:
            assert router.unhealthy(time.time()) == {"up", "flaky"}
            picks = await _picks(router)
            assert picks["up"] > 0 and picks["flaky"] > 0   # LiteLLM's safety net
            assert "every deployment of model 'g' failed its last health check" in caplog.text
        finally:
            await checker.stop()
            await router.close()


@pytest.mark.parametrize("ignore", [True, False])
async def test_transient_errors_can_be_ignored(ignore: bool) -> None:
    async with FakeOpenAI() as up, FakeOpenAI() as flaky:
        flaky.fail_in_bursts(429, every=1, burst=1)
        router = _router(up, flaky)
        checker = await _one_round(router, HealthRouting(stale_s=60, ignore_transient=ignore))
        try:
            picks = await _picks(router)
            if ignore:
                assert picks["flaky"] > 0   # a 429 says busy, not broken
            else:
                assert picks == {"up": 40}
        finally:
            await checker.stop()
            await router.close()


async def test_with_allowed_fails_policy_failed_checks_count_toward_cooldowns() -> None:
    async with FakeOpenAI() as up, FakeOpenAI() as flaky:
        flaky.fail_in_bursts(500, every=1, burst=1)
        # One failure allowed: the failed check is counted, the deployment stays in.
        router = _router(up, flaky, allowed_fails_policy={"server": 1}, cooldown_s=60)
        checker = await _one_round(router, HealthRouting(stale_s=60, by_policy=True))
        try:
            state = {d["model_id"]: d for d in router.snapshot()}
            assert state["flaky"]["failures_this_minute"] == 1
            assert state["flaky"]["cooling_down"] is False
            assert not state["flaky"]["out_of_rotation_unhealthy"]
            assert (await _picks(router))["flaky"] > 0   # the binary filter is bypassed
        finally:
            await checker.stop()
            await router.close()
        # None allowed: the one failed check cools it down.
        router = _router(up, flaky, allowed_fails_policy={"server": 0}, cooldown_s=60)
        checker = await _one_round(router, HealthRouting(stale_s=60, by_policy=True))
        try:
            state = {d["model_id"]: d for d in router.snapshot()}
            assert state["flaky"]["cooling_down"] is True
            assert await _picks(router) == {"up": 40}
        finally:
            await checker.stop()
            await router.close()


# -- config ---------------------------------------------------------------------------

def _parse(tmp_path: Path, **general: Any) -> Any:
    cfg = config_dict([priced("g", "http://127.0.0.1:1/v1", "a", "0", "0")], tmp_path,
                      lago=False, general=general)
    return parse_config(cfg, {}, config_path=tmp_path / "config.yaml")


def test_config_keys_of_health_check_routing(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tallygate.config")
    on = _parse(tmp_path, background_health_checks=True, health_check_interval=30,
                enable_health_check_routing=True, health_check_ignore_transient_errors=True)
    assert on.health_routing == HealthRouting(stale_s=60, ignore_transient=True)
    stale = _parse(tmp_path, background_health_checks=True, enable_health_check_routing=True,
                   health_check_staleness_threshold=45)
    assert stale.health_routing == HealthRouting(stale_s=45)
    assert _parse(tmp_path, background_health_checks=True).health_routing is None
    assert not caplog.text
    # Without background checks it has nothing to route by: said, as LiteLLM would do
    # nothing.
    off = _parse(tmp_path, enable_health_check_routing=True,
                 health_check_staleness_threshold=10)
    assert off.health_routing is None
    assert "enable_health_check_routing has no effect without" in caplog.text
    assert "health_check_staleness_threshold" in caplog.text
    with pytest.raises(ConfigError, match="health_check_staleness_threshold"):
        _parse(tmp_path, background_health_checks=True, enable_health_check_routing=True,
               health_check_staleness_threshold=0)
    with pytest.raises(ConfigError, match="enable_health_check_routing"):
        _parse(tmp_path, enable_health_check_routing="sometimes")
