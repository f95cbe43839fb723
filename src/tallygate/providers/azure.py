"""Azure OpenAI: ``azure/<deployment>``, as LiteLLM and the official ``AzureOpenAI`` client
address it.

Two APIs. The deployments API: ``{api_base}/openai/deployments/{deployment}/chat/
completions?api-version=...`` (and ``/embeddings``), the key in an ``api-key`` header.
The v1 API (``{api_base}/openai/v1/chat/completions``, no dated api-version), chosen as
LiteLLM chooses it: ``api_version`` ``v1``, ``latest`` or ``preview``, or an api_base
ending in ``/openai/v1``; the key goes as a Bearer token there, as the ``OpenAI`` client
sends it. An ``azure_ad_token`` (Entra ID) is a Bearer token on both.

The deployment name says nothing of the model, so a call is priced by
``model_info.base_model``, else by the model the answer names, else its price is
unknown. Azure's answers are OpenAI's plus content-filter annotations
(``prompt_filter_results``, a first stream chunk with no choices): they pass through,
and a refusal by the content filter (400 ``content_filter``) stays one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

from tallygate.errors import ConfigError, UpstreamError
from tallygate.providers.base import Deployment
from tallygate.providers.openai_compat import OpenAICompatProvider, error_parts
from tallygate.providers.registry import register

#: the latest GA data-plane version of the deployments API
DEFAULT_API_VERSION = "2024-10-21"
#: LiteLLM's api_version values that mean the v1 API
V1_VERSIONS = frozenset({"v1", "latest", "preview"})
#: the first api-version that takes ``stream_options`` (older ones refuse the field)
_STREAM_OPTIONS_SINCE = "2024-09-01"
# LiteLLM's Entra ID credentials, which make it fetch tokens itself: not done here.
_TOKEN_FLOWS = ("tenant_id", "client_id", "client_secret", "azure_username",
                "azure_password", "azure_ad_token_provider", "azure_scope")


def is_v1(api_version: str | None, api_base: str) -> bool:
    if api_version is not None and api_version.strip().lower() in V1_VERSIONS:
        return True
    return api_base.rstrip("/").endswith("/openai/v1")


class AzureProvider(OpenAICompatProvider):
    name = "azure"
    price_provider = "azure"
    default_api_base = None
    api_key_env = "AZURE_OPENAI_API_KEY"  # LiteLLM reads it first, then AZURE_API_KEY
    api_key_env_aliases = ("AZURE_API_KEY",)
    api_base_envs = ("AZURE_API_BASE",)
    names_model = False
    litellm_params = frozenset({"api_version", "azure_ad_token", *_TOKEN_FLOWS})
    param_envs = MappingProxyType({"api_version": ("AZURE_API_VERSION",),
                                   "azure_ad_token": ("AZURE_AD_TOKEN",
                                                      "AZURE_OPENAI_AD_TOKEN")})

    def check_deployment(self, deployment: Deployment) -> None:
        given = [k for k in _TOKEN_FLOWS if deployment.params.get(k) is not None]
        if given:
            raise ConfigError(f"{given[0]}: Entra ID sign-in by tallygate is not supported; "
                              "set azure_ad_token (a token) or api_key instead")
        if not deployment.api_base:
            raise ConfigError("api_base: required for azure/ models, the resource endpoint "
                              "(https://<resource>.openai.azure.com), or set AZURE_API_BASE")

    def _version(self, deployment: Deployment) -> str | None:
        value = self.param(deployment, "api_version", os.environ)
        return str(value) if value is not None else None

    def _url(self, deployment: Deployment, path: str) -> str:
        base = self._base(deployment)
        version = self._version(deployment)
        if is_v1(version, base):
            root = base.removesuffix("/openai/v1").removesuffix("/openai")
            url = f"{root}/openai/v1/{path}"
            # "preview" selects the v1 API's preview features; v1/latest take none.
            if version is not None and version.strip().lower() == "preview":
                url += "?api-version=preview"
            return url
        if "/openai/deployments/" in base:  # LiteLLM takes such a base as the client URL
            url = f"{base}/{path}"
        else:
            root = base.removesuffix("/openai")
            url = f"{root}/openai/deployments/{quote(deployment.model, safe='')}/{path}"
        return f"{url}?api-version={quote(version or DEFAULT_API_VERSION, safe='')}"

    def chat_url(self, deployment: Deployment) -> str:
        return self._url(deployment, "chat/completions")

    def embeddings_url(self, deployment: Deployment) -> str:
        return self._url(deployment, "embeddings")

    def media_url(self, deployment: Deployment, path: str) -> str:
        return self._url(deployment, path)

    def auth_headers(self, deployment: Deployment) -> dict[str, str]:
        token = self.param(deployment, "azure_ad_token", os.environ)
        if token:
            return {"Authorization": f"Bearer {token}"}
        key = self.api_key(deployment, os.environ)
        if not key:
            raise ConfigError("no credential for azure/ models: set api_key or "
                              "azure_ad_token, or AZURE_API_KEY or AZURE_AD_TOKEN")
        if is_v1(self._version(deployment), self._base(deployment)):
            return {"Authorization": f"Bearer {key}"}
        return {"api-key": key}

    def request_body(self, deployment: Deployment, params: Mapping[str, Any],
                     stream: bool) -> dict[str, Any]:
        body = super().request_body(deployment, params, stream)
        version = self._version(deployment)
        if (stream and version is not None and not is_v1(version, self._base(deployment))
                and version < _STREAM_OPTIONS_SINCE):
            # Older api-versions refuse stream_options: such a stream's usage is estimated.
            body.pop("stream_options", None)
        return body

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        err = super().error_from_response(status, body, headers)
        _, err_type, code, _ = error_parts(body)
        if code == "content_filter" and err_type is None:
            # Azure sends a null type; a refusal by the filter is the caller's request.
            err.error_type = "invalid_request_error"  # type: ignore[misc]
        return err


register(AzureProvider())
