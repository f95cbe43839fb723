"""Per-call ``num_retries`` / ``fallbacks`` / ``timeout`` on the SDK's media calls
(images, edits, transcription, speech, rerank, moderation) and ``tallygate.Router``'s
media methods, against the stand-ins: a failing first attempt, then the retry or the
fallback answers, and the call is billed once (one Lago event, priced by hand) on the
deployment that answered."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

import tallygate
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_media import SPEECH_BYTES, b64_png
from tests.fakes.openai_server import FakeOpenAI, run_in_thread
from tests.fakes.rerank_server import FakeRerank
from tests.sdk_fixtures import SdkPaths

AUDIO = b"\xff\xfb" * 150_000  # 300 kB
PER_SECOND = Decimal("0.36") / 3600                    # whisper-1
DALLE3 = Decimal("0.04")                               # dall-e-3, 1024x1024 standard
TTS = 11 * Decimal("15") / 1_000_000                    # tts-1, "Hello there"
PER_QUERY = Decimal("0.002")                           # a rerank search unit, set here
GPT_IMAGE_EDIT = (11 * Decimal("0.000005") + 323 * Decimal("0.00001")
                  + 4160 * Decimal("0.00004"))         # gpt-image-1: text, image in, out


@pytest.fixture(name="broken")
def broken_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        yield fake


@pytest.fixture(name="reranker")
def reranker_fixture() -> Iterator[FakeRerank]:
    with run_in_thread(FakeRerank("cohere")) as fake:
        yield fake


@pytest.fixture(name="broken_reranker")
def broken_reranker_fixture() -> Iterator[FakeRerank]:
    with run_in_thread(FakeRerank("cohere")) as fake:
        fake.fail_in_bursts(500, every=1, burst=1)  # every request: a 500
        yield fake


def _event(lago: FakeLago, response: Any) -> dict[str, Any]:
    tallygate.flush()
    call_id = response.usage_event.call_id
    assert lago.count(call_id) == 1
    props: dict[str, Any] = lago.events[call_id].properties
    return props


# (name, the call on a base URL with extra kwargs, the provider's path, cost by hand)
CALLS: list[tuple[str, Callable[..., Any], str, Decimal]] = [
    ("image_generation", lambda base, **kw: tallygate.image_generation(
        prompt="a lighthouse", model="dall-e-3", api_base=base, **kw),
     "/v1/images/generations", DALLE3),
    ("image_edit", lambda base, **kw: tallygate.image_edit(
        image=("in.png", b64_png(), "image/png"), prompt="add a boat",
        model="gpt-image-1", api_base=base, **kw), "/v1/images/edits", GPT_IMAGE_EDIT),
    ("transcription", lambda base, **kw: tallygate.transcription(
        model="whisper-1", file=("talk.mp3", AUDIO, "audio/mpeg"), api_base=base, **kw),
     "/v1/audio/transcriptions", 9 * PER_SECOND),
    ("speech", lambda base, **kw: tallygate.speech(
        model="tts-1", input="Hello there", voice="alloy", api_base=base, **kw),
     "/v1/audio/speech", TTS),
    ("moderation", lambda base, **kw: tallygate.moderation(
        input="hello", model="omni-moderation-latest", api_base=base, **kw),
     "/v1/moderations", Decimal(0)),
]


@pytest.mark.parametrize(("name", "call", "path", "cost"), CALLS, ids=[c[0] for c in CALLS])
def test_num_retries_retries_the_media_call_and_bills_it_once(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, name: str,
        call: Callable[..., Any], path: str, cost: Decimal) -> None:
    tallygate.success_callback = ["lago"]
    openai_fake.fail(500, "overloaded", times=1)
    r = call(openai_fake.base_url, api_key="sk-test", user="acme", num_retries=1)
    assert [rec.path for rec in openai_fake.received] == [path, path]
    props = _event(lago, r)
    assert props["attempts"] == 2
    assert Decimal(props["response_cost"]) == cost == r.usage_event.cost
    assert len(lago.events) == 1
    openai_fake.fail(500, "overloaded", times=1)
    with pytest.raises(tallygate.UpstreamError):  # no num_retries: one attempt, as before
        call(openai_fake.base_url, api_key="sk-test")


def test_a_retried_upload_is_sent_whole_each_time(sdk: SdkPaths, lago: FakeLago,
                                                  openai_fake: FakeOpenAI, tmp_path: Any
                                                  ) -> None:
    """An open file is read once, before the first attempt: the retry sends it all."""
    tallygate.success_callback = ["lago"]
    path = tmp_path / "talk.mp3"
    path.write_bytes(AUDIO)
    openai_fake.fail(503, "busy", times=1)
    with path.open("rb") as f:
        r = tallygate.transcription(model="whisper-1", file=f, api_base=openai_fake.base_url,
                                    api_key="sk-test", num_retries=1, user="acme")
    assert r.text == openai_fake.media.transcript
    digest = hashlib.sha256(AUDIO).hexdigest()
    assert openai_fake.media.uploads == [("file", len(AUDIO), digest)] * 2
    assert _event(lago, r)["audio_seconds"] == 9


def test_fallbacks_answer_and_the_answering_deployment_is_billed(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, broken: FakeOpenAI,
        reranker: FakeRerank, broken_reranker: FakeRerank) -> None:
    tallygate.success_callback = ["lago"]
    broken.fail_in_bursts(500, every=1, burst=1)  # every request: a 500
    good = {"api_base": openai_fake.base_url}
    # A token-priced model fails; its fallback, a per-second one, answers and is billed.
    r = tallygate.transcription(model="gpt-4o-transcribe", file=("a.mp3", AUDIO, "audio/mpeg"),
                                api_base=broken.base_url, api_key="sk-test", user="acme",
                                fallbacks=[{"model": "whisper-1", **good}])
    props = _event(lago, r)
    assert r.usage_event.provider_model == "whisper-1"
    assert (props["audio_seconds"], props["fallbacks"]) == (9, 1)
    assert Decimal(props["response_cost"]) == 9 * PER_SECOND
    assert len(broken.received) == 1
    s = tallygate.speech(model="tts-1", input="Hello there", voice="alloy",
                         api_base=broken.base_url, api_key="sk-test", user="acme",
                         fallbacks=[{"model": "tts-1", **good}])
    assert s.content == SPEECH_BYTES
    assert Decimal(_event(lago, s)["response_cost"]) == TTS
    i = tallygate.image_generation(prompt="x", model="dall-e-3", api_base=broken.base_url,
                                   api_key="sk-test", user="acme",
                                   fallbacks=[{"model": "dall-e-3", **good}])
    assert Decimal(_event(lago, i)["response_cost"]) == DALLE3
    # Rerank: the call's own Cohere answers 500s; the fallback is another one.
    docs = ["the sky is blue", "grass is green"]
    k = tallygate.rerank(model="rerank-v3.5", query="blue sky", documents=docs,
                         api_base=broken_reranker.url + "/v2", api_key="k", user="acme",
                         input_cost_per_query=str(PER_QUERY),
                         fallbacks=[{"model": "rerank-v3.5",
                                     "api_base": reranker.url + "/v2"}])
    assert k.results[0].index == 0
    assert Decimal(_event(lago, k)["response_cost"]) == PER_QUERY
    assert len(broken_reranker.received) == 1
    assert len(lago.events) == 4


def test_timeout_bounds_each_attempt(sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI,
                                     broken: FakeOpenAI) -> None:
    tallygate.success_callback = ["lago"]
    broken.latency = 3.0
    with pytest.raises(tallygate.UpstreamError, match=r"did not answer within 0\.3s"):
        tallygate.moderation(input="hi", model="omni-moderation-latest",
                             api_base=broken.base_url, api_key="sk-test", timeout=0.3)
    started = time.monotonic()
    r = tallygate.image_generation(prompt="x", model="dall-e-3", api_base=broken.base_url,
                                   api_key="sk-test", timeout=0.3, user="acme",
                                   fallbacks=[{"model": "dall-e-3",
                                               "api_base": openai_fake.base_url}])
    assert time.monotonic() - started < 2.5
    assert Decimal(_event(lago, r)["response_cost"]) == DALLE3


def _entry(name: str, model: str, base: str, model_id: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name,
            "litellm_params": {"model": model, "api_base": base, "api_key": "sk-test",
                               **params},
            "model_info": {"id": model_id}}


def test_router_media_methods_fall_back_and_bill_the_answering_deployment(
        sdk: SdkPaths, lago: FakeLago, openai_fake: FakeOpenAI, broken: FakeOpenAI,
        reranker: FakeRerank, broken_reranker: FakeRerank) -> None:
    tallygate.success_callback = ["lago"]
    broken.fail_in_bursts(500, every=1, burst=1)
    models = {"image": "dall-e-3", "edit": "gpt-image-1", "whisper": "whisper-1",
              "tts": "tts-1", "moderation": "omni-moderation-latest"}
    model_list = []
    for name, model in models.items():
        model_list += [_entry(f"{name}-flaky", f"openai/{model}", broken.base_url,
                              f"{name}-broken"),
                       _entry(name, f"openai/{model}", openai_fake.base_url, f"{name}-ok")]
    model_list += [_entry("rerank-flaky", "openai/rerank-v3.5", broken_reranker.url + "/v2",
                          "rerank-broken",
                          input_cost_per_query=str(PER_QUERY)),
                   _entry("rerank", "openai/rerank-v3.5", reranker.url + "/v2", "rerank-ok",
                          input_cost_per_query=str(PER_QUERY))]
    router = tallygate.Router(model_list=model_list, num_retries=0,
                              fallbacks=[{f"{n}-flaky": [n]} for n in [*models, "rerank"]])

    async def calls() -> dict[str, Any]:
        try:
            return {
                "image": await router.aimage_generation(prompt="x", model="image-flaky",
                                                        user="acme"),
                "edit": await router.aimage_edit(
                    model="edit-flaky", image=("in.png", b64_png(), "image/png"),
                    prompt="add a boat", user="acme"),
                "whisper": await router.atranscription(
                    file=("a.mp3", AUDIO, "audio/mpeg"), model="whisper-flaky", user="acme"),
                "tts": await router.aspeech(model="tts-flaky", input="Hello there",
                                            voice="alloy", user="acme"),
                "rerank": await router.arerank(model="rerank-flaky", query="blue sky",
                                               documents=["the sky is blue", "grass"],
                                               user="acme"),
                "moderation": await router.amoderation(model="moderation-flaky",
                                                       input="hello", user="acme"),
            }
        finally:
            from tallygate import transport

            await transport.close_session()

    answers = asyncio.run(calls())
    answers["image_sync"] = router.image_generation(prompt="y", model="image-flaky",
                                                    user="acme")
    expected = {"image": DALLE3, "edit": GPT_IMAGE_EDIT, "whisper": 9 * PER_SECOND,
                "tts": TTS, "rerank": PER_QUERY, "moderation": Decimal(0),
                "image_sync": DALLE3}
    for name, cost in expected.items():
        props = _event(lago, answers[name])
        group = name.removesuffix("_sync")
        assert props["model_id"] == f"{group}-ok", (name, props)
        assert props["fallbacks"] == 1, (name, props)
        assert Decimal(props["response_cost"]) == cost, (name, props)
        assert lago.events[answers[name].usage_event.call_id].external_subscription_id == \
            "acme"
    assert answers["whisper"].text == openai_fake.media.transcript
    assert answers["tts"].content == SPEECH_BYTES
    assert len(lago.events) == len(expected)
    # Each failed once on its broken deployment, then fell back.
    assert len(broken.received) + len(broken_reranker.received) == len(expected)
