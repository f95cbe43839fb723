"""Request body checks: clear 400s that name the field, before anything is sent."""

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
from tallygate.storable import check_storable


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


def check_chat(data: dict[str, Any]) -> None:
    messages = data.get("messages")
    if messages is None:
        raise BadRequestError("missing required parameter: 'messages'", param="messages",
                              code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array", param="messages",
                              code="invalid_type")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequestError(f"'messages[{i}]' must be an object",
                                  param=f"messages[{i}]", code="invalid_type")
        if not isinstance(message.get("role"), str):
            raise BadRequestError(f"'messages[{i}].role' is required and must be a string",
                                  param=f"messages[{i}].role", code="invalid_type")
    for name, kind in (("stream", bool), ("user", str), ("metadata", dict)):
        value = data.get(name)
        if value is not None and not isinstance(value, kind):
            raise BadRequestError(f"'{name}' must be a {kind.__name__}", param=name,
                                  code="invalid_type")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError("'stream_options' must be an object", param="stream_options",
                              code="invalid_type")
    _check_kept(data)


def check_embedding(data: dict[str, Any]) -> None:
    value = data.get("input")
    if value is None:
        raise BadRequestError("missing required parameter: 'input'", param="input",
                              code="missing_required_parameter")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise BadRequestError("'input' must be a string or a non-empty array", param="input",
                              code="invalid_type")
    if data.get("user") is not None and not isinstance(data.get("user"), str):
        raise BadRequestError("'user' must be a str", param="user", code="invalid_type")
    _check_kept(data)


def _check_kept(data: dict[str, Any]) -> None:
    """What the gateway keeps on the event must be storable (tallygate.storable)."""
    for name in ("user", "metadata"):
        if data.get(name) is not None:
            check_storable(data[name], name)


async def read_in_time(request: web.Request, timeout_s: float, limit: int | None = None) -> bytes:
    """The body, or a 408 when it does not arrive within ``timeout_s`` (a body shorter
    than its Content-Length would otherwise hold the connection open for ever)."""
    try:
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
