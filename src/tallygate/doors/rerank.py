"""``POST /v1/rerank`` (and ``/rerank``, ``/v2/rerank``) in Cohere's shape, which Jina
and Voyage share: billed per search unit when the answer reports Cohere's
``meta.billed_units.search_units``, per token when it reports ``usage.total_tokens``
(Jina, Voyage); kind ``rerank``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tallygate import media
from tallygate.doors.images import json_params
from tallygate.engine import CallContext
from tallygate.providers.base import Deployment
from tallygate.proxy.calls import CallFrame, billed_response
from tallygate.proxy.gateway import Gateway


class RerankRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.calls = CallFrame(gw)

    async def rerank(self, request: web.Request) -> web.StreamResponse:
        return await self.calls.run(request, "rerank", self._check, self._rerank)

    @staticmethod
    def _check(data: dict[str, Any]) -> dict[str, Any]:
        media.rerank_request("check", json_params(data))
        return data

    async def _rerank(self, request: web.Request, data: dict[str, Any],
                      deployment: Deployment, ctx: CallContext) -> web.StreamResponse:
        req = media.rerank_request(deployment.model, json_params(data))
        answer, event = await media.call(deployment, req, ctx, self.gw, self.gw.prices)
        return billed_response(self.gw, answer.body, event, answer.content_type)


def add_rerank_routes(app: web.Application, gw: Gateway) -> None:
    route = RerankRoute(gw)
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        app.router.add_post(path, route.rerank)
