"""OpenAI's image routes: ``POST /v1/images/generations`` (JSON) and ``/v1/images/edits``
(multipart upload). Billed per image by size and quality, or per token for
token-priced image models (see tallygate.media); kind ``image``."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from aiohttp import web

from tallygate import media
from tallygate.engine import CallContext
from tallygate.multipart import read_form
from tallygate.providers.base import Deployment
from tallygate.proxy.calls import CallFrame, billed_response
from tallygate.proxy.gateway import Gateway

_GATEWAY_KEYS = ("metadata",)  # read by the gateway, never sent upstream


async def form_fields(request: web.Request, gw: Gateway, held: ExitStack) -> dict[str, Any]:
    """A multipart body as the call's fields: text fields by name (for the model, user
    and metadata) and the parts in order under ``_form``, for the upstream body (its
    files spooled, never whole in memory: tallygate.multipart)."""
    fields = await read_form(request, gw.settings.max_request_bytes,
                             gw.settings.body_read_timeout_s, held)
    data: dict[str, Any] = {n: v for n, v in fields if isinstance(v, str)}
    data["_form"] = fields
    return data


def json_params(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _GATEWAY_KEYS}


class ImageRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    async def generations(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "images", self._check_generation, self._generate)

    @staticmethod
    def _check_generation(data: dict[str, Any]) -> dict[str, Any]:
        media.image_generation_request("check", json_params(data))  # 400s before admission
        return data

    async def _generate(self, request: web.Request, data: dict[str, Any],
                        deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        req = media.image_generation_request(deployment.model, json_params(data))
        answer, event = await media.call(deployment, req, ctx, self.gw, self.gw.prices)
        return billed_response(self.gw, answer.body, event, answer.content_type)

    async def edits(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "images", self._check_edit, self._edit,
                                    read=form_fields)

    @staticmethod
    def _check_edit(data: dict[str, Any]) -> dict[str, Any]:
        media.image_edit_request("check", data["_form"])
        return data

    async def _edit(self, request: web.Request, data: dict[str, Any],
                    deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        req = media.image_edit_request(deployment.model, data["_form"])
        answer, event = await media.call(deployment, req, ctx, self.gw, self.gw.prices)
        return billed_response(self.gw, answer.body, event, answer.content_type)


def add_image_routes(app: web.Application, gw: Gateway) -> None:
    routes = ImageRoutes(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/images/generations", routes.generations)
        app.router.add_post(f"{prefix}/images/edits", routes.edits)
