"""Ollama's native API, LiteLLM's two prefixes: ``ollama_chat/<model>`` posts to
``/api/chat`` (messages, images, tools), ``ollama/<model>`` to ``/api/generate`` (one
prompt made from the messages, images; no tools). Both read the same answers: one JSON
object, or with streaming an NDJSON stream whose last line has ``done: true`` and the
counts. ``prompt_eval_count`` is the input, ``eval_count`` the output; a count Ollama
leaves out is estimated and flagged, never billed as zero. Embeddings: ``/api/embed``.

Ollama models run on hardware the operator pays for, so no price library knows them:
their events are flagged ``unknown_price`` unless the deployment sets its own prices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from tallygate.errors import (
    BadRequestError,
    ConfigError,
    UpstreamError,
    retry_after_of,
    upstream_error_for,
)
from tallygate.estimate import estimate_text_tokens
from tallygate.providers import translate as tr
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    StreamItem,
    UpstreamRequest,
)
from tallygate.providers.registry import register
from tallygate.usage import Usage

LABEL = "Ollama"
DEFAULT_API_BASE = "http://localhost:11434"

# Ollama's runtime options (its Modelfile parameters). Set in a deployment's
# litellm_params or passed with a call, they go into the request's ``options``.
OPTION_NAMES = frozenset({
    "num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_gqa",
    "numa", "low_vram", "use_mmap", "use_mlock", "vocab_only", "top_k", "min_p",
    "typical_p", "tfs_z", "repeat_last_n", "repeat_penalty", "mirostat", "mirostat_eta",
    "mirostat_tau", "penalize_newline"})
# OpenAI chat params Ollama has as options under the same name.
_SAME_NAME = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
DONE_REASONS = {"stop": "stop", "length": "length"}


# --- request pieces ----------------------------------------------------------------------

def options(params: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` for the request: the deployment's options, then the call's."""
    out: dict[str, Any] = {k: v for k, v in extra.items() if k in OPTION_NAMES}
    given = params.get("options")
    if given is not None:
        if not isinstance(given, dict):
            raise BadRequestError("options must be an object", param="options")
        out.update(given)
    out.update({k: v for k, v in params.items() if k in OPTION_NAMES and v is not None})
    for name in _SAME_NAME:
        if params.get(name) is not None:
            out[name] = params[name]
    limit = tr.max_tokens(params)
    if limit is not None:
        out["num_predict"] = limit
    stop = tr.stop_list(params.get("stop"))
    if stop:
        out["stop"] = stop
    return out


def response_format(value: object) -> str | dict[str, Any] | None:
    """OpenAI ``response_format`` as Ollama's ``format``: "json" or a JSON schema."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and isinstance(value, dict):
        schema = (value.get("json_schema") or {}).get("schema")
        if isinstance(schema, dict):
            return schema
    raise BadRequestError(f"unsupported response_format {value!r}", param="response_format")


def think(model: str, params: Mapping[str, Any]) -> bool | str | None:
    """``think`` from ``think`` or ``reasoning_effort`` (gpt-oss takes the level itself)."""
    if params.get("think") is not None:
        value = params["think"]
        return value if isinstance(value, bool | str) else bool(value)
    effort = params.get("reasoning_effort")
    if effort is None:
        return None
    if model.startswith("gpt-oss"):
        return str(effort)
    return effort in ("low", "medium", "high")


def common_body(model: str, params: Mapping[str, Any], extra: Mapping[str, Any],
                stream: bool) -> dict[str, Any]:
    tr.refuse_untranslatable(params, LABEL)
    body: dict[str, Any] = {"model": model, "stream": stream}
    opts = options(params, extra)
    if opts:
        body["options"] = opts
    fmt = response_format(params.get("response_format") or None)
    if params.get("format") is not None:  # Ollama's own name passes as it is
        fmt = params["format"]
    if fmt is not None:
        body["format"] = fmt
    keep_alive = params.get("keep_alive", extra.get("keep_alive"))
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    thinking = think(model, params)
    if thinking is not None:
        body["think"] = thinking
    return body


def _text_and_images(content: object, where: str) -> tuple[str, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for part in tr.content_parts(content, where):
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "image_url":
            images.append(tr.data_url_base64(tr.image_url(part, where)[0], LABEL, where))
        else:
            raise tr.unsupported_part(kind, LABEL, where)
    return "".join(texts), images


def _tool_calls(calls: object, where: str) -> list[dict[str, Any]]:
    out = []
    for _call, fn in tr.call_functions(calls, where):
        out.append({"function": {"name": fn["name"],
                                 "arguments": tr.arguments_object(fn.get("arguments"), where)}})
    return out


def chat_messages(messages: object) -> list[dict[str, Any]]:
    """OpenAI messages as /api/chat messages. A tool result names its tool
    (``tool_name``), found from the assistant call its ``tool_call_id`` answers."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for where, message in tr.message_list(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system",
                        "content": tr.text_of(message.get("content"), LABEL, where)})
        elif role == "user":
            text, images = _text_and_images(message.get("content"), where)
            turn: dict[str, Any] = {"role": "user", "content": text}
            if images:
                turn["images"] = images
            out.append(turn)
        elif role == "assistant":
            turn = {"role": "assistant",
                    "content": tr.text_of(message.get("content"), LABEL, where)}
            if message.get("tool_calls"):
                turn["tool_calls"] = _tool_calls(message["tool_calls"], where)
                for call in message["tool_calls"]:
                    if call.get("id"):
                        names[str(call["id"])] = str(call["function"]["name"])
            out.append(turn)
        elif role == "tool":
            turn = {"role": "tool", "content": tr.text_of(message.get("content"), LABEL, where)}
            name = names.get(str(message.get("tool_call_id")))
            if name:
                turn["tool_name"] = name
            out.append(turn)
        else:
            raise tr.unsupported_role(role, LABEL, where)
    return out


def chat_tools(params: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The tools to send; Ollama has no tool_choice: "auto" is its behaviour, "none"
    is served by sending no tools, a required or named choice is refused."""
    tools = params.get("tools")
    if not tools:
        return None
    choice = params.get("tool_choice")
    if choice == "none":
        return None
    if choice not in (None, "auto"):
        raise BadRequestError(f"Ollama cannot force a tool (tool_choice {choice!r}); "
                              "use 'auto' or 'none'", param="tool_choice",
                              code="unsupported_parameter")
    return tr.function_tool_entries(tr.function_tools(tools))


def generate_prompt(messages: object) -> tuple[str, str | None, list[str]]:
    """(prompt, system, images) for /api/generate, which takes one prompt: a lone user
    turn is the prompt as it is (the model's template frames it); a conversation is
    written out turn by turn. Tool turns need /api/chat (``ollama_chat/``)."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    images: list[str] = []
    for where, message in tr.message_list(messages):
        role = message.get("role")
        if role in ("tool",) or message.get("tool_calls"):
            raise BadRequestError("tool calls need Ollama's chat API: use the model as "
                                  "ollama_chat/<model>", param=where)
        if role in ("system", "developer"):
            system.append(tr.text_of(message.get("content"), LABEL, where))
        elif role in ("user", "assistant"):
            text, found = _text_and_images(message.get("content"), where)
            turns.append((str(role), text))
            images += found
        else:
            raise tr.unsupported_role(role, LABEL, where)
    if len(turns) == 1 and turns[0][0] == "user":
        prompt = turns[0][1]
    else:
        prompt = "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns)
    return prompt, "\n\n".join(system) or None, images


# --- answers -----------------------------------------------------------------------------

def ollama_usage(parsed: Mapping[str, Any], output_text: str,
                 estimate_prompt: Callable[[], int] | None = None) -> Usage:
    """``prompt_eval_count`` in, ``eval_count`` out. A missing output count is estimated
    from the answer, a missing input count from the prompt (by ``estimate_prompt``, or
    by the engine, which has the prompt, when it is left 0). Either makes the usage
    ``estimated``."""
    prompt = tr.count(parsed.get("prompt_eval_count"))
    output = tr.count(parsed.get("eval_count"))
    estimated = prompt is None or output is None
    if output is None:
        output = estimate_text_tokens(output_text)
    if prompt is None and estimate_prompt is not None:
        prompt = estimate_prompt()
    return Usage(input_tokens=prompt or 0, output_tokens=output,
                 source="estimated" if estimated else "provider")


def answer_tool_calls(raw: object) -> list[dict[str, Any]]:
    out = []
    for call in raw if isinstance(raw, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        text = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
        out.append(tr.tool_call(str(call.get("id") or tr.new_id("call_")),
                                str(fn.get("name") or ""), text))
    return out


def finish_reason(done_reason: object, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return DONE_REASONS.get(done_reason, "stop") if isinstance(done_reason, str) else "stop"


def translate_answer(parsed: Mapping[str, Any], model: str) -> ChatResult:
    """An /api/chat or /api/generate answer as an OpenAI chat.completion."""
    message = parsed.get("message")
    if isinstance(message, dict):  # /api/chat
        text = str(message.get("content") or "")
        thinking = str(message.get("thinking") or "")
        calls = answer_tool_calls(message.get("tool_calls"))
    else:  # /api/generate
        text = str(parsed.get("response") or "")
        thinking = str(parsed.get("thinking") or "")
        calls = []
    spoken = text + thinking + "".join(c["function"]["arguments"] for c in calls)
    usage = ollama_usage(parsed, spoken)
    body = tr.chat_completion(tr.new_id("chatcmpl-"), model,
                              tr.assistant_message(text, calls, thinking),
                              finish_reason(parsed.get("done_reason"), bool(calls)), usage)
    return ChatResult(body=body, usage=usage, raw=None)


def upstream_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Ollama's error answer ``{"error": "..."}`` with its status."""
    message = tr.error_message(body, "error", f"Ollama answered {status}")
    return upstream_error_for(status, message, headers=retry_after_of(headers))


# --- stream: NDJSON lines -> OpenAI chat.completion.chunk --------------------------------

class OllamaStreamDecoder(StreamDecoder):
    """One JSON object a line; the line with ``done: true`` carries the counts. A line
    ``{"error": ...}`` is Ollama failing after the answer began."""

    def __init__(self, include_usage: bool, model: str) -> None:
        super().__init__()
        self._buf = b""
        self._include_usage = include_usage
        self._chunks = tr.ChunkMaker(model, tr.new_id("chatcmpl-"))
        self._started = False
        self._tool_calls = 0

    def feed(self, data: bytes) -> list[StreamItem]:
        self._buf += data
        out: list[StreamItem] = []
        while not self.done:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line, self._buf = self._buf[:nl].strip(), self._buf[nl + 1:]
            if not line:
                continue
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                out.extend(self._on_line(parsed))
        return out

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> list[StreamItem]:
        out = []
        if not self._started:
            self._started = True
            out.append(self._chunks.delta({"role": "assistant", "content": ""}))
        if delta or finish:
            out.append(self._chunks.delta(delta, finish))
        return out

    def _on_line(self, line: dict[str, Any]) -> list[StreamItem]:
        if isinstance(line.get("error"), str):
            raise UpstreamError(f"Ollama failed mid-stream: {line['error']}",
                                code="upstream_stream_error")
        message = line.get("message")
        if isinstance(message, dict):
            text, thinking = message.get("content"), message.get("thinking")
            calls = answer_tool_calls(message.get("tool_calls"))
        else:
            text, thinking, calls = line.get("response"), line.get("thinking"), []
        out: list[StreamItem] = []
        if isinstance(thinking, str) and thinking:
            self.output_parts.append(thinking)
            out += self._delta({"reasoning_content": thinking})
        if isinstance(text, str) and text:
            self.output_parts.append(text)
            out += self._delta({"content": text})
        if calls:
            deltas = []
            for call in calls:
                self.output_parts.append(call["function"]["name"] + call["function"]["arguments"])
                deltas.append({"index": self._tool_calls, **call})
                self._tool_calls += 1
            out += self._delta({"tool_calls": deltas})
        if line.get("done") is True:
            self.done = True
            self.usage = ollama_usage(line, self.output_text(), self.estimate_prompt)
            out += self._delta({}, finish_reason(line.get("done_reason"), self._tool_calls > 0))
            if self._include_usage:
                out.append(self._chunks.usage(self.usage))
        return out


# --- the providers -----------------------------------------------------------------------

class _OllamaBase(Provider):
    price_provider = None  # self-hosted: priced by the deployment's own prices, if any
    default_api_base = DEFAULT_API_BASE
    api_key_env = "OLLAMA_API_KEY"  # Ollama's cloud, or a proxy in front of a server
    litellm_params = OPTION_NAMES | {"keep_alive", "truncate"}
    reads_top_k = True
    supported_openai_params = tr.CHAT_PARAMS
    route: str = "/api/chat"

    def check_deployment(self, deployment: Deployment) -> None:
        base = (deployment.api_base or "").rstrip("/")
        if base.endswith("/v1"):
            raise ConfigError(f"api_base: {base} is Ollama's OpenAI-compatible API; "
                              f"{self.name}/ speaks Ollama's native API at the server's "
                              "root (drop /v1), or use openai/<model> for /v1")

    def _base(self, deployment: Deployment) -> str:
        base = (deployment.api_base or os.environ.get("OLLAMA_API_BASE")
                or DEFAULT_API_BASE).rstrip("/")
        # LiteLLM accepts a base that already ends in the endpoint.
        for suffix in ("/api/chat", "/api/generate", "/api/embed", "/api"):
            if base.endswith(suffix):
                return base[: -len(suffix)]
        return base

    def _headers(self, deployment: Deployment) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self.api_key(deployment, os.environ)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(deployment.headers)
        return headers

    def body(self, deployment: Deployment, params: Mapping[str, Any],
             stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        return UpstreamRequest(url=self._base(deployment) + self.route,
                               headers=self._headers(deployment),
                               body=orjson.dumps(self.body(deployment, params, stream)))

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = tr.json_object(body, LABEL)
        if isinstance(parsed.get("error"), str):
            raise UpstreamError(f"Ollama failed: {parsed['error']}")
        return translate_answer(parsed, deployment.model)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return OllamaStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return upstream_error(status, body, headers)

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        body: dict[str, Any] = {"model": deployment.model,
                                "input": tr.embedding_inputs(params.get("input"), LABEL)}
        if params.get("dimensions") is not None:
            body["dimensions"] = params["dimensions"]
        for name in ("truncate", "keep_alive"):
            value = params.get(name, deployment.params.get(name))
            if value is not None:
                body[name] = value
        opts = {k: v for k, v in deployment.params.items() if k in OPTION_NAMES}
        if opts:
            body["options"] = opts
        tr.check_encoding_format(params)
        return UpstreamRequest(url=self._base(deployment) + "/api/embed",
                               headers=self._headers(deployment), body=orjson.dumps(body))

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        vectors = parsed.get("embeddings") if isinstance(parsed, dict) else None
        if not isinstance(vectors, list):
            raise UpstreamError("Ollama's embed answer has no embeddings list")
        tokens = tr.count(parsed.get("prompt_eval_count"))
        return ChatResult(body=tr.embedding_list(vectors, deployment.model, tokens or 0),
                          usage=Usage(input_tokens=tokens) if tokens else None, raw=None)


class OllamaChatProvider(_OllamaBase):
    """``ollama_chat/<model>``: /api/chat."""

    name = "ollama_chat"
    route = "/api/chat"

    def body(self, deployment: Deployment, params: Mapping[str, Any],
             stream: bool) -> dict[str, Any]:
        body = common_body(deployment.model, params, deployment.params, stream)
        body["messages"] = chat_messages(params.get("messages"))
        tools = chat_tools(params)
        if tools:
            body["tools"] = tools
        return body


class OllamaGenerateProvider(_OllamaBase):
    """``ollama/<model>``: /api/generate."""

    name = "ollama"
    route = "/api/generate"
    # One prompt, no tools (LiteLLM's list for ollama/ has none either).
    supported_openai_params = tr.CHAT_PARAMS - {"tools", "tool_choice"}

    def body(self, deployment: Deployment, params: Mapping[str, Any],
             stream: bool) -> dict[str, Any]:
        if params.get("tools") and params.get("tool_choice") != "none":
            raise BadRequestError("tools need Ollama's chat API: use the model as "
                                  "ollama_chat/<model>", param="tools",
                                  code="unsupported_parameter")
        body = common_body(deployment.model, params, deployment.params, stream)
        prompt, system, images = generate_prompt(params.get("messages"))
        body["prompt"] = prompt
        if system:
            body["system"] = system
        if images:
            body["images"] = images
        return body


register(OllamaChatProvider())
register(OllamaGenerateProvider())
