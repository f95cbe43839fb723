"""Google AI Studio's Gemini API (``gemini/<model>``), translated both ways.

``POST {api_base}/models/{model}:generateContent``, and ``:streamGenerateContent?alt=sse``
for streams (without ``alt=sse`` Google answers one JSON array). As in LiteLLM,
``api_base`` includes the API version and defaults to
``https://generativelanguage.googleapis.com/v1beta``. The key goes in
``x-goog-api-key`` (``api_key``, else ``GEMINI_API_KEY``), never as a Bearer token.
The wire format lives in ``gemini_request`` / ``gemini_answer``, shared with Vertex AI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import UpstreamError
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    NativeGemini,
    Provider,
    StreamDecoder,
    UpstreamRequest,
)
from tallygate.providers.gemini_answer import (
    GeminiStreamDecoder,
    embeddings_answer,
    google_error,
    translate_answer,
)
from tallygate.providers.gemini_request import (
    OPENAI_PARAMS,
    embed_body,
    generate_content_body,
)
from tallygate.providers.registry import register

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def read_json_object(body: bytes) -> dict[str, Any]:
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise UpstreamError("upstream answered with a non-object body")
    return parsed


class GeminiProvider(Provider, NativeGemini):
    name = "gemini"
    price_provider = "google"
    supported_openai_params = OPENAI_PARAMS
    default_api_base = "https://generativelanguage.googleapis.com/v1beta"
    api_key_env = "GEMINI_API_KEY"

    def _url(self, deployment: Deployment, method: str) -> str:
        base = (deployment.api_base or self.default_api_base or "").rstrip("/")
        return f"{base}/models/{deployment.model}:{method}"

    def _headers(self, deployment: Deployment) -> dict[str, str]:
        headers = dict(JSON_HEADERS)
        key = self.api_key(deployment, os.environ)
        if key:
            headers["x-goog-api-key"] = key
        headers.update(deployment.headers)
        return headers

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = generate_content_body(params)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return UpstreamRequest(url=self._url(deployment, method),
                               headers=self._headers(deployment), body=orjson.dumps(body))

    def gemini_request(self, deployment: Deployment, method: str,
                       body: bytes) -> UpstreamRequest:
        return UpstreamRequest(url=self._url(deployment, method),
                               headers=self._headers(deployment), body=body)

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return translate_answer(read_json_object(body), deployment.model)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return GeminiStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return google_error(status, body, headers)

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        method, body = embed_body(deployment.model, params)
        return UpstreamRequest(url=self._url(deployment, method),
                               headers=self._headers(deployment), body=orjson.dumps(body))

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return embeddings_answer(read_json_object(body), deployment.model)


register(GeminiProvider())
