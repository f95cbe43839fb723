"""``tallygate.Router``: a LiteLLM Router program with only its import swapped
(tests/programs/litellm_router.py) against stand-ins, one deployment refusing
connections and one answering 500; then per-call ``num_retries`` / ``fallbacks`` on
``tallygate.completion``. Every answer is the healthy stand-in's, every call one Lago
event priced (by hand, in Decimal) on the deployment that answered."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tallygate.errors import ConfigError
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI, run_in_thread
from tests.programs import litellm_router
from tests.proxy_harness import free_port
from tests.sdk_fixtures import MESSAGES, SdkPaths, tallygate_warnings

PROMPT, COMPLETION = 12, 7   # what FakeOpenAI reports
M = Decimal(1_000_000)


def price(model_id: str, prompt: int = PROMPT, completion: int = COMPLETION) -> Decimal:
    price_in, price_out = litellm_router.PRICES[model_id]
    return prompt * Decimal(price_in) + completion * Decimal(price_out)


@pytest.fixture
def broken() -> Any:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.fail_in_bursts(500, every=1, burst=1)  # every request: a 500
        yield fake


def test_a_litellm_router_program_with_the_import_swapped(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, broken: FakeOpenAI) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    out = litellm_router.main(openai_fake.base_url, broken.base_url, dead, "acme")
    tallygate.flush()
    answers = out["answers"]
    text = openai_fake.reply_text
    assert answers["chat"] == answers["chat_again"] == answers["fallback"] == text
    assert answers["stream"] == answers["responses"] == text
    assert answers["embedding"] == openai_fake.embedding_dim
    assert answers["text_completion"]
    assert out["model_names"] == ["gpt-4o-mini", "flaky", "backup", "embed"]
    assert len(broken.received) == 1  # flaky fell back at once, no retry on it

    # (what answered, attempts the call took, fallbacks taken, cost by hand)
    expected = {
        "chat": ("healthy", 2, 0, Decimal("0.000026")),        # 12*1e-6 + 7*2e-6
        "chat_again": ("healthy", 1, 0, Decimal("0.000026")),  # dead is cooling down
        "fallback": ("backup", 2, 1, Decimal("0.000064")),     # 12*3e-6 + 7*4e-6
        "stream": ("healthy", 1, 0, Decimal("0.000026")),
        "embedding": ("embed", 1, 0, openai_fake.prompt_tokens * Decimal("0.0000005")),
        "responses": ("healthy", 1, 0, Decimal("0.000026")),
        "text_completion": ("backup", 1, 0, Decimal("0.000064")),
    }
    for name, (model_id, *_rest) in expected.items():
        prompt = openai_fake.prompt_tokens if name == "embedding" else PROMPT
        assert expected[name][3] == price(model_id, prompt, 0 if name == "embedding"
                                          else COMPLETION), name
    assert [name for name, _ in out["responses"]] == list(expected)
    call_ids = []
    for name, response in out["responses"]:
        model_id, attempts, fallbacks, cost = expected[name]
        event = response.usage_event
        assert event is not None, name
        call_ids.append(event.call_id)
        assert lago.count(event.call_id) == 1, name
        stored = lago.events[event.call_id]
        assert stored.external_subscription_id == "acme"
        props = stored.properties
        assert Decimal(props["response_cost"]) == cost, (name, props)
        assert event.cost == cost and tallygate.completion_cost(
            completion_response=response) == cost, name
        assert props["model_id"] == model_id, (name, props)
        assert props["attempts"] == attempts, (name, props)
        assert props.get("fallbacks", 0) == fallbacks, (name, props)
    assert set(lago.events) == set(call_ids)  # one event per call, none for failed attempts
    assert lago.schema_violations == []


async def test_router_acompletion_on_the_callers_loop(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, loop_session: None) -> None:
    router = tallygate.Router(model_list=[
        litellm_router.entry("g", "openai/gpt-4o-mini", openai_fake.base_url, "healthy")])
    tallygate.success_callback = ["lago"]
    r = await router.acompletion(model="g", messages=MESSAGES, user="acme")
    e = await router.aembedding(model="g", input="hi", user="acme")
    assert r.choices[0].message.content == openai_fake.reply_text
    assert len(e.data[0].embedding) == openai_fake.embedding_dim
    tallygate.flush()
    assert lago.count(r.usage_event.call_id) == 1
    assert Decimal(lago.events[r.usage_event.call_id].properties["response_cost"]) == \
        Decimal("0.000026")


def test_per_call_num_retries_retries_the_same_model(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    openai_fake.fail(500, times=1)
    r = tallygate.completion(model="gpt-4o-mini", messages=MESSAGES, api_base=openai_fake.base_url,
                             api_key="sk-test", user="acme", num_retries=1)
    assert r.choices[0].message.content == openai_fake.reply_text
    assert len(openai_fake.received) == 2
    tallygate.flush()
    props = lago.events[r.usage_event.call_id].properties
    # genai-prices' gpt-4o-mini: $0.15 / $0.60 per million tokens
    assert Decimal(props["response_cost"]) == (12 * Decimal("0.15") + 7 * Decimal("0.6")) / M
    assert props["attempts"] == 2 and len(lago.events) == 1

    openai_fake.fail(500, times=1)
    with pytest.raises(tallygate.UpstreamError):  # no num_retries: one attempt, as before
        tallygate.completion(model="gpt-4o-mini", messages=MESSAGES,
                             api_base=openai_fake.base_url, api_key="sk-test")


def test_per_call_fallbacks_are_tried_in_order_and_the_answering_one_is_billed(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, broken: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = tallygate.completion(
        model="gpt-4o", messages=MESSAGES, api_base=broken.base_url, api_key="sk-test",
        user="acme",
        fallbacks=[{"model": "gpt-4o", "api_base": dead}, "gpt-4.1-nano",
                   {"model": "gpt-4o-mini", "api_base": openai_fake.base_url}])
    assert r.choices[0].message.content == openai_fake.reply_text
    tallygate.flush()
    assert len(lago.events) == 1
    props = lago.events[r.usage_event.call_id].properties
    # gpt-4.1-nano went to the broken one too (the call's own api_base); gpt-4o-mini
    # answered: genai-prices' $0.15 / $0.60 per million tokens.
    assert len(broken.received) == 2
    assert r.usage_event.provider_model == "gpt-4o-mini"
    assert Decimal(props["response_cost"]) == (12 * Decimal("0.15") + 7 * Decimal("0.6")) / M
    assert props["attempts"] == 4 and props["fallbacks"] == 3

    e = tallygate.embedding(model="text-embedding-3-small", input=["hi"], api_base=dead,
                            api_key="sk-test", fallbacks=[
                                {"model": "text-embedding-3-small",
                                 "api_base": openai_fake.base_url}])
    assert len(e.data[0].embedding) == openai_fake.embedding_dim


def test_bad_routing_arguments_are_refused(sdk: SdkPaths, openai_fake: FakeOpenAI,
                                           caplog: pytest.LogCaptureFixture) -> None:
    kw: dict[str, Any] = {"messages": MESSAGES, "api_base": openai_fake.base_url,
                          "api_key": "sk-test"}
    with pytest.raises(tallygate.BadRequestError, match="num_retries"):
        tallygate.completion(model="gpt-4o-mini", num_retries=-1, **kw)
    with pytest.raises(tallygate.BadRequestError, match=r"fallbacks\[0\]"):
        tallygate.completion(model="gpt-4o-mini", fallbacks=[{"model": "x", "rpm": 3}], **kw)
    model_list = [litellm_router.entry("g", "openai/gpt-4o-mini", openai_fake.base_url,
                                       "healthy")]
    with pytest.raises(ConfigError, match="cache_responses"):
        tallygate.Router(model_list=model_list, cache_responses=True)
    with pytest.raises(TypeError, match="no_such_argument"):
        tallygate.Router(model_list=model_list, no_such_argument=1)
    with pytest.raises(ConfigError, match="routing_strategy"):
        tallygate.Router(model_list=model_list, routing_strategy="fastest")
    with pytest.raises(ConfigError, match="unknown model group 'nowhere'"):
        tallygate.Router(model_list=model_list, fallbacks=[{"g": ["nowhere"]}])
    with caplog.at_level(logging.WARNING, logger="tallygate"):
        tallygate.Router(model_list=model_list, set_verbose=True)
    assert tallygate_warnings(caplog, "set_verbose")
    router = tallygate.Router(model_list=model_list, cache_responses=False)
    with pytest.raises(tallygate.BadRequestError, match="api_key"):
        router.completion(model="g", messages=MESSAGES, api_key="sk-other")
    with pytest.raises(tallygate.ModelNotFoundError):
        router.completion(model="nope", messages=MESSAGES)
    with pytest.raises(tallygate.BadRequestError, match="no model 'nope'"):
        router.completion(model="g", messages=MESSAGES, fallbacks=["nope"])
    assert openai_fake.received == []


def test_redis_shares_cooldowns_between_routers(sdk: SdkPaths, lago: FakeLago,
                                                openai_fake: FakeOpenAI) -> None:
    import uuid

    tallygate.success_callback = ["lago"]
    tag = uuid.uuid4().hex[:12]  # this run's own deployment ids (and Redis keys)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    model_list = [
        {**litellm_router.entry("g", "openai/gpt-4o-mini", dead, "dead", order=1),
         "model_info": {"id": f"dead-{tag}"}},
        {**litellm_router.entry("g", "openai/gpt-4o-mini", openai_fake.base_url, "healthy",
                                order=2), "model_info": {"id": f"healthy-{tag}"}}]
    settings: dict[str, Any] = {"redis_host": "127.0.0.1", "redis_port": 6379,
                                "allowed_fails": 0, "cooldown_time": 60}
    first = tallygate.Router(model_list=model_list, **settings)
    second = tallygate.Router(model_list=model_list, **settings)
    try:
        a = first.completion(model="g", messages=MESSAGES, user="acme")
        b = second.completion(model="g", messages=MESSAGES, user="acme")
    finally:
        first.close()
        second.close()
    tallygate.flush()
    assert a.usage_event.routing.attempts == 2    # the dead one, then the healthy one
    assert b.usage_event.routing.attempts == 1    # the dead one cools down in Redis
    for r in (a, b):
        props = lago.events[r.usage_event.call_id].properties
        assert props["model_id"] == f"healthy-{tag}"
        assert Decimal(props["response_cost"]) == Decimal("0.000026")


def test_router_mock_response_and_failure_callbacks(sdk: SdkPaths, lago: FakeLago,
                                                    openai_fake: FakeOpenAI) -> None:
    failed: list[Any] = []

    class Failures(tallygate.CustomLogger):
        async def async_log_failure_event(self, failure: Any) -> None:
            failed.append(failure)

    tallygate.success_callback = ["lago"]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    router = tallygate.Router(
        model_list=[litellm_router.entry("g", "openai/gpt-4o-mini", dead, "dead", order=1),
                    litellm_router.entry("g", "openai/gpt-4o-mini", openai_fake.base_url,
                                         "healthy", order=2)],
        redis_host="127.0.0.1")
    assert router.get_model_names() == ["g"]
    with pytest.raises(tallygate.BadRequestError, match="mock_response"):
        router.completion(model="g", messages=MESSAGES, mock_response="mocked")
    mocked = tallygate.Router(model_list=[
        litellm_router.entry("m", "mock/anything", "http://unused", "healthy")])
    r = mocked.completion(model="m", messages=MESSAGES, user="acme", mock_response="mocked")
    assert r.choices[0].message.content == "mocked"
    assert openai_fake.received == []
    r = router.completion(model="g", messages=MESSAGES, user="acme", callbacks=[Failures()])
    router.close()
    assert r.choices[0].message.content == openai_fake.reply_text
    assert [f.routing.model_id for f in failed] == ["dead"]
    tallygate.flush()
    assert lago.events[r.usage_event.call_id].properties["model_id"] == "healthy"


def test_fallbacks_with_their_own_params_are_refused_not_ignored() -> None:
    """The proxy applies a fallback entry's params; the SDK Router refuses them rather
    than calling the fallback with the caller's params."""
    entries = [{"model_name": "a", "litellm_params": {"model": "mock/a"}},
               {"model_name": "b", "litellm_params": {"model": "mock/b"}}]
    with pytest.raises(tallygate.ConfigError, match="own params"):
        tallygate.Router(model_list=entries,
                         fallbacks=[{"a": [{"model": "b", "temperature": 0.2}]}])
    router = tallygate.Router(model_list=entries)
    with pytest.raises(tallygate.BadRequestError, match=r"fallbacks\[0\]"):
        router.completion(model="a", messages=[{"role": "user", "content": "hi"}],
                          fallbacks=[{"model": "b", "temperature": 0.2}])
