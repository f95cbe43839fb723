"""Images, audio, moderation and rerank through the proxy, with the official clients
(openai's images / audio / moderations, cohere's rerank): one Lago event per call, of
its kind, billed in its unit, with a Decimal cost computed here by hand."""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import cohere
import httpx
import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_media import SPEECH_BYTES, b64_png
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.rerank_server import FakeRerank
from tests.fakes.server_base import run_in_thread
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
    openai_client_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

PER_QUERY = Decimal("0.002")       # a Cohere rerank search unit, set in config
PER_CHAR = Decimal("0.00002")
PER_RERANK_TOKEN = Decimal("0.00000002")
MAX_MB = 0.05  # the request size limit: 52428 bytes


@pytest.fixture(name="reranker")
def cohere_fixture() -> Iterator[FakeRerank]:
    with run_in_thread(FakeRerank("cohere")) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="jina")
def jina_fixture() -> Iterator[FakeRerank]:
    with run_in_thread(FakeRerank("jina")) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI, reranker: FakeRerank,
                  jina: FakeRerank) -> Iterator[RunningProxy]:
    base = upstream.base_url
    cfg = config_dict([
        openai_entry("dalle3", base, "dall-e-3"),
        openai_entry("dalle2", base, "dall-e-2"),
        openai_entry("gpt-image", base, "gpt-image-1"),
        openai_entry("whisper", base, "whisper-1"),
        openai_entry("transcribe", base, "gpt-4o-transcribe"),
        openai_entry("tts", base, "tts-1"),
        openai_entry("tts-priced", base, "tts-1", input_cost_per_character=str(PER_CHAR)),
        openai_entry("mini-tts", base, "gpt-4o-mini-tts"),
        openai_entry("moderation", base, "omni-moderation-latest"),
        openai_entry("rerank", reranker.url + "/v1", "rerank-v3.5",
                     input_cost_per_query=str(PER_QUERY)),
        openai_entry("rerank-v2", reranker.url + "/v2", "rerank-v3.5",
                     input_cost_per_query=str(PER_QUERY)),
        openai_entry("rerank-unpriced", reranker.url + "/v1", "rerank-v3.5"),
        openai_entry("jina", jina.url + "/v1", "jina-reranker-v2-base-multilingual",
                     input_cost_per_token=str(PER_RERANK_TOKEN)),
    ], tmp_path, general={"max_request_size_mb": MAX_MB})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def cost_of(ev: Any) -> Decimal:
    assert ev.properties["unknown_price"] == "false", ev.properties
    return Decimal(ev.properties["response_cost"])


IMAGES = [
    # (model, params, images billed, cost by hand)
    ("dalle3", {"size": "1024x1792", "quality": "hd"}, 1, Decimal("0.12")),
    ("dalle3", {}, 1, Decimal("0.04")),  # OpenAI's defaults: standard, 1024x1024
    ("dalle2", {"n": 2, "size": "512x512"}, 2, 2 * Decimal("0.018")),
]


@pytest.mark.parametrize(("model", "params", "images", "cost"), IMAGES)
def test_images_billed_per_image(client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
                                 model: str, params: dict[str, Any], images: int,
                                 cost: Decimal) -> None:
    customer = f"painter-{model}-{images}"
    raw = client.images.with_raw_response.generate(model=model, prompt="a lighthouse",
                                                   user=customer, **params)
    answer = raw.parse()
    assert answer.data is not None and len(answer.data) == images
    assert upstream.requests[-1]["model"] == {"dalle3": "dall-e-3", "dalle2": "dall-e-2"}[model]
    ev = billed(lago, raw.headers[CALL_ID_HEADER], customer)
    p = ev.properties
    assert (p["kind"], p["images"], p["input_tokens"], p["output_tokens"]) == (
        "image", images, 0, 0)
    assert cost_of(ev) == cost
    assert Decimal(raw.headers[COST_HEADER]) == cost
    assert p["price_source"] == "image list prices"


def test_token_priced_images(client: openai.OpenAI, lago: FakeLago,
                             upstream: FakeOpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="gpt-image", prompt="a lighthouse",
                                                   user="tokens")
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "tokens")
    p = ev.properties
    assert (p["kind"], p["uncached_input_tokens"], p["output_tokens"]) == ("image", 11, 4160)
    assert "images" not in p
    # gpt-image-1 at genai-prices' rates: $5 per million text input, $40 per million
    # output (image) tokens.
    assert cost_of(ev) == 11 * Decimal("0.000005") + 4160 * Decimal("0.00004")
    # An edit: an uploaded image (multipart), its image input tokens at $10 per million.
    raw = client.images.with_raw_response.edit(
        model="gpt-image", prompt="add a boat", user="tokens",
        image=("in.png", io.BytesIO(b64_png()), "image/png"))
    assert raw.parse().usage is not None
    sent = upstream.received[-1]
    assert sent.path == "/v1/images/edits" and sent.body is not None
    assert sent.body["model"] == "gpt-image-1"
    assert sent.body["image"] == {"filename": "in.png", "content_type": "image/png",
                                  "size": len(b64_png())}
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "tokens")
    assert ev.properties["image_input_tokens"] == 323
    assert ev.properties["input_tokens"] == 11 + 323
    assert cost_of(ev) == (11 * Decimal("0.000005") + 323 * Decimal("0.00001")
                           + 4160 * Decimal("0.00004"))


AUDIO = ("talk.mp3", b"\xff\xfb" * 1000, "audio/mpeg")  # 2000 bytes


def test_transcriptions_billed_per_second_or_token(client: openai.OpenAI, lago: FakeLago,
                                                   upstream: FakeOpenAI) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=AUDIO, extra_body={"user": "listener"})
    assert raw.parse().text == upstream.media.transcript
    sent = upstream.received[-1]
    assert sent.body is not None and sent.body["model"] == "whisper-1"
    assert sent.body["file"] == {"filename": "talk.mp3", "content_type": "audio/mpeg",
                                 "size": 2000}
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "listener")
    p = ev.properties
    assert (p["kind"], p["audio_seconds"], p["usage_source"]) == ("transcription", 9,
                                                                  "provider")
    assert cost_of(ev) == 9 * Decimal("0.36") / 3600  # whisper-1: $0.36 an hour
    # verbose_json reports a fractional duration: billed by the started second.
    with pytest.warns(DeprecationWarning):  # this openai release deprecates translations
        raw2 = client.audio.translations.with_raw_response.create(
            model="whisper", file=AUDIO, response_format="verbose_json",
            extra_body={"user": "listener"})
    assert upstream.received[-1].path == "/v1/audio/translations"
    ev = billed(lago, raw2.headers[CALL_ID_HEADER], "listener")
    assert ev.properties["audio_seconds"] == 10
    assert cost_of(ev) == 10 * Decimal("0.36") / 3600
    # Token-priced transcription: text, audio input and output tokens at their rates.
    raw3 = client.audio.transcriptions.with_raw_response.create(
        model="transcribe", file=AUDIO, extra_body={"user": "listener"})
    ev = billed(lago, raw3.headers[CALL_ID_HEADER], "listener")
    p = ev.properties
    assert (p["uncached_input_tokens"], p["audio_input_tokens"], p["output_tokens"]) == (
        8, 120, 15)
    assert cost_of(ev) == (8 * Decimal("0.0000025") + 120 * Decimal("0.000006")
                           + 15 * Decimal("0.00001"))
    # A text answer reports no duration: estimated from the upload's size, flagged.
    raw4 = client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=AUDIO, response_format="text", extra_body={"user": "listener"})
    assert raw4.parse().strip() == upstream.media.transcript
    ev = billed(lago, raw4.headers[CALL_ID_HEADER], "listener")
    assert (ev.properties["audio_seconds"], ev.properties["usage_source"]) == (1, "estimated")
    assert "estimated_usage" in ev.properties["flags"]


def test_speech_billed_per_character(client: openai.OpenAI, lago: FakeLago,
                                     upstream: FakeOpenAI) -> None:
    raw = client.audio.speech.with_raw_response.create(
        model="tts", voice="alloy", input="Hello there", extra_body={"user": "speaker"})
    assert raw.content == SPEECH_BYTES
    assert raw.headers["content-type"] == "audio/mpeg"
    assert upstream.requests[-1]["model"] == "tts-1"
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "speaker")
    p = ev.properties
    assert (p["kind"], p["input_characters"]) == ("speech", 11)
    assert cost_of(ev) == 11 * Decimal("15") / 1_000_000  # tts-1: $15 per million characters
    raw = client.audio.speech.with_raw_response.create(
        model="tts-priced", voice="alloy", input="Hello there", extra_body={"user": "speaker"})
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "speaker")
    assert cost_of(ev) == 11 * PER_CHAR
    assert ev.properties["price_source"] == "config"
    # A token-priced speech model has no per-character price: flagged, never $0.
    raw = client.audio.speech.with_raw_response.create(
        model="mini-tts", voice="alloy", input="Hello there", extra_body={"user": "speaker"})
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "speaker")
    assert ev.properties["unknown_price"] == "true"
    assert ev.properties["unpriced_buckets"] == "input_characters"
    assert "response_cost" not in ev.properties


def test_moderation_is_free_and_billed(client: openai.OpenAI, lago: FakeLago) -> None:
    raw = client.moderations.with_raw_response.create(
        model="moderation", input="I will hurt you", extra_body={"user": "moderated"})
    assert raw.parse().results[0].flagged is False
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "moderated")
    p = ev.properties
    assert (p["kind"], p["usage_source"], p["response_cost"]) == ("moderation", "estimated",
                                                                  "0")
    assert p["input_tokens"] > 0


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cohere_rerank_through_the_proxy(proxy: RunningProxy, lago: FakeLago,
                                         reranker: FakeRerank, version: str) -> None:
    docs = ["the sky is blue", "the grass is green", "blue whales are big"]
    extra = {"additional_body_parameters": {"user": "ranker"}}
    with httpx.Client() as http:
        if version == "v1":
            v1 = cohere.Client(api_key=MASTER_KEY, base_url=proxy.base_url, httpx_client=http)
            reply = v1.rerank(model="rerank", query="blue sky", documents=docs, top_n=2,
                              request_options=extra)  # type: ignore[arg-type]
            results = list(reply.results)
        else:
            v2 = cohere.ClientV2(api_key=MASTER_KEY, base_url=proxy.base_url,
                                 httpx_client=http)
            reply2 = v2.rerank(model="rerank-v2", query="blue sky", documents=docs, top_n=2,
                               request_options=extra)  # type: ignore[arg-type]
            results = list(reply2.results)
    assert [r.index for r in results] == [0, 2]
    sent = reranker.received[-1]
    assert sent.path == f"/{version}/rerank"
    assert sent.body is not None and sent.body["model"] == "rerank-v3.5"
    ev = billed(lago, _only_call(lago, "ranker"), "ranker")
    assert (ev.properties["kind"], ev.properties["rerank_searches"]) == ("rerank", 1)
    assert cost_of(ev) == PER_QUERY


def _only_call(lago: FakeLago, customer: str) -> str:
    """The call id of the customer's one event (the cohere SDK hides response headers)."""
    def mine() -> list[str]:
        return [e.transaction_id for e in lago.events.values()
                if e.external_subscription_id == customer]
    found = wait_for(mine)
    assert len(found) == 1, found
    return found[0]


def test_jina_rerank_billed_per_token_and_unpriced_flagged(proxy: RunningProxy,
                                                           lago: FakeLago) -> None:
    body = {"model": "jina", "query": "blue sky", "user": "ranker2",
            "documents": ["the sky is blue", "grass"]}
    reply = http("POST", proxy.base_url + "/v1/rerank", body)
    assert reply.status == 200, reply.text
    assert reply.json()["results"][0]["document"] == {"text": "the sky is blue"}
    ev = billed(lago, reply.headers[CALL_ID_HEADER.lower()], "ranker2")
    assert ev.properties["input_tokens"] == 20  # the fake's 10 tokens a document
    assert cost_of(ev) == 20 * PER_RERANK_TOKEN
    body["model"] = "rerank-unpriced"
    reply = http("POST", proxy.base_url + "/rerank", body)
    ev = billed(lago, reply.headers[CALL_ID_HEADER.lower()], "ranker2")
    assert ev.properties["unknown_price"] == "true"
    assert ev.properties["rerank_searches"] == 1
    assert "response_cost" not in ev.properties


def _form(fields: list[tuple[str, str | tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    boundary = "testboundary123"
    out = b""
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"'
                    f"\r\nContent-Type: {value[2]}\r\n\r\n").encode() + value[1]
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_uploads_refused_clearly(proxy: RunningProxy, lago: FakeLago,
                                 upstream: FakeOpenAI) -> None:
    url = proxy.base_url + "/v1/audio/transcriptions"
    before = len(upstream.received)
    big, ctype = _form([("model", "whisper"), ("file", ("a.mp3", b"x" * 60_000, "audio/mpeg"))])
    reply = http("POST", url, data=big, headers={"Content-Type": ctype})
    assert_openai_error(reply, 413)
    no_file, ctype = _form([("model", "whisper")])
    reply = http("POST", url, data=no_file, headers={"Content-Type": ctype})
    assert_openai_error(reply, 400, param="file")
    reply = http("POST", url, data=b"not a form", headers={"Content-Type": "text/plain"})
    assert_openai_error(reply, 400, code="invalid_multipart")
    reply = http("POST", url, data=b"--x\r\ngarbage", headers={
        "Content-Type": "multipart/form-data; boundary=x"})
    assert_openai_error(reply, 400, code="invalid_multipart")
    reply = http("POST", proxy.base_url + "/v1/images/generations", {"model": "dalle3"})
    assert_openai_error(reply, 400, param="prompt")
    assert len(upstream.received) == before  # nothing reached the provider
    assert lago.events == {}


def test_upstream_error_keeps_its_status_and_bills_nothing(client: openai.OpenAI,
                                                            lago: FakeLago,
                                                            upstream: FakeOpenAI) -> None:
    upstream.fail(400, "Your request was rejected by the safety system.")
    with pytest.raises(openai.BadRequestError, match="safety system"):
        client.images.generate(model="dalle3", prompt="x", user="refused")
    ok = client.images.with_raw_response.generate(model="dalle3", prompt="y", user="refused")
    billed(lago, ok.headers[CALL_ID_HEADER], "refused")
    assert len(lago.events) == 1
