"""The router through the real proxy: retries and what is never retried, streams (retried
only before their first byte), per-request options, aliases, deployment ids, wildcard
groups, order, per-deployment max_retries, pre-call context-window checks, content-policy
fallbacks, a fallback too dear for the budget, and the answer's x-litellm-* headers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tallygate.pricing import PriceBook
from tallygate.usage import Usage
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeError, run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    assert_openai_error,
    billed,
    free_port,
    http,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.router_support import (
    MESSAGES,
    budgeted_key,
    cost,
    priced,
    reservations_left,
    router_config,
)

A_IN, A_OUT = "0.000001", "0.000002"
B_IN, B_OUT = "0.000003", "0.000004"


@pytest.fixture(name="one")
def one_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="two")
def two_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


def _proxy(tmp_path: Path, lago: FakeLago, models: list[dict[str, Any]],
           router: dict[str, Any] | None = None) -> Any:
    return run_proxy(proxy_settings(tmp_path, router_config(tmp_path, models, router),
                                    lago_env(lago)))


def _chat(proxy: RunningProxy, model: str = "g", key: str = MASTER_KEY,
          **body: Any) -> Any:
    return http("POST", proxy.base_url + "/v1/chat/completions",
                {"model": model, "messages": MESSAGES, "user": "u", **body}, key=key)


def _props(lago: FakeLago, reply: Any, customer: str = "u") -> dict[str, Any]:
    props: dict[str, Any] = billed(lago, reply.headers[CALL_ID_HEADER], customer).properties
    return props


def _closed() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


# --- retries ---------------------------------------------------------------------------


def test_a_5xx_is_retried_on_the_other_deployment_and_billed_there(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI, two: FakeOpenAI) -> None:
    one.fail_in_bursts(500, every=1, burst=1)
    two.fail_in_bursts(500, every=1, burst=1)
    models = [priced("g", one.base_url, "a", A_IN, A_OUT),
              priced("g", two.base_url, "b", B_IN, B_OUT)]
    with _proxy(tmp_path, lago, models) as proxy:
        # Both failing: 1 try + 2 retries, then the upstream's error (502), billed nothing.
        reply = _chat(proxy)
        assert_openai_error(reply, 502)
        assert len(one.received) + len(two.received) == 3
        one.heal()
        for _ in range(5):
            reply = _chat(proxy)
            assert reply.status == 200, reply.text
            assert reply.headers["x-litellm-model-id"] == "a"
            assert reply.headers["x-litellm-model-group"] == "g"
            props = _props(lago, reply)
            assert Decimal(props["response_cost"]) == cost(A_IN, A_OUT)
            assert props["model_id"] == "a" and props["api_base"].startswith("127.0.0.1:")
        assert int(reply.headers["x-litellm-attempted-retries"]) in (0, 1)
        assert reply.headers["x-litellm-attempted-fallbacks"] == "0"
        # Failed attempts bill nothing and are counted.
        assert len(lago.stored) == 5
        metrics = http("GET", proxy.base_url + "/metrics").text
        failed = re.search(r'tallygate_upstream_errors_total\{provider="openai",'
                           r'status="502"\} ([0-9.]+)', metrics)
        assert failed is not None and float(failed.group(1)) >= 3
        assert 'tallygate_deployment_attempts_total{model_group="g",model_id="b",' \
               'outcome="server"}' in metrics


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_request_and_credential_errors_are_never_retried(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI, status: int) -> None:
    one.fail(status, "no")
    with _proxy(tmp_path, lago, [priced("g", one.base_url, "a", A_IN, A_OUT)],
                {"num_retries": 3}) as proxy:
        reply = _chat(proxy)
        assert reply.status == status, reply.text
        assert len(one.received) == 1
        assert lago.stored == []


def test_a_single_deployment_waits_out_retry_after(tmp_path: Path, lago: FakeLago,
                                                   one: FakeOpenAI) -> None:
    one.fail(429, "slow down", headers={"Retry-After": "1"})
    with _proxy(tmp_path, lago, [priced("g", one.base_url, "a", A_IN, A_OUT)]) as proxy:
        started = time.monotonic()
        reply = _chat(proxy)
        assert reply.status == 200, reply.text
        assert time.monotonic() - started >= 1.0
        assert reply.headers["x-litellm-attempted-retries"] == "1"
        assert _props(lago, reply)["attempts"] == 2


def test_deployment_max_retries_tries_the_same_deployment_again(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI) -> None:
    one.fail(503, "busy")
    with _proxy(tmp_path, lago, [priced("g", one.base_url, "a", A_IN, A_OUT,
                                        max_retries=1)], {"num_retries": 0}) as proxy:
        reply = _chat(proxy)
        assert reply.status == 200, reply.text
        assert len(one.received) == 2
        assert _props(lago, reply)["attempts"] == 2


def test_retry_policy_per_error_kind(tmp_path: Path, lago: FakeLago, one: FakeOpenAI) -> None:
    one.fail(500, "boom", times=2)
    models = [priced("g", one.base_url, "a", A_IN, A_OUT)]
    router = {"retry_policy": {"InternalServerErrorRetries": 0, "RateLimitErrorRetries": 3}}
    with _proxy(tmp_path, lago, models, router) as proxy:
        assert_openai_error(_chat(proxy), 502)
        assert len(one.received) == 1


# --- per-request options ---------------------------------------------------------------


def test_request_options_fallbacks_num_retries_timeout(tmp_path: Path, lago: FakeLago,
                                                       one: FakeOpenAI,
                                                       two: FakeOpenAI) -> None:
    models = [priced("g", one.base_url, "a", A_IN, A_OUT),
              priced("other", two.base_url, "b", B_IN, B_OUT)]
    with _proxy(tmp_path, lago, models) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                               max_retries=0)
        one.fail(500, "boom", times=10)
        raw = client.chat.completions.with_raw_response.create(
            model="g", messages=MESSAGES, user="u",  # type: ignore[arg-type]
            extra_body={"fallbacks": ["other"], "num_retries": 0})
        assert raw.headers["x-litellm-model-id"] == "b"
        assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
        assert len(one.received) == 1  # num_retries 0: straight to the fallback
        # The options are the gateway's: never sent upstream.
        assert not {"fallbacks", "num_retries", "timeout"} & set(two.requests[-1])
        props = _props(lago, raw)
        assert props["fallback_group"] == "other" and props["model_group"] == "g"
        assert Decimal(props["response_cost"]) == cost(B_IN, B_OUT)

        assert_openai_error(_chat(proxy, fallbacks=["nope"]), 400, param="fallbacks[0]")
        assert_openai_error(_chat(proxy, num_retries=-1), 400, param="num_retries")
        one.errors.clear()
        one.latency = 1.0
        started = time.monotonic()
        assert_openai_error(_chat(proxy, timeout=0.2, num_retries=0,
                                  disable_fallbacks=True), 504)
        assert time.monotonic() - started < 0.9
        client.close()


# --- streams ---------------------------------------------------------------------------


def test_a_stream_is_retried_before_its_first_byte(tmp_path: Path, lago: FakeLago,
                                                   one: FakeOpenAI, two: FakeOpenAI) -> None:
    models = [priced("g", one.base_url, "a", A_IN, A_OUT, order=1),
              priced("g", two.base_url, "b", B_IN, B_OUT, order=2)]
    with _proxy(tmp_path, lago, models) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                               max_retries=0)
        for fault in ("500", "drop"):
            if fault == "500":
                one.fail(500, "boom")
            else:
                one.drop_connection = "before"
            raw = client.chat.completions.with_raw_response.create(
                model="g", messages=MESSAGES, user="u", stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True})
            assert raw.headers["x-litellm-model-id"] == "b", fault
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse()
                           if c.choices)
            assert text == two.reply_text
            props = _props(lago, raw)
            assert Decimal(props["response_cost"]) == cost(B_IN, B_OUT)
            assert props["attempts"] == 2 and "stream" in props["flags"]
        one.drop_connection = None
        assert len(lago.stored) == 2  # the failed attempts billed nothing
        client.close()


def test_a_stream_that_breaks_midway_is_not_retried_and_is_billed(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI, two: FakeOpenAI) -> None:
    one.drop_connection = "mid"
    one.stream_chunks = 6
    models = [priced("g", one.base_url, "a", A_IN, A_OUT, order=1),
              priced("g", two.base_url, "b", B_IN, B_OUT, order=2)]
    with _proxy(tmp_path, lago, models) as proxy:
        reply = _chat(proxy, stream=True)
        assert reply.status == 200
        assert reply.headers["x-litellm-model-id"] == "a"
        assert '"error"' in reply.text           # reported in-band
        assert two.received == []                # no retry after the first byte
        props = _props(lago, reply)
        assert props["usage_source"] == "estimated" and props["model_id"] == "a"
        assert proxy.gateway.router.stats["a"].failures == {"server": 1}


# --- names: aliases, ids, wildcards ------------------------------------------------------


def test_aliases_ids_and_the_models_list(tmp_path: Path, lago: FakeLago,
                                         one: FakeOpenAI) -> None:
    models = [priced("g", one.base_url, "dep-a", A_IN, A_OUT)]
    router = {"model_group_alias": {"gpt4": "g", "secret": {"model": "g", "hidden": True}}}
    with _proxy(tmp_path, lago, models, router) as proxy:
        listed = http("GET", proxy.base_url + "/v1/models").json()["data"]
        assert sorted(m["id"] for m in listed) == ["g", "gpt4"]
        for name in ("gpt4", "secret", "dep-a"):
            reply = _chat(proxy, model=name)
            assert reply.status == 200, reply.text
            assert reply.headers["x-litellm-model-group"] == "g"
            assert _props(lago, reply)["model_group"] == name  # what the client asked for
        assert_openai_error(_chat(proxy, model="nothing"), 404, code="model_not_found")


def test_wildcard_groups_send_and_price_the_model_asked_for(
        tmp_path: Path, lago: FakeLago, claude: FakeAnthropic, one: FakeOpenAI) -> None:
    models = [anthropic_entry("anthropic/*", claude.base_url, model="*"),
              {"model_name": "*", "litellm_params": {
                  "model": "openai/*", "api_base": one.base_url, "api_key": UPSTREAM_KEY,
                  "input_cost_per_token": A_IN, "output_cost_per_token": A_OUT}}]
    with _proxy(tmp_path, lago, models) as proxy:
        haiku = "claude-3-5-haiku-20241022"
        price = PriceBook().price("anthropic", haiku, Usage(input_tokens=12,
                                                            output_tokens=7)).cost
        for asked in (f"anthropic/{haiku}", haiku):   # claude-* reaches anthropic/*
            reply = _chat(proxy, model=asked)
            assert reply.status == 200, reply.text
            assert claude.requests[-1]["model"] == haiku
            assert reply.headers["x-litellm-model-group"] == "anthropic/*"
            assert Decimal(reply.headers[COST_HEADER]) == price
            props = _props(lago, reply)
            assert props["provider_model"] == haiku and props["model_group"] == asked
        # A Claude Code style id that changes every release: sent as asked.
        reply = _chat(proxy, model="claude-opus-4-8[1m]")
        assert claude.requests[-1]["model"] == "claude-opus-4-8[1m]"
        # Anything else: the catch-all, the name sent as it is.
        reply = _chat(proxy, model="my-local-llm")
        assert reply.status == 200, reply.text
        assert one.requests[-1]["model"] == "my-local-llm"
        assert reply.headers["x-litellm-model-group"] == "*"
        assert Decimal(_props(lago, reply)["response_cost"]) == cost(A_IN, A_OUT)


def test_a_claude_star_group_sends_the_whole_id(tmp_path: Path, lago: FakeLago,
                                                claude: FakeAnthropic) -> None:
    models = [anthropic_entry("claude-*", claude.base_url, model="*")]
    with _proxy(tmp_path, lago, models) as proxy:
        reply = _chat(proxy, model="claude-sonnet-4-5")
        assert reply.status == 200, reply.text
        assert claude.requests[-1]["model"] == "claude-sonnet-4-5"


# --- order, context windows, content policy ------------------------------------------------


def test_order_sends_to_the_first_until_it_is_down(tmp_path: Path, lago: FakeLago,
                                                   one: FakeOpenAI, two: FakeOpenAI) -> None:
    models = [priced("g", two.base_url, "second", B_IN, B_OUT, order=2),
              priced("g", one.base_url, "first", A_IN, A_OUT, order=1)]
    with _proxy(tmp_path, lago, models, {"allowed_fails": 0, "cooldown_time": 30}) as proxy:
        served = [_chat(proxy).headers["x-litellm-model-id"] for _ in range(10)]
        assert served == ["first"] * 10
        one.fail_in_bursts(500, every=1, burst=1)
        served = [_chat(proxy).headers["x-litellm-model-id"] for _ in range(10)]
        assert served == ["second"] * 10
        assert len(one.received) == 11   # one failure, then cooled down for 30 s
        ready = http("GET", proxy.base_url + "/health/readiness").json()
        state = {d["model_id"]: d for d in ready["router"]["deployments"]}
        assert state["first"]["cooling_down"] is True
        assert state["first"]["cooldown_reason"] == "server"
        assert state["second"]["cooling_down"] is False
        metrics = http("GET", proxy.base_url + "/metrics").text
        assert 'tallygate_deployment_cooling_down{model_group="g",model_id="first"} 1.0' \
            in metrics


def test_pre_call_checks_skip_deployments_whose_window_is_too_small(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI, two: FakeOpenAI) -> None:
    small = priced("g", one.base_url, "small", A_IN, A_OUT)
    small["model_info"]["max_input_tokens"] = 50
    big = priced("big", two.base_url, "big-1", B_IN, B_OUT)
    router = {"enable_pre_call_checks": True,
              "context_window_fallbacks": [{"g": ["big"]}]}
    with _proxy(tmp_path, lago, [small, big], router) as proxy:
        assert _chat(proxy).headers["x-litellm-model-id"] == "small"
        long_prompt = [{"role": "user", "content": "word " * 400}]
        reply = _chat(proxy, messages=long_prompt)
        assert reply.status == 200, reply.text
        assert reply.headers["x-litellm-model-id"] == "big-1"
        assert len(one.received) == 1        # never sent to the small one
    (tmp_path / "none").mkdir()
    with _proxy(tmp_path / "none", lago, [small],
                {"enable_pre_call_checks": True}) as proxy:
        reply = _chat(proxy, messages=long_prompt)
        assert_openai_error(reply, 400, code="context_length_exceeded", param="messages")


def test_a_content_policy_refusal_goes_to_its_fallback(tmp_path: Path, lago: FakeLago,
                                                       one: FakeOpenAI,
                                                       two: FakeOpenAI) -> None:
    body = one.error_body(400, "Your request was rejected by the safety system.", None)
    body["error"]["code"] = "content_policy_violation"
    one.errors.append(FakeError(400, body))
    models = [priced("strict", one.base_url, "s", A_IN, A_OUT),
              priced("lenient", two.base_url, "l", B_IN, B_OUT)]
    router = {"content_policy_fallbacks": [{"strict": ["lenient"]}],
              "fallbacks": [{"strict": ["nowhere-used"]}],
              "model_group_alias": {"nowhere-used": "strict"}}
    with _proxy(tmp_path, lago, models, router) as proxy:
        reply = _chat(proxy, model="strict")
        assert reply.status == 200, reply.text
        assert reply.headers["x-litellm-model-id"] == "l"
        # A plain 400 falls back nowhere.
        one.fail(400, "bad parameter")
        assert_openai_error(_chat(proxy, model="strict"), 400)


# --- budgets ---------------------------------------------------------------------------


def test_a_fallback_too_dear_for_the_budget_is_refused_and_leaves_nothing(
        tmp_path: Path, lago: FakeLago, one: FakeOpenAI, two: FakeOpenAI) -> None:
    from tallygate.access.budgets import to_micros
    from tallygate.estimate import estimate_prompt_tokens
    from tests.router_support import spend_micros

    worst_tokens = estimate_prompt_tokens(MESSAGES) + 1   # max_tokens 1: the reservation
    models = [priced("cheap", one.base_url, "cheap-1", "0.0025", "0.0025"),
              priced("g", _closed(), "down", "0.0003", "0.0003"),
              priced("dear", two.base_url, "dear-1", "0.01", "0.01")]
    router = {"fallbacks": [{"g": ["dear"]}], "num_retries": 0}
    with _proxy(tmp_path, lago, models, router) as proxy:
        key = budgeted_key(proxy.base_url, "acme", budget=0.05)
        # $0.0475 spent of $0.05.
        assert _chat(proxy, model="cheap", key=key, max_tokens=1).status == 200
        assert reservations_left(proxy) == (0, 0)   # settled (written after the answer)
        spent = to_micros(19 * Decimal("0.0025"))
        # g's reservation fits ($0.0475 + nothing held < $0.05) ...
        assert 0.0475 + worst_tokens * 0.0003 >= 0.05
        # ... but growing it to the dear fallback's does not: refused, before any call.
        refused = _chat(proxy, key=key, max_tokens=1)
        err = assert_openai_error(refused, 429, code="budget_exceeded")
        assert "customer 'acme'" in err["message"]
        assert two.received == []
        assert reservations_left(proxy) == (0, 0)
        assert spend_micros(proxy, "acme") == spent
        wait_for(lambda: lago.stored)
        time.sleep(0.3)
        assert len(lago.stored) == 1   # the refused call billed nothing
