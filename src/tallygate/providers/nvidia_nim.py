"""NVIDIA NIM: ``nvidia_nim/<model>`` on ``https://integrate.api.nvidia.com/v1`` (or a
self-hosted NIM's api_base). genai-prices has no NVIDIA prices: set
``input_cost_per_token`` / ``output_cost_per_token`` to price its calls."""

from __future__ import annotations

from tallygate.providers.openai_compat import OpenAICompatProvider
from tallygate.providers.registry import register


class NvidiaNimProvider(OpenAICompatProvider):
    name = "nvidia_nim"
    price_provider = None
    default_api_base = "https://integrate.api.nvidia.com/v1"
    api_key_env = "NVIDIA_NIM_API_KEY"
    api_base_envs = ("NVIDIA_NIM_API_BASE",)


register(NvidiaNimProvider())
