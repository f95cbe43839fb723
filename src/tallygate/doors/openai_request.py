"""OpenAI request bodies checked against the shapes OpenAI's API reference allows.

Chat completions and embeddings: every field the API defines is checked for its type
and range, and every message part for its shape, so that a body OpenAI would refuse is
a 400 naming the field (``messages[1].tool_calls[0].function``) before the access
policy, the estimators or a provider adapter read it, and before anything is sent.
Fields OpenAI does not define pass through unchecked: OpenAI-compatible servers take
their own (vLLM's ``top_k``, ...). Optional fields may be ``null``, as in the API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tallygate.errors import BadRequestError
from tallygate.storable import check_storable

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_USER_PARTS = ("text", "image_url", "input_audio", "file")
_ASSISTANT_PARTS = ("text", "refusal")
MAX_N = 128
MAX_STOP = 4


def _bad(message: str, param: str, code: str = "invalid_type") -> BadRequestError:
    return BadRequestError(message, param=param, code=code)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"'{where}' must be an object", where)
    return value


def _string(value: object, where: str, *, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise _bad(f"'{where}' must be a string", where)


def _choice(value: object, where: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _bad(f"'{where}' must be one of {', '.join(map(repr, choices))}", where,
                   "invalid_value")


def _number(value: object, where: str, low: float, high: float) -> None:
    if not _is_number(value):
        raise _bad(f"'{where}' must be a number", where)
    if not low <= value <= high:  # type: ignore[operator]
        raise _bad(f"'{where}' must be between {low:g} and {high:g}", where, "invalid_value")


def _integer(value: object, where: str, low: int, high: int | None = None) -> None:
    if not _is_int(value):
        raise _bad(f"'{where}' must be an integer", where)
    if value < low or (high is not None and value > high):  # type: ignore[operator]
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _bad(f"'{where}' must be {bound}", where, "invalid_value")


def _boolean(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise _bad(f"'{where}' must be a boolean", where)


# --- message content ------------------------------------------------------------------

def _part(part: object, where: str, allowed: tuple[str, ...]) -> None:
    part = _object(part, where)
    kind = part.get("type")
    if kind not in allowed:
        raise _bad(f"'{where}.type' must be one of {', '.join(map(repr, allowed))}",
                   f"{where}.type", "invalid_value")
    if kind in ("text", "refusal"):
        _string(part.get(kind), f"{where}.{kind}")
    elif kind == "image_url":
        image = _object(part.get("image_url"), f"{where}.image_url")
        _string(image.get("url"), f"{where}.image_url.url")
        if image.get("detail") is not None:
            _choice(image["detail"], f"{where}.image_url.detail", ("auto", "low", "high"))
    elif kind == "input_audio":
        audio = _object(part.get("input_audio"), f"{where}.input_audio")
        _string(audio.get("data"), f"{where}.input_audio.data")
        _string(audio.get("format"), f"{where}.input_audio.format")
    elif kind == "file":
        file = _object(part.get("file"), f"{where}.file")
        for name in ("file_data", "file_id", "filename"):
            _string(file.get(name), f"{where}.file.{name}", required=False)


def _content(content: object, where: str, allowed: tuple[str, ...], *,
             required: bool) -> None:
    if content is None:
        if required:
            raise _bad(f"'{where}' is required", where, "missing_required_parameter")
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or an array of content parts", where)
    for i, part in enumerate(content):
        _part(part, f"{where}[{i}]", allowed)


def _tool_call(call: object, where: str) -> None:
    call = _object(call, where)
    _string(call.get("id"), f"{where}.id")
    kind = call.get("type", "function")
    _choice(kind, f"{where}.type", ("function", "custom"))
    if kind == "custom":
        custom = _object(call.get("custom"), f"{where}.custom")
        _string(custom.get("name"), f"{where}.custom.name")
        _string(custom.get("input"), f"{where}.custom.input")
        return
    function = _object(call.get("function"), f"{where}.function")
    _string(function.get("name"), f"{where}.function.name")
    _string(function.get("arguments"), f"{where}.function.arguments")


def _function_call(value: object, where: str) -> None:
    value = _object(value, where)
    _string(value.get("name"), f"{where}.name")
    _string(value.get("arguments"), f"{where}.arguments")


def _message(message: object, where: str) -> None:
    message = _object(message, where)
    role = message.get("role")
    if not isinstance(role, str):
        raise _bad(f"'{where}.role' is required and must be a string", f"{where}.role")
    _choice(role, f"{where}.role", _ROLES)
    _string(message.get("name"), f"{where}.name", required=False)
    content, at = message.get("content"), f"{where}.content"
    if role in ("system", "developer", "tool"):
        _content(content, at, ("text",), required=True)
    elif role == "user":
        _content(content, at, _USER_PARTS, required=True)
    elif role == "function":
        _string(content, at, required=False)
        _string(message.get("name"), f"{where}.name")
    else:  # assistant: content, or tool calls, or a function call
        _content(content, at, _ASSISTANT_PARTS, required=False)
        _string(message.get("refusal"), f"{where}.refusal", required=False)
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _bad(f"'{where}.tool_calls' must be an array", f"{where}.tool_calls")
            for i, call in enumerate(calls):
                _tool_call(call, f"{where}.tool_calls[{i}]")
        if message.get("function_call") is not None:
            _function_call(message["function_call"], f"{where}.function_call")
        if message.get("audio") is not None:
            _string(_object(message["audio"], f"{where}.audio").get("id"), f"{where}.audio.id")
    if role == "tool":
        _string(message.get("tool_call_id"), f"{where}.tool_call_id")


# --- tools and the other fields ---------------------------------------------------------

def _tool(tool: object, where: str) -> None:
    tool = _object(tool, where)
    kind = tool.get("type", "function")
    _choice(kind, f"{where}.type", ("function", "custom"))
    if kind == "custom":
        _string(_object(tool.get("custom"), f"{where}.custom").get("name"),
                f"{where}.custom.name")
        return
    function = _object(tool.get("function"), f"{where}.function")
    _string(function.get("name"), f"{where}.function.name")
    _string(function.get("description"), f"{where}.function.description", required=False)
    if function.get("parameters") is not None:
        _object(function["parameters"], f"{where}.function.parameters")
    if function.get("strict") is not None:
        _boolean(function["strict"], f"{where}.function.strict")


def _tool_choice(choice: object, where: str) -> None:
    if isinstance(choice, str):
        _choice(choice, where, ("none", "auto", "required"))
        return
    choice = _object(choice, where)
    kind = choice.get("type")
    _choice(kind, f"{where}.type", ("function", "custom", "allowed_tools"))
    if kind == "function":
        _string(_object(choice.get("function"), f"{where}.function").get("name"),
                f"{where}.function.name")
    elif kind == "custom":
        _string(_object(choice.get("custom"), f"{where}.custom").get("name"),
                f"{where}.custom.name")
    else:
        allowed = _object(choice.get("allowed_tools"), f"{where}.allowed_tools")
        _choice(allowed.get("mode"), f"{where}.allowed_tools.mode", ("auto", "required"))
        if not isinstance(allowed.get("tools"), list):
            raise _bad(f"'{where}.allowed_tools.tools' must be an array",
                       f"{where}.allowed_tools.tools")


def _stop(stop: object, where: str) -> None:
    if isinstance(stop, str):
        return
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(
            isinstance(s, str) for s in stop):
        raise _bad(f"'{where}' must be a string or an array of up to {MAX_STOP} strings",
                   where)


def _response_format(value: object, where: str) -> None:
    value = _object(value, where)
    kind = value.get("type")
    _choice(kind, f"{where}.type", ("text", "json_object", "json_schema"))
    if kind == "json_schema":
        schema = _object(value.get("json_schema"), f"{where}.json_schema")
        _string(schema.get("name"), f"{where}.json_schema.name")
        if schema.get("schema") is not None:
            _object(schema["schema"], f"{where}.json_schema.schema")


def _logit_bias(value: object, where: str) -> None:
    for token, bias in _object(value, where).items():
        _number(bias, f"{where}.{token}", -100, 100)


def _array_of(check: Callable[[object, str], None]) -> Callable[[object, str], None]:
    def run(value: object, where: str) -> None:
        if not isinstance(value, list):
            raise _bad(f"'{where}' must be an array", where)
        for i, item in enumerate(value):
            check(item, f"{where}[{i}]")
    return run


def _function_def(value: object, where: str) -> None:
    value = _object(value, where)
    _string(value.get("name"), f"{where}.name")
    if value.get("parameters") is not None:
        _object(value["parameters"], f"{where}.parameters")


def _legacy_function_call(value: object, where: str) -> None:
    if isinstance(value, str):
        _choice(value, where, ("none", "auto"))
    else:
        _string(_object(value, where).get("name"), f"{where}.name")


def _prediction(value: object, where: str) -> None:
    value = _object(value, where)
    _choice(value.get("type"), f"{where}.type", ("content",))
    _content(value.get("content"), f"{where}.content", ("text",), required=True)


def _stream_options(value: object, where: str) -> None:
    for name, flag in _object(value, where).items():
        if name in ("include_usage", "include_obfuscation") and flag is not None:
            _boolean(flag, f"{where}.{name}")


def _modalities(value: object, where: str) -> None:
    if not isinstance(value, list) or not all(m in ("text", "audio") for m in value):
        raise _bad(f"'{where}' must be an array of 'text' and 'audio'", where)


def _is_object(value: object, where: str) -> None:
    _object(value, where)


# Checks of the optional chat fields, by name (each may also be null).
_CHAT_FIELDS: Mapping[str, Callable[[object, str], None]] = {
    "stream": _boolean,
    "stream_options": _stream_options,
    "n": lambda v, w: _integer(v, w, 1, MAX_N),
    "max_tokens": lambda v, w: _integer(v, w, 0),
    "max_completion_tokens": lambda v, w: _integer(v, w, 0),
    "temperature": lambda v, w: _number(v, w, 0, 2),
    "top_p": lambda v, w: _number(v, w, 0, 1),
    "presence_penalty": lambda v, w: _number(v, w, -2, 2),
    "frequency_penalty": lambda v, w: _number(v, w, -2, 2),
    "logprobs": _boolean,
    "top_logprobs": lambda v, w: _integer(v, w, 0, 20),
    "seed": lambda v, w: _integer(v, w, -(2**63), 2**63 - 1),
    "stop": _stop,
    "user": _string,
    "metadata": _is_object,
    "logit_bias": _logit_bias,
    "tools": _array_of(_tool),
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _boolean,
    "response_format": _response_format,
    "functions": _array_of(_function_def),
    "function_call": _legacy_function_call,
    "service_tier": _string,
    "reasoning_effort": _string,
    "verbosity": _string,
    "modalities": _modalities,
    "audio": _is_object,
    "prediction": _prediction,
    "store": _boolean,
    "web_search_options": _is_object,
    "prompt_cache_key": _string,
    "safety_identifier": _string,
    "mock_response": _string,  # LiteLLM's: answered by mock/ deployments
}


def _check_fields(data: Mapping[str, Any], fields: Mapping[str, Callable[[object, str], None]]
                  ) -> None:
    for name, check in fields.items():
        value = data.get(name)
        if value is not None:
            check(value, name)


def _kept(data: Mapping[str, Any]) -> None:
    """What the gateway keeps on the event must be storable (tallygate.storable)."""
    for name in ("user", "safety_identifier", "metadata"):
        if data.get(name) is not None:
            check_storable(data[name], name)


def check_chat(data: Mapping[str, Any]) -> None:
    """Raise a 400 naming the first field of a chat completions body OpenAI refuses."""
    messages = data.get("messages")
    if messages is None:
        raise _bad("missing required parameter: 'messages'", "messages",
                   "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        _message(message, f"messages[{i}]")
    _check_fields(data, _CHAT_FIELDS)
    _kept(data)


def _token_id(value: object) -> bool:
    return _is_int(value) and value >= 0  # type: ignore[operator]


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(map(_token_id, value))


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _embedding_input(value: object) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array", "input")
    # One kind throughout: strings, token ids, or arrays of token ids.
    ok, what = ((_is_str, "strings") if isinstance(value[0], str)
                else (_token_id, "token ids") if _is_int(value[0])
                else (_token_ids, "arrays of token ids"))
    for i, item in enumerate(value):
        if not ok(item):
            raise _bad(f"'input' must be a string or an array of {what} alone",
                       f"input[{i}]")


_EMBEDDING_FIELDS: Mapping[str, Callable[[object, str], None]] = {
    "encoding_format": lambda v, w: _choice(v, w, ("float", "base64")),
    "dimensions": lambda v, w: _integer(v, w, 1),
    "user": _string,
    "safety_identifier": _string,
    "metadata": _is_object,
}


def check_embedding(data: Mapping[str, Any]) -> None:
    """Raise a 400 naming the first field of an embeddings body OpenAI refuses."""
    if data.get("input") is None:
        raise _bad("missing required parameter: 'input'", "input", "missing_required_parameter")
    _embedding_input(data["input"])
    _check_fields(data, _EMBEDDING_FIELDS)
    _kept(data)
