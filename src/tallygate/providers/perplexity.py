"""Perplexity: ``perplexity/<model>`` (Sonar) on ``https://api.perplexity.ai``.

Perplexity bills more than tokens, and its usage says what:

- a request fee for the web search of each call, by ``search_context_size`` (low,
  medium, high): one per-request item named by LiteLLM's price keys,
  ``search_context_size_low`` etc. genai-prices has one fee per model (its top tier);
  set LiteLLM's ``search_context_cost_per_query`` table to bill each size exactly;
- ``num_search_queries`` of deep research, the ``web_searches`` item;
- ``reasoning_tokens``, counted beside ``completion_tokens``: added to the output and
  priced at the model's reasoning rate where it has one;
- ``citation_tokens`` of deep research, billed at their own rate.

A request fee and citation tokens are counted when Perplexity billed them: its
``usage.cost`` breakdown says so; without one, search models pay the fee and deep
research the citations. ``usage.cost.total_cost`` is kept beside tallygate's price.
``user`` and ``stream_options`` are not sent (its streams carry usage unasked).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

from tallygate.providers.base import Deployment
from tallygate.providers.openai_compat import (
    OpenAICompatProvider,
    decimal_or_none,
    openai_usage,
)
from tallygate.providers.registry import register
from tallygate.usage import Usage, request_counts

_SIZES = frozenset({"low", "medium", "high"})


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _billed(cost: object, key: str) -> bool | None:
    """Whether the cost breakdown bills ``key`` (None: there is no breakdown)."""
    if not isinstance(cost, dict):
        return None
    amount = decimal_or_none(cost.get(key))
    return amount is not None and amount > 0


def perplexity_usage(raw: Mapping[str, Any], model: str | None) -> Usage | None:
    reasoning = _int(raw.get("reasoning_tokens"))
    details = raw.get("completion_tokens_details")
    if not reasoning and isinstance(details, dict):
        reasoning = _int(details.get("reasoning_tokens"))
    base = openai_usage({**raw, "completion_tokens_details": {"reasoning_tokens": reasoning}},
                        reasoning_apart=True)
    if base is None:
        return None
    cost = raw.get("cost")
    deep = "deep-research" in (model or "")
    items: list[tuple[str, int]] = [("web_searches", _int(raw.get("num_search_queries")))]
    size = raw.get("search_context_size")
    fee = _billed(cost, "request_cost")
    if fee or (fee is None and isinstance(size, str) and not deep):
        size_name = size.lower() if isinstance(size, str) and size.lower() in _SIZES else "low"
        items.append((f"search_context_size_{size_name}", 1))
    citations = _int(raw.get("citation_tokens"))
    cited = _billed(cost, "citation_tokens_cost")
    if not (cited or (cited is None and deep)):
        citations = 0
    return replace(base, citation_tokens=citations, requests=request_counts(items))


class PerplexityProvider(OpenAICompatProvider):
    name = "perplexity"
    price_provider = "perplexity"
    default_api_base = "https://api.perplexity.ai"
    api_key_env = "PERPLEXITYAI_API_KEY"
    api_key_env_aliases = ("PERPLEXITY_API_KEY",)
    api_base_envs = ("PERPLEXITY_API_BASE",)
    drop_fields = frozenset({"user", "stream_options"})
    sends_stream_options = False

    def read_usage(self, raw: Mapping[str, Any], model: str | None) -> Usage | None:
        return perplexity_usage(raw, model)

    def estimated_requests(self, deployment: Deployment,
                           params: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
        if "deep-research" in deployment.model:
            return ()
        options = params.get("web_search_options")
        size = options.get("search_context_size") if isinstance(options, dict) else None
        size = size if isinstance(size, str) and size in _SIZES else "low"  # its default
        return ((f"search_context_size_{size}", 1),)

    def provider_cost(self, raw: Mapping[str, Any]) -> Decimal | None:
        cost = raw.get("cost")
        return decimal_or_none(cost.get("total_cost")) if isinstance(cost, dict) else None


register(PerplexityProvider())
