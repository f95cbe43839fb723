"""``POST /v1/moderations``: OpenAI's moderation models, free at OpenAI (priced at zero
because genai-prices lists them with no price), billed on estimated input tokens (the
answer reports none); kind ``moderation``. A moderation model without a listed or
configured price is flagged unknown_price like any other."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tallygate import media
from tallygate.doors.images import json_params
from tallygate.engine import CallContext
from tallygate.providers.base import Deployment
from tallygate.proxy.calls import CallFrame, billed_response
from tallygate.proxy.gateway import Gateway


class ModerationRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    async def moderations(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "moderations", self._check, self._moderate)

    @staticmethod
    def _check(data: dict[str, Any]) -> dict[str, Any]:
        media.moderation_request("check", json_params(data))
        return data

    async def _moderate(self, request: web.Request, data: dict[str, Any],
                        deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        req = media.moderation_request(deployment.model, json_params(data))
        answer, event = await media.call(deployment, req, ctx, self.gw, self.gw.prices)
        return billed_response(self.gw, answer.body, event, answer.content_type)


def add_moderation_routes(app: web.Application, gw: Gateway) -> None:
    route = ModerationRoute(gw)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/moderations", route.moderations)
