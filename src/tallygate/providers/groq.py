"""Groq: ``groq/<model>`` on ``https://api.groq.com/openai/v1``.

OpenAI's wire format; cached tokens in ``prompt_tokens_details``. Older Groq streams put
their usage in the last chunk's ``x_groq.usage`` instead of a usage chunk: read there
too. A 429 keeps its ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.providers.openai_compat import OpenAICompatProvider
from tallygate.providers.registry import register


class GroqProvider(OpenAICompatProvider):
    name = "groq"
    price_provider = "groq"
    default_api_base = "https://api.groq.com/openai/v1"
    api_key_env = "GROQ_API_KEY"
    api_base_envs = ("GROQ_API_BASE",)

    def stream_usage_field(self, chunk: Mapping[str, Any]) -> Any:
        usage = chunk.get("usage")
        if usage is None:
            extra = chunk.get("x_groq")
            usage = extra.get("usage") if isinstance(extra, dict) else None
        return usage


register(GroqProvider())
