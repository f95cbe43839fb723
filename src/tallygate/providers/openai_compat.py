"""What the OpenAI-compatible clouds share: their request, answer and error handling.

Mistral, DeepSeek, Groq, Together, Fireworks, xAI, OpenRouter, Perplexity, Cerebras,
NVIDIA NIM, vLLM, LM Studio and Azure speak OpenAI's chat API with small differences:
where they live (a default ``api_base`` and LiteLLM's variables for it and the key),
fields they refuse, how they count usage (cache hits, reasoning outside completion
tokens, per-request search fees), what they say the call cost, and their error bodies.
Each provider module states its differences as class attributes and small overrides
of ``OpenAICompatProvider``; the answers still pass through to the client as bytes.

This module registers nothing itself (the registry imports it, harmlessly).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, ClassVar

import orjson

from tallygate.errors import BadRequestError, ConfigError, UpstreamError, upstream_error_for
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    NativeCompletions,
    Provider,
    StreamDecoder,
    StreamedBody,
    UpstreamRequest,
)
from tallygate.providers.openai import (
    CompletionStreamDecoder,
    OpenAIStreamDecoder,
    completion_body,
    json_headers,
)
from tallygate.usage import Usage

_NO_RENAMES: Mapping[str, str] = MappingProxyType({})


def decimal_or_none(value: object) -> Decimal | None:
    """A provider-reported amount as a Decimal (from its JSON number's own digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() and number >= 0 else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def reasoning_outside_completion(raw: Mapping[str, Any], reasoning: int) -> bool:
    """Whether ``reasoning`` tokens are counted beside ``completion_tokens`` rather than
    inside them (xAI, Perplexity), told by ``total_tokens``: it is prompt + completion
    + reasoning then, and prompt + completion when reasoning is a part of completion."""
    if not reasoning:
        return False
    total = _count(raw.get("total_tokens"))
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    return total == prompt + completion + reasoning or reasoning > completion


def openai_usage(raw: Mapping[str, Any] | None, *,
                 reasoning_apart: bool | None = None) -> Usage | None:
    """An OpenAI-shaped ``usage`` in our buckets, with reasoning tokens that a provider
    counts beside ``completion_tokens`` added to the output (``reasoning_apart``:
    True/False to say so, None to tell from ``total_tokens``)."""
    if not raw:
        return None
    details = raw.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    apart = (reasoning_outside_completion(raw, reasoning) if reasoning_apart is None
             else reasoning_apart and reasoning > 0)
    if not apart:
        return Usage.from_openai(raw)
    moved = dict(raw)
    moved["completion_tokens"] = _count(raw.get("completion_tokens")) + reasoning
    return Usage.from_openai(moved)


def error_parts(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """(message, type, code, param) of an error body, nested ``{"error": {...}}`` (OpenAI)
    or flat ``{"message": ..., "type": ...}`` (Mistral, Cerebras)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None, None
    if not isinstance(parsed, dict):
        return None, None, None, None
    err = parsed.get("error")
    if isinstance(err, str):
        return err, None, None, None
    src = err if isinstance(err, dict) else parsed
    message = src.get("message")
    if not isinstance(message, str):
        # Mistral puts its validation details (a dict or list) in ``message``/``detail``.
        detail = message if message is not None else src.get("detail")
        message = orjson.dumps(detail).decode() if detail is not None else None
    err_type = src.get("type") if isinstance(src.get("type"), str) else None
    code = str(src["code"]) if src.get("code") is not None else None
    param = src.get("param") if isinstance(src.get("param"), str) else None
    return message, err_type, code, param


def retry_headers(headers: Mapping[str, str]) -> dict[str, str]:
    keep = {}
    for name, out in (("retry-after", "Retry-After"), ("retry-after-ms", "retry-after-ms")):
        value = headers.get(name) or headers.get(name.title())
        if value:
            keep[out] = value
    return keep


class CompatStreamDecoder(OpenAIStreamDecoder):
    """OpenAI chunks passed through; usage, the provider's cost and the answering model
    read by the provider's own rules."""

    def __init__(self, provider: OpenAICompatProvider, deployment: Deployment,
                 include_usage: bool) -> None:
        super().__init__(include_usage)
        self._provider = provider
        self._deployment = deployment
        self._model: str | None = None

    def usage_field(self, chunk: dict[str, Any]) -> Any:
        return self._provider.stream_usage_field(chunk)

    def read_usage(self, chunk: dict[str, Any], usage: dict[str, Any]) -> Usage | None:
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self._model = model
        self.provider_cost = self._provider.provider_cost(usage)
        return self._provider.read_usage(usage, model if isinstance(model, str) else None)

    def answered_model(self) -> str | None:
        if self._model:
            return self._model
        for payload in self._payloads:  # only a stream cut before its usage gets here
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            model = chunk.get("model") if isinstance(chunk, dict) else None
            if isinstance(model, str) and model:
                return model
        return None

    def output_text(self) -> str:
        """The streamed text for an estimate, reasoning included (DeepSeek's and vLLM's
        ``reasoning_content``, OpenRouter's ``reasoning``): it is billed as output."""
        parts: list[str] = []
        for payload in self._payloads:
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            for choice in (chunk.get("choices") or ()) if isinstance(chunk, dict) else ():
                delta = choice.get("delta") or {}
                for key in ("reasoning_content", "reasoning", "content"):
                    if isinstance(delta.get(key), str):
                        parts.append(delta[key])
                for call in delta.get("tool_calls") or ():
                    args = (call.get("function") or {}).get("arguments")
                    if args:
                        parts.append(args)
        return "".join(parts)


class OpenAICompatProvider(Provider):
    """An OpenAI-compatible cloud; subclasses set the attributes and override the hooks
    where the provider differs. Its chat API serves every door: the Responses and legacy
    completions doors translate to it (``CompatCompletions`` for the servers that take
    ``/completions`` themselves)."""

    #: request fields the provider refuses and no caller needs sent (``user`` is the
    #: gateway's billing field; Mistral answers 422 to any field it does not know)
    drop_fields: ClassVar[frozenset[str]] = frozenset()
    #: OpenAI field -> the provider's name for it (Mistral's ``random_seed``)
    rename_fields: ClassVar[Mapping[str, str]] = _NO_RENAMES
    #: False when the provider refuses ``stream_options`` (its streams carry usage anyway)
    sends_stream_options: ClassVar[bool] = True

    # -- where and how ---------------------------------------------------------------

    def _base(self, deployment: Deployment) -> str:
        base = self.api_base(deployment, os.environ)
        if not base:
            names = " or ".join(self.api_base_envs) or "api_base"
            raise BadRequestError(f"provider {self.name!r} needs an api_base (set api_base "
                                  f"or {names})", param="model", code="missing_api_base")
        return base.rstrip("/")

    def check_deployment(self, deployment: Deployment) -> None:
        if self.default_api_base is None and not deployment.api_base:
            names = " or ".join(self.api_base_envs)
            raise ConfigError(f"api_base: required for {self.name}/ models"
                              + (f" (or set {names})" if names else ""))

    def chat_url(self, deployment: Deployment) -> str:
        return self._base(deployment) + "/chat/completions"

    def embeddings_url(self, deployment: Deployment) -> str:
        return self._base(deployment) + "/embeddings"

    def media_url(self, deployment: Deployment, path: str) -> str:
        """Where the cloud serves OpenAI's ``images/...``, ``audio/...``, ``rerank``..."""
        return f"{self._base(deployment)}/{path}"

    def auth_headers(self, deployment: Deployment) -> dict[str, str]:
        key = self.api_key(deployment, os.environ)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _headers(self, deployment: Deployment) -> dict[str, str]:
        headers = json_headers(None, {})
        headers.update(self.auth_headers(deployment))
        headers.update(deployment.headers)
        return headers

    def request_body(self, deployment: Deployment, params: Mapping[str, Any],
                     stream: bool) -> dict[str, Any]:
        body = {self.rename_fields.get(k, k): v for k, v in params.items()
                if k not in self.drop_fields}
        body["model"] = self.wire_model(deployment)
        body.pop("stream_options", None)
        if stream:
            body["stream"] = True
            if self.sends_stream_options:
                options = dict(params.get("stream_options") or {})
                options["include_usage"] = True
                body["stream_options"] = options
        else:
            body.pop("stream", None)
        return body

    def media_request(self, deployment: Deployment, path: str, body: bytes | StreamedBody,
                      content_type: str) -> UpstreamRequest:
        headers = self._headers(deployment)
        headers["Content-Type"] = content_type
        headers["Accept"] = "*/*"  # speech answers audio bytes
        return UpstreamRequest.of(self.media_url(deployment, path), headers, body)

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        return UpstreamRequest(url=self.chat_url(deployment), headers=self._headers(deployment),
                               body=orjson.dumps(self.request_body(deployment, params, stream)))

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        body = {k: v for k, v in params.items() if k not in self.drop_fields}
        body["model"] = self.wire_model(deployment)
        return UpstreamRequest(url=self.embeddings_url(deployment),
                               headers=self._headers(deployment), body=orjson.dumps(body))

    # -- answers ---------------------------------------------------------------------

    def read_usage(self, raw: Mapping[str, Any], model: str | None) -> Usage | None:
        """The provider's ``usage`` object in our buckets."""
        return openai_usage(raw)

    def provider_cost(self, raw: Mapping[str, Any]) -> Decimal | None:
        """What the provider says the call cost, if its usage says (most do not)."""
        return None

    def stream_usage_field(self, chunk: Mapping[str, Any]) -> Any:
        return chunk.get("usage")

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("upstream answered with a non-object body")
        raw = parsed.get("usage")
        model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        usage = self.read_usage(raw, model) if isinstance(raw, dict) else None
        cost = self.provider_cost(raw) if isinstance(raw, dict) else None
        return ChatResult(body=parsed, usage=usage, raw=body, provider_cost=cost)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return CompatStreamDecoder(self, deployment, include_usage)

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("upstream answered with a non-object body")
        raw = parsed.get("usage")
        raw = raw if isinstance(raw, dict) else {}
        prompt = raw.get("prompt_tokens") or raw.get("total_tokens") or 0
        usage = Usage(input_tokens=int(prompt)) if isinstance(prompt, int) else None
        return ChatResult(body=parsed, usage=usage, raw=body)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        message, err_type, code, param = error_parts(body)
        return upstream_error_for(status, message or f"upstream answered {status}",
                                  param=param, code=code, error_type=err_type,
                                  headers=retry_headers(headers))


class CompatCompletions(NativeCompletions):
    """For the servers that take OpenAI's legacy ``/completions`` themselves (vLLM, LM
    Studio, Together, Fireworks): the completions door passes requests to them."""

    def completion_request(self, deployment: Deployment, params: dict[str, Any],
                           stream: bool) -> UpstreamRequest:
        assert isinstance(self, OpenAICompatProvider)
        body = completion_body({k: v for k, v in params.items() if k not in self.drop_fields},
                               self.wire_model(deployment), stream)
        return UpstreamRequest(url=self._base(deployment) + "/completions",
                               headers=self._headers(deployment), body=orjson.dumps(body))

    def completion_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        assert isinstance(self, OpenAICompatProvider)
        return self.chat_response(deployment, body)

    def completion_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return CompletionStreamDecoder(include_usage)
