"""OpenRouter: ``openrouter/<vendor>/<model>`` on ``https://openrouter.ai/api/v1``.

Usage in OpenAI's shape (cache reads and writes, reasoning in the details). OpenRouter
also says what the call cost it, ``usage.cost`` in USD credits: that figure is kept on
the event (``provider_reported_cost``) beside tallygate's own price from genai-prices'
OpenRouter models, so both are visible and can be compared. Its error bodies carry a
numeric ``code``; its streams may hold ``: OPENROUTER PROCESSING`` comments.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tallygate.providers.openai_compat import OpenAICompatProvider, decimal_or_none
from tallygate.providers.registry import register


class OpenRouterProvider(OpenAICompatProvider):
    name = "openrouter"
    price_provider = "openrouter"
    default_api_base = "https://openrouter.ai/api/v1"
    api_key_env = "OPENROUTER_API_KEY"
    api_key_env_aliases = ("OR_API_KEY",)
    api_base_envs = ("OPENROUTER_API_BASE",)

    def provider_cost(self, raw: Mapping[str, Any]) -> Decimal | None:
        return decimal_or_none(raw.get("cost"))


register(OpenRouterProvider())
