"""The Messages door to an ``anthropic/`` deployment passes the request through as it
came: thinking, output_config, context_management, cache_control at the top and on
tool_use / tool_result blocks, documents, server tools and the anthropic-beta header
reach the Anthropic stand-in unchanged (only ``model`` replaced, the gateway's key), the
answer is the upstream's bytes, and the call is billed once with its cache buckets by
lifetime and its web searches, at a Decimal cost computed here by hand."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_server import FakeAnthropic, api_key_of
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_client_fixture,
    anthropic_entry,
    anthropic_upstream_fixture,
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

MODEL = "claude-sonnet-4-5"
BETAS = ["context-1m-2025-08-07", "interleaved-thinking-2025-05-14"]
BASH_SCHEMA = {"type": "object", "properties": {"command": {"type": "string"}},
               "required": ["command"]}
# The API version Claude Code sends (newer SDKs send a newer one): kept as it came.
CLAUDE_CODE_VERSION = {"anthropic-version": "2023-06-01"}
AGENT_ID = json.dumps({"device_id": "dev-7", "account_uuid": "acct-42",
                       "session_id": "sess-1"})

# A Claude Code-like turn after a tool call, with everything the native path must keep.
CLAUDE_STYLE: dict[str, Any] = {
    "max_tokens": 16000,
    "system": [{"type": "text", "text": "You are a coding agent.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "document", "title": "spec.pdf", "cache_control": {"type": "ephemeral"},
             "source": {"type": "base64", "media_type": "application/pdf",
                        "data": "JVBERi0xLjQKJcfsj6IK"}},
            {"type": "document", "citations": {"enabled": True},
             "source": {"type": "text", "media_type": "text/plain", "data": "Plain notes."}},
            {"type": "text", "text": "Read the spec, then list the files."}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should list the files.",
             "signature": "sig_abc"},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"},
             "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Now search the web for the release notes."}]},
    ],
    "tools": [{"name": "Bash", "description": "Run a command", "input_schema": BASH_SCHEMA,
               "cache_control": {"type": "ephemeral"}},
              {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}],
    "thinking": {"type": "enabled", "budget_tokens": 8000},
    "output_config": {"effort": "high"},
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919",
                                      "trigger": {"type": "input_tokens", "value": 100000}}]},
    "cache_control": {"type": "ephemeral"},
}


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, claude: FakeAnthropic,
                  upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([
        anthropic_entry("claude", claude.base_url, model=MODEL),
        anthropic_entry("claude-gw-beta", claude.base_url, model=MODEL,
                        extra_headers={"anthropic-beta": "gateway-beta-2026-01-01"}),
        openai_entry("gpt", upstream.base_url),
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _usage(claude: FakeAnthropic) -> None:
    claude.input_tokens, claude.cache_read_tokens = 1200, 30000
    claude.cache_write_tokens, claude.cache_write_1h_tokens = 2000, 5000
    claude.output_tokens, claude.web_searches = 800, 2
    claude.full_delta_usage = True


# claude-sonnet-4-5 below 200k input tokens, USD per million: input 3, cache read 0.30,
# 5-minute write 3.75, 1-hour write 6, output 15; web search 10 per thousand.
EXPECTED_COST = (Decimal(1200) * 3 + Decimal(30000) * Decimal("0.30")
                 + Decimal(2000) * Decimal("3.75") + Decimal(5000) * 6
                 + Decimal(800) * 15) / 1_000_000 + 2 * Decimal("0.01")


def _check_billed(lago: FakeLago, call_id: str) -> Any:
    ev = billed(lago, call_id, "acct-42")  # the account, not the session or device
    p = ev.properties
    assert (p["uncached_input_tokens"], p["cached_input_tokens"],
            p["cache_creation_input_tokens"], p["cache_creation_1h_input_tokens"],
            p["output_tokens"], p["web_searches"]) == (1200, 30000, 7000, 5000, 800, 2)
    assert p["input_tokens"] == 1200 + 30000 + 7000
    assert p["provider"] == "anthropic" and p["provider_model"] == MODEL
    assert p["usage_source"] == "provider"
    assert Decimal(p["response_cost"]) == EXPECTED_COST == Decimal("0.0821")
    assert p["end_user"] == "acct-42"
    return ev


def _check_forwarded(claude: FakeAnthropic, sent: dict[str, Any]) -> None:
    """The stand-in got the request as the client sent it, model replaced, the
    gateway's own metadata keys taken off; the client's API headers, the gateway's key."""
    got = claude.received[-1]
    assert got.path == "/v1/messages" and got.query == "beta=true"
    body = got.body
    assert body is not None
    assert body["model"] == MODEL
    assert body["metadata"] == {"user_id": AGENT_ID}
    for name, value in sent.items():
        if name not in ("model", "metadata"):
            assert body[name] == value, name
    assert set(body) - {"stream"} == set(sent) - {"stream"}
    assert got.headers["anthropic-beta"] == ",".join(BETAS)
    assert got.headers["anthropic-version"] == "2023-06-01"
    assert api_key_of(got) == UPSTREAM_KEY
    assert MASTER_KEY not in json.dumps(dict(got.headers))


def _request() -> dict[str, Any]:
    return {**copy.deepcopy(CLAUDE_STYLE), "model": "claude",
            "metadata": {"user_id": AGENT_ID, "tags": ["gateway-only"]}}


def test_native_create_passes_through_and_bills_cache_buckets(
        proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic,
        client: anthropic.Anthropic) -> None:
    _usage(claude)
    sent = _request()
    # Claude Code's SDK adds ?beta=true to beta calls; this one is told to.
    raw = client.beta.messages.with_raw_response.create(betas=BETAS, **sent,
                                                        extra_query={"beta": "true"},
                                                        extra_headers=CLAUDE_CODE_VERSION)
    message = raw.parse()
    # The answer is the upstream's own bytes.
    assert raw.http_response.content == claude.sent[-1]
    assert [b.type for b in message.content] == [
        "server_tool_use", "web_search_tool_result"] * 2 + ["text"]
    assert message.usage.server_tool_use is not None
    assert message.usage.server_tool_use.web_search_requests == 2
    _check_forwarded(claude, sent)
    ev = _check_billed(lago, raw.headers[CALL_ID_HEADER])
    assert Decimal(raw.headers[COST_HEADER]) == EXPECTED_COST
    assert raw.headers["x-request-id"] == raw.headers["request-id"] == ev.transaction_id


def test_native_stream_passes_bytes_through_and_bills(
        proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic,
        client: anthropic.Anthropic) -> None:
    _usage(claude)
    sent = _request()
    with client.beta.messages.stream(betas=BETAS, **sent, extra_query={"beta": "true"},
                                     extra_headers=CLAUDE_CODE_VERSION) as stream:
        final = stream.get_final_message()
        call_id = stream.response.headers[CALL_ID_HEADER]
    assert final.content[-1].text == claude.reply_text  # type: ignore[union-attr]
    assert final.usage.cache_creation_input_tokens == 7000
    _check_forwarded(claude, {**sent, "stream": True})
    _check_billed(lago, call_id)
    assert "stream" in lago.events[call_id].properties["flags"].split(",")

    # Byte for byte: what the client reads is what the stand-in sent.
    reply = http("POST", proxy.base_url + "/v1/messages?beta=true", {**sent, "stream": True},
                 headers={"anthropic-beta": ",".join(BETAS),
                          "anthropic-version": "2023-06-01"})
    assert reply.status == 200, reply.text
    assert reply.text.encode() == claude.sent[-1]
    _check_billed(lago, reply.headers[CALL_ID_HEADER.lower()])


def test_deployment_beta_flags_are_added_to_the_clients(
        proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic,
        client: anthropic.Anthropic) -> None:
    client.beta.messages.create(model="claude-gw-beta", max_tokens=10, betas=BETAS[:1],
                                messages=[{"role": "user", "content": "hi"}])
    assert claude.received[-1].headers["anthropic-beta"] == (
        "context-1m-2025-08-07,gateway-beta-2026-01-01")
    # Without a client beta header, only the gateway's.
    client.messages.create(model="claude-gw-beta", max_tokens=10,
                           messages=[{"role": "user", "content": "hi"}])
    assert claude.received[-1].headers["anthropic-beta"] == "gateway-beta-2026-01-01"
    wait_for(lambda: len(lago.stored) == 0 and len(claude.received) == 2)


def test_native_upstream_error_keeps_anthropic_shape_and_bills_nothing(
        proxy: RunningProxy, lago: FakeLago, claude: FakeAnthropic,
        client: anthropic.Anthropic) -> None:
    claude.fail(400, "thinking.budget_tokens: must be less than max_tokens")
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude", max_tokens=10,
                               messages=[{"role": "user", "content": "hi"}],
                               metadata={"user_id": "u1"})
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error",
                             "message": "thinking.budget_tokens: must be less than max_tokens"}
    client.messages.create(model="claude", max_tokens=10, metadata={"user_id": "u1"},
                           messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(lago.stored) == 1)
    assert lago.stored[0].external_subscription_id == "u1"


# --- count_tokens ----------------------------------------------------------------------


def test_count_tokens_forwarded_to_anthropic(proxy: RunningProxy, lago: FakeLago,
                                             claude: FakeAnthropic,
                                             client: anthropic.Anthropic) -> None:
    claude.counted_tokens = 4242
    sent = {k: copy.deepcopy(CLAUDE_STYLE[k]) for k in ("system", "messages", "tools",
                                                       "thinking")}
    raw = client.beta.messages.with_raw_response.count_tokens(model="claude", betas=BETAS,
                                                              **sent)
    assert raw.parse().input_tokens == 4242
    assert "x-tallygate-token-count" not in raw.headers
    assert raw.headers["x-request-id"]
    got = claude.received[-1]
    assert got.path == "/v1/messages/count_tokens"
    assert got.body == {**sent, "model": MODEL}
    # The SDK adds its own token-counting flag to the betas asked for: all kept.
    assert got.headers["anthropic-beta"].split(",")[:2] == BETAS
    assert api_key_of(got) == UPSTREAM_KEY
    # Counting is free: nothing billed.
    client.messages.create(model="claude", max_tokens=5, metadata={"user_id": "after"},
                           messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: len(lago.stored) == 1)
    assert lago.stored[0].external_subscription_id == "after"


def test_count_tokens_estimated_for_other_providers(proxy: RunningProxy, lago: FakeLago,
                                                    upstream: FakeOpenAI,
                                                    client: anthropic.Anthropic) -> None:
    text = "word " * 400  # 2000 characters: about 500 tokens
    raw = client.messages.with_raw_response.count_tokens(
        model="gpt", messages=[{"role": "user", "content": text}])
    assert raw.headers["x-tallygate-token-count"] == "estimated"
    counted = raw.parse().input_tokens
    assert 500 <= counted <= 520
    assert upstream.received == []  # nothing sent upstream
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with anthropic.Anthropic(base_url=proxy.base_url, api_key="sk-wrong",
                             max_retries=0) as stranger, \
            pytest.raises(anthropic.AuthenticationError):
        stranger.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "x"}])
    assert lago.stored == []
