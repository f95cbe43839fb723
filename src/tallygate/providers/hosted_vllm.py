"""A vLLM server: ``hosted_vllm/<model>``; its api_base is required (or
``HOSTED_VLLM_API_BASE``), a key optional. ``reasoning_content`` of reasoning models
passes through and counts as output in an estimate. Self-hosted models have no library
price: set the per-token prices to bill them."""

from __future__ import annotations

from tallygate.providers.openai_compat import CompatCompletions, OpenAICompatProvider
from tallygate.providers.registry import register


class HostedVllmProvider(OpenAICompatProvider, CompatCompletions):
    name = "hosted_vllm"
    price_provider = None
    default_api_base = None
    api_key_env = "HOSTED_VLLM_API_KEY"
    api_base_envs = ("HOSTED_VLLM_API_BASE",)


register(HostedVllmProvider())
