"""Two gateways sharing Redis share cooldowns and failure counts (router_settings'
redis_url): a deployment cooled down by one is left alone by the other, and
allowed_fails counts the failures both saw."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    RunningProxy,
    http,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.router_support import priced, router_config, run_load

pytestmark = pytest.mark.redis
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(name="fakes")
def fakes_fixture() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with run_in_thread(FakeOpenAI()) as a, run_in_thread(FakeOpenAI()) as b:
        a.require_api_key = b.require_api_key = UPSTREAM_KEY
        yield a, b


def _gateways(tmp_path: Path, lago: FakeLago, models: list[dict[str, Any]],
              router: dict[str, Any], stack: ExitStack) -> list[RunningProxy]:
    out = []
    for name in ("gw1", "gw2"):
        home = tmp_path / name
        home.mkdir()
        settings = proxy_settings(home, router_config(home, models, router), lago_env(lago))
        out.append(stack.enter_context(run_proxy(settings)))
    return out


def _cooling(proxy: RunningProxy, model_id: str) -> bool:
    ready = http("GET", proxy.base_url + "/health/readiness").json()
    return any(d["model_id"] == model_id and d["cooling_down"]
               for d in ready["router"]["deployments"])


def test_a_cooldown_one_gateway_sets_holds_on_the_other(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    bad, good = fakes
    bad.fail_in_bursts(500, every=1, burst=1)
    run = uuid.uuid4().hex[:8]   # fresh ids: Redis state outlives a test run
    bad_id, good_id = f"bad-{run}", f"good-{run}"
    models = [priced("g", bad.base_url, bad_id, "0.000001", "0.000001"),
              priced("g", good.base_url, good_id, "0.000001", "0.000001")]
    router = {"redis_url": REDIS, "allowed_fails": 1, "cooldown_time": 30}
    with ExitStack() as stack:
        gw1, gw2 = _gateways(tmp_path, lago, models, router, stack)
        # One failure through each gateway: 2 > allowed_fails 1 only when counted together.
        while len(bad.received) < 1:
            replies, _ = run_load(gw1.base_url, 1, concurrency=1)
            assert replies[0].status == 200
        assert not _cooling(gw1, bad_id)
        while len(bad.received) < 2:
            replies, _ = run_load(gw2.base_url, 1, concurrency=1)
            assert replies[0].status == 200
        # Cooled down on both: gw2 saw it at once, gw1 within its next refresh.
        assert _cooling(gw2, bad_id)
        wait_for(lambda: _cooling(gw1, bad_id), timeout=5)
        for gw in (gw1, gw2):
            replies, _ = run_load(gw.base_url, 40, concurrency=5)
            assert {r.status for r in replies} == {200}
            assert {r.headers["x-litellm-model-id"] for r in replies} == {good_id}
        assert len(bad.received) == 2
