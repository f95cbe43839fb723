"""OpenAI and every OpenAI-compatible endpoint (vLLM, Ollama, Groq, Together, ...).

Requests and answers are already in the OpenAI shape, so this adapter mostly passes
bytes through. For streams it always asks upstream for usage
(``stream_options.include_usage``) and hides the final usage chunk from callers that did
not ask for it: billing needs the numbers, the caller's stream stays as requested.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import UpstreamError, upstream_error_for
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    NativeCompletions,
    Provider,
    StreamDecoder,
    StreamedBody,
    StreamItem,
    UpstreamRequest,
)
from tallygate.providers.registry import register
from tallygate.providers.sse import SSEParser
from tallygate.usage import Usage

DONE_FRAME = b"data: [DONE]\n\n"
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...) refuse ``max_tokens`` (they take
# ``max_completion_tokens``) and any sampling temperature but the default.
_REASONING_MODEL = re.compile(r"(o[1-9]|gpt-5)([-.].*)?", re.IGNORECASE)


def is_reasoning_model(deployment: Deployment) -> bool:
    """Whether the deployment's model is an OpenAI reasoning model: LiteLLM's
    ``model_info.supports_reasoning`` when set, else its name (or ``base_model``)."""
    declared = deployment.model_info.get("supports_reasoning")
    if isinstance(declared, bool):
        return declared
    name = (deployment.base_model or deployment.model).rsplit("/", 1)[-1]
    return _REASONING_MODEL.fullmatch(name) is not None


def json_headers(api_key: str | None, extra: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(extra)
    return headers


def upstream_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """An OpenAI-style error answer as an UpstreamError with the same status."""
    message = f"upstream answered {status}"
    err_type: str | None = None
    code: str | None = None
    param: str | None = None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            err_type = err.get("type") if isinstance(err.get("type"), str) else None
            code = str(err["code"]) if err.get("code") is not None else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
        elif isinstance(err, str):
            message = err
    keep = {}
    for name in ("retry-after", "retry-after-ms"):
        value = headers.get(name) or headers.get(name.title())
        if value:
            keep["Retry-After" if name == "retry-after" else "retry-after-ms"] = value
    return upstream_error_for(status, message, param=param, code=code,
                              error_type=err_type, headers=keep)


def _has_usage(payload: bytes) -> bool:
    """Whether a chunk may carry usage: with include_usage, OpenAI puts ``"usage":null``
    in every chunk, so only a non-null usage needs the chunk parsed."""
    at = payload.find(b'"usage"')
    if at < 0:
        return False
    rest = payload[at + 7:at + 16].lstrip(b": \t")
    return not rest.startswith(b"null")


class OpenAIStreamDecoder(StreamDecoder):
    """Forwards OpenAI chunks as they are; reads usage and text on the way.

    Chunks are parsed only when they carry usage. The text of the others is read back
    from their bytes only if an estimate is needed (the stream ended without usage).
    """

    def __init__(self, include_usage: bool) -> None:
        super().__init__()
        self._sse = SSEParser()
        self._include_usage = include_usage
        self._payloads: list[bytes] = []

    def feed(self, data: bytes) -> list[StreamItem]:
        out: list[StreamItem] = []
        for ev in self._sse.feed(data):
            payload = ev.data
            if payload == b"[DONE]":
                self.done = True
                continue
            if not payload:
                continue
            body = payload.strip()
            if not (body.startswith(b"{") and body.endswith(b"}")):
                # Forwarded chunks are not parsed, but one that cannot be a JSON object
                # (an HTML line, a number, a cut line) is noise: it is not forwarded.
                continue
            if not _has_usage(payload):
                self._payloads.append(payload)
                out.append(StreamItem(None, b"data: " + payload + b"\n\n", payload))
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(chunk, dict):
                continue
            usage = self.usage_field(chunk)
            if isinstance(usage, dict):
                # An invalid usage object reads as None: the call is then estimated.
                self.usage = self.read_usage(chunk, usage)
                self.usage_final = self.usage is not None
            choices = chunk.get("choices") or ()
            if choices:
                self._payloads.append(payload)
            if usage and not choices and not self._include_usage:
                continue  # the usage-only chunk the caller did not ask for
            if usage and choices and not self._include_usage:
                chunk = dict(chunk)
                chunk.pop("usage", None)
                out.append(StreamItem(chunk, b"data: " + orjson.dumps(chunk) + b"\n\n"))
                continue
            out.append(StreamItem(chunk, b"data: " + payload + b"\n\n"))
        return out

    def usage_field(self, chunk: dict[str, Any]) -> Any:
        """Where a parsed chunk keeps its usage (Groq's older streams: ``x_groq``)."""
        return chunk.get("usage")

    def read_usage(self, chunk: dict[str, Any], usage: dict[str, Any]) -> Usage | None:
        """The usage of the chunk that carries it (a provider may read more of it)."""
        return Usage.from_openai(usage)

    def output_text(self) -> str:
        """The text and tool arguments streamed so far; parts of chunks that are not in
        the chunk shape (a string delta, content that is not text) are skipped."""
        parts: list[str] = []
        for payload in self._payloads:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            for choice in choices if isinstance(choices, list) else ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                content = delta.get("content")
                if isinstance(content, str):
                    parts.append(content)
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else ():
                    function = call.get("function") if isinstance(call, dict) else None
                    args = function.get("arguments") if isinstance(function, dict) else None
                    if isinstance(args, str):
                        parts.append(args)
        return "".join(parts)


class CompletionStreamDecoder(OpenAIStreamDecoder):
    """A legacy text completion stream: the same framing and usage, text in ``text``."""

    def output_text(self) -> str:
        parts: list[str] = []
        for payload in self._payloads:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            for choice in (chunk.get("choices") or ()) if isinstance(chunk, dict) else ():
                if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
        return "".join(parts)


def completion_body(params: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The body with the deployment's model; a stream always asks for its usage (as
    ``chat_request`` does, kept apart so the chat path stays as it is)."""
    body = dict(params)
    body["model"] = model
    if stream:
        body["stream"] = True
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def embedding_usage(raw: object) -> Usage | None:
    """An embeddings ``usage`` (input tokens only); None when missing or not a count, so
    that the call is estimated rather than billed as zero."""
    if not isinstance(raw, dict):
        return None
    for name in ("prompt_tokens", "total_tokens"):
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return Usage(input_tokens=value)
    return None


class OpenAIProvider(Provider, NativeCompletions):
    name = "openai"
    price_provider = "openai"
    default_api_base = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    responses_api = True

    def _base(self, deployment: Deployment) -> str:
        return (deployment.api_base or self.default_api_base or "").rstrip("/")

    def media_request(self, deployment: Deployment, path: str, body: bytes | StreamedBody,
                      content_type: str) -> UpstreamRequest:
        headers = json_headers(self.api_key(deployment, os.environ), deployment.headers)
        headers["Content-Type"] = content_type
        headers["Accept"] = "*/*"  # speech answers audio bytes
        return UpstreamRequest.of(f"{self._base(deployment)}/{path}", headers, body)

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = dict(params)
        body["model"] = deployment.model
        if stream:
            body["stream"] = True
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            body["stream_options"] = options
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return UpstreamRequest(
            url=self._base(deployment) + "/chat/completions",
            headers=json_headers(self.api_key(deployment, os.environ), deployment.headers),
            body=orjson.dumps(body),
        )

    def responses_request(self, deployment: Deployment, body: bytes) -> UpstreamRequest:
        return UpstreamRequest(
            url=self._base(deployment) + "/responses",
            headers=json_headers(self.api_key(deployment, os.environ), deployment.headers),
            body=body,
        )

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("upstream answered with a non-object body")
        return ChatResult(body=parsed, usage=Usage.from_openai(parsed.get("usage")), raw=body)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return OpenAIStreamDecoder(include_usage)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return upstream_error(status, body, headers)

    def completion_request(self, deployment: Deployment, params: dict[str, Any],
                           stream: bool) -> UpstreamRequest:
        return UpstreamRequest(
            url=self._base(deployment) + "/completions",
            headers=json_headers(self.api_key(deployment, os.environ), deployment.headers),
            body=orjson.dumps(completion_body(params, deployment.model, stream)),
        )

    def completion_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return self.chat_response(deployment, body)

    def completion_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return CompletionStreamDecoder(include_usage)

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        body = dict(params)
        body["model"] = deployment.model
        return UpstreamRequest(
            url=self._base(deployment) + "/embeddings",
            headers=json_headers(self.api_key(deployment, os.environ), deployment.headers),
            body=orjson.dumps(body),
        )

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("upstream answered with a non-object body")
        return ChatResult(body=parsed, usage=embedding_usage(parsed.get("usage")), raw=body)


register(OpenAIProvider())
