"""Cerebras: ``cerebras/<model>`` on ``https://api.cerebras.ai/v1``.

OpenAI's wire format, cached tokens in ``prompt_tokens_details``; errors may come
flat (``{"message", "type", "param", "code"}``), which the shared reader takes.
"""

from __future__ import annotations

from tallygate.providers.openai_compat import OpenAICompatProvider
from tallygate.providers.registry import register


class CerebrasProvider(OpenAICompatProvider):
    name = "cerebras"
    price_provider = "cerebras"
    default_api_base = "https://api.cerebras.ai/v1"
    api_key_env = "CEREBRAS_API_KEY"
    api_base_envs = ("CEREBRAS_API_BASE",)


register(CerebrasProvider())
