"""Together AI: ``together_ai/<model>`` on ``https://api.together.xyz/v1``.

OpenAI's wire format; Together reports cache hits as ``cached_tokens`` in ``usage``
(older answers) or in ``prompt_tokens_details``; both are read. Streams end with usage
in the last content chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.providers.openai_compat import (
    CompatCompletions,
    OpenAICompatProvider,
    openai_usage,
)
from tallygate.providers.registry import register
from tallygate.usage import Usage


class TogetherProvider(OpenAICompatProvider, CompatCompletions):
    name = "together_ai"
    price_provider = "together"
    default_api_base = "https://api.together.xyz/v1"
    api_key_env = "TOGETHER_API_KEY"
    api_key_env_aliases = ("TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN")
    api_base_envs = ("TOGETHER_AI_API_BASE",)

    def read_usage(self, raw: Mapping[str, Any], model: str | None) -> Usage | None:
        cached = raw.get("cached_tokens")
        details = raw.get("prompt_tokens_details")
        if isinstance(cached, int) and cached > 0 and not isinstance(details, dict):
            raw = {**raw, "prompt_tokens_details": {"cached_tokens": cached}}
        return openai_usage(raw)


register(TogetherProvider())
