"""Azure OpenAI's images and audio: the stand-in's deployment routes proven with the
openai SDK's AzureOpenAI client, then the plain openai client through the proxy to
``azure/`` deployments, billed as at OpenAI (genai-prices' azure prices; images at the
per-image list price)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_compat_server import FakeCompat
from tests.fakes.openai_media import SPEECH_BYTES
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    billed,
    config_dict,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
)

VERSION = "2024-10-21"
AUDIO = ("talk.mp3", b"\xff\xfb" * 1000, "audio/mpeg")


@pytest.fixture(name="azure")
def azure_fixture() -> Iterator[FakeCompat]:
    with run_in_thread(FakeCompat("azure")) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


def test_azure_openai_client_reads_the_stand_in(azure: FakeCompat) -> None:
    with openai.AzureOpenAI(azure_endpoint=azure.url, api_key=UPSTREAM_KEY,
                            api_version=VERSION, max_retries=0) as client:
        image = client.images.generate(model="dall-e-3", prompt="a lighthouse")
        assert image.data is not None and image.data[0].url
        text = client.audio.transcriptions.create(model="whisper-1", file=AUDIO)
        assert text.text == azure.media.transcript
        speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hi")
        assert speech.content == SPEECH_BYTES
    paths = [r.path for r in azure.received]
    assert paths == ["/openai/deployments/dall-e-3/images/generations",
                     "/openai/deployments/whisper-1/audio/transcriptions",
                     "/openai/deployments/tts-1/audio/speech"]
    assert all(r.headers["api-key"] == UPSTREAM_KEY for r in azure.received)
    assert all(f"api-version={VERSION}" in r.query for r in azure.received if r.query)


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, azure: FakeCompat) -> Iterator[RunningProxy]:
    def entry(name: str, deployment: str) -> dict[str, object]:
        return {"model_name": name, "litellm_params": {
            "model": f"azure/{deployment}", "api_base": azure.url, "api_key": UPSTREAM_KEY,
            "api_version": VERSION}, "model_info": {"base_model": f"azure/{deployment}"}}
    cfg = config_dict([entry("az-image", "dall-e-3"), entry("az-whisper", "whisper-1"),
                       entry("az-tts", "tts-1")], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def test_openai_clients_to_azure_deployments(proxy: RunningProxy, lago: FakeLago,
                                             azure: FakeCompat) -> None:
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as client:
        image = client.images.with_raw_response.generate(
            model="az-image", prompt="a lighthouse", quality="hd", user="azure-user")
        text = client.audio.transcriptions.with_raw_response.create(
            model="az-whisper", file=AUDIO, extra_body={"user": "azure-user"})
        speech = client.audio.speech.with_raw_response.create(
            model="az-tts", voice="alloy", input="Hello there", extra_body={"user": "azure-user"})
        assert speech.content == SPEECH_BYTES
    sent = azure.received
    assert [r.path for r in sent] == ["/openai/deployments/dall-e-3/images/generations",
                                      "/openai/deployments/whisper-1/audio/transcriptions",
                                      "/openai/deployments/tts-1/audio/speech"]
    assert all(r.headers["api-key"] == UPSTREAM_KEY and "Authorization" not in r.headers
               for r in sent)
    costs = {}
    for name, raw in (("image", image), ("transcription", text), ("speech", speech)):
        ev = billed(lago, raw.headers[CALL_ID_HEADER], "azure-user")
        assert ev.properties["kind"] == name and ev.properties["provider"] == "azure"
        costs[name] = Decimal(ev.properties["response_cost"])
    assert costs == {"image": Decimal("0.08"),              # dall-e-3 hd 1024x1024
                     "transcription": 9 * Decimal("0.36") / 3600,
                     "speech": 11 * Decimal("15") / 1_000_000}
