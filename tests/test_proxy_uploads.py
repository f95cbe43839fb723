"""Multipart uploads through the proxy, over real HTTP on loopback: a multi-MB audio
file from the official openai SDK reaches the provider whole and is billed once; too
large is a 413 and malformed a 400, with nothing billed or reserved; a client leaving
mid-upload leaves nothing behind; a retry and a fallback send the upload again from
the spool; and the proxy never holds the file whole in memory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    assert_openai_error,
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
from tests.test_access_keys import _reserved, generate, ledger_rows

MB = 1024 * 1024
LIMIT_MB = 40
WHISPER_PER_SECOND = Decimal("0.36") / 3600


@pytest.fixture(name="broken")
def broken_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  broken: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([
        openai_entry("whisper", upstream.base_url, "whisper-1"),
        openai_entry("edit", upstream.base_url, "gpt-image-1"),
        # Fail when a test says so: "lonely" is retried once on its one deployment,
        # "flaky" falls back to "whisper" at once.
        openai_entry("lonely", broken.base_url, "gpt-4o-transcribe"),
        openai_entry("flaky", broken.base_url, "gpt-4o-transcribe"),
    ], tmp_path, general={"max_request_size_mb": LIMIT_MB})
    cfg["router_settings"] = {"num_retries": 1, "fallbacks": [{"flaky": ["whisper"]}]}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


@pytest.fixture(name="client")
def client_fixture(proxy: RunningProxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=MASTER_KEY, base_url=proxy.base_url + "/v1",
                       max_retries=0) as client:
        yield client


def audio_file(tmp_path: Path, size: int) -> tuple[Path, str]:
    """A file of ``size`` bytes that are not all alike (a shifted byte shows in the
    digest), and its sha256."""
    path = tmp_path / f"talk-{size}.mp3"
    block = hashlib.sha256(str(size).encode()).digest() * 2048  # 64 KiB
    with path.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[:size % len(block)])
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_multi_mb_transcription_reaches_the_provider_whole_and_is_billed_once(
        tmp_path: Path, client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI) -> None:
    path, digest = audio_file(tmp_path, 8 * MB + 123)
    with path.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper", file=f, language="en", extra_body={"user": "big-listener"})
    assert raw.parse().text == upstream.media.transcript
    assert upstream.media.uploads[-1] == ("file", 8 * MB + 123, digest)
    sent = upstream.received[-1]
    assert sent.body is not None
    assert (sent.body["model"], sent.body["language"]) == ("whisper-1", "en")
    # Sent with its exact length, not chunked.
    assert sent.headers["Content-Length"] == str(_length_of(sent))
    assert "Transfer-Encoding" not in sent.headers
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "big-listener")
    p = ev.properties
    # The provider's reported duration, not the file's size, is what is billed.
    assert (p["kind"], p["audio_seconds"], p["usage_source"]) == ("transcription", 9,
                                                                  "provider")
    assert Decimal(p["response_cost"]) == 9 * WHISPER_PER_SECOND
    assert len([e for e in lago.events.values()
                if e.external_subscription_id == "big-listener"]) == 1


def _length_of(sent: Any) -> int:
    return int(sent.headers["Content-Length"])


def test_file_before_model_and_image_edits(tmp_path: Path, proxy: RunningProxy,
                                           lago: FakeLago, upstream: FakeOpenAI) -> None:
    """OpenAI's curl order (the file first, the model after it) routes by the model all
    the same; an image edit's several images each arrive whole."""
    path, digest = audio_file(tmp_path, 2 * MB)
    body, ctype = _form([("file", ("a.mp3", path.read_bytes(), "audio/mpeg")),
                         ("model", "whisper"), ("user", "curl-user")])
    reply = http("POST", proxy.base_url + "/v1/audio/transcriptions", data=body,
                 headers={"Content-Type": ctype})
    assert reply.status == 200, reply.text
    assert upstream.media.uploads[-1] == ("file", 2 * MB, digest)
    billed(lago, reply.headers[CALL_ID_HEADER.lower()], "curl-user")
    one, two = b"\x89PNG" + b"1" * 300_000, b"\x89PNG" + b"2" * 500_000
    body, ctype = _form([("model", "edit"), ("prompt", "add a boat"), ("user", "painter"),
                         ("image[]", ("one.png", one, "image/png")),
                         ("image[]", ("two.png", two, "image/png"))])
    reply = http("POST", proxy.base_url + "/v1/images/edits", data=body,
                 headers={"Content-Type": ctype})
    assert reply.status == 200, reply.text
    assert upstream.media.uploads[-2:] == [
        ("image[]", len(one), hashlib.sha256(one).hexdigest()),
        ("image[]", len(two), hashlib.sha256(two).hexdigest())]
    ev = billed(lago, reply.headers[CALL_ID_HEADER.lower()], "painter")
    assert (ev.properties["kind"], ev.properties["output_tokens"]) == ("image", 4160)


def test_retry_and_fallback_send_the_whole_upload_again(
        tmp_path: Path, client: openai.OpenAI, lago: FakeLago, upstream: FakeOpenAI,
        broken: FakeOpenAI) -> None:
    path, digest = audio_file(tmp_path, 3 * MB + 7)
    broken.fail(500, "overloaded", times=1)
    with path.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="lonely", file=f, extra_body={"user": "retried"})
    # The failed attempt and its retry each got all of it.
    assert broken.media.uploads == [("file", 3 * MB + 7, digest)] * 2
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "retried")
    assert ev.properties["audio_input_tokens"] == broken.media.audio_tokens  # token-priced
    broken.fail(500, "overloaded", times=1)
    with path.open("rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="flaky", file=f, extra_body={"user": "fell-back"})
    assert broken.media.uploads[2:] == [("file", 3 * MB + 7, digest)]
    assert upstream.media.uploads[-1] == ("file", 3 * MB + 7, digest)
    ev = billed(lago, raw.headers[CALL_ID_HEADER], "fell-back")
    # Billed once, on the deployment that answered (whisper-1, per second).
    assert (ev.properties["audio_seconds"], ev.properties["model"]) == (9, "whisper-1")
    time.sleep(0.3)
    assert [e.external_subscription_id for e in lago.events.values()].count("fell-back") == 1
    assert [e.external_subscription_id for e in lago.events.values()].count("retried") == 1


async def _chunked_upload(url: str, key: str, size: int, *,
                          no_boundary: bool = False) -> tuple[int, dict[str, Any]]:
    """A form sent chunked (no Content-Length): only counting what arrives can stop it.
    ``no_boundary``: short lines that never reach the first boundary."""
    boundary = "chunkedboundary"

    async def body() -> AsyncIterator[bytes]:
        if no_boundary:
            for _ in range(size // (256 * 1024)):
                yield (b"n" * 1022 + b"\r\n") * 256  # 256 KiB of lines, none a boundary
            return
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
               f'whisper\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
               f'filename="a.mp3"\r\nContent-Type: audio/mpeg\r\n\r\n').encode()
        for _ in range(size // (256 * 1024)):
            yield b"\xff" * (256 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"Authorization": f"Bearer {key}",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with aiohttp.ClientSession() as s, s.post(url, data=body(), headers=headers) as r:
        return r.status, await r.json()


def test_too_large_is_413_with_nothing_billed_or_reserved(
        tmp_path: Path, proxy: RunningProxy, client: openai.OpenAI, lago: FakeLago,
        upstream: FakeOpenAI) -> None:
    base = proxy.base_url
    key = generate(base, key_alias="uploader", max_budget="5")["key"]
    keyed = client.with_options(api_key=key)
    path, _ = audio_file(tmp_path, (LIMIT_MB + 1) * MB)
    with path.open("rb") as f, pytest.raises(openai.APIStatusError) as caught:
        keyed.audio.transcriptions.create(model="whisper", file=f)
    assert caught.value.status_code == 413
    error = caught.value.body
    assert isinstance(error, dict) and "byte limit" in error["message"], error
    status, answer = asyncio.run(_chunked_upload(base + "/v1/audio/transcriptions", key,
                                                 (LIMIT_MB + 2) * MB))
    assert status == 413
    assert answer["error"]["type"] == "invalid_request_error", answer
    assert f"{LIMIT_MB * MB}-byte limit" in answer["error"]["message"]
    status, answer = asyncio.run(_chunked_upload(base + "/v1/audio/transcriptions", key,
                                                 (LIMIT_MB + 2) * MB, no_boundary=True))
    assert (status, answer["error"]["type"]) == (413, "invalid_request_error"), answer
    assert upstream.media.uploads == [] and upstream.received == []
    assert proxy.call(_reserved(proxy)) == 0
    assert ledger_rows(base, key_alias="uploader")["logs"] == []
    time.sleep(0.3)
    assert lago.events == {}


MALFORMED = [
    # (body, content type, what the 400 says)
    (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b\r\n"
     b"Content-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
     "multipart/form-data; boundary=b", "malformed"),                  # no closing boundary
    (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "no name"),
    (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--b--\r\n",
     "multipart/form-data; boundary=b", "Content-Transfer-Encoding"),
    (b"model=whisper", "application/x-www-form-urlencoded", "multipart/form-data"),
    (b"--b\r\nno headers here\r\n--b--\r\n", "multipart/form-data; boundary=b", "malformed"),
]


@pytest.mark.parametrize(("body", "ctype", "says"), MALFORMED)
def test_malformed_is_400_with_nothing_billed(proxy: RunningProxy, lago: FakeLago,
                                              upstream: FakeOpenAI, body: bytes, ctype: str,
                                              says: str) -> None:
    reply = http("POST", proxy.base_url + "/v1/audio/transcriptions", data=body,
                 headers={"Content-Type": ctype})
    error = assert_openai_error(reply, 400)
    assert says in error["message"], error
    assert upstream.received == []
    assert lago.events == {}


def test_client_leaving_mid_upload_leaves_nothing(tmp_path: Path, proxy: RunningProxy,
                                                  lago: FakeLago, upstream: FakeOpenAI,
                                                  client: openai.OpenAI,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tallygate")
    base = proxy.base_url
    key = generate(base, key_alias="leaver", max_budget="5")["key"]
    boundary = "leaving"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper'
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="a.mp3"\r\n\r\n').encode()
    host, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall((f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\n"
                   f"Authorization: Bearer {key}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                   f"Content-Length: {5 * MB}\r\n\r\n").encode() + head)
        s.sendall(b"\x00" * MB)
        time.sleep(0.3)  # the proxy is reading (spooling) the upload now
    # Gone with 4 MB unsent: nothing went upstream, nothing billed or held, and it is
    # not logged as a gateway fault.
    wait_for(lambda: "the client left before its upload ended" in caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert upstream.received == []
    assert proxy.call(_reserved(proxy)) == 0
    assert ledger_rows(base, key_alias="leaver")["logs"] == []
    assert lago.events == {}
    # The proxy serves the next upload as usual.
    path, digest = audio_file(tmp_path, MB)
    with path.open("rb") as f:
        raw = client.with_options(api_key=key).audio.transcriptions.with_raw_response.create(
            model="whisper", file=f, extra_body={"user": "after"})
    assert upstream.media.uploads == [("file", MB, digest)]
    billed(lago, raw.headers[CALL_ID_HEADER], "after")


def test_the_upload_is_never_held_whole_in_memory(tmp_path: Path, client: openai.OpenAI,
                                                  upstream: FakeOpenAI) -> None:
    """Every thread of this process (the proxy, the stand-in, the client) is traced:
    reading the 30 MiB body whole (as the proxy once did: it grew by 131 MiB for 10 MiB)
    would add at least its size to the peak; spooled past 512 KiB and sent in 64 KiB
    chunks, what is added (the read buffers of two servers) does not grow with it."""
    size = 30 * MB
    path, digest = audio_file(tmp_path, size)
    with path.open("rb") as f:  # a first call warms the pools and the imports
        client.audio.transcriptions.create(model="whisper", file=f)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        with path.open("rb") as f:  # httpx reads the file in chunks as it sends
            client.audio.transcriptions.create(model="whisper", file=f)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert upstream.media.uploads[-1] == ("file", size, digest)
    assert threading.active_count() > 1  # the proxy and the stand-in run in this process
    assert peak < 6 * MB, f"peak memory grew by {peak / MB:.1f} MiB for a 30 MiB upload"


def _form(fields: list[tuple[str, str | tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    boundary = "uploadtestboundary"
    out = bytearray()
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            out += (f'Content-Disposition: form-data; name="{name}"; filename="{value[0]}"'
                    f"\r\nContent-Type: {value[2]}\r\n\r\n").encode() + value[1]
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
