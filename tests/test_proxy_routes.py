"""Every route of the proxy: chat and embeddings (with and without /v1), models,
health and metrics; master-key auth on model routes only."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    assert_openai_error,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url),
                       openai_entry("embedder", upstream.base_url,
                                    model="text-embedding-3-small")], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_chat_routes(proxy: RunningProxy, lago: FakeLago, path: str) -> None:
    reply = http("POST", proxy.base_url + path,
                 {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "c-chat"})
    assert reply.status == 200, reply.text
    billed(lago, reply.headers[CALL_ID_HEADER], "c-chat")


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings"])
def test_embeddings_billed_input_only(proxy: RunningProxy, lago: FakeLago,
                                      upstream: FakeOpenAI, path: str) -> None:
    upstream.prompt_tokens = 321
    reply = http("POST", proxy.base_url + path,
                 {"model": "embedder", "input": ["one", "two"], "user": "c-emb"})
    assert reply.status == 200, reply.text
    assert len(reply.json()["data"]) == 2
    ev = billed(lago, reply.headers[CALL_ID_HEADER], "c-emb")
    assert ev.properties["kind"] == "embedding"
    assert ev.properties["input_tokens"] == 321
    assert ev.properties["output_tokens"] == 0
    # text-embedding-3-small is $0.02 / 1M input tokens
    assert Decimal(reply.headers[COST_HEADER]) == 321 * Decimal("0.00000002")
    assert Decimal(ev.properties["response_cost"]) == Decimal(reply.headers[COST_HEADER])


def test_embeddings_with_openai_sdk(proxy: RunningProxy, lago: FakeLago) -> None:
    client = openai.OpenAI(base_url=proxy.base_url, api_key=MASTER_KEY, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="embedder", input="hello",
                                                     user="c-sdk-emb")
    assert len(raw.parse().data[0].embedding) == 8  # the SDK decoded base64 floats
    billed(lago, raw.headers[CALL_ID_HEADER], "c-sdk-emb")


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models(proxy: RunningProxy, path: str) -> None:
    reply = http("GET", proxy.base_url + path)
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["embedder", "gpt-4o-mini"]
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["embedder", "gpt-4o-mini"]


@pytest.mark.parametrize("path", ["/health/liveliness", "/health/liveness"])
def test_liveness_open(proxy: RunningProxy, path: str) -> None:
    reply = http("GET", proxy.base_url + path, key=None)
    assert reply.status == 200 and reply.json() == "I'm alive!"


def test_readiness_reports_outbox(proxy: RunningProxy, lago: FakeLago) -> None:
    reply = http("POST", proxy.base_url + "/v1/chat/completions",
                 {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "c-ready"})
    billed(lago, reply.headers[CALL_ID_HEADER], "c-ready")

    def delivered() -> object:
        r = http("GET", proxy.base_url + "/health/readiness")
        assert r.status == 200, r.text
        body = r.json()
        # One row: the event for Lago. On SQLite the call's settlement was written by
        # the same insert, so the ledger sink had nothing to deliver.
        return body if body["outbox"]["delivered"] == 1 else None

    body = wait_for(delivered)
    assert body["status"] == "healthy"
    assert body["outbox"]["pending"] == 0 and body["outbox"]["dead"] == 0
    assert body["sinks"]["lago"]["delivered"] == 1
    assert body["sinks"]["ledger"] == {"paused": False, "degraded": False, "delivered": 0,
                                       "retried": 0, "dead": 0, "last_error": None}
    logs = http("GET", proxy.base_url + "/spend/logs").json()["logs"]
    assert [row["call_id"] for row in logs] == [reply.headers[CALL_ID_HEADER]]
    assert TEST_API_KEY not in str(body)


def test_model_routes_need_the_master_key(proxy: RunningProxy) -> None:
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "x"}
    for method, path, body in (("POST", "/v1/chat/completions", chat),
                               ("POST", "/chat/completions", chat),
                               ("POST", "/v1/embeddings", {"model": "embedder", "input": "a"}),
                               ("GET", "/v1/models", None), ("GET", "/models", None)):
        assert_openai_error(http(method, proxy.base_url + path, body, key=None), 401,
                            code="missing_api_key")
        assert_openai_error(http(method, proxy.base_url + path, body, key="sk-wrong"), 401,
                            code="invalid_api_key")
        assert_openai_error(http(method, proxy.base_url + path, body, key=None,
                                 headers={"Authorization": "Basic abc"}), 401)
    # LiteLLM clients also send the key as x-api-key
    ok = http("POST", proxy.base_url + "/v1/chat/completions", chat, key=None,
              headers={"x-api-key": MASTER_KEY})
    assert ok.status == 200, ok.text
    client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    for path in ("/health/liveliness", "/health/liveness"):
        assert http("GET", proxy.base_url + path, key=None).status == 200, path
    for path in ("/health/readiness", "/metrics"):  # the master key's, when one is set
        assert http("GET", proxy.base_url + path, key=None).status == 401, path


def test_metrics(proxy: RunningProxy, lago: FakeLago) -> None:
    reply = http("POST", proxy.base_url + "/v1/chat/completions",
                 {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "c-metrics"})
    billed(lago, reply.headers[CALL_ID_HEADER], "c-metrics")
    http("POST", proxy.base_url + "/v1/chat/completions", {"model": "nope", "messages": MESSAGES})
    cost = reply.headers[COST_HEADER]

    def scrape() -> str | None:
        r = http("GET", proxy.base_url + "/metrics")
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        ok = 'tallygate_delivery_events{sink="lago",outcome="delivered"} 1.0' in r.text
        return r.text if ok else None

    text = wait_for(scrape)
    lines = text.splitlines()
    assert 'tallygate_requests_total{route="chat",model="gpt-4o-mini",status="200"} 1' in lines
    assert 'tallygate_requests_total{route="chat",model="unknown",status="404"} 1' in lines
    assert any(line.startswith('tallygate_request_duration_seconds_bucket{route="chat",le="+Inf"}')
               for line in lines)
    assert 'tallygate_tokens_total{model="gpt-4o-mini",bucket="input"} 12' in lines
    assert 'tallygate_tokens_total{model="gpt-4o-mini",bucket="output"} 7' in lines
    assert f'tallygate_cost_usd_total{{model="gpt-4o-mini"}} {cost}' in lines
    assert 'tallygate_outbox_rows{state="pending"} 0.0' in lines
    assert "# TYPE tallygate_requests_total counter" in lines
    for secret in (MASTER_KEY, TEST_API_KEY, UPSTREAM_KEY, "c-metrics"):
        assert secret not in text
