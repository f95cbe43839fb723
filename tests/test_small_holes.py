"""Class 10 of issue 13: the smaller holes.

/metrics and /health/readiness need the master key when one is set (a setting; liveness
stays open); a key restricted to some models lists only those; a body shorter than its
Content-Length is cut off by a read timeout; a wrong method on a route is a 405 in that
route's API shape; ``service_tier`` is priced where the price is known, else refused.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    assert_openai_error,
    config_dict,
    http,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    raw_exchange,
    run_proxy,
)
from tests.test_access_keys import generate, mock_entry, settings

MESSAGES = [{"role": "user", "content": "hi"}]


def test_status_routes_need_the_master_key_by_default(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        key = generate(base)["key"]
        for path in ("/metrics", "/health/readiness"):
            assert_openai_error(http("GET", base + path, key=None), 401, code="missing_api_key")
            assert_openai_error(http("GET", base + path, key="sk-wrong"), 401)
            assert_openai_error(http("GET", base + path, key=key), 403)
            assert http("GET", base + path).status == 200, path
        for path in ("/health/liveliness", "/health/liveness"):
            assert http("GET", base + path, key=None).status == 200, path


@pytest.mark.parametrize("where", ["general_settings", "litellm_settings"])
def test_status_route_auth_is_a_setting(tmp_path: Path, where: str) -> None:
    cfg = config_dict([mock_entry()], tmp_path, lago=False)
    if where == "general_settings":
        cfg["general_settings"]["require_auth_for_health_readiness"] = False
        open_path, closed_path = "/health/readiness", "/metrics"
    else:
        cfg["litellm_settings"] = {"require_auth_for_metrics_endpoint": False}
        open_path, closed_path = "/metrics", "/health/readiness"
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        assert http("GET", proxy.base_url + open_path, key=None).status == 200
        assert http("GET", proxy.base_url + closed_path, key=None).status == 401


def test_without_a_master_key_status_routes_stay_open(tmp_path: Path) -> None:
    cfg = config_dict([mock_entry()], tmp_path, lago=False)
    del cfg["general_settings"]["master_key"]
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        for path in ("/metrics", "/health/readiness"):
            assert http("GET", proxy.base_url + path, key=None).status == 200, path


def test_a_restricted_key_lists_only_its_models(tmp_path: Path) -> None:
    models = [mock_entry("a"), mock_entry("b"), mock_entry("c")]
    with run_proxy(settings(tmp_path, models=models)) as proxy:
        base = proxy.base_url

        def listed(key: str) -> list[str]:
            reply = http("GET", base + "/v1/models", key=key)
            assert reply.status == 200, reply.text
            return sorted(m["id"] for m in reply.json()["data"])

        assert listed(MASTER_KEY) == ["a", "b", "c"]
        assert listed(generate(base)["key"]) == ["a", "b", "c"]
        assert listed(generate(base, models=["all-proxy-models"])["key"]) == ["a", "b", "c"]
        assert listed(generate(base, models=["b", "zzz"])["key"]) == ["b"]
        assert http("POST", base + "/team/new", {"team_id": "t", "models": ["a", "b"]}
                    ).status == 200
        assert listed(generate(base, team_id="t")["key"]) == ["a", "b"]
        restricted = generate(base, team_id="t", models=["b", "c"])["key"]
        assert listed(restricted) == ["b"]
        assert http("GET", base + "/v1/models/b", key=restricted).status == 200
        assert_openai_error(http("GET", base + "/v1/models/c", key=restricted), 404)


def _raw(base_url: str, data: bytes, wait_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    answer = raw_exchange(base_url, data, wait_s)
    return answer, time.monotonic() - started


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/key/generate"])
def test_a_body_shorter_than_its_content_length_times_out(tmp_path: Path, path: str) -> None:
    with run_proxy(settings(tmp_path, body_read_timeout_s=0.5)) as proxy:
        body = b'{"model": "m", "messages": ['
        raw = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
        answer, took = _raw(proxy.base_url, raw + body, wait_s=10)
        assert answer.split(b"\r\n")[0].endswith(b"408 Request Timeout"), answer
        assert took < 5, took
        payload = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])
        if path == "/v1/messages":
            assert payload["type"] == "error"
            assert payload["error"]["type"] == "timeout_error"
        else:
            assert payload["error"]["code"] == "request_timeout"
        # The gateway serves the next call as usual.
        ok = http("POST", proxy.base_url + "/v1/chat/completions",
                  {"model": "m", "messages": MESSAGES, "user": "u"})
        assert ok.status == 200, ok.text


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "TRACE"])
def test_a_wrong_method_is_405_in_the_routes_shape(tmp_path: Path, method: str) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        for path in ("/v1/chat/completions", "/chat/completions", "/v1/embeddings",
                     "/key/generate"):
            reply = http(method, base + path)
            err = assert_openai_error(reply, 405, code="method_not_allowed")
            assert method in err["message"]
            assert reply.headers["allow"] == "POST"
        for path in ("/v1/messages", "/messages", "/v1/messages/count_tokens"):
            reply = http(method, base + path)
            assert reply.status == 405 and reply.headers["allow"] == "POST", reply.text
            assert reply.json() == {"type": "error", "error": {
                "type": "invalid_request_error",
                "message": f"{method} is not allowed on {path}; use POST"}}
        if method != "GET":
            reply = http(method, base + "/v1/models")
            assert_openai_error(reply, 405, code="method_not_allowed")
            assert reply.headers["allow"] == "GET, HEAD"
        assert_openai_error(http(method, base + "/v1/nowhere"), 404)


def _tier_cfg(tmp_path: Path, upstream: FakeOpenAI) -> dict[str, Any]:
    return config_dict([openai_entry("mini", upstream.base_url, model="gpt-4o-mini"),
                        openai_entry("priced", upstream.base_url, model="gpt-4o-mini",
                                     input_cost_per_token=0.000001,
                                     output_cost_per_token=0.000002)],
                       tmp_path, lago=False)


def test_service_tier_is_priced_or_refused(tmp_path: Path, upstream: FakeOpenAI) -> None:
    upstream.prompt_tokens, upstream.completion_tokens = 1_000_000, 1_000_000
    with run_proxy(proxy_settings(tmp_path, _tier_cfg(tmp_path, upstream))) as proxy:
        def call(model: str, tier: Any) -> Any:
            body: dict[str, Any] = {"model": model, "messages": MESSAGES, "user": "u"}
            if tier is not None:
                body["service_tier"] = tier
            return http("POST", proxy.base_url + "/v1/chat/completions", body)

        sent = len(upstream.requests)
        standard = call("mini", None)
        assert standard.status == 200, standard.text
        cost = Decimal(standard.headers["x-tallygate-response-cost"])
        assert cost == Decimal("0.75")  # $0.15 + $0.60 per million
        for tier in ("auto", "default"):
            reply = call("mini", tier)
            assert Decimal(reply.headers["x-tallygate-response-cost"]) == cost, tier
        # genai-prices knows gpt-4o-mini's priority rates: $0.25 + $1.00 per million.
        priority = call("mini", "priority")
        assert priority.status == 200, priority.text
        assert Decimal(priority.headers["x-tallygate-response-cost"]) == Decimal("1.25")
        assert upstream.requests[-1]["service_tier"] == "priority"
        sent = len(upstream.requests)
        # No flex price for gpt-4o-mini, and none for a deployment priced in config:
        # refused before the upstream is called.
        for model, tier in (("mini", "flex"), ("priced", "priority"), ("priced", "flex"),
                            ("mini", "scale")):
            err = assert_openai_error(call(model, tier), 400, param="service_tier")
            assert repr(tier) in err["message"]
        assert_openai_error(call("mini", 5), 400, param="service_tier")
        # The Responses door passes service_tier on to OpenAI as it came: the same rule.
        responses = http("POST", proxy.base_url + "/v1/responses",
                         {"model": "mini", "input": "hi", "user": "u", "service_tier": "flex"})
        assert_openai_error(responses, 400, param="service_tier")
        assert len(upstream.requests) == sent
