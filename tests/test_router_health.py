"""GET /health in LiteLLM's shape (healthy and unhealthy endpoints, a tiny real call to
each deployment), background health checks, and deployment state in readiness and
metrics. Health checks bill nobody."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    UPSTREAM_KEY,
    free_port,
    http,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.router_support import priced, router_config


@pytest.fixture(name="fake")
def fake_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


def _models(fake: FakeOpenAI) -> list[dict[str, Any]]:
    down = f"http://127.0.0.1:{free_port()}/v1"
    embedder = priced("embed", fake.base_url, "embed-1", "0.000001", "0",
                      model="text-embedding-3-small")
    embedder["model_info"]["mode"] = "embedding"
    wildcard = priced("openai/*", fake.base_url, "wild", "0.000001", "0.000001", model="*")
    wildcard["model_info"]["health_check_model"] = "openai/gpt-4o-mini"
    unchecked = priced("other/*", fake.base_url, "unchecked", "0.000001", "0.000001",
                       model="*")
    return [priced("g", fake.base_url, "up", "0.000001", "0.000001"),
            priced("g", down, "down", "0.000001", "0.000001"), embedder, wildcard,
            unchecked]


def test_health_checks_every_deployment_on_demand(tmp_path: Path, lago: FakeLago,
                                                   fake: FakeOpenAI) -> None:
    settings = proxy_settings(tmp_path, router_config(tmp_path, _models(fake)),
                              lago_env(lago))
    with run_proxy(settings) as proxy:
        assert http("GET", proxy.base_url + "/health", key=None).status == 401
        reply = http("GET", proxy.base_url + "/health")
        assert reply.status == 200, reply.text
        body = reply.json()
        assert set(body) == {"healthy_endpoints", "unhealthy_endpoints", "healthy_count",
                             "unhealthy_count"}
        healthy = {e["model_id"]: e for e in body["healthy_endpoints"]}
        unhealthy = {e["model_id"]: e for e in body["unhealthy_endpoints"]}
        # The wildcard without a health_check_model is skipped, as LiteLLM does.
        assert set(healthy) == {"up", "embed-1", "wild"} and set(unhealthy) == {"down"}
        assert (body["healthy_count"], body["unhealthy_count"]) == (3, 1)
        assert healthy["up"] == {"model": "openai/gpt-4o-mini", "model_name": "g",
                                 "model_id": "up", "api_base": fake.base_url}
        assert "cannot connect" in unhealthy["down"]["error"]
        assert UPSTREAM_KEY not in reply.text
        # Tiny real calls: a one-token chat, an embedding of "ping", the wildcard's model.
        paths = sorted(r.path for r in fake.received)
        assert paths == ["/v1/chat/completions", "/v1/chat/completions", "/v1/embeddings"]
        assert {r["model"] for r in fake.requests} == {"gpt-4o-mini",
                                                       "text-embedding-3-small"}
        assert all(r.get("max_tokens") == 1 for r in fake.requests if "messages" in r)
        one = http("GET", proxy.base_url + "/health?model=embed").json()
        assert [e["model_id"] for e in one["healthy_endpoints"]] == ["embed-1"]
        assert one["unhealthy_count"] == 0
        # Health checks are billed to nobody.
        time.sleep(0.3)
        assert lago.stored == []
        state = {d["model_id"]: d for d in
                 http("GET", proxy.base_url + "/health/readiness").json()["router"][
                     "deployments"]}
        assert state["up"]["healthy"] is True and state["down"]["healthy"] is False
        metrics = http("GET", proxy.base_url + "/metrics").text
        assert 'tallygate_deployment_healthy{model_group="g",model_id="down"} 0.0' in metrics


def test_background_health_checks(tmp_path: Path, lago: FakeLago, fake: FakeOpenAI) -> None:
    cfg = router_config(tmp_path, _models(fake)[:2], background_health_checks=True,
                        health_check_interval=0.2, health_check_details=False)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        wait_for(lambda: len(fake.received) >= 2, timeout=10)   # two rounds, unasked
        ready = http("GET", proxy.base_url + "/health/readiness").json()
        assert ready["router"]["background_health_checks"] is True
        assert ready["router"]["health_checked_at"] is not None
        # /health answers the latest round: no call of its own.
        before = len(fake.received)
        body = http("GET", proxy.base_url + "/health").json()
        assert len(fake.received) - before <= 1   # at most one background round meanwhile
        assert body["healthy_count"] == 1 and body["unhealthy_count"] == 1
        # health_check_details: false hides endpoints and errors.
        assert body["unhealthy_endpoints"] == [{"model": "openai/gpt-4o-mini",
                                                "model_name": "g"}]
