"""Fireworks AI: ``fireworks_ai/<model>`` on ``https://api.fireworks.ai/inference/v1``.

Model names are Fireworks paths; a short name gets LiteLLM's prefix
(``accounts/fireworks/models/``, or ``.../routers/`` for ``-fast`` models), and is
priced under that path. Fireworks takes ``tool_choice: "any"`` for OpenAI's
``"required"`` and ``max_tokens`` for ``max_completion_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tallygate.providers.base import Deployment
from tallygate.providers.openai_compat import CompatCompletions, OpenAICompatProvider
from tallygate.providers.registry import register


class FireworksProvider(OpenAICompatProvider, CompatCompletions):
    name = "fireworks_ai"
    price_provider = "fireworks"
    default_api_base = "https://api.fireworks.ai/inference/v1"
    api_key_env = "FIREWORKS_API_KEY"
    api_key_env_aliases = ("FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN")
    api_base_envs = ("FIREWORKS_API_BASE",)
    rename_fields = MappingProxyType({"max_completion_tokens": "max_tokens"})

    def wire_model(self, deployment: Deployment) -> str:
        model = deployment.model
        if model.startswith("accounts/") or "#" in model:
            return model
        kind = "routers" if model.endswith("-fast") else "models"
        return f"accounts/fireworks/{kind}/{model}"

    def request_body(self, deployment: Deployment, params: Mapping[str, Any],
                     stream: bool) -> dict[str, Any]:
        body = super().request_body(deployment, params, stream)
        if body.get("tool_choice") == "required":
            body["tool_choice"] = "any"
        return body


register(FireworksProvider())
