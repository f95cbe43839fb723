"""The image, audio, moderation and rerank stand-ins, proven with the official clients
(openai's images / audio / moderations, cohere's rerank v1 and v2) before tallygate is
tested against them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import cohere
import httpx
import openai
import pytest

from tests.fakes.openai_media import SPEECH_BYTES, b64_png
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.rerank_server import FakeRerank
from tests.fakes.server_base import run_in_thread

KEY = "sk-fake"


@pytest.fixture(name="fake")
def fake_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = KEY
        yield fake


@pytest.fixture(name="client")
def client_fixture(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def test_images_generate_and_edit(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    dalle = client.images.generate(model="dall-e-3", prompt="a lighthouse", n=1,
                                   size="1024x1792", quality="hd")
    assert dalle.data is not None and dalle.data[0].url is not None
    assert dalle.usage is None
    assert fake.requests[-1] == {"model": "dall-e-3", "prompt": "a lighthouse", "n": 1,
                                 "size": "1024x1792", "quality": "hd"}
    token_priced = client.images.generate(model="gpt-image-1", prompt="a lighthouse")
    assert token_priced.usage is not None
    assert token_priced.usage.input_tokens_details.text_tokens == 11
    assert token_priced.usage.output_tokens == 4160
    assert token_priced.data is not None and token_priced.data[0].b64_json is not None
    edited = client.images.edit(model="gpt-image-1", prompt="add a boat",
                                image=("in.png", io.BytesIO(b64_png()), "image/png"))
    assert edited.usage is not None and edited.usage.input_tokens_details.image_tokens == 323
    assert fake.received[-1].body == {
        "model": "gpt-image-1", "prompt": "add a boat",
        "image": {"filename": "in.png", "content_type": "image/png", "size": len(b64_png())}}


def test_audio_transcription_translation_speech(client: openai.OpenAI,
                                                fake: FakeOpenAI) -> None:
    audio = ("talk.mp3", io.BytesIO(b"\xff\xfb" * 1000), "audio/mpeg")
    whisper = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert whisper.text == fake.media.transcript
    assert whisper.usage is not None and whisper.usage.type == "duration"
    assert whisper.usage.seconds == 9
    audio[1].seek(0)
    tokens = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=audio)
    assert tokens.usage is not None and tokens.usage.type == "tokens"
    assert tokens.usage.input_token_details is not None
    assert tokens.usage.input_token_details.audio_tokens == 120
    audio[1].seek(0)
    with pytest.warns(DeprecationWarning):  # this openai release deprecates translations
        verbose = client.audio.translations.create(model="whisper-1", file=audio,
                                                   response_format="verbose_json")
    assert verbose.text == fake.media.transcript
    assert fake.received[-1].path == "/v1/audio/translations"
    assert fake.received[-1].body is not None
    assert fake.received[-1].body["file"]["size"] == 2000
    audio[1].seek(0)
    text = client.audio.transcriptions.create(model="whisper-1", file=audio,
                                              response_format="text")
    assert text.strip() == fake.media.transcript
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello there")
    assert speech.content == SPEECH_BYTES
    assert speech.response.headers["content-type"] == "audio/mpeg"


def test_moderations(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.media.flagged = True
    result = client.moderations.create(model="omni-moderation-latest",
                                       input=["one text", "another"])
    assert len(result.results) == 2
    assert result.results[0].flagged and result.results[0].categories.violence
    assert result.model == "omni-moderation-latest"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cohere_rerank(version: str) -> None:
    with run_in_thread(FakeRerank("cohere")) as fake:
        fake.require_api_key = KEY
        docs = ["the sky is blue", "the grass is green", "blue whales are big"]
        with httpx.Client() as http:
            results = _rerank(version, fake.url, http, docs)
        assert [r.index for r in results] == [0, 2]
        assert fake.received[-1].path == f"/{version}/rerank"


def _rerank(version: str, url: str, http: httpx.Client, docs: list[str]) -> list[Any]:
    if version == "v2":
        v2 = cohere.ClientV2(api_key=KEY, base_url=url, httpx_client=http)
        reply2 = v2.rerank(model="rerank-v3.5", query="blue sky", documents=docs,
                           top_n=2)
        results = reply2.results
        assert reply2.meta is not None and reply2.meta.billed_units is not None
        assert reply2.meta.billed_units.search_units == 1
    else:
        v1 = cohere.Client(api_key=KEY, base_url=url, httpx_client=http)
        reply1 = v1.rerank(model="rerank-v3.5", query="blue sky", documents=docs,
                           top_n=2)
        results = reply1.results
        assert reply1.meta is not None and reply1.meta.billed_units is not None
        assert reply1.meta.billed_units.search_units == 1
    return list(results)
