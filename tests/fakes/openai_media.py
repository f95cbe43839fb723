"""OpenAI's image, audio and moderation routes for the fake OpenAI server, written from
OpenAI's API reference: ``POST /v1/images/generations`` and ``/v1/images/edits``
(multipart), ``/v1/audio/transcriptions`` and ``/translations`` (multipart; ``json``,
``verbose_json`` or ``text``), ``/v1/audio/speech`` (audio bytes), ``/v1/moderations``.

Knobs on ``FakeOpenAI.media``: ``transcript``, ``audio_seconds`` (whisper-1's
``usage.type = duration``; ``gpt-4o-transcribe``-style models answer token usage from
``audio_tokens`` / ``text_tokens`` / ``output_tokens``), ``image_tokens`` (gpt-image-1's
usage), ``flagged``. Multipart bodies are recorded as dicts: text fields as strings,
files as ``{"filename", "content_type", "size"}``; ``uploads`` has each file's size
and sha256.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.server_base import Received

if TYPE_CHECKING:
    from tests.fakes.server_base import FakeServer

# A provider's own check of the credential headers: its refusal, or None.
AuthCheck = Callable[[Any], web.Response | None]

# A tiny valid 1x1 PNG, base64: what b64_json images carry.
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
           "AAAABJRU5ErkJggg==")
SPEECH_BYTES = b"ID3\x04\x00fake-mp3-audio" + bytes(range(64))
_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening",
               "illicit", "illicit/violent", "self-harm", "self-harm/instructions",
               "self-harm/intent", "sexual", "sexual/minors", "violence", "violence/graphic")
_TOKEN_IMAGE_MODELS = ("gpt-image-1",)


class MediaAPI:
    """The routes under ``prefix`` (OpenAI's ``/v1``; Azure's
    ``/openai/deployments/{deployment}``); ``auth`` checks the credential headers
    (default: OpenAI's Bearer key)."""

    def __init__(self, fake: FakeServer, prefix: str = "/v1",
                 auth: AuthCheck | None = None) -> None:
        self.fake = fake
        self.prefix = prefix
        self._auth = auth
        self.transcript = "Hello from the fake transcription."
        self.audio_seconds = 9.4
        self.audio_tokens, self.text_tokens, self.output_tokens = 120, 8, 15
        self.image_tokens = 4160        # gpt-image-1's output tokens for one image
        self.prompt_text_tokens = 11
        self.flagged = False
        self._ids = itertools.count(1)
        # Every uploaded file as it arrived: (field name, size, sha256 hex).
        self.uploads: list[tuple[str, int, str]] = []

    def routes(self) -> list[web.RouteDef]:
        p = self.prefix
        return [web.post(f"{p}/images/generations", self._generate),
                web.post(f"{p}/images/edits", self._edit),
                web.post(f"{p}/audio/transcriptions", self._transcribe),
                web.post(f"{p}/audio/translations", self._transcribe),
                web.post(f"{p}/audio/speech", self._speech),
                web.post(f"{p}/moderations", self._moderate)]

    async def _form(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        form = await request.post()
        body: dict[str, Any] = {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                size, digest = _measure(value.file)
                body[name] = {"filename": value.filename, "content_type": value.content_type,
                              "size": size}
                self.uploads.append((name, size, digest))
            else:
                body[name] = str(value)
        return body, self._gate(request, body)

    async def _json(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        got = await self.fake.record(request)
        return got.body or {}, self._check_key(got.headers)

    def _gate(self, request: web.Request, body: dict[str, Any]) -> web.Response | None:
        self.fake.received.append(Received(request.method, request.path,
                                           CIMultiDict(request.headers), body))
        return self._check_key(request.headers)

    def _check_key(self, headers: Any) -> web.Response | None:
        if self._auth is not None:
            return self._auth(headers) or self.fake.take_error()
        expected = self.fake.require_api_key
        if expected is not None and headers.get("Authorization") != f"Bearer {expected}":
            return self.fake.error(401, "Incorrect API key provided.")
        return self.fake.take_error()

    def _images(self, model: str, n: int, fmt: str) -> dict[str, Any]:
        data = [{"b64_json": PNG_1X1} if fmt == "b64_json" or model in _TOKEN_IMAGE_MODELS
                else {"url": f"https://example.invalid/img-{next(self._ids)}.png",
                      "revised_prompt": "a revised prompt"} for _ in range(n)]
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if model in _TOKEN_IMAGE_MODELS:
            answer["usage"] = {
                "input_tokens": self.prompt_text_tokens + self._input_images,
                "output_tokens": self.image_tokens * n,
                "total_tokens": self.prompt_text_tokens + self._input_images
                + self.image_tokens * n,
                "input_tokens_details": {"text_tokens": self.prompt_text_tokens,
                                         "image_tokens": self._input_images}}
        return answer

    _input_images = 0

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._json(request)
        if refusal is not None:
            return refusal
        if not isinstance(body.get("prompt"), str):
            return self.fake.error(400, "'prompt' is a required property")
        model = str(body.get("model") or "dall-e-2")
        self._input_images = 0
        answer = self._images(model, int(body.get("n") or 1),
                              str(body.get("response_format") or "url"))
        return await self.fake.send_json(request, answer)

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._form(request)
        if refusal is not None:
            return refusal
        images = [v for k, v in body.items() if k.startswith("image")]
        if not images or not isinstance(body.get("prompt"), str):
            return self.fake.error(400, "'image' and 'prompt' are required")
        model = str(body.get("model") or "dall-e-2")
        self._input_images = 323 * len(images)  # image input tokens of gpt-image-1
        answer = self._images(model, int(body.get("n") or 1),
                              str(body.get("response_format") or "url"))
        return await self.fake.send_json(request, answer)

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._form(request)
        if refusal is not None:
            return refusal
        if not isinstance(body.get("file"), dict) or "model" not in body:
            return self.fake.error(400, "'file' and 'model' are required")
        model, fmt = body["model"], body.get("response_format") or "json"
        if fmt == "text":
            return web.Response(text=self.transcript + "\n", content_type="text/plain")
        if fmt == "verbose_json":
            return await self.fake.send_json(request, {
                "task": "translate" if request.path.endswith("translations") else "transcribe",
                "language": "english", "duration": self.audio_seconds, "text": self.transcript,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": self.audio_seconds,
                              "text": self.transcript, "tokens": [50364, 2425],
                              "temperature": 0.0, "avg_logprob": -0.2,
                              "compression_ratio": 1.1, "no_speech_prob": 0.01}]})
        answer: dict[str, Any] = {"text": self.transcript}
        if model.startswith("whisper"):
            answer["usage"] = {"type": "duration", "seconds": round(self.audio_seconds)}
        else:
            answer["usage"] = {"type": "tokens",
                               "input_tokens": self.audio_tokens + self.text_tokens,
                               "input_token_details": {"text_tokens": self.text_tokens,
                                                       "audio_tokens": self.audio_tokens},
                               "output_tokens": self.output_tokens,
                               "total_tokens": self.audio_tokens + self.text_tokens
                               + self.output_tokens}
        return await self.fake.send_json(request, answer)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._json(request)
        if refusal is not None:
            return refusal
        if not body.get("input") or not body.get("voice") or not body.get("model"):
            return self.fake.error(400, "'model', 'input' and 'voice' are required")
        fmt = body.get("response_format") or "mp3"
        ctype = {"mp3": "audio/mpeg", "wav": "audio/wav", "opus": "audio/opus",
                 "aac": "audio/aac", "flac": "audio/flac", "pcm": "audio/pcm"}.get(fmt,
                                                                                 "audio/mpeg")
        self.fake.sent.append(SPEECH_BYTES)
        return web.Response(body=SPEECH_BYTES, content_type=ctype)

    async def _moderate(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._json(request)
        if refusal is not None:
            return refusal
        inputs = body.get("input")
        if inputs is None:
            return self.fake.error(400, "'input' is a required property")
        n = len(inputs) if isinstance(inputs, list) and all(
            isinstance(i, str) for i in inputs) else 1
        result = {"flagged": self.flagged,
                  "categories": {c: self.flagged and c == "violence" for c in _CATEGORIES},
                  "category_scores": {c: 0.9 if self.flagged and c == "violence" else 0.0001
                                      for c in _CATEGORIES},
                  "category_applied_input_types": {c: ["text"] for c in _CATEGORIES}}
        return await self.fake.send_json(request, {
            "id": f"modr-fake{next(self._ids)}",
            "model": str(body.get("model") or "omni-moderation-latest"),
            "results": [result] * n})


def _measure(file: Any) -> tuple[int, str]:
    """Size and sha256 of a file aiohttp spooled, read in chunks (a multi-MB upload
    is not held whole here either)."""
    digest, size = hashlib.sha256(), 0
    file.seek(0)
    while chunk := file.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def b64_png() -> bytes:
    return base64.b64decode(PNG_1X1)
