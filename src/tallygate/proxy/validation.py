"""Request bodies: read in time, parsed as a JSON object naming its model (the checks of
each API's fields are its door's: ``tallygate.doors.openai_request``...)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tallygate.errors import (
    BadRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    TallygateError,
)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise BadRequestError("the request body is empty; send a JSON object",
                              code="invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc.msg}",
                              code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequestError("the request body must be a JSON object", code="invalid_json")
    return data


def require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None:
        raise BadRequestError("missing required parameter: 'model'", param="model",
                              code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' must be a non-empty string", param="model",
                              code="invalid_type")
    return model


async def read_in_time(request: web.Request, timeout_s: float, limit: int | None = None) -> bytes:
    """The body, or a 408 when it does not arrive within ``timeout_s`` (a body shorter
    than its Content-Length would otherwise hold the connection open for ever)."""
    try:
        if request.content.is_eof():  # all of it arrived with the headers: no wait
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g}s"
                                  ) from None
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLargeError(f"the request body is over the {limit}-byte limit") from None


def close_after(answer: web.Response, exc: TallygateError) -> web.Response:
    """A body that did not arrive is not read further: the connection closes after the
    answer (aiohttp would otherwise linger reading it)."""
    if isinstance(exc, RequestTimeoutError):
        answer.force_close()
    return answer
