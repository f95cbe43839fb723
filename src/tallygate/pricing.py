"""Cost of a call, in Decimal, from its Usage.

Prices come from ``genai-prices`` (an offline, maintained price library with cache,
audio and per-request prices), or from per-deployment overrides in LiteLLM's names.
Every nonzero usage bucket needs a price of its own: a bucket without one (audio tokens
of a model priced only for text, say) makes the call's price unknown, with the bucket
named, rather than priced as plain input. An unknown price is ``cost=None`` (the event
is flagged ``unknown_price``) and one warning per model: never a silent $0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from tallygate.providers.base import UNIT_PRICE_KEYS, PriceOverride
from tallygate.usage import TOKEN_BUCKETS, Usage

log = logging.getLogger("tallygate.pricing")

# Token buckets -> the genai-prices price keys that price them (any one will do).
_BUCKET_PRICE_KEYS: dict[str, tuple[str, ...]] = {
    "input_tokens": ("input_mtok",),
    "cache_read_tokens": ("cache_read_mtok",),
    "cache_write_tokens": ("cache_write_mtok", "cache_write_5m_mtok"),
    "cache_write_1h_tokens": ("cache_write_1h_mtok",),
    "audio_input_tokens": ("input_audio_mtok",),
    "citation_tokens": ("output_citation_mtok",),
    "output_tokens": ("output_mtok",),
    "audio_output_tokens": ("output_audio_mtok",),
    "image_input_tokens": ("input_image_mtok",),
}
# Usage items in units other than tokens -> genai-prices' price keys for them ("images"
# has none: OpenAI prices an image by its size and quality, see image_prices).
_UNIT_LIBRARY_KEYS: dict[str, tuple[str, ...]] = {
    "audio_seconds": ("audio_hours", "input_audio_hours"),
    "input_characters": ("input_mchars",),
    "rerank_searches": ("rerank_searches_kcount",),
    "images": (),
}
# Reasoning is a part of output_tokens: priced at this rate where the model has one,
# at the output rate otherwise.
_REASONING_PRICE_KEY = "output_reasoning_mtok"
# Token buckets -> the LiteLLM price key that prices them in config.
OVERRIDE_KEYS: dict[str, str] = {
    "input_tokens": "input_cost_per_token",
    "cache_read_tokens": "cache_read_input_token_cost",
    "cache_write_tokens": "cache_creation_input_token_cost",
    "cache_write_1h_tokens": "cache_creation_input_token_cost_above_1hr",
    "audio_input_tokens": "input_cost_per_audio_token",
    "citation_tokens": "citation_cost_per_token",
    "output_tokens": "output_cost_per_token",
    "audio_output_tokens": "output_cost_per_audio_token",
    "image_input_tokens": "input_cost_per_image_token",
    **{item: key for key, item in UNIT_PRICE_KEYS.items()},
}
IMAGE_PRICE_SOURCE = "image list prices"
# Per-request items the price library prices under another usage name: Perplexity's
# request fee, counted by search context size (LiteLLM's names, which its
# ``search_context_cost_per_query`` table prices), is the library's per-request fee.
LIBRARY_REQUEST_NAMES: dict[str, str] = {
    f"search_context_size_{size}": "requests" for size in ("low", "medium", "high")}
# The library's per-request fee: charged on every call by genai-prices itself.
_PER_CALL = "requests"
_MTOK = Decimal(1_000_000)
_KCOUNT = Decimal(1000)


@dataclass(frozen=True, slots=True)
class Price:
    cost: Decimal | None
    source: str | None
    #: the nonzero buckets no price was found for (why ``cost`` is None)
    unpriced: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.cost is not None


UNKNOWN = Price(None, None)


def _nonzero_buckets(usage: Usage) -> list[str]:
    names = [b for b in _BUCKET_PRICE_KEYS if getattr(usage, b)]
    names.extend(name for name, _ in usage.requests)
    return names


def override_unpriced(usage: Usage, o: PriceOverride) -> tuple[str, ...]:
    """The nonzero buckets the override sets no price for."""
    rates = _override_rates(o)
    return tuple(b for b in _nonzero_buckets(usage) if rates.get(b) is None)


def _override_rates(o: PriceOverride) -> dict[str, Decimal | None]:
    rates: dict[str, Decimal | None] = {
        bucket: getattr(o, key) for bucket, key in OVERRIDE_KEYS.items()}
    rates.update(o.per_request)
    return rates


def cost_from_override(usage: Usage, o: PriceOverride) -> Decimal | None:
    """The call's cost at the override's prices; None when a nonzero bucket has none."""
    rates = _override_rates(o)
    total = Decimal(0)
    for bucket in _BUCKET_PRICE_KEYS:
        n = getattr(usage, bucket)
        if n:
            rate = rates.get(bucket)
            if rate is None:
                return None
            total += rate * n
    if usage.reasoning_tokens and o.output_cost_per_reasoning_token is not None:
        # output_tokens (priced above) include the reasoning: move it to its own rate.
        out_rate = o.output_cost_per_token or Decimal(0)
        total += (o.output_cost_per_reasoning_token - out_rate) * usage.reasoning_tokens
    for name, n in usage.requests:
        rate = rates.get(name)
        if rate is None:
            return None
        total += rate * n
    return total


@dataclass(frozen=True, slots=True)
class _Rates:
    """USD per unit of each bucket, for a model whose price is linear (no tiers).
    ``per_call`` is a flat fee every call pays (genai-prices' ``requests_kcount``)."""

    per_bucket: dict[str, Decimal]
    per_call: Decimal
    expires_at: float

    def cost(self, u: Usage) -> Price | None:
        """The cost, or None when a bucket has no rate (the caller names it)."""
        total = self.per_call
        get = self.per_bucket.get
        for bucket in _BUCKET_PRICE_KEYS:
            n = getattr(u, bucket)
            if n:
                rate = get(bucket)
                if rate is None:
                    return None
                total += rate * n
        if u.reasoning_tokens:
            reasoning = get("reasoning_tokens")
            if reasoning is not None:
                total += (reasoning - get("output_tokens", Decimal(0))) * u.reasoning_tokens
        for name, n in u.requests:
            if LIBRARY_REQUEST_NAMES.get(name) == _PER_CALL:
                continue  # the per-call fee, in per_call already
            rate = get(name)
            if rate is None:
                return None
            total += rate * n
        return Price(total, None)


# Prices can change on a date (genai-prices knows dated prices): re-derive rates hourly.
_RATES_TTL_S = 3600.0


def library_usage(lib: Any, usage: Usage) -> Any:
    """Our disjoint buckets as genai-prices' nested usage: its ``input_tokens`` counts
    all input, ``cache_write_tokens`` every write (``cache_write_1h_tokens`` a part of
    it), ``output_tokens`` all output."""
    # The library counts citation tokens as a part of output; ours are input.
    kwargs: dict[str, int] = {
        "input_tokens": usage.prompt_tokens - usage.citation_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_all_tokens,
        "output_tokens": usage.completion_tokens + usage.citation_tokens,
    }
    if usage.cache_write_1h_tokens:
        kwargs["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.audio_input_tokens:
        kwargs["input_audio_tokens"] = usage.audio_input_tokens
    if usage.audio_output_tokens:
        kwargs["output_audio_tokens"] = usage.audio_output_tokens
    if usage.image_input_tokens:
        kwargs["input_image_tokens"] = usage.image_input_tokens
    if usage.citation_tokens:
        kwargs["output_citation_tokens"] = usage.citation_tokens
    if usage.reasoning_tokens:
        kwargs["output_reasoning_tokens"] = usage.reasoning_tokens
    for name, n in usage.requests:
        library_name = LIBRARY_REQUEST_NAMES.get(name, name)
        if library_name != _PER_CALL:  # the library charges its per-call fee itself
            kwargs[library_name] = kwargs.get(library_name, 0) + n
    return lib.Usage(**kwargs)


class PriceBook:
    """Prices calls; remembers which models have no price so each is warned about once.

    The price library costs tens of microseconds a call. For models priced linearly
    (no tiers), the per-bucket rates are read once from the library's model price and
    reused, so the hot path is a few Decimal multiplications with the library's numbers.
    """

    def __init__(self, price_provider: Callable[[str], str | None] | None = None,
                 price_names: Callable[[str, str], tuple[str, ...]] | None = None) -> None:
        self._unknown: set[tuple[str, str]] = set()
        self._warned_unpriced: set[tuple[str, str, tuple[str, ...]]] = set()
        self._rates: dict[tuple[str, str], _Rates | None] = {}
        # (provider, model) -> the name the library prices it by, once found
        self._names: dict[tuple[str, str], str] = {}
        self._library: Any = None
        self._source = ""
        self._price_provider = price_provider or _registered_price_provider
        self._price_names = price_names or _registered_price_names

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
              override: PriceOverride | None = None, *, variant: str | None = None,
              context: Mapping[str, str] | None = None) -> Price:
        """``variant``: what else the price depends on (an image's ``quality/size``);
        ``context`` selects a library price variant (``{"service_tier": "priority"}``),
        which the caller checked exists (``knows_context``)."""
        if override is not None:
            if not override.is_empty():
                cost = cost_from_override(usage, override)
                if cost is None:
                    return self._unpriced((provider, model),
                                          override_unpriced(usage, override), "config")
                return Price(cost, "config")
            if override.per_request and any(n in override.per_request
                                            for n, _ in usage.requests):
                return self._with_request_prices(provider, model, usage, override)
        if usage.request_count("images"):
            return self._image_price((provider, model), usage, variant)
        if context:
            return self._priced_in_context(provider, model, usage, context)
        return self._library_price(provider, model, usage)

    def unknown_model(self, provider: str, deployment_model: str) -> Price:
        """No model to price (an Azure deployment whose answer named none and that has
        no ``model_info.base_model``): unknown, warned about once."""
        key = (provider, deployment_model)
        if key not in self._unknown:
            self._unknown.add(key)
            log.warning("no model known for deployment %s/%s: its calls are flagged "
                        "unknown_price (set model_info.base_model, or prices in its "
                        "litellm_params)", *key)
        return UNKNOWN

    def _with_request_prices(self, provider: str, model: str, usage: Usage,
                             override: PriceOverride) -> Price:
        """Library prices for the tokens, the config's per-request table for the items
        it names (in place of the library's fee for them)."""
        table = override.per_request
        own = [(n, c) for n, c in usage.requests if n in table]
        rest = Usage(**{b: getattr(usage, b) for b in TOKEN_BUCKETS},
                     requests=tuple((n, c) for n, c in usage.requests if n not in table),
                     source=usage.source)
        base = self._library_price(provider, model, rest)
        if base.cost is None:
            return base
        cost = base.cost + sum((table[n] * c for n, c in own), Decimal(0))
        if any(LIBRARY_REQUEST_NAMES.get(n) == _PER_CALL for n, _ in own):
            cost -= self._per_call_fee(provider, model)  # the library charged it anyway
        return Price(cost, f"{base.source} + config")

    def _per_call_fee(self, provider: str, model: str) -> Decimal:
        provider_id = self._price_provider(provider)
        if provider_id is None:
            return Decimal(0)
        fee = getattr(self._model_price(provider_id, model), "requests_kcount", None)
        return fee / _KCOUNT if isinstance(fee, Decimal) else Decimal(0)

    def _library_price(self, provider: str, model: str, usage: Usage) -> Price:
        key = (provider, model)
        if key in self._unknown:
            return UNKNOWN
        provider_id = self._price_provider(provider)
        if provider_id is None:
            return self._mark_unknown(key)
        rates = self._rates.get(key)
        if rates is not None and rates.expires_at > time.monotonic():
            fast = rates.cost(usage)
            if fast is not None:
                return Price(fast.cost, self._source)
        try:
            name, model_price, varies = self._find(provider_id, key)
        except LookupError:
            return self._mark_unknown(key)
        if not any(v is not None for k, v in vars(model_price).items()
                   if not k.startswith("_")):
            # Listed with no price at all: a free model (OpenAI's moderation models).
            return Price(Decimal(0), self._source)
        missing = _missing_prices(model_price, usage)
        if missing:
            return self._unpriced(key, missing, self._source)
        if key not in self._rates or rates is not None:
            # A price that changes with the time of day (DeepSeek's off-peak hours)
            # is asked of the library on every call, never cached for an hour.
            self._rates[key] = None if varies else _linear_rates(model_price)
        lib = self._lib()
        calc = lib.calc_price(library_usage(lib, usage), name, provider_id=provider_id)
        return Price(Decimal(calc.total_price), self._source)

    def knows_context(self, provider: str, model: str, override: PriceOverride | None,
                      context: Mapping[str, str]) -> bool:
        """Whether the price library has this model's price under ``context`` (e.g. a
        service tier): a variant that names every key of it and is in force today. Config
        prices (``input_cost_per_token``...) have no variants."""
        if override is not None and not override.is_empty():
            return False
        provider_id = self._price_provider(provider)
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

    def _priced_in_context(self, provider: str, model: str, usage: Usage,
                           context: Mapping[str, str]) -> Price:
        """The library's price under ``context`` (not cached: variants are rare)."""
        key = (provider, model)
        provider_id = self._price_provider(provider)
        if provider_id is None:
            return self._mark_unknown(key)
        lib = self._lib()
        try:
            calc = lib.calc_price(library_usage(lib, usage), key[1], provider_id=provider_id,
                                  price_context=context)
        except LookupError:
            return self._mark_unknown(key)
        missing = _missing_prices(calc.model_price, usage)
        if missing:
            return self._unpriced(key, missing, self._source)
        return Price(Decimal(calc.total_price), self._source)
    def _find(self, provider_id: str, key: tuple[str, str]) -> tuple[str, Any, bool]:
        """(the library's name for the model, its price now, whether that depends on the
        time of day); LookupError if none of the provider's names for it is priced."""
        name = self._names.get(key)
        if name is not None:
            return name, *self._model_price_and_clock(provider_id, name)
        for candidate in self._price_names(*key):
            try:
                model_price, varies = self._model_price_and_clock(provider_id, candidate)
            except LookupError:
                continue
            self._names[key] = candidate
            return candidate, model_price, varies
        raise LookupError(key[1])

    def _image_price(self, key: tuple[str, str], usage: Usage, variant: str | None) -> Price:
        """Images billed per image: OpenAI's list price for the model, size and quality."""
        from tallygate.image_prices import image_price

        rate = image_price(key[0], key[1], variant)
        other = [b for b in _nonzero_buckets(usage) if b != "images"]
        if rate is None or other:
            return self._unpriced(key, tuple(other) if rate is not None else ("images",),
                                  None)
        return Price(rate * usage.request_count("images"), IMAGE_PRICE_SOURCE)

    def _model_price(self, provider_id: str, model: str) -> Any:
        return self._model_price_and_clock(provider_id, model)[0]

    def _model_price_and_clock(self, provider_id: str, model: str) -> tuple[Any, bool]:
        """The model's price now, and whether it depends on the time of day."""
        lib = self._lib()
        calc = lib.calc_price(lib.Usage(input_tokens=0), model, provider_id=provider_id)
        return calc.model_price, _varies_by_time_of_day(calc.model)

    def _unpriced(self, key: tuple[str, str], buckets: tuple[str, ...],
                  source: str | None) -> Price:
        if (*key, buckets) not in self._warned_unpriced:
            self._warned_unpriced.add((*key, buckets))
            keys = ", ".join(OVERRIDE_KEYS.get(b, b) for b in buckets)
            log.warning("no price for %s of model %s/%s: its calls are flagged unknown_price "
                        "(set %s in the deployment's litellm_params to price it)",
                        ", ".join(buckets), *key, keys)
        return Price(None, source, buckets)

    def _mark_unknown(self, key: tuple[str, str]) -> Price:
        if key not in self._unknown:
            self._unknown.add(key)
            log.warning("no price known for model %s/%s: its events are flagged unknown_price "
                        "(set input_cost_per_token/output_cost_per_token to price it)", *key)
        return UNKNOWN

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's context window in tokens, as genai-prices knows it (the router's
        pre-call check reads it when the deployment's model_info gives none)."""
        provider_id = self._price_provider(provider)
        if provider_id is None:
            return None
        lib = self._lib()
        try:
            info = lib.calc_price(lib.Usage(input_tokens=0), model,
                                  provider_id=provider_id).model
        except LookupError:
            return None
        window = getattr(info, "context_window", None)
        return window if isinstance(window, int) and window > 0 else None


def _missing_prices(model_price: Any, usage: Usage) -> tuple[str, ...]:
    """Nonzero buckets the library's model price has no price key for."""
    missing = []
    for bucket in _nonzero_buckets(usage):
        library_name = LIBRARY_REQUEST_NAMES.get(bucket, bucket)
        keys = (_BUCKET_PRICE_KEYS.get(bucket) or _UNIT_LIBRARY_KEYS.get(bucket)
                or (f"{library_name}_kcount",))
        if all(getattr(model_price, k, None) is None for k in keys):
            missing.append(bucket)
    return tuple(missing)


def _varies_by_time_of_day(model: Any) -> bool:
    prices = getattr(model, "prices", None)
    if not isinstance(prices, list):
        return False
    return any(type(getattr(p, "constraint", None)).__name__ == "TimeOfDateConstraint"
               for p in prices)


def _linear_rates(model_price: Any) -> _Rates | None:
    """Per-unit rates read from the model price; None when any price is tiered or of a
    kind this table does not know (the library prices those calls itself)."""
    per_bucket: dict[str, Decimal] = {}
    per_call = Decimal(0)
    known_keys = {k for keys in _BUCKET_PRICE_KEYS.values() for k in keys}
    for key, value in vars(model_price).items():
        if value is None or key.startswith("_"):
            continue
        if not isinstance(value, Decimal):
            return None  # tiered
        if key == "requests_kcount":
            per_call = value / _KCOUNT
        elif key == _REASONING_PRICE_KEY:
            per_bucket["reasoning_tokens"] = value / _MTOK
        elif key in known_keys:
            for bucket, keys in _BUCKET_PRICE_KEYS.items():
                if key == keys[0] or (key in keys and bucket not in per_bucket):
                    per_bucket[bucket] = value / _MTOK
        elif key.endswith("_kcount"):
            per_bucket[key[:-len("_kcount")]] = value / _KCOUNT
        else:
            return None  # a unit (characters, seconds, images...) priced by the library
    return _Rates(per_bucket, per_call, time.monotonic() + _RATES_TTL_S)


def _registered_price_names(provider: str, model: str) -> tuple[str, ...]:
    from tallygate.errors import TallygateError
    from tallygate.providers.registry import get_provider

    try:
        return get_provider(provider).price_names(model)
    except TallygateError:
        return (model,)


def _registered_price_provider(provider: str) -> str | None:
    from tallygate.errors import TallygateError
    from tallygate.providers.registry import get_provider

    try:
        return get_provider(provider).price_provider
    except TallygateError:  # an unknown provider has no library price
        return None


default_price_book = PriceBook()
