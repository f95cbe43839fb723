"""``GET /v1/models`` and ``GET /v1/models/{id}``: the gateway's model groups.

In OpenAI's shape (``{"object": "list", "data": [{id, object, created, owned_by}]}``),
or in Anthropic's when the caller is an Anthropic client, which always sends an
``anthropic-version`` header (``{"data": [{type, id, display_name, created_at}],
"has_more", "first_id", "last_id"}``, paged with ``limit``, ``after_id``, ``before_id``
as Anthropic's API is). An unknown id is a 404 in the caller's shape.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tallygate.doors.anthropic_messages import error_response as anthropic_error
from tallygate.errors import BadRequestError, ModelNotFoundError, TallygateError
from tallygate.event import new_call_id
from tallygate.providers.anthropic import VERSION_HEADER
from tallygate.proxy.calls import REQUEST_ID_HEADER, openai_error_response
from tallygate.proxy.gateway import Gateway

ANTHROPIC_PAGE = 20  # Anthropic's default page size; at most 1000


def _is_anthropic(request: web.Request) -> bool:
    return VERSION_HEADER in request.headers


class ModelsRoute:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.created = int(gw.started_at)
        self.created_at = datetime.fromtimestamp(self.created, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ")

    def _openai(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created,
                "owned_by": "tallygate"}

    def _anthropic(self, name: str) -> dict[str, Any]:
        return {"type": "model", "id": name, "display_name": name,
                "created_at": self.created_at}

    @staticmethod
    def _answer(body: Any, request_id: str) -> web.Response:
        return web.Response(body=orjson.dumps(body), headers={REQUEST_ID_HEADER: request_id},
                            content_type="application/json")

    def _error(self, request: web.Request, exc: TallygateError,
               request_id: str) -> web.Response:
        if _is_anthropic(request):
            return anthropic_error(exc, request_id)
        answer = openai_error_response(exc)
        answer.headers[REQUEST_ID_HEADER] = request_id
        return answer

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        request_id = new_call_id()
        try:
            identity = await self.gw.access.authenticate(request)
            # A key restricted to some model groups sees only those.
            names = self.gw.access.visible_models(identity, list(self.gw.model_names()))
            if _is_anthropic(request):
                return self._answer(self._anthropic_page(request, names), request_id)
        except TallygateError as exc:
            return self._error(request, exc, request_id)
        return self._answer({"object": "list", "data": [self._openai(n) for n in names]},
                            request_id)

    def _anthropic_page(self, request: web.Request, names: list[str]) -> dict[str, Any]:
        raw_limit = request.query.get("limit", str(ANTHROPIC_PAGE))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
            raise BadRequestError("limit: must be an integer from 1 to 1000", param="limit")
        limit = int(raw_limit)
        after, before = request.query.get("after_id"), request.query.get("before_id")
        for cursor, name in (("after_id", after), ("before_id", before)):
            if name is not None and name not in names:
                raise BadRequestError(f"{cursor}: no model {name!r}", param=cursor)
        low = names.index(after) + 1 if after is not None else 0
        if before is not None:  # the page just before it; more means more before
            end = names.index(before)
            start = max(low, end - limit)
            page, more = names[start:end], start > low
        else:
            page = names[low:low + limit]
            more = low + len(page) < len(names)
        data = [self._anthropic(n) for n in page]
        return {"data": data, "has_more": more,
                "first_id": page[0] if page else None, "last_id": page[-1] if page else None}

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        request_id = new_call_id()
        model = request.match_info["model_id"]
        try:
            identity = await self.gw.access.authenticate(request)
            if model not in self.gw.model_names() or (
                    model not in self.gw.access.visible_models(identity, [model])):
                raise ModelNotFoundError(f"The model {model!r} does not exist on this "
                                         "gateway; GET /v1/models lists the models",
                                         param="model")
        except TallygateError as exc:
            return self._error(request, exc, request_id)
        body = self._anthropic(model) if _is_anthropic(request) else self._openai(model)
        return self._answer(body, request_id)


def add_models_routes(app: web.Application, gw: Gateway) -> None:
    """``GET /v1/models`` and ``/v1/models/{id}`` (each also without /v1)."""
    route = ModelsRoute(gw)
    for prefix in ("/v1", ""):
        app.router.add_get(f"{prefix}/models", route.list_models)
        app.router.add_get(f"{prefix}/models/{{model_id:.+}}", route.retrieve)
