"""Fallbacks carrying their own request params, in LiteLLM's shapes: in the config
(``fallbacks: [{"g": [{"model": "backup", "temperature": 0.2}]}]``) and per request
(``fallbacks: [{"model": "backup", "messages": [...]}]``). The fallback's call uses its
params, the failed call used the client's; the answer is billed once, at the answering
deployment's price; the budget reservation covers the fallback's own estimate. The
official openai SDK is the client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    anthropic_entry,
    assert_openai_error,
    billed,
    config_dict,
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

A_IN, A_OUT = "0.000001", "0.000002"     # the failing group's deployment
B_IN, B_OUT = "0.000003", "0.000004"     # the fallback's
SHORT = [{"role": "user", "content": "in short"}]


@pytest.fixture(name="fakes")
def fakes_fixture() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with run_in_thread(FakeOpenAI()) as primary, run_in_thread(FakeOpenAI()) as backup:
        primary.require_api_key = backup.require_api_key = UPSTREAM_KEY
        primary.fail_in_bursts(500, every=1, burst=1)   # g is down
        yield primary, backup


def _models(primary: FakeOpenAI, backup: FakeOpenAI) -> list[dict[str, Any]]:
    return [priced("g", primary.base_url, "a", A_IN, A_OUT),
            priced("backup", backup.base_url, "b", B_IN, B_OUT)]


def _client(base_url: str, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)


def test_config_fallback_params_are_used_by_the_fallback_call(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    primary, backup = fakes
    router = {"num_retries": 0, "fallbacks": [
        {"g": [{"model": "backup", "temperature": 0.2, "max_tokens": 5}]}]}
    cfg = router_config(tmp_path, _models(primary, backup), router)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        key = budgeted_key(proxy.base_url, "acme")
        client = _client(proxy.base_url, key)
        raw = client.chat.completions.with_raw_response.create(
            model="g", messages=MESSAGES, temperature=0.9, max_tokens=50)  # type: ignore[arg-type]
        answer = raw.parse()
        assert answer.choices[0].message.content
        assert raw.headers["x-litellm-model-id"] == "b"
        assert raw.headers["x-litellm-attempted-fallbacks"] == "1"
        # The failed call went with the client's params, the fallback's with its own.
        assert [(r["temperature"], r["max_tokens"]) for r in primary.requests] == [(0.9, 50)]
        sent = backup.requests[-1]
        assert (sent["temperature"], sent["max_tokens"]) == (0.2, 5)
        assert sent["messages"] == MESSAGES
        # Billed once, at the deployment that answered, under the group asked for.
        props = billed(lago, raw.headers[CALL_ID_HEADER], "acme").properties
        assert props["model_id"] == "b" and props["model_group"] == "g"
        assert props["fallback_group"] == "backup"
        assert Decimal(props["response_cost"]) == cost(B_IN, B_OUT)
        assert reservations_left(proxy) == (0, 0)
        # A stream falls back the same way (before its first byte).
        chunks = list(client.chat.completions.create(
            model="g", messages=MESSAGES, temperature=0.9, stream=True))  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert backup.requests[-1]["temperature"] == 0.2
        assert reservations_left(proxy) == (0, 0)
        client.close()


def test_request_fallback_params_through_the_openai_sdk(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    primary, backup = fakes
    embedders = [priced("embed", primary.base_url, "ea", A_IN, "0",
                        model="text-embedding-3-small"),
                 priced("embed-backup", backup.base_url, "eb", B_IN, "0",
                        model="text-embedding-3-small")]
    cfg = router_config(tmp_path, [*_models(primary, backup), *embedders], {"num_retries": 0})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        client = _client(proxy.base_url)
        raw = client.chat.completions.with_raw_response.create(
            model="g", messages=MESSAGES, user="u",  # type: ignore[arg-type]
            extra_body={"fallbacks": [{"model": "backup", "messages": SHORT,
                                       "temperature": 0}]})
        assert raw.parse().choices[0].message.content
        assert raw.headers["x-litellm-model-id"] == "b"
        assert primary.requests[-1]["messages"] == MESSAGES
        sent = backup.requests[-1]
        assert sent["messages"] == SHORT and sent["temperature"] == 0
        assert "fallbacks" not in sent and "fallbacks" not in primary.requests[-1]
        props = billed(lago, raw.headers[CALL_ID_HEADER], "u").properties
        assert props["model_id"] == "b"
        assert Decimal(props["response_cost"]) == cost(B_IN, B_OUT)
        # A name and a name with params mix, in order; the same group may come back
        # with other params (as LiteLLM tries a dict entry naming the failing group).
        before = len(primary.received)
        reply = client.chat.completions.with_raw_response.create(
            model="g", messages=MESSAGES, user="u",  # type: ignore[arg-type]
            extra_body={"fallbacks": [{"model": "g", "max_tokens": 3}, "backup"]})
        assert reply.headers["x-litellm-model-id"] == "b"
        assert reply.headers["x-litellm-attempted-fallbacks"] == "2"
        tried = [r.body for r in primary.received[before:] if r.body]
        assert [b.get("max_tokens") for b in tried] == [None, 3]
        assert "max_tokens" not in backup.requests[-1]  # a plain name: the client's params
        # Embeddings take them too (the fallback's own input).
        emb = client.embeddings.with_raw_response.create(
            model="embed", input="a long text", user="u",
            extra_body={"fallbacks": [{"model": "embed-backup", "input": "short"}]})
        assert emb.headers["x-litellm-model-id"] == "eb"
        assert len(emb.parse().data) == 1
        assert backup.requests[-1]["input"] == "short"
        assert primary.requests[-1]["input"] == "a long text"
        client.close()


def test_request_fallback_params_refused_with_a_clear_400(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    primary, backup = fakes
    models = [*_models(primary, backup), anthropic_entry("claude", backup.base_url)]
    cfg = router_config(tmp_path, models, {"num_retries": 0})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        key = budgeted_key(proxy.base_url, "acme")
        url = proxy.base_url + "/v1/chat/completions"
        body = {"model": "g", "messages": MESSAGES}

        def chat(fallbacks: Any) -> Any:
            return http("POST", url, {**body, "fallbacks": fallbacks}, key=key)

        # Who pays, where the call goes and the answer's shape are not per fallback.
        for field in ("user", "api_base", "stream"):
            err = assert_openai_error(chat([{"model": "backup", field: "x"}]), 400,
                                      param="fallbacks[0]")
            assert field in err["message"]
        # The params are checked as the client's are, before anything is sent.
        assert_openai_error(chat([{"model": "backup", "messages": "hi"}]), 400,
                            param="fallbacks[0].messages")
        assert_openai_error(chat([{"temperature": 1}]), 400, param="fallbacks[0]")
        assert_openai_error(chat([{"model": "nope", "temperature": 1}]), 400,
                            param="fallbacks[0]")
        assert primary.received == [] and backup.received == []
        assert reservations_left(proxy) == (0, 0)
        # A route whose params are not OpenAI's request fields cannot apply them.
        reply = http("POST", proxy.base_url + "/v1/messages",
                     {"model": "claude", "max_tokens": 5, "messages": MESSAGES,
                      "fallbacks": [{"model": "backup", "temperature": 0}]}, key=key)
        assert reply.status == 400 and "per-fallback parameters" in reply.text
        assert backup.received == []


def test_budget_reservation_covers_the_fallbacks_own_params(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    primary, backup = fakes
    backup.latency = 1.0   # time to read the reservation while the fallback runs
    # backup costs $0.01 a token: the fallback's own max_tokens 1000 makes its worst case
    # over $10, where the client's max_tokens 5 would make it about $0.2.
    models = [priced("g", primary.base_url, "a", A_IN, A_OUT),
              priced("backup", backup.base_url, "b", "0.01", "0.01")]
    cfg = router_config(tmp_path, models, {"num_retries": 0})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        key = budgeted_key(proxy.base_url, "acme")
        body = {"model": "g", "messages": MESSAGES, "max_tokens": 5,
                "fallbacks": [{"model": "backup", "max_tokens": 1000}]}
        db = proxy.gateway.keys.db
        assert db is not None
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(http, "POST", proxy.base_url + "/v1/chat/completions", body,
                                key=key)
            wait_for(lambda: backup.received)
            held = proxy.call(db.fetch("SELECT reserved_micros AS n FROM access_budgets "
                                       "WHERE scope = 'customer' AND id = 'acme'"))
            assert int(held[0]["n"]) >= 1000 * 10_000   # 1000 tokens at $0.01, in micros
            done = reply.result(timeout=30)
        assert done.status == 200, done.text
        assert done.headers["x-litellm-model-id"] == "b"
        assert backup.requests[-1]["max_tokens"] == 1000
        assert reservations_left(proxy) == (0, 0)
        props = billed(lago, done.headers[CALL_ID_HEADER], "acme").properties
        assert Decimal(props["response_cost"]) == cost("0.01", "0.01")


def test_config_fallback_entries_checked_at_start(tmp_path: Path) -> None:
    models = [priced("g", "http://127.0.0.1:1/v1", "a", "0", "0"),
              priced("backup", "http://127.0.0.1:1/v1", "b", "0", "0")]

    def parse(fallbacks: Any) -> Any:
        cfg = config_dict(models, tmp_path, lago=False)
        cfg["router_settings"] = {"fallbacks": fallbacks}
        return parse_config(cfg, {}, config_path=tmp_path / "config.yaml")

    s = parse([{"g": [{"model": "backup", "temperature": 0.2}, "g"]}]).router
    first, second = s.fallbacks["g"]
    assert (first.model, dict(first.params)) == ("backup", {"temperature": 0.2})
    assert second == "g"
    with pytest.raises(ConfigError, match=r"router_settings.fallbacks\[0\].g\[0\]: user"):
        parse([{"g": [{"model": "backup", "user": "someone-else"}]}])
    with pytest.raises(ConfigError,
                       match=r"router_settings.fallbacks.g\[0\]: unknown model group .nope."):
        parse([{"g": [{"model": "nope", "temperature": 0}]}])
    with pytest.raises(ConfigError, match=r"fallbacks\[0\].g\[0\]: must name its model"):
        parse([{"g": [{"temperature": 0}]}])


def test_a_route_that_cannot_apply_them_passes_such_a_fallback_over(
        tmp_path: Path, lago: FakeLago, fakes: tuple[FakeOpenAI, FakeOpenAI],
        caplog: pytest.LogCaptureFixture) -> None:
    # The Anthropic Messages door's params are not OpenAI's request fields: a config
    # fallback with params is passed over there (said in the log), never applied wrong;
    # the plain one after it is taken.
    caplog.set_level(logging.WARNING, "tallygate.routing")
    primary, backup = fakes
    models = [*_models(primary, backup), priced("plain", backup.base_url, "p", B_IN, B_OUT)]
    router = {"num_retries": 0,
              "fallbacks": [{"g": [{"model": "backup", "temperature": 0}, "plain"]}]}
    cfg = router_config(tmp_path, models, router)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        reply = http("POST", proxy.base_url + "/v1/messages",
                     {"model": "g", "max_tokens": 5, "messages": MESSAGES,
                      "metadata": {"user_id": "u"}})
        assert reply.status == 200, reply.text
        assert reply.headers["x-litellm-model-id"] == "p"
        assert "carries request params that this route cannot apply" in caplog.text
        assert all("temperature" not in b for b in backup.requests)
