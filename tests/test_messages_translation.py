"""The Messages door to providers that do not speak the Messages API: what is dropped is
named in ``x-tallygate-dropped-params``, what would change the answer or the bill is a
400 naming the field and the provider (nothing billed, no reservation left behind),
an OpenAI reasoning model gets ``max_completion_tokens``, and ``metadata.user_id`` in
Claude Code's JSON form bills its account or device, never its session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
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

HI: list[Any] = [{"role": "user", "content": "hi"}]
DROPPED = "x-tallygate-dropped-params"


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("gpt", upstream.base_url),
        openai_entry("o3", upstream.base_url, model="o3-mini"),
        openai_entry("gpt5", upstream.base_url, model="gpt-5-mini"),
        # A name that says nothing: model_info says it is a reasoning model.
        {**openai_entry("thinker", upstream.base_url, model="house-reasoner"),
         "model_info": {"supports_reasoning": True}},
        anthropic_entry("claude", claude.base_url),
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


# --- dropped and said so -----------------------------------------------------------------


def test_dropped_params_are_named(proxy: RunningProxy, lago: FakeLago, upstream: FakeOpenAI,
                                  client: anthropic.Anthropic) -> None:
    history: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": "list files",
                                      "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "ls it is", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt",
             "cache_control": {"type": "ephemeral"}}]},
    ]
    raw = client.messages.with_raw_response.create(
        model="gpt", max_tokens=100, messages=history,
        thinking={"type": "enabled", "budget_tokens": 1024},
        metadata={"user_id": "dropper"},
        tools=[{"name": "Bash", "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"}}],
        extra_body={"top_k": 5, "service_tier": "standard_only",
                    "output_config": {"effort": "low"},
                    "context_management": {"edits": [{"type": "clear_thinking_20251015",
                                                      "keep": "all"}]},
                    "speed": "fast"})
    assert raw.parse().content[0].text == upstream.reply_text  # type: ignore[union-attr]
    assert raw.headers[DROPPED].split(",") == [
        "cache_control", "messages.content.thinking", "top_k", "output_config.effort",
        "thinking", "service_tier", "context_management", "speed"]
    sent = upstream.requests[-1]
    assert sent["max_tokens"] == 100 and "max_completion_tokens" not in sent
    for name in ("top_k", "thinking", "service_tier", "output_config", "reasoning_effort",
                 "context_management", "speed"):
        assert name not in sent, name
    assert "cache_control" not in json.dumps(sent)
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    billed(lago, raw.headers[CALL_ID_HEADER], "dropper")

    # Nothing dropped: no header.
    plain = client.messages.with_raw_response.create(model="gpt", max_tokens=10, messages=HI)
    assert DROPPED not in plain.headers


def test_documents_and_structured_output_translated(proxy: RunningProxy, lago: FakeLago,
                                                     upstream: FakeOpenAI,
                                                     client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    raw = client.messages.with_raw_response.create(
        model="gpt", max_tokens=100, metadata={"user_id": "docs"},
        messages=[{"role": "user", "content": [
            {"type": "document", "title": "spec.pdf",
             "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": "Plain notes."}},
            {"type": "text", "text": "Summarise."}]}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert DROPPED not in raw.headers
    sent = upstream.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "spec.pdf",
                                  "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "text", "text": "Plain notes."},
        {"type": "text", "text": "Summarise."}]}]
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": schema, "strict": True}}
    billed(lago, raw.headers[CALL_ID_HEADER], "docs")


# --- refused: dropping would change the answer or the bill ---------------------------------


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("web search server tool",
     {"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]},
     "web_search_20250305"),
    ("code execution server tool",
     {"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
     "code_execution_20250825"),
    ("mcp servers", {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse",
                                      "name": "docs"}]}, "mcp_servers"),
    ("clearing tool results", {"context_management": {"edits": [
        {"type": "clear_tool_uses_20250919"}]}}, "clear_tool_uses_20250919"),
    ("a document by url", {"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "text", "text": "read it"}]}]}, "'url'"),
    ("an earlier server tool call", {"messages": [
        {"role": "user", "content": "search"},
        {"role": "assistant", "content": [{"type": "server_tool_use", "id": "srvtoolu_1",
                                           "name": "web_search", "input": {"query": "x"}}]},
        {"role": "user", "content": "go on"}]}, "server_tool_use"),
]


@pytest.mark.parametrize(("case", "extra", "named"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_400_naming_field_and_provider(proxy: RunningProxy, lago: FakeLago,
                                                    upstream: FakeOpenAI,
                                                    client: anthropic.Anthropic, case: str,
                                                    extra: dict[str, Any], named: str) -> None:
    # A budgeted key: the refusal comes after admission and must give the reservation back.
    key = http("POST", proxy.base_url + "/key/generate",
               {"key_alias": "refused", "max_budget": 5}).json()["key"]
    body = {"model": "gpt", "max_tokens": 50, "messages": HI,
            "metadata": {"user_id": "refused"}, **extra}
    reply = http("POST", proxy.base_url + "/v1/messages", body, key=key)
    assert reply.status == 400, reply.text
    err = reply.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert named in err["error"]["message"]
    assert "'openai'" in err["error"]["message"]
    assert upstream.received == []
    assert proxy.call(_reserved(proxy)) == 0

    # The same request to the Anthropic deployment goes through (passed as it came).
    known = {k: body[k] for k in ("max_tokens", "messages", "metadata")}
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=key, max_retries=0) as c:
        c.messages.create(model="claude", **known,
                          extra_body={k: v for k, v in body.items()
                                      if k not in known and k != "model"})
    wait_for(lambda: len(lago.stored) == 1)
    assert lago.stored[0].external_subscription_id == "refused"


async def _reserved(proxy: RunningProxy) -> int:
    db = proxy.gateway.keys.db
    assert db is not None
    row = await db.fetchone("SELECT coalesce(sum(reserved_micros), 0) AS r FROM access_budgets")
    assert row is not None
    return int(row["r"])


# --- reasoning models ----------------------------------------------------------------------


@pytest.mark.parametrize("model", ["o3", "gpt5", "thinker"])
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_models_get_max_completion_tokens(proxy: RunningProxy, lago: FakeLago,
                                                    upstream: FakeOpenAI,
                                                    client: anthropic.Anthropic, model: str,
                                                    stream: bool) -> None:
    """The stand-in refuses max_tokens and temperatures for reasoning models, as OpenAI
    does; the door sends what they take, and the effort as reasoning_effort."""
    upstream.prompt_tokens, upstream.completion_tokens, upstream.reasoning_tokens = 20, 90, 60
    kwargs: dict[str, Any] = dict(model=model, max_tokens=300, messages=HI,
                                  metadata={"user_id": f"r-{model}"},
                                  extra_body={"temperature": 0.3,
                                              "output_config": {"effort": "max"}})
    if stream:
        with client.messages.stream(**kwargs) as s:
            final = s.get_final_message()
            headers = s.response.headers
    else:
        raw = client.messages.with_raw_response.create(**kwargs)
        final, headers = raw.parse(), raw.headers
    assert final.content[0].text == upstream.reply_text  # type: ignore[union-attr]
    sent = upstream.requests[-1]
    assert sent["max_completion_tokens"] == 300 and "max_tokens" not in sent
    assert "temperature" not in sent and sent["reasoning_effort"] == "high"
    assert headers[DROPPED] == "temperature"
    ev = billed(lago, headers[CALL_ID_HEADER], f"r-{model}")
    assert (ev.properties["output_tokens"], ev.properties["reasoning_tokens"]) == (90, 60)


# --- who pays: Claude Code's metadata.user_id ----------------------------------------------


@pytest.mark.parametrize(("user_id", "payer"), [
    (json.dumps({"device_id": "dev-1", "account_uuid": "acct-9", "session_id": "s-1"}),
     "acct-9"),
    (json.dumps({"device_id": "dev-1", "account_uuid": "", "session_id": "s-2"}), "dev-1"),
    ("user_0123abcd_account__session_5f1e2d3c-0000-4000-8000-000000000000", "0123abcd"),
    ("customer-42", "customer-42"),
])
@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_agent_user_id_bills_the_stable_identity(proxy: RunningProxy, lago: FakeLago,
                                                 claude: FakeAnthropic, upstream: FakeOpenAI,
                                                 client: anthropic.Anthropic, user_id: str,
                                                 payer: str, model: str) -> None:
    raw = client.messages.with_raw_response.create(model=model, max_tokens=10, messages=HI,
                                                   metadata={"user_id": user_id})
    ev = billed(lago, raw.headers[CALL_ID_HEADER], payer)
    assert ev.properties["end_user"] == payer
    if model == "claude":  # Anthropic gets the user_id as the client sent it
        assert claude.requests[-1]["metadata"] == {"user_id": user_id}
    else:
        assert upstream.requests[-1]["user"] == payer


def test_agent_session_alone_is_never_a_customer(proxy: RunningProxy, lago: FakeLago,
                                                 client: anthropic.Anthropic) -> None:
    """Only a session id: no customer (held, as the policy says), never the session."""
    raw = client.messages.with_raw_response.create(
        model="claude", max_tokens=10, messages=HI,
        metadata={"user_id": json.dumps({"session_id": "sess-only"})})
    assert raw.headers["x-tallygate-billing-state"] == "held"
    call_id = raw.headers[CALL_ID_HEADER]
    logs = http("GET", proxy.base_url + "/spend/logs").json()
    row = next(r for r in logs["logs"] if r["call_id"] == call_id)
    assert row["status"] == "unattributed" and row["end_user"] is None
    assert lago.stored == []
    assert Decimal(str(row["spend"])) > 0
