"""Mistral AI: ``mistral/<model>`` on ``https://api.mistral.ai/v1``.

Mistral refuses any field it does not know (422 ``extra_forbidden``): ``user`` (the
gateway's billing field) and ``stream_options`` are not sent, OpenAI's
``max_completion_tokens`` and ``seed`` go by Mistral's names. Its streams carry usage
in the last chunk unasked. Its errors are flat (``{"object": "error", "message": ...}``).
"""

from __future__ import annotations

from types import MappingProxyType

from tallygate.providers.base import Deployment
from tallygate.providers.openai_compat import OpenAICompatProvider
from tallygate.providers.registry import register


class MistralProvider(OpenAICompatProvider):
    name = "mistral"
    price_provider = "mistral"
    default_api_base = "https://api.mistral.ai/v1"
    # LiteLLM's order: the Azure-hosted Mistral variables first.
    api_key_env = "MISTRAL_AZURE_API_KEY"
    api_key_env_aliases = ("MISTRAL_API_KEY",)
    api_base_envs = ("MISTRAL_AZURE_API_BASE", "MISTRAL_API_BASE")
    drop_fields = frozenset({"user", "stream_options"})
    rename_fields = MappingProxyType({"max_completion_tokens": "max_tokens",
                                      "seed": "random_seed"})
    sends_stream_options = False

    def _base(self, deployment: Deployment) -> str:
        base = super()._base(deployment)
        # As LiteLLM does: Mistral's routes are always under /v1.
        return base if base.endswith("/v1") else base + "/v1"


register(MistralProvider())
