"""The rest of the OpenAI surface, with the official openai SDK as the client: legacy
text completions (passed through to OpenAI-compatible servers, a chat turn elsewhere),
streamed and not, billed once at a cost computed here by hand; ``models.retrieve``;
``x-request-id`` on every answer; ``safety_identifier`` as the end user; and a held
call that says so."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    assert_openai_error,
    billed,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_client_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
IN, OUT = Decimal("0.0000015"), Decimal("0.000002")  # the instruct model's price override
MOCK_REPLY = "Mock completes it."


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("instruct", upstream.base_url, model="gpt-3.5-turbo-instruct",
                     input_cost_per_token=str(IN), output_cost_per_token=str(OUT)),
        openai_entry("gpt", upstream.base_url),
        openai_entry("embedder", upstream.base_url, model="text-embedding-3-small"),
        anthropic_entry("claude", claude.base_url),
        {"model_name": "mocked", "litellm_params": {"model": "mock/echo",
                                                    "mock_response": MOCK_REPLY}},
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


# --- /v1/completions -----------------------------------------------------------------------


def test_completion_passed_through_and_billed(proxy: RunningProxy, lago: FakeLago,
                                              upstream: FakeOpenAI,
                                              client: openai.OpenAI) -> None:
    upstream.reply_text, upstream.prompt_tokens, upstream.completion_tokens = " there", 40, 9
    raw = client.completions.with_raw_response.create(
        model="instruct", prompt=["Hello", "Bye"], max_tokens=20, echo=True,
        suffix=" end.", user="cmp-1", extra_body={"metadata": {"tag": "gw"}})
    done = raw.parse()
    # Bytes through: the upstream's own answer, its echo of both prompts included.
    assert raw.http_response.content == upstream.sent[-1]
    assert [c.text for c in done.choices] == ["Hello there", "Bye there"]
    sent = upstream.requests[-1]
    assert upstream.received[-1].path == "/v1/completions"
    assert sent["model"] == "gpt-3.5-turbo-instruct" and sent["suffix"] == " end."
    assert sent["prompt"] == ["Hello", "Bye"] and sent["echo"] is True
    assert "metadata" not in sent  # the gateway's
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "cmp-1")
    assert ev.properties["kind"] == "completion"
    assert (ev.properties["input_tokens"], ev.properties["output_tokens"]) == (40, 9)
    assert Decimal(ev.properties["response_cost"]) == 40 * IN + 9 * OUT
    assert Decimal(raw.headers[COST_HEADER]) == 40 * IN + 9 * OUT
    assert done._request_id == raw.headers[CALL_ID_HEADER]  # x-request-id


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream_passed_through_and_billed(proxy: RunningProxy, lago: FakeLago,
                                                     upstream: FakeOpenAI,
                                                     client: openai.OpenAI,
                                                     include_usage: bool) -> None:
    upstream.reply_text, upstream.prompt_tokens, upstream.completion_tokens = " world", 5, 3
    upstream.stream_chunks = 3
    options = {"include_usage": True} if include_usage else None
    with client.completions.with_streaming_response.create(
            model="instruct", prompt="Hello", stream=True, user="cmp-s",
            stream_options=options) as resp:
        call_id = resp.headers[CALL_ID_HEADER]
        chunks = list(resp.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " world"
    # Usage is always asked of the upstream; the client sees it only if it asked.
    assert upstream.requests[-1]["stream_options"] == {"include_usage": True}
    assert (chunks[-1].usage is not None) == include_usage
    ev = billed(lago, call_id, "cmp-s")
    assert ev.properties["usage_source"] == "provider"
    assert Decimal(ev.properties["response_cost"]) == 5 * IN + 3 * OUT


@pytest.mark.parametrize("model", ["mocked", "claude"])
@pytest.mark.parametrize("stream", [False, True])
def test_completion_translated_to_chat(proxy: RunningProxy, lago: FakeLago,
                                       claude: FakeAnthropic, client: openai.OpenAI,
                                       model: str, stream: bool) -> None:
    claude.reply_text, claude.input_tokens, claude.output_tokens = " and Claude", 11, 4
    reply = MOCK_REPLY if model == "mocked" else " and Claude"
    kwargs: dict[str, Any] = dict(model=model, prompt="Once", echo=True,
                                  extra_body={"safety_identifier": f"si-{model}",
                                              "frobnicate": 1})
    if stream:
        with client.completions.with_streaming_response.create(
                stream=True, stream_options={"include_usage": True}, **kwargs) as resp:
            call_id = resp.headers[CALL_ID_HEADER]
            chunks = list(resp.parse())
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
        assert chunks[-1].choices == []
    else:
        raw = client.completions.with_raw_response.create(**kwargs)
        done = raw.parse()
        call_id, text, usage = raw.headers[CALL_ID_HEADER], done.choices[0].text, done.usage
        assert done.object == "text_completion" and done.choices[0].finish_reason == "stop"
        assert raw.headers["x-tallygate-dropped-params"] == "frobnicate"
    assert text == "Once" + reply  # echo done by the gateway
    ev = billed(lago, call_id, f"si-{model}")  # safety_identifier pays
    assert ev.properties["kind"] == "completion"
    assert usage is not None
    assert (ev.properties["input_tokens"], ev.properties["output_tokens"]) == (
        usage.prompt_tokens, usage.completion_tokens)
    if model == "claude":
        sent = claude.requests[-1]
        assert sent["messages"] == [{"role": "user",
                                     "content": [{"type": "text", "text": "Once"}]}]
        assert sent["max_tokens"] == 16  # OpenAI's default for a text completion
        assert sent["metadata"] == {"user_id": "si-claude"}
        assert (usage.prompt_tokens, usage.completion_tokens) == (11, 4)


@pytest.mark.parametrize(("extra", "param"), [
    ({"suffix": " end"}, "suffix"),
    ({"logprobs": 2}, "logprobs"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": ["one", "two"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
])
def test_completion_refused_where_a_chat_model_cannot(proxy: RunningProxy, lago: FakeLago,
                                                      claude: FakeAnthropic,
                                                      extra: dict[str, Any],
                                                      param: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/completions",
                 {"model": "claude", "prompt": "Once", "user": "nope", **extra})
    err = assert_openai_error(reply, 400, code="unsupported_parameter", param=param)
    assert "'anthropic'" in err["message"]
    assert claude.received == []
    http("POST", proxy.base_url + "/completions", {"model": "claude", "prompt": "Once",
                                                   "user": "yes"})
    wait_for(lambda: len(lago.stored) == 1)
    assert lago.stored[0].external_subscription_id == "yes"


def test_completion_bad_input(proxy: RunningProxy) -> None:
    assert_openai_error(http("POST", proxy.base_url + "/v1/completions", {"model": "instruct"}),
                        400, code="missing_required_parameter", param="prompt")
    assert_openai_error(http("POST", proxy.base_url + "/v1/completions",
                             {"model": "instruct", "prompt": {"x": 1}}), 400, param="prompt")
    assert_openai_error(http("POST", proxy.base_url + "/v1/completions",
                             {"model": "nope", "prompt": "x"}), 404, code="model_not_found")


# --- models.retrieve, Anthropic-shaped lists -------------------------------------------------


def test_models_retrieve(proxy: RunningProxy, client: openai.OpenAI) -> None:
    model = client.models.retrieve("claude")
    assert (model.id, model.object, model.owned_by) == ("claude", "model", "tallygate")
    assert model.created == int(proxy.gateway.started_at)
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"
    assert missing.value.request_id
    assert sorted(m.id for m in client.models.list()) == [
        "claude", "embedder", "gpt", "instruct", "mocked"]


def test_models_in_anthropic_shape(proxy: RunningProxy) -> None:
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as client:
        page = client.models.list(limit=2)
        assert [m.id for m in page.data] == ["instruct", "gpt"]
        assert page.has_more and page.first_id == "instruct" and page.last_id == "gpt"
        everything = [m for m in client.models.list(limit=2)]  # the SDK follows after_id
        one = client.models.retrieve("claude")
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.models.retrieve("no-such-model")
    assert [m.id for m in everything] == ["instruct", "gpt", "embedder", "claude", "mocked"]
    assert all(m.type == "model" and m.display_name == m.id for m in everything)
    assert everything[0].created_at.timestamp() == int(proxy.gateway.started_at)
    assert one.id == "claude" and one.type == "model"
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    reply = http("GET", proxy.base_url + "/v1/models?before_id=claude&limit=2",
                 headers={"anthropic-version": "2023-06-01"})
    assert reply.json() == {"data": [
        {"type": "model", "id": m, "display_name": m,
         "created_at": everything[0].created_at.strftime("%Y-%m-%dT%H:%M:%SZ")}
        for m in ("gpt", "embedder")], "has_more": True, "first_id": "gpt",
        "last_id": "embedder"}
    bad = http("GET", proxy.base_url + "/v1/models?limit=0",
               headers={"anthropic-version": "2023-06-01"})
    assert bad.status == 400 and bad.json()["error"]["type"] == "invalid_request_error"


# --- x-request-id --------------------------------------------------------------------------


def test_x_request_id_on_every_answer(proxy: RunningProxy, client: openai.OpenAI) -> None:
    chat = client.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES,
                                                            user="rid")
    assert chat.parse()._request_id == chat.headers[CALL_ID_HEADER]
    with client.chat.completions.with_streaming_response.create(
            model="gpt", messages=MESSAGES, stream=True, user="rid") as s:
        assert s.headers["x-request-id"] == s.headers[CALL_ID_HEADER]
        list(s.parse())
    emb = client.embeddings.with_raw_response.create(model="embedder", input="x", user="rid")
    assert emb.headers["x-request-id"] == emb.headers[CALL_ID_HEADER]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt", messages=[])
    assert bad.value.request_id and bad.value.request_id.startswith("tg-")
    for method, path in (("GET", "/v1/models"), ("GET", "/health/liveliness"),
                         ("GET", "/health/readiness"), ("GET", "/metrics"),
                         ("GET", "/key/list"), ("GET", "/no/such/route"),
                         ("POST", "/v1/messages")):
        reply = http(method, proxy.base_url + path, {} if method == "POST" else None)
        assert reply.headers.get("x-request-id", "").startswith("tg-"), (path, reply.headers)


# --- who pays: safety_identifier, held calls -----------------------------------------------


def test_safety_identifier_is_the_end_user(proxy: RunningProxy, lago: FakeLago,
                                           upstream: FakeOpenAI,
                                           client: openai.OpenAI) -> None:
    chat = client.chat.completions.with_raw_response.create(
        model="gpt", messages=MESSAGES, safety_identifier="si-chat")
    billed(lago, chat.headers[CALL_ID_HEADER], "si-chat")
    assert upstream.requests[-1]["safety_identifier"] == "si-chat"  # passed through
    emb = client.embeddings.with_raw_response.create(
        model="embedder", input="x", extra_body={"safety_identifier": "si-emb"})
    billed(lago, emb.headers[CALL_ID_HEADER], "si-emb")
    cmp = client.completions.with_raw_response.create(
        model="instruct", prompt="x", extra_body={"safety_identifier": "si-cmp"})
    billed(lago, cmp.headers[CALL_ID_HEADER], "si-cmp")
    # `user` (the older field) wins when both are set.
    both = client.chat.completions.with_raw_response.create(
        model="gpt", messages=MESSAGES, user="u-both", safety_identifier="si-both")
    billed(lago, both.headers[CALL_ID_HEADER], "u-both")
    reply = http("POST", proxy.base_url + "/v1/chat/completions",
                 {"model": "gpt", "messages": MESSAGES, "safety_identifier": 7})
    assert_openai_error(reply, 400, param="safety_identifier")


def test_held_call_says_so(proxy: RunningProxy, lago: FakeLago, client: openai.OpenAI) -> None:
    """No payer under ``unattributed: hold`` (the default): the answer says it is held."""
    held = client.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES)
    assert held.headers["x-tallygate-billing-state"] == "held"
    with client.chat.completions.with_streaming_response.create(
            model="gpt", messages=MESSAGES, stream=True) as s:
        assert s.headers["x-tallygate-billing-state"] == "held"
        list(s.parse())
    cmp = client.completions.with_raw_response.create(model="instruct", prompt="x")
    assert cmp.headers["x-tallygate-billing-state"] == "held"
    paid = client.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES,
                                                            user="payer")
    assert "x-tallygate-billing-state" not in paid.headers
    held_rows = http("GET", proxy.base_url + "/spend/logs").json()["logs"]
    assert sorted(r["status"] for r in held_rows) == ["billed"] + ["unattributed"] * 3
    wait_for(lambda: len(lago.stored) == 1)


def test_safety_identifier_under_a_bound_key(tmp_path: Path, lago: FakeLago,
                                             upstream: FakeOpenAI) -> None:
    """user_field: must_match applies to safety_identifier as it does to user."""
    cfg = config_dict([openai_entry("gpt", upstream.base_url)], tmp_path)
    cfg["access_settings"] = {"user_field": "must_match"}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        key = http("POST", proxy.base_url + "/key/generate",
                   {"customer_id": "acme"}).json()["key"]
        reply = http("POST", proxy.base_url + "/v1/chat/completions",
                     {"model": "gpt", "messages": MESSAGES, "safety_identifier": "other"},
                     key=key)
        err = assert_openai_error(reply, 403, code="user_not_allowed",
                                  param="safety_identifier")
        assert "safety_identifier" in err["message"]
        ok = http("POST", proxy.base_url + "/v1/chat/completions",
                  {"model": "gpt", "messages": MESSAGES, "safety_identifier": "acme"}, key=key)
        assert ok.status == 200
        billed(lago, ok.headers[CALL_ID_HEADER.lower()], "acme")
