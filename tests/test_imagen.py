"""Imagen on Vertex AI: the stand-in's ``:predict`` proven with google-genai's
``generate_images`` (Vertex mode, a service-account token), then the openai SDK's
``images.generate`` through the proxy to a ``vertex_ai/imagen-...`` deployment, billed
per returned image at Google's list price."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from google import genai
from google.genai import types
from google.genai._common import ExperimentalWarning
from google.oauth2 import service_account

from tests.fakes.lago_server import FakeLago
from tests.fakes.server_base import run_in_thread
from tests.fakes.vertex_server import CLOUD_PLATFORM, FakeVertex, make_rsa_key
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    RunningProxy,
    billed,
    config_dict,
    lago_env,
    lago_fixture,
    proxy_settings,
    run_proxy,
)

MODEL = "imagen-4.0-generate-001"
PREDICT = ("/v1/projects/tg-project/locations/europe-west4/publishers/google/models/"
           f"{MODEL}:predict")


@pytest.fixture(name="vertex")
def vertex_fixture() -> Iterator[FakeVertex]:
    with run_in_thread(FakeVertex(make_rsa_key())) as fake:
        yield fake


def test_genai_generate_images_reads_the_stand_in(vertex: FakeVertex) -> None:
    vertex.imagen_filtered = 1
    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        vertex.service_account(), scopes=[CLOUD_PLATFORM])
    client = genai.Client(vertexai=True, project="tg-project", location="europe-west4",
                          credentials=creds, http_options=types.HttpOptions(
                              base_url=vertex.url, api_version="v1"))
    with pytest.warns(ExperimentalWarning):  # google-genai deprecates generate_images
        reply = client.models.generate_images(
            model=MODEL, prompt="a lighthouse",
            config=types.GenerateImagesConfig(number_of_images=3, aspect_ratio="16:9",
                                              include_rai_reason=True))
    assert reply.generated_images is not None
    images = [g for g in reply.generated_images if g.image is not None
              and g.image.image_bytes]
    assert len(images) == 2
    assert reply.generated_images[0].rai_filtered_reason
    sent = vertex.received[-1]
    assert sent.path == PREDICT
    assert sent.body is not None and sent.body["parameters"]["sampleCount"] == 3


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, vertex: FakeVertex) -> Iterator[RunningProxy]:
    key_file = tmp_path / "vertex-key.json"
    key_file.write_text(json.dumps(vertex.service_account()))
    cfg = config_dict([{"model_name": "imagen", "litellm_params": {
        "model": f"vertex_ai/{MODEL}", "api_base": vertex.url, "vertex_project": "tg-project",
        "vertex_location": "europe-west4", "vertex_credentials": str(key_file)}}], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def test_openai_images_to_imagen_billed_per_image(proxy: RunningProxy, lago: FakeLago,
                                                  vertex: FakeVertex) -> None:
    vertex.imagen_filtered = 1  # filtered images are not returned, nor billed
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as client:
        raw = client.images.with_raw_response.generate(
            model="imagen", prompt="a lighthouse", n=3, size="1792x1024",
            response_format="b64_json", user="painter")
        answer = raw.parse()
        assert answer.data is not None and len(answer.data) == 2
        assert all(d.b64_json for d in answer.data)
        sent = vertex.received[-1]
        assert sent.path == PREDICT
        assert sent.headers["Authorization"].startswith("Bearer ")  # a fetched token
        assert sent.body == {"instances": [{"prompt": "a lighthouse"}],
                             "parameters": {"sampleCount": 3, "aspectRatio": "16:9"}}
        ev = billed(lago, raw.headers[CALL_ID_HEADER], "painter")
        assert (ev.properties["kind"], ev.properties["images"]) == ("image", 2)
        assert Decimal(ev.properties["response_cost"]) == 2 * Decimal("0.04")
        # A size Imagen has no aspect ratio for: a 400 naming it, nothing sent or billed.
        before = len(vertex.received)
        with pytest.raises(openai.BadRequestError, match="aspect ratio"):
            client.images.generate(model="imagen", prompt="x", size="640x480",
                                   user="painter")
        assert len(vertex.received) == before
    assert len(lago.events) == 1
