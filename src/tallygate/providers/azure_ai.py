"""Azure AI Foundry model inference: ``azure_ai/<model>``, OpenAI-shaped chat.

Addressed as LiteLLM addresses it: a Foundry resource
(``https://<name>.services.ai.azure.com``) serves ``/models/chat/completions`` and takes
its key in an ``api-key`` header; a serverless endpoint (``https://<name>.<region>.
models.ai.azure.com``) serves ``/chat/completions`` with a Bearer key. ``api_version``,
when set, goes in the query. The model name is the Foundry model (``Phi-4``,
``DeepSeek-R1``, ``Mistral-large-2407``), priced from genai-prices' Azure models.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from urllib.parse import quote, urlsplit

from tallygate.errors import ConfigError
from tallygate.providers.base import Deployment
from tallygate.providers.openai_compat import OpenAICompatProvider
from tallygate.providers.registry import register

_KEY_HEADER_HOSTS = (".services.ai.azure.com", ".openai.azure.com")


class AzureAIProvider(OpenAICompatProvider):
    name = "azure_ai"
    price_provider = "azure"
    default_api_base = None
    api_key_env = "AZURE_AI_API_KEY"
    api_base_envs = ("AZURE_AI_API_BASE",)
    litellm_params = frozenset({"api_version"})
    param_envs = MappingProxyType({})

    def check_deployment(self, deployment: Deployment) -> None:
        if not deployment.api_base:
            raise ConfigError("api_base: required for azure_ai/ models (the Foundry or "
                              "serverless endpoint), or set AZURE_AI_API_BASE")

    def _foundry(self, base: str) -> bool:
        host = urlsplit(base).hostname or ""
        return host.endswith(".services.ai.azure.com")

    def _url(self, deployment: Deployment, path: str) -> str:
        base = self._base(deployment)
        if self._foundry(base) and not base.endswith("/models"):
            base += "/models"
        url = f"{base}/{path}"
        version = self.param(deployment, "api_version", os.environ)
        return f"{url}?api-version={quote(str(version), safe='')}" if version else url

    def chat_url(self, deployment: Deployment) -> str:
        return self._url(deployment, "chat/completions")

    def embeddings_url(self, deployment: Deployment) -> str:
        return self._url(deployment, "embeddings")

    def auth_headers(self, deployment: Deployment) -> dict[str, str]:
        key = self.api_key(deployment, os.environ)
        if not key:
            return {}
        host = urlsplit(self._base(deployment)).hostname or ""
        if host.endswith(_KEY_HEADER_HOSTS):
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}


register(AzureAIProvider())
