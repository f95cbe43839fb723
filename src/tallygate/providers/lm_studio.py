"""LM Studio's local server: ``lm_studio/<model>`` on ``http://localhost:1234/v1``
(LM Studio's default; ``LM_STUDIO_API_BASE`` or api_base elsewhere), key optional.
Local models have no library price: set the per-token prices to bill them."""

from __future__ import annotations

from tallygate.providers.openai_compat import CompatCompletions, OpenAICompatProvider
from tallygate.providers.registry import register


class LmStudioProvider(OpenAICompatProvider, CompatCompletions):
    name = "lm_studio"
    price_provider = None
    default_api_base = "http://localhost:1234/v1"
    api_key_env = "LM_STUDIO_API_KEY"
    api_base_envs = ("LM_STUDIO_API_BASE",)


register(LmStudioProvider())
