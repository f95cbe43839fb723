"""Google Cloud Vertex AI (``vertex_ai/<model>``): Gemini, and Claude as a partner model.

Gemini models speak Gemini's ``generateContent`` (translated by ``gemini_request`` /
``gemini_answer``) at
``https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent``
(``:streamGenerateContent?alt=sse`` for streams; location ``global`` is served by
``aiplatform.googleapis.com``, ``us`` / ``eu`` by their multi-region hosts). Claude
models (``claude-...``) take Anthropic's Messages body at
``.../publishers/anthropic/models/{model}:rawPredict`` (``:streamRawPredict``), with
``anthropic_version: vertex-2023-10-16`` in the body and no model in it; their answers,
streams and usage are Anthropic's, read by the ``anthropic`` adapter's functions.

Calls carry an OAuth2 access token of a service account (``google_auth``), fetched off
the event loop, cached, and refreshed once when Vertex answers 401.

litellm_params, in LiteLLM's names: ``vertex_project`` (else ``VERTEXAI_PROJECT``, else
the key's ``project_id``), ``vertex_location`` (else ``VERTEXAI_LOCATION`` /
``VERTEX_LOCATION``, else ``us-central1``), ``vertex_credentials`` (a key file path or
its JSON; else ``VERTEXAI_CREDENTIALS``, else ``GOOGLE_APPLICATION_CREDENTIALS``), and
``vertex_ai_*`` aliases of the three. ``api_base`` as in LiteLLM is the model's URL up
to the ``:method``; a bare ``scheme://host[:port]`` replaces only the host.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from tallygate.errors import ConfigError, UpstreamError
from tallygate.providers import anthropic, imagen
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    NativeGemini,
    NativeMessages,
    PassThroughDecoder,
    Provider,
    StreamDecoder,
    StreamedBody,
    UpstreamRequest,
)
from tallygate.providers.gemini import JSON_HEADERS, read_json_object
from tallygate.providers.gemini_answer import (
    GeminiStreamDecoder,
    google_error,
    translate_answer,
)
from tallygate.providers.gemini_request import OPENAI_PARAMS, generate_content_body
from tallygate.providers.google_auth import (
    ServiceAccount,
    TokenSource,
    load_service_account,
    token_source,
)
from tallygate.providers.registry import register

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
DEFAULT_LOCATION = "us-central1"
_MULTI_REGIONS = {"us", "eu"}
_LOCATION = re.compile(r"^[a-z][a-z0-9-]*$")
_ALIASES = {"vertex_project": "vertex_ai_project", "vertex_location": "vertex_ai_location",
            "vertex_credentials": "vertex_ai_credentials"}


def is_claude(model: str) -> bool:
    """Whether a Vertex model is Anthropic's (served by rawPredict)."""
    return model.startswith("claude")


@dataclass(frozen=True, slots=True)
class VertexTarget:
    """Where a deployment's calls go and whose tokens they carry."""

    project: str
    location: str
    tokens: TokenSource

    def host(self) -> str:
        if self.location == "global":
            return "https://aiplatform.googleapis.com"
        if self.location in _MULTI_REGIONS:
            return f"https://aiplatform.{self.location}.rep.googleapis.com"
        return f"https://{self.location}-aiplatform.googleapis.com"


def _param(deployment: Deployment, name: str) -> Any:
    value = deployment.params.get(name)
    return value if value not in (None, "") else deployment.params.get(_ALIASES[name])


def _credentials(deployment: Deployment, environ: Mapping[str, str]) -> ServiceAccount:
    value = _param(deployment, "vertex_credentials")
    where = "vertex_credentials"
    if value in (None, ""):
        for env in ("VERTEXAI_CREDENTIALS", "GOOGLE_APPLICATION_CREDENTIALS"):
            if environ.get(env):
                value, where = environ[env], env
                break
        else:
            raise ConfigError("vertex_credentials: required (a service-account key file "
                              "path or its JSON), or set GOOGLE_APPLICATION_CREDENTIALS")
    return load_service_account(value, where)


def resolve_target(deployment: Deployment, environ: Mapping[str, str]) -> VertexTarget:
    """The project, location and token source of a deployment; ConfigError naming the
    litellm_params key that is missing or wrong."""
    if deployment.api_key:
        raise ConfigError("api_key: Vertex AI authenticates with a service account "
                          "(vertex_credentials), not an API key")
    account = _credentials(deployment, environ)
    project = (_param(deployment, "vertex_project") or environ.get("VERTEXAI_PROJECT")
               or account.project_id)
    if not isinstance(project, str) or not project:
        raise ConfigError("vertex_project: required (not set, and the service account key "
                          "has no project_id)")
    location = (_param(deployment, "vertex_location") or environ.get("VERTEXAI_LOCATION")
                or environ.get("VERTEX_LOCATION") or DEFAULT_LOCATION)
    if not isinstance(location, str) or not _LOCATION.match(location):
        raise ConfigError(f"vertex_location: {location!r} is not a Google Cloud location "
                          "(us-central1, europe-west4, global...)")
    return VertexTarget(project=project, location=location, tokens=token_source(account))


def vertex_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Vertex answers errors in Google's shape; Claude's own errors come through in
    Anthropic's (``{"type": "error", ...}``)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("type") == "error":
        return anthropic.upstream_error(status, body, headers)
    return google_error(status, body, headers)


class VertexAIProvider(Provider, NativeMessages, NativeGemini):
    name = "vertex_ai"
    # genai-prices' "google" prices Gemini and, for Vertex, the Claude models too.
    price_provider = "google"
    needs_authorize = True
    supported_openai_params = OPENAI_PARAMS  # Gemini's; Claude models take Anthropic's
    litellm_params = frozenset({*_ALIASES, *_ALIASES.values()})

    def openai_params_for(self, model: str) -> frozenset[str] | None:
        return anthropic.OPENAI_PARAMS if is_claude(model) else OPENAI_PARAMS

    def __init__(self) -> None:
        self._targets: dict[tuple[str, ...], VertexTarget] = {}
        self._lock = threading.Lock()
        self._anthropic = anthropic.AnthropicProvider()  # reads Claude's answers

    def check_deployment(self, deployment: Deployment) -> None:
        if "/" in deployment.model:
            raise ConfigError(f"model: vertex_ai/{deployment.model}: only Gemini and Claude "
                              "models are served on Vertex AI (vertex_ai/<model>)")
        self.target(deployment).tokens.check()

    def target(self, deployment: Deployment) -> VertexTarget:
        key = tuple(str(deployment.params.get(k)) for k in sorted(self.litellm_params))
        with self._lock:
            found = self._targets.get(key)
        if found is not None:
            return found
        target = resolve_target(deployment, os.environ)
        with self._lock:
            return self._targets.setdefault(key, target)

    def _model_url(self, deployment: Deployment, target: VertexTarget) -> str:
        base = (deployment.api_base or "").rstrip("/")
        if base and urlsplit(base).path.strip("/"):
            return base  # LiteLLM's api_base: the model's whole URL up to ":method"
        publisher = "anthropic" if is_claude(deployment.model) else "google"
        return (f"{base or target.host()}/v1/projects/{target.project}/locations/"
                f"{target.location}/publishers/{publisher}/models/{deployment.model}")

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        target = self.target(deployment)
        if is_claude(deployment.model):
            body = anthropic.build_body(deployment.model, params, stream)
            del body["model"]  # the URL names it
            body["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
            method = "streamRawPredict" if stream else "rawPredict"
        else:
            body = generate_content_body(params)
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        headers = {**JSON_HEADERS, **deployment.headers}
        return UpstreamRequest(url=f"{self._model_url(deployment, target)}:{method}",
                               headers=headers, body=orjson.dumps(body))

    # -- Gemini's own API, passed through by the Gemini door -------------------------

    def speaks_gemini(self, deployment: Deployment) -> bool:
        return not is_claude(deployment.model)

    def gemini_request(self, deployment: Deployment, method: str,
                       body: bytes) -> UpstreamRequest:
        url = f"{self._model_url(deployment, self.target(deployment))}:{method}"
        return UpstreamRequest(url=url, headers={**JSON_HEADERS, **deployment.headers},
                               body=body)

    # -- Claude's Messages API, passed through by the Messages door -------------------

    def speaks_messages(self, deployment: Deployment) -> bool:
        return is_claude(deployment.model)

    def _claude_headers(self, deployment: Deployment,
                        client: Mapping[str, str]) -> dict[str, str]:
        # The version goes in the body on Vertex; the client's beta flags stay headers.
        headers = {**JSON_HEADERS, **deployment.headers}
        beta = client.get(anthropic.BETA_HEADER)
        if beta:
            own = headers.get(anthropic.BETA_HEADER)
            headers[anthropic.BETA_HEADER] = f"{own},{beta}" if own else beta
        return headers

    def messages_request(self, deployment: Deployment, body: dict[str, Any],
                         headers: Mapping[str, str], *, stream: bool,
                         query: str = "") -> UpstreamRequest:
        out = {k: v for k, v in body.items() if k != "model"}
        out["anthropic_version"] = VERTEX_ANTHROPIC_VERSION
        method = "streamRawPredict" if stream else "rawPredict"
        url = f"{self._model_url(deployment, self.target(deployment))}:{method}"
        return UpstreamRequest(url=url, headers=self._claude_headers(deployment, headers),
                               body=orjson.dumps(out))

    def messages_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return self._anthropic.messages_response(deployment, body)

    def messages_stream(self, deployment: Deployment) -> PassThroughDecoder:
        return self._anthropic.messages_stream(deployment)

    def count_tokens_request(self, deployment: Deployment, body: dict[str, Any],
                             headers: Mapping[str, str]) -> UpstreamRequest:
        # Vertex counts Claude's tokens at one model-less endpoint; the model is in the body.
        target = self.target(deployment)
        base = (deployment.api_base or "").rstrip("/")
        if base and urlsplit(base).path.strip("/"):
            # LiteLLM's api_base is the model's URL: count at its count-tokens sibling.
            head, sep, _ = base.rpartition("/models/")
            url = (f"{head}/models/count-tokens" if sep else base) + ":rawPredict"
        else:
            url = (f"{base or target.host()}/v1/projects/{target.project}/locations/"
                   f"{target.location}/publishers/anthropic/models/count-tokens:rawPredict")
        out = {**body, "model": deployment.model,
               "anthropic_version": VERTEX_ANTHROPIC_VERSION}
        return UpstreamRequest(url=url, headers=self._claude_headers(deployment, headers),
                               body=orjson.dumps(out))

    async def authorize(self, deployment: Deployment, request: UpstreamRequest, *,
                        rejected: bool = False) -> None:
        old = request.headers.get("Authorization", "")
        stale = old[len("Bearer "):] if rejected and old.startswith("Bearer ") else None
        token = await self.target(deployment).tokens.token(rejected=stale)
        request.headers["Authorization"] = f"Bearer {token}"

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = read_json_object(body)
        if is_claude(deployment.model):
            usage = anthropic.anthropic_usage(parsed.get("usage"))
            return ChatResult(body=anthropic.translate_response(parsed, usage), usage=usage)
        return translate_answer(parsed, deployment.model)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        if is_claude(deployment.model):
            return anthropic.AnthropicStreamDecoder(include_usage, deployment.model)
        return GeminiStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return vertex_error(status, body, headers)

    # -- Imagen: OpenAI's images/generations as a :predict call -------------------------

    def media_request(self, deployment: Deployment, path: str, body: bytes | StreamedBody,
                      content_type: str) -> UpstreamRequest:
        if (path != "images/generations" or is_claude(deployment.model)
                or not isinstance(body, bytes)):
            return super().media_request(deployment, path, body, content_type)
        url = f"{self._model_url(deployment, self.target(deployment))}:predict"
        return UpstreamRequest(url=url, headers={**JSON_HEADERS, **deployment.headers},
                               body=orjson.dumps(imagen.predict_body(body)))

    def media_response(self, deployment: Deployment, path: str, body: bytes,
                       content_type: str) -> tuple[bytes, str]:
        return imagen.images_answer(body), "application/json"


register(VertexAIProvider())
