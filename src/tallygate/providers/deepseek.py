"""DeepSeek: ``deepseek/<model>`` (``deepseek-chat``, ``deepseek-reasoner``).

Usage: ``prompt_cache_hit_tokens`` and ``prompt_cache_miss_tokens`` are the cache-read
and uncached input buckets (they add up to ``prompt_tokens``); reasoning tokens are a
part of ``completion_tokens``. ``reasoning_content`` in answers and stream deltas
reaches the client untouched and counts as output in an estimate. Prices change with
the time of day (DeepSeek's off-peak hours), which genai-prices knows. A 402
"Insufficient Balance" stays a 402.

The default api_base is LiteLLM's (``/beta``, which also serves the beta features).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tallygate.providers.openai_compat import OpenAICompatProvider, openai_usage
from tallygate.providers.registry import register
from tallygate.usage import Usage


def deepseek_usage(raw: Mapping[str, Any]) -> Usage | None:
    usage = openai_usage(raw)
    hit, miss = raw.get("prompt_cache_hit_tokens"), raw.get("prompt_cache_miss_tokens")
    if usage is None or not isinstance(hit, int) or not isinstance(miss, int):
        return usage
    # DeepSeek's own split wins over prompt_tokens_details (which newer answers echo).
    hit = max(hit, 0)
    return replace(usage, cache_read_tokens=hit, input_tokens=max(miss, 0),
                   audio_input_tokens=0)


class DeepSeekProvider(OpenAICompatProvider):
    name = "deepseek"
    price_provider = "deepseek"
    default_api_base = "https://api.deepseek.com/beta"
    api_key_env = "DEEPSEEK_API_KEY"
    api_base_envs = ("DEEPSEEK_API_BASE",)

    def read_usage(self, raw: Mapping[str, Any], model: str | None) -> Usage | None:
        return deepseek_usage(raw)


register(DeepSeekProvider())
