"""OpenAI's audio routes: ``POST /v1/audio/transcriptions`` and ``/translations``
(multipart upload, bounded by the request size limit; billed per second of audio or
per token) and ``/v1/audio/speech`` (JSON in, audio bytes out; billed per character).
Kinds ``transcription`` and ``speech``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tallygate import media
from tallygate.doors.images import form_fields, json_params
from tallygate.engine import CallContext
from tallygate.providers.base import Deployment
from tallygate.proxy.calls import CallFrame, billed_response
from tallygate.proxy.gateway import Gateway


class AudioRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "audio_transcriptions", self._check_upload,
                                    self._transcribe, read=form_fields)

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "audio_translations", self._check_upload,
                                    self._translate, read=form_fields)

    @staticmethod
    def _check_upload(data: dict[str, Any]) -> dict[str, Any]:
        media.transcription_request("check", data["_form"])
        return data

    async def _transcribe(self, request: web.Request, data: dict[str, Any],
                          deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        return await self._send(media.transcription_request(deployment.model, data["_form"]),
                                deployment, ctx)

    async def _translate(self, request: web.Request, data: dict[str, Any],
                         deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        return await self._send(media.transcription_request(
            deployment.model, data["_form"], translation=True), deployment, ctx)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "audio_speech", self._check_speech, self._speak)

    @staticmethod
    def _check_speech(data: dict[str, Any]) -> dict[str, Any]:
        media.speech_request("check", json_params(data))
        return data

    async def _speak(self, request: web.Request, data: dict[str, Any],
                     deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        return await self._send(media.speech_request(deployment.model, json_params(data)),
                                deployment, ctx)

    async def _send(self, req: media.MediaRequest, deployment: Deployment,
                    ctx: CallContext) -> web.StreamResponse:
        answer, event = await media.call(deployment, req, ctx, self.gw, self.gw.prices)
        return billed_response(self.gw, answer.body, event, answer.content_type)


def add_audio_routes(app: web.Application, gw: Gateway) -> None:
    routes = AudioRoutes(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/audio/transcriptions", routes.transcriptions)
        app.router.add_post(f"{prefix}/audio/translations", routes.translations)
        app.router.add_post(f"{prefix}/audio/speech", routes.speech)
