"""A Responses API request: its checks, and its translation into an internal chat call.

``parse`` checks the body once for every deployment (types, the input items' shape) and
gives the call frame what admission reads (``user``, ``metadata``, an estimate of the
prompt as chat ``messages``, ``max_completion_tokens``). ``to_chat`` turns the request
(and the stored conversation a ``previous_response_id`` names) into the chat params of a
provider that has no Responses API, and says which fields it could not carry
(``dropped``); what only OpenAI can do (its built-in tools, stored prompts, background
runs) is refused with a 400 that names the tool or field and the deployment's provider.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from tallygate.attribution import END_USER_FIELDS
from tallygate.errors import BadRequestError
from tallygate.providers.base import Deployment
from tallygate.storable import check_storable

# The key under which the parsed request rides in the call frame's params.
REQUEST_KEY = "tallygate.responses_request"
# A namespace tool's functions become chat functions named <namespace>__<name>.
NAMESPACE_SEP = "__"

# Fields the gateway itself serves (or that only shape the answer it renders).
_GATEWAY_FIELDS = frozenset({"model", "input", "instructions", "stream", "store", "metadata",
                             "previous_response_id", "tools", "tool_choice", "include",
                             "parallel_tool_calls", "text", "max_output_tokens", "temperature",
                             "top_p", "reasoning", "user", "safety_identifier", "truncation",
                             "stream_options"})
# Fields with no equivalent on a chat API that change what the answer is: refused there.
_REFUSED_WHEN_TRANSLATED = {
    "background": "background runs",
    "conversation": "OpenAI-stored conversations",
    "prompt": "OpenAI-stored prompt templates",
    "top_logprobs": "log probabilities",
}
# include values that ask for nothing a translated answer could have.
_HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content", "file_search_call.results",
                                "web_search_call.results", "web_search_call.action.sources",
                                "code_interpreter_call.outputs",
                                "computer_call_output.output.image_url",
                                "message.input_image.image_url"})
# Output items of OpenAI-run tools and reasoning carry nothing a chat API can take back.
_HISTORY_ONLY_ITEMS = frozenset({"reasoning", "web_search_call", "file_search_call",
                                 "code_interpreter_call", "image_generation_call",
                                 "mcp_list_tools", "compaction"})


def _bad(message: str, param: str | None, code: str = "invalid_request") -> BadRequestError:
    return BadRequestError(message, param=param, code=code)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A checked Responses API body (kept as it came, for pass-through)."""

    body: Mapping[str, Any]
    stream: bool
    store: bool
    items: tuple[dict[str, Any], ...]   # ``input`` as a list of items
    previous_response_id: str | None

    @property
    def model(self) -> str:
        return str(self.body["model"])


# --- parse: the checks every deployment needs -------------------------------------------

_TYPES: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("stream", bool, "a boolean"), ("store", bool, "a boolean"),
    ("background", bool, "a boolean"), ("parallel_tool_calls", bool, "a boolean"),
    ("instructions", str, "a string"), ("user", str, "a string"),
    ("safety_identifier", str, "a string"), ("previous_response_id", str, "a string"),
    ("metadata", dict, "an object"), ("text", dict, "an object"),
    ("reasoning", dict, "an object"), ("tools", list, "an array"),
    ("include", list, "an array"), ("stream_options", dict, "an object"),
)


def _input_items(value: object) -> tuple[dict[str, Any], ...]:
    if isinstance(value, str):
        return ({"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]},)
    if not isinstance(value, list):
        raise _bad("'input' must be a string or an array of input items", "input",
                   "invalid_type")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad(f"'input[{i}]' must be an object", f"input[{i}]", "invalid_type")
        kind = item.get("type", "message" if "role" in item else None)
        if not isinstance(kind, str):
            raise _bad(f"'input[{i}]' needs a 'type' (or a 'role' for a message)",
                       f"input[{i}]", "invalid_type")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise _bad(f"'input[{i}].role' must be user, assistant, system or developer",
                           f"input[{i}].role", "invalid_value")
            if not isinstance(item.get("content"), str | list):
                raise _bad(f"'input[{i}].content' must be a string or an array of parts",
                           f"input[{i}].content", "invalid_type")
        elif (kind in ("function_call", "function_call_output")
              and not isinstance(item.get("call_id"), str)):
            raise _bad(f"'input[{i}].call_id' is required", f"input[{i}].call_id",
                       "missing_required_parameter")
        items.append(item)
    return tuple(items)


def parse(body: dict[str, Any]) -> ResponsesRequest:
    """The request, checked; raises an OpenAI-shaped 400 naming the field."""
    if "input" not in body and "previous_response_id" not in body:
        raise _bad("missing required parameter: 'input'", "input", "missing_required_parameter")
    for name, kind, what in _TYPES:
        value = body.get(name)
        if value is not None and not isinstance(value, kind):
            raise _bad(f"'{name}' must be {what}", name, "invalid_type")
    for name in ("max_output_tokens", "max_tool_calls", "top_logprobs"):
        value = body.get(name)
        if value is not None and (not _is_int(value) or value < 0):
            raise _bad(f"'{name}' must be a non-negative integer", name, "invalid_type")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise _bad(f"'{name}' must be a number", name, "invalid_type")
    if body.get("truncation") not in (None, "auto", "disabled"):
        raise _bad("'truncation' must be 'auto' or 'disabled'", "truncation", "invalid_value")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _bad(f"'tools[{i}]' must be an object with a type", f"tools[{i}]",
                       "invalid_type")
    for name in ("user", "safety_identifier", "metadata"):  # kept on the event and stored
        if body.get(name) is not None:
            check_storable(body[name], name)
    items = _input_items(body["input"]) if body.get("input") is not None else ()
    return ResponsesRequest(body=body, stream=bool(body.get("stream")),
                            store=body.get("store") is not False, items=items,
                            previous_response_id=body.get("previous_response_id"))


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def estimate_messages(rq: ResponsesRequest) -> list[dict[str, Any]]:
    """The prompt as plain chat messages, for admission's token estimate only."""
    out: list[dict[str, Any]] = []
    if isinstance(rq.body.get("instructions"), str):
        out.append({"role": "system", "content": rq.body["instructions"]})
    for item in rq.items:
        kind = item.get("type", "message")
        if kind == "message":
            out.append({"role": "user", "content": _text_of(item.get("content"))})
        elif kind == "function_call":
            out.append({"role": "assistant",
                        "content": f"{item.get('name', '')}{item.get('arguments', '')}"})
        elif kind == "function_call_output":
            out.append({"role": "tool", "content": _text_of(item.get("output"))})
    return out


def admission_params(body: dict[str, Any]) -> dict[str, Any]:
    """What the call frame admits the call on, with the parsed request riding along."""
    rq = parse(body)
    # ``body``: the request as it came, which the budget's worst case reads in full.
    params: dict[str, Any] = {"model": rq.model, "messages": estimate_messages(rq),
                              "stream": rq.stream, REQUEST_KEY: rq, "body": body}
    for name in END_USER_FIELDS:  # the access policy picks the end user (attribution)
        if body.get(name):
            params[name] = body[name]
    if body.get("metadata"):
        params["metadata"] = body["metadata"]
    if _is_int(body.get("max_output_tokens")):
        params["max_completion_tokens"] = body["max_output_tokens"]
    return params


# --- to_chat: the translation for providers without the Responses API --------------------

@dataclass(slots=True)
class ChatCall:
    """The chat params of one translated call and what the translation left out."""

    params: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)  # chat -> (ns, name)


def _part(part: object, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _bad(f"'{where}' must be an object", where, "invalid_type")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text") or "")}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad(f"'{where}': only images given by image_url (a URL or a data URL) "
                       "can be translated; file_id needs an openai/ deployment", where)
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise _bad(f"'{where}': only files given inline (file_data) can be translated; "
                       "file_id and file_url need an openai/ deployment", where)
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise _bad(f"'{where}': content part type {kind!r} cannot be translated", where)


def _content(content: object, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{where}' must be a string or an array of parts", where, "invalid_type")
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: object, where: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _content(output, where)
    return orjson.dumps(output).decode()


def _chat_name(item: Mapping[str, Any]) -> str:
    name = str(item.get("name") or "")
    namespace = item.get("namespace")
    return f"{namespace}{NAMESPACE_SEP}{name}" if isinstance(namespace, str) and namespace \
        else name


def _messages(items: Iterable[Mapping[str, Any]], where: str,
              dropped: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            out.append({"role": role, "content": _content(item.get("content"), f"{at}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": _chat_name(item),
                                 "arguments": str(item.get("arguments") or "")}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": _output_text(item.get("output"), f"{at}.output")})
        elif kind in _HISTORY_ONLY_ITEMS:
            if f"{kind} items" not in dropped:
                dropped.append(f"{kind} items")
        else:
            raise _bad(f"'{at}': input item type {kind!r} cannot be translated to a chat "
                       "API; it needs an openai/ deployment", at)
    return out


def _builtin_refusal(kind: str, where: str, deployment: Deployment) -> BadRequestError:
    return _bad(f"'{where}': the built-in tool {kind!r} runs only at OpenAI; this model's "
                f"deployment is {deployment.provider!r} ({deployment.provider}/"
                f"{deployment.model}), which has no such tool. Remove the tool or route "
                "the call to an openai/ deployment", where, "unsupported_tool")


def _function(tool: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise _bad(f"'{where}.name' is required", f"{where}.name", "missing_required_parameter")
    function: dict[str, Any] = {
        "name": name, "parameters": tool.get("parameters") or {"type": "object",
                                                                "properties": {}}}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tools(call: ChatCall, tools: list[Any], deployment: Deployment) -> None:
    out = []
    for i, tool in enumerate(tools):
        where, kind = f"tools[{i}]", tool["type"]
        if kind == "function":
            out.append(_function(tool, tool.get("name"), where))
        elif kind == "namespace":
            for j, inner in enumerate(tool.get("tools") or ()):
                at = f"{where}.tools[{j}]"
                if not isinstance(inner, dict) or inner.get("type") != "function":
                    raise _builtin_refusal(str(inner.get("type") if isinstance(inner, dict)
                                               else inner), at, deployment)
                name = f"{tool.get('name')}{NAMESPACE_SEP}{inner.get('name')}"
                call.namespaced[name] = (str(tool.get("name")), str(inner.get("name")))
                out.append(_function(inner, name, at))
        else:
            raise _builtin_refusal(kind, where, deployment)
    if out:
        call.params["tools"] = out


def _tool_choice(choice: object, deployment: Deployment) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _chat_name(choice)}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if isinstance(choice, dict) and kind not in ("allowed_tools", "custom", "mcp"):
        raise _builtin_refusal(str(kind), "tool_choice", deployment)
    raise _bad(f"tool_choice {kind!r} cannot be translated to a chat API", "tool_choice")


def _text_format(text: Mapping[str, Any], call: ChatCall) -> None:
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        pass
    elif kind == "json_object":
        call.params["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        assert isinstance(fmt, dict)
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise _bad("text.format json_schema needs a name and a schema", "text.format")
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        call.params["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise _bad(f"text.format type {kind!r} cannot be translated", "text.format")
    if text.get("verbosity") is not None:
        call.dropped.append("text.verbosity")


def _include(values: list[Any]) -> None:
    for value in values:
        if value == "message.output_text.logprobs":
            raise _bad("include 'message.output_text.logprobs' cannot be served by a "
                       "translated deployment (no log probabilities)", "include")
        if value not in _HARMLESS_INCLUDES:
            raise _bad(f"include value {value!r} is not known", "include", "invalid_value")


def to_chat(rq: ResponsesRequest, history: Iterable[Mapping[str, Any]],
            deployment: Deployment) -> ChatCall:
    """The chat params for ``rq`` on ``deployment`` (a provider without the Responses
    API), the stored conversation ``history`` (input and output items) first."""
    body = rq.body
    for name, what in _REFUSED_WHEN_TRANSLATED.items():
        if body.get(name) not in (None, False):
            raise _bad(f"'{name}' ({what}) needs an openai/ deployment; this model's "
                       f"deployment is {deployment.provider!r}", name, "unsupported_parameter")
    call = ChatCall(params={})
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str) and body["instructions"]:
        messages.append({"role": "system", "content": body["instructions"]})
    messages += _messages(history, "previous_response_id", call.dropped)
    messages += _messages(rq.items, "input", call.dropped)
    if not messages:
        raise _bad("the request has no input to answer", "input")
    params = call.params
    params["model"] = rq.model
    params["messages"] = messages
    if body.get("tools"):
        _tools(call, body["tools"], deployment)
    if body.get("tool_choice") is not None and "tools" in params:
        params["tool_choice"] = _tool_choice(body["tool_choice"], deployment)
    if isinstance(body.get("parallel_tool_calls"), bool) and "tools" in params:
        params["parallel_tool_calls"] = body["parallel_tool_calls"]
    if isinstance(body.get("text"), dict):
        _text_format(body["text"], call)
    _include(body.get("include") or [])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            params[name] = body[name]
    if _is_int(body.get("max_output_tokens")):
        params["max_tokens"] = body["max_output_tokens"]
    user = body.get("user") or body.get("safety_identifier")
    if user:
        params["user"] = user
    reasoning = body.get("reasoning") or {}
    if reasoning.get("effort") is not None:
        if deployment.provider == "openai":
            params["reasoning_effort"] = reasoning["effort"]
        else:
            call.dropped.append("reasoning.effort")
    if reasoning.get("summary") is not None:
        call.dropped.append("reasoning.summary")  # a chat answer has no reasoning summary
    if body.get("truncation") == "auto":
        call.dropped.append("truncation")  # no middle-out truncation on a chat API
    if deployment.provider == "mock" and body.get("mock_response") is not None:
        params["mock_response"] = body["mock_response"]  # LiteLLM's, for the mock only
    if deployment.provider == "openai":
        for name in ("prompt_cache_key", "service_tier"):
            if body.get(name) is not None:
                params[name] = body[name]
    call.dropped += sorted(k for k in body if k not in _GATEWAY_FIELDS
                           and k not in _REFUSED_WHEN_TRANSLATED
                           and k not in params and body[k] is not None)
    return call
