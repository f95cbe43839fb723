"""xAI: ``xai/<model>`` (Grok) on ``https://api.x.ai/v1``.

Usage differs from OpenAI's: the reasoning tokens of Grok's reasoning models are counted
beside ``completion_tokens`` (``total_tokens`` = prompt + completion + reasoning), so
they are added to the output, where they are billed. Cached tokens are inside
``prompt_tokens`` as on OpenAI. Live Search sources (``num_sources_used``) are
per-request items (``web_searches``). xAI's own cost, ``cost_in_usd_ticks``
(10^-10 USD), is kept beside tallygate's price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from tallygate.providers.openai_compat import (
    OpenAICompatProvider,
    decimal_or_none,
    openai_usage,
)
from tallygate.providers.registry import register
from tallygate.usage import Usage, request_counts

_TICKS_PER_USD = Decimal(10) ** 10


class XAIProvider(OpenAICompatProvider):
    name = "xai"
    price_provider = "x-ai"
    default_api_base = "https://api.x.ai/v1"
    api_key_env = "XAI_API_KEY"
    api_base_envs = ("XAI_API_BASE",)

    def read_usage(self, raw: Mapping[str, Any], model: str | None) -> Usage | None:
        usage = openai_usage(raw)
        sources = raw.get("num_sources_used")
        if usage is not None and isinstance(sources, int) and sources > 0:
            usage = replace(usage, requests=request_counts(
                [*usage.requests, ("web_searches", sources)]))
        return usage

    def provider_cost(self, raw: Mapping[str, Any]) -> Decimal | None:
        ticks = decimal_or_none(raw.get("cost_in_usd_ticks"))
        return None if ticks is None else ticks / _TICKS_PER_USD


register(XAIProvider())
