"""What a model is and can do, under LiteLLM's names: ``get_model_info``, ``model_cost``,
the ``supports_*`` helpers and ``get_supported_openai_params``.

Prices and context windows come from genai-prices (offline). Capabilities genai-prices
prices tell us themselves (a cache-read price means prompt caching; an audio price,
audio); the others come from the providers' published model families below. A
deployment's ``model_info`` (``supports_vision: true``...) wins over both, as in LiteLLM.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from functools import cache
from typing import Any

from tallygate.errors import NotFoundError
from tallygate.providers.registry import get_provider, split_model

# Model-family patterns (lower-case, provider prefix dropped) for what genai-prices does
# not record. From OpenAI's, Anthropic's and Google's model pages.
_FAMILIES: dict[str, str] = {
    "function_calling": r"gpt-3\.5-turbo.*|gpt-4.*|gpt-5.*|o1(?!-mini|-preview).*|o[34].*"
                        r"|claude-.*|gemini-.*|mistral-(large|medium|small).*|command-r.*"
                        r"|deepseek-chat.*|grok-.*|llama-3\.[1-9].*",
    "parallel_function_calling": r"gpt-3\.5-turbo.*|gpt-4(o|\.1|-turbo).*|gpt-5.*"
                                 r"|claude-.*|gemini-.*",
    "vision": r"gpt-4o.*|gpt-4\.1.*|gpt-4-turbo.*|gpt-4-vision.*|gpt-5.*"
              r"|o1(?!-mini|-preview).*|o3(?!-mini).*|o4-mini.*|claude-3.*|claude-.*-4.*"
              r"|claude-(opus|sonnet|haiku)-4.*|gemini-.*|pixtral.*|grok-.*vision.*",
    "reasoning": r"o[1-9].*|gpt-5.*|claude-3-7-sonnet.*|claude-(opus|sonnet|haiku)-4.*"
                 r"|claude-.*-4.*|gemini-2\.5.*|gemini-3.*|deepseek-reasoner.*|grok-3-mini.*"
                 r"|grok-4.*|magistral.*|qwq.*",
    "response_schema": r"gpt-4o(?!-2024-05-13).*|gpt-4\.1.*|gpt-5.*|o1(?!-mini|-preview).*"
                       r"|o[34].*|claude-.*|gemini-(1\.5|2|3).*|mistral-.*",
    "system_messages": r"(?!o1-mini|o1-preview).*",
    "tool_choice": r"gpt-.*|o[1-9].*|claude-.*|gemini-.*|mistral-.*",
    "pdf_input": r"gpt-4o.*|gpt-4\.1.*|gpt-5.*|o[1-9].*|claude-3-5.*|claude-3-7.*"
                 r"|claude-.*-4.*|claude-(opus|sonnet|haiku)-4.*|gemini-.*",
    "web_search": r"gpt-4o-search.*|gpt-4o-mini-search.*|gpt-5.*|claude-3-7.*"
                  r"|claude-.*-4.*|claude-(opus|sonnet|haiku)-4.*|gemini-2.*|sonar.*",
}
# Capabilities read from which genai-prices price keys a model has.
_FROM_PRICES: dict[str, tuple[str, ...]] = {
    "prompt_caching": ("cache_read_mtok", "cache_write_mtok"),
    "audio_input": ("input_audio_mtok", "audio_hours", "input_audio_hours"),
    "audio_output": ("output_audio_mtok",),
}
# OpenAI chat parameters, and what each provider family takes of them.
OPENAI_CHAT_PARAMS: tuple[str, ...] = (
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
    "max_completion_tokens", "modalities", "prediction", "n", "presence_penalty", "seed",
    "stop", "stream", "stream_options", "temperature", "top_p", "tools", "tool_choice",
    "function_call", "functions", "max_retries", "extra_headers", "parallel_tool_calls",
    "response_format", "user", "reasoning_effort", "audio", "web_search_options",
    "service_tier", "safety_identifier", "prompt_cache_key", "verbosity", "store",
    "metadata")
# OpenAI's reasoning models refuse sampling controls (LiteLLM drops them for these).
_REASONING_REFUSED = frozenset({"temperature", "top_p", "presence_penalty",
                                "frequency_penalty", "logprobs", "top_logprobs",
                                "logit_bias", "max_tokens"})
_OPENAI_REASONING = re.compile(r"(o[1-9]|gpt-5)([-.].*)?")


def _bare(model: str) -> tuple[str, str]:
    provider, name = split_model(model)
    return provider, name.rsplit("/", 1)[-1].lower()


@cache
def _library_model(provider_id: str, model: str) -> Any:
    """genai-prices' ModelInfo of ``model`` (None when it does not list it)."""
    import genai_prices

    try:
        calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=0), model,
                                       provider_id=provider_id)
    except LookupError:
        return None
    return calc.model


def _price_provider(provider: str) -> str | None:
    try:
        return get_provider(provider).price_provider
    except Exception:  # an unknown provider: nothing known
        return None


def _prices(provider: str, name: str) -> Mapping[str, Any]:
    pid = _price_provider(provider)
    found = _library_model(pid, name) if pid else None
    if found is None:
        return {}
    from datetime import UTC, datetime

    price = found.get_prices(datetime.now(tz=UTC))
    return {k: v for k, v in vars(price).items() if v is not None and not k.startswith("_")}


def supports(capability: str, model: str,
             model_info: Mapping[str, Any] | None = None) -> bool:
    """Whether ``model`` (``provider/name``) has ``capability`` (LiteLLM's
    ``supports_<capability>`` name without the prefix)."""
    declared = (model_info or {}).get(f"supports_{capability}")
    if isinstance(declared, bool):
        return declared
    provider, name = _bare(model)
    keys = _FROM_PRICES.get(capability)
    if keys is not None:
        prices = _prices(provider, name)
        return any(k in prices for k in keys)
    pattern = _FAMILIES.get(capability)
    if pattern is None:
        raise ValueError(f"unknown capability {capability!r}")
    return re.fullmatch(pattern, name) is not None


def get_supported_openai_params(model: str, custom_llm_provider: str | None = None,
                                request_type: str = "chat_completion") -> list[str]:
    """The OpenAI chat parameters ``model``'s provider takes (LiteLLM's helper)."""
    if custom_llm_provider and "/" not in model:
        model = f"{custom_llm_provider}/{model}"
    provider, name = _bare(model)
    if request_type == "embeddings":
        return ["input", "encoding_format", "dimensions", "user"]
    # The adapter's own list (the one the proxy checks too); None: it passes every one.
    supported = get_provider(provider).openai_params_for(name)
    if supported is not None:
        return [p for p in OPENAI_CHAT_PARAMS if p in supported]
    if provider == "openai" and _OPENAI_REASONING.fullmatch(name):
        return [p for p in OPENAI_CHAT_PARAMS if p not in _REASONING_REFUSED]
    return list(OPENAI_CHAT_PARAMS)


def get_model_info(model: str, custom_llm_provider: str | None = None) -> dict[str, Any]:
    """LiteLLM's model info: prices per token (from genai-prices), context window,
    provider, mode and capabilities. Unknown to both: NotFoundError, as LiteLLM raises."""
    if custom_llm_provider and "/" not in model:
        model = f"{custom_llm_provider}/{model}"
    provider, name = _bare(model)
    pid = _price_provider(provider)
    found = _library_model(pid, name) if pid else None
    if found is None:
        raise NotFoundError(f"model {model!r} is not in genai-prices' data; set its "
                            "prices and model_info in the deployment instead",
                            code="model_not_mapped")
    prices = _prices(provider, name)
    mtok = Decimal(1_000_000)

    def per_token(key: str) -> Decimal | None:
        value = prices.get(key)
        return value / mtok if isinstance(value, Decimal) else None

    info: dict[str, Any] = {
        "key": name,
        "litellm_provider": provider,
        "max_input_tokens": found.context_window,
        "max_tokens": found.context_window,
        "max_output_tokens": None,
        "input_cost_per_token": per_token("input_mtok"),
        "output_cost_per_token": per_token("output_mtok"),
        "cache_read_input_token_cost": per_token("cache_read_mtok"),
        "cache_creation_input_token_cost": per_token("cache_write_mtok"),
        "input_cost_per_audio_token": per_token("input_audio_mtok"),
        "output_cost_per_audio_token": per_token("output_audio_mtok"),
        "mode": _mode(name, prices),
    }
    if isinstance(prices.get("input_mchars"), Decimal):
        info["input_cost_per_character"] = prices["input_mchars"] / mtok
    if isinstance(prices.get("audio_hours"), Decimal):
        info["input_cost_per_second"] = prices["audio_hours"] / 3600
    for capability in (*_FAMILIES, *_FROM_PRICES):
        info[f"supports_{capability}"] = supports(capability, model)
    return info


def _mode(name: str, prices: Mapping[str, Any]) -> str:
    if "embed" in name:
        return "embedding"
    if "input_mchars" in prices or "tts" in name:
        return "audio_speech"
    if "audio_hours" in prices or "transcribe" in name or "whisper" in name:
        return "audio_transcription"
    if "image" in name or "dall-e" in name:
        return "image_generation"
    if "moderation" in name:
        return "moderation"
    if "rerank" in name:
        return "rerank"
    return "chat"


class ModelCost(Mapping[str, dict[str, Any]]):
    """``litellm.model_cost``: every model genai-prices lists for a registered provider,
    by name (and ``provider/name``), read on first use."""

    def _all(self) -> dict[str, dict[str, Any]]:
        return _model_cost_table()

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


@cache
def _model_cost_table() -> dict[str, dict[str, Any]]:
    from genai_prices import data_snapshot

    from tallygate.providers.registry import provider_names

    by_price_id = {_price_provider(p): p for p in provider_names()}
    table: dict[str, dict[str, Any]] = {}
    for lib_provider in data_snapshot.get_snapshot().providers:
        ours = by_price_id.get(lib_provider.id)
        if ours is None:
            continue
        for m in lib_provider.models:
            try:
                info = get_model_info(f"{ours}/{m.id}")
            except NotFoundError:
                continue
            table.setdefault(m.id, info)
            table[f"{ours}/{m.id}"] = info
    return table


model_cost = ModelCost()
