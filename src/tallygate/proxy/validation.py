"""Request body checks: clear 400s that name the field, before anything is sent."""

from __future__ import annotations

from typing import Any

import orjson

from tallygate.errors import BadRequestError


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
    for name, kind in (("stream", bool), ("user", str), ("safety_identifier", str),
                       ("metadata", dict)):
        value = data.get(name)
        if value is not None and not isinstance(value, kind):
            raise BadRequestError(f"'{name}' must be a {kind.__name__}", param=name,
                                  code="invalid_type")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError("'stream_options' must be an object", param="stream_options",
                              code="invalid_type")


def check_embedding(data: dict[str, Any]) -> None:
    value = data.get("input")
    if value is None:
        raise BadRequestError("missing required parameter: 'input'", param="input",
                              code="missing_required_parameter")
    if not isinstance(value, str | list) or (isinstance(value, list) and not value):
        raise BadRequestError("'input' must be a string or a non-empty array", param="input",
                              code="invalid_type")
    for name in ("user", "safety_identifier"):
        if data.get(name) is not None and not isinstance(data.get(name), str):
            raise BadRequestError(f"'{name}' must be a str", param=name, code="invalid_type")
