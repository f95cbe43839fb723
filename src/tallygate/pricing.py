"""Cost of a call, in Decimal, from its Usage.

Prices come from ``genai-prices`` (an offline, maintained price library with cache
prices), or from per-deployment overrides in LiteLLM's names. A model with no known
price gets ``cost=None`` (the event is flagged ``unknown_price``) and one warning per
model: never a silent $0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from tallygate.providers.base import PriceOverride
from tallygate.usage import Usage

log = logging.getLogger("tallygate.pricing")

# Our provider names -> genai-prices provider ids, where they differ or exist at all.
_PRICE_PROVIDER_IDS = {"openai": "openai", "anthropic": "anthropic"}


@dataclass(frozen=True, slots=True)
class Price:
    cost: Decimal | None
    source: str | None

    @property
    def known(self) -> bool:
        return self.cost is not None


UNKNOWN = Price(None, None)


def cost_from_override(usage: Usage, o: PriceOverride) -> Decimal:
    """Per-token prices; cache prices fall back to the input price when not set (an
    endpoint without a cache price is one that does not discount cached tokens)."""
    zero = Decimal(0)
    inp = o.input_cost_per_token if o.input_cost_per_token is not None else zero
    out = o.output_cost_per_token if o.output_cost_per_token is not None else zero
    read = o.cache_read_input_token_cost if o.cache_read_input_token_cost is not None else inp
    write = (o.cache_creation_input_token_cost
             if o.cache_creation_input_token_cost is not None else inp)
    return (inp * usage.input_tokens + read * usage.cache_read_tokens
            + write * usage.cache_write_tokens + out * usage.output_tokens)


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per token of each bucket, for a model whose price is linear in tokens."""

    input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    output: Decimal
    expires_at: float

    def cost(self, u: Usage) -> Decimal:
        return (self.input * u.input_tokens + self.cache_read * u.cache_read_tokens
                + self.cache_write * u.cache_write_tokens + self.output * u.output_tokens)


_PROBE = 1_000_000
# Prices can change on a date (genai-prices knows dated prices): re-derive rates hourly.
_RATES_TTL_S = 3600.0


class PriceBook:
    """Prices calls; remembers which models have no price so each is warned about once.

    The price library costs tens of microseconds a call. For models priced per token
    without tiers, the per-bucket rates are derived once from the library itself and
    reused, so the hot path is four Decimal multiplications with the library's numbers.
    """

    def __init__(self) -> None:
        self._unknown: set[tuple[str, str]] = set()
        self._rates: dict[tuple[str, str], _Rates | None] = {}
        self._library: Any = None
        self._source = ""

    def _lib(self) -> Any:
        # Imported on first use: it costs ~100 ms, and `import tallygate` must stay cheap.
        if self._library is None:
            import genai_prices

            self._library = genai_prices
            self._source = f"genai-prices {version('genai-prices')}"
        return self._library

    def warm(self) -> None:
        """Load the price data now (the proxy does it at start, not on the first call)."""
        self._lib()

    def price(self, provider: str, model: str, usage: Usage,
              override: PriceOverride | None = None,
              context: Mapping[str, str] | None = None) -> Price:
        """``context`` selects a price variant (``{"service_tier": "priority"}``); the
        caller has checked with ``knows_context`` that the variant has a price."""
        if override is not None and not override.is_empty():
            return Price(cost_from_override(usage, override), "config")
        key = (provider, model)
        if key in self._unknown:
            return UNKNOWN
        provider_id = _PRICE_PROVIDER_IDS.get(provider)
        if provider_id is None:
            return self._mark_unknown(key)
        if context:
            try:
                return Price(self._library_cost(provider_id, model, usage, context),
                             self._source)
            except LookupError:
                return self._mark_unknown(key)
        rates = self._rates.get(key)
        if rates is not None and rates.expires_at > time.monotonic():
            return Price(rates.cost(usage), self._source)
        try:
            total = self._library_cost(provider_id, model, usage)
            if key not in self._rates or rates is not None:
                self._rates[key] = self._linear_rates(provider_id, model)
        except LookupError:
            return self._mark_unknown(key)
        return Price(total, self._source)

    def knows_context(self, provider: str, model: str, override: PriceOverride | None,
                      context: Mapping[str, str]) -> bool:
        """Whether the price library has this model's price under ``context`` (e.g. a
        service tier): a variant that names every key of it and is in force today. Config
        prices (``input_cost_per_token``...) have no variants."""
        if override is not None and not override.is_empty():
            return False
        provider_id = _PRICE_PROVIDER_IDS.get(provider)
        if provider_id is None:
            return False
        lib = self._lib()
        try:
            _, info = lib.data_snapshot.get_snapshot().find_provider_model(
                model, None, provider_id, None)
        except LookupError:
            return False
        now = datetime.now(tz=UTC)
        for variant in info.price_variants or ():
            if variant.constraint is not None and not variant.constraint.active(now):
                continue
            if dict(variant.when) == dict(context):
                return True
        return False

    def _library_cost(self, provider_id: str, model: str, usage: Usage,
                      context: Mapping[str, str] | None = None) -> Decimal:
        lib = self._lib()
        # genai-prices counts cached tokens inside input_tokens, as OpenAI does.
        calc = lib.calc_price(
            lib.Usage(input_tokens=usage.prompt_tokens,
                      cache_read_tokens=usage.cache_read_tokens,
                      cache_write_tokens=usage.cache_write_tokens,
                      output_tokens=usage.output_tokens),
            model, provider_id=provider_id, price_context=context or None)
        return Decimal(calc.total_price)

    def _linear_rates(self, provider_id: str, model: str) -> _Rates | None:
        """Per-token rates when the model's price is linear; None when it is tiered."""
        lib = self._lib()
        calc = lib.calc_price(lib.Usage(input_tokens=1), model, provider_id=provider_id)
        tiered = getattr(lib.types, "TieredPrices", ())
        if any(isinstance(v, tiered) for v in vars(calc.model_price).values()):
            return None
        n = _PROBE
        inp = self._library_cost(provider_id, model, Usage(input_tokens=n)) / n
        return _Rates(
            input=inp,
            cache_read=self._library_cost(provider_id, model, Usage(cache_read_tokens=n)) / n,
            cache_write=self._library_cost(provider_id, model, Usage(cache_write_tokens=n)) / n,
            output=self._library_cost(provider_id, model, Usage(output_tokens=n)) / n,
            expires_at=time.monotonic() + _RATES_TTL_S,
        )

    def _mark_unknown(self, key: tuple[str, str]) -> Price:
        if key not in self._unknown:
            self._unknown.add(key)
            log.warning("no price known for model %s/%s: its events are flagged unknown_price "
                        "(set input_cost_per_token/output_cost_per_token to price it)", *key)
        return UNKNOWN


default_price_book = PriceBook()
