"""Pricing: Decimal costs equal to the price library's, overrides, unknown prices."""

from __future__ import annotations

import logging
from decimal import Decimal

import genai_prices
import pytest

from tallygate.pricing import PriceBook, cost_from_override
from tallygate.providers.base import PriceOverride
from tallygate.usage import Usage

USAGES = [
    Usage(input_tokens=200, cache_read_tokens=800, output_tokens=50, reasoning_tokens=10),
    Usage(input_tokens=123_457, output_tokens=9_999),
    Usage(input_tokens=250_000, output_tokens=10),  # past a long-context tier
]
# Anthropic also prices cache writes by lifetime and web searches per request.
ANTHROPIC_USAGES = [
    Usage(input_tokens=700, cache_read_tokens=200, cache_write_tokens=100, output_tokens=50),
    Usage(input_tokens=70, cache_write_tokens=100, cache_write_1h_tokens=300, output_tokens=5,
          requests=(("web_searches", 2),)),
]
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("openai", "o3-mini"),
          ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-3-5-haiku-20241022")]


def library_cost(provider: str, model: str, u: Usage) -> Decimal:
    extra = {"cache_write_1h_tokens": u.cache_write_1h_tokens} if u.cache_write_1h_tokens else {}
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=u.prompt_tokens, cache_read_tokens=u.cache_read_tokens,
                           cache_write_tokens=u.cache_write_tokens + u.cache_write_1h_tokens,
                           output_tokens=u.output_tokens, **extra, **dict(u.requests)),
        model, provider_id=provider)
    return Decimal(calc.total_price)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_cost_equals_the_price_library_on_first_and_cached_calls(provider: str,
                                                                 model: str) -> None:
    book = PriceBook()
    for u in USAGES + (ANTHROPIC_USAGES if provider == "anthropic" else []):
        first = book.price(provider, model, u)
        again = book.price(provider, model, u)  # served from the derived rates if linear
        expected = library_cost(provider, model, u)
        assert first.cost == expected and again.cost == expected
        assert isinstance(again.cost, Decimal)
        assert again.source is not None and again.source.startswith("genai-prices")


def test_hand_computed_gpt_4o_mini_cost_with_cache_reads() -> None:
    # $0.15/M input, $0.075/M cached input, $0.60/M output.
    u = Usage(input_tokens=200, cache_read_tokens=800, output_tokens=50)
    expected = (Decimal("0.15") * 200 + Decimal("0.075") * 800 + Decimal("0.60") * 50) / 10**6
    assert PriceBook().price("openai", "gpt-4o-mini", u).cost == expected


def test_unknown_model_is_none_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    book = PriceBook()
    with caplog.at_level(logging.WARNING, logger="tallygate.pricing"):
        for _ in range(3):
            price = book.price("openai", "my-local-model", Usage(input_tokens=5))
            assert price.cost is None and not price.known
        assert book.price("mock", "anything", Usage(input_tokens=5)).cost is None
    warnings = [r for r in caplog.records if "no price known" in r.getMessage()]
    assert len(warnings) == 2  # one per model, not per call


def test_override_prices_each_bucket_and_wins_over_the_library() -> None:
    o = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                      output_cost_per_token=Decimal("0.000002"),
                      cache_read_input_token_cost=Decimal("0.0000001"),
                      cache_creation_input_token_cost=Decimal("0.00000125"))
    u = Usage(input_tokens=10, cache_read_tokens=100, cache_write_tokens=4, output_tokens=3)
    expected = (Decimal("0.000001") * 10 + Decimal("0.0000001") * 100
                + Decimal("0.00000125") * 4 + Decimal("0.000002") * 3)
    assert cost_from_override(u, o) == expected
    price = PriceBook().price("openai", "gpt-4o-mini", u, o)
    assert price.cost == expected and price.source == "config"


def test_override_without_a_bucket_price_leaves_the_call_unpriced_naming_it() -> None:
    # A bucket is never priced at another bucket's rate: cached tokens without a cache
    # price make the price unknown, with the bucket named.
    o = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                      output_cost_per_token=Decimal("0.000002"))
    u = Usage(input_tokens=1, cache_read_tokens=2, cache_write_tokens=3, output_tokens=4)
    assert cost_from_override(u, o) is None
    price = PriceBook().price("openai", "my-model", u, o)
    assert price.cost is None and price.source == "config"
    assert price.unpriced == ("cache_read_tokens", "cache_write_tokens")
    plain = PriceBook().price("openai", "my-model", Usage(input_tokens=1, output_tokens=4), o)
    assert plain.cost == Decimal("0.000001") + Decimal("0.000002") * 4


def test_override_prices_the_new_buckets_in_litellm_names() -> None:
    o = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                      output_cost_per_token=Decimal("0.000002"),
                      cache_creation_input_token_cost=Decimal("0.00000125"),
                      cache_creation_input_token_cost_above_1hr=Decimal("0.000002"),
                      input_cost_per_audio_token=Decimal("0.00004"),
                      output_cost_per_audio_token=Decimal("0.00008"),
                      per_request={"web_searches": Decimal("0.01")})
    u = Usage(input_tokens=10, cache_write_tokens=4, cache_write_1h_tokens=6,
              audio_input_tokens=7, output_tokens=3, audio_output_tokens=5,
              requests=(("web_searches", 2),))
    expected = (Decimal("0.000001") * 10 + Decimal("0.00000125") * 4 + Decimal("0.000002") * 6
                + Decimal("0.00004") * 7 + Decimal("0.000002") * 3 + Decimal("0.00008") * 5
                + Decimal("0.01") * 2)
    assert cost_from_override(u, o) == expected


def test_library_bucket_without_a_price_is_named_not_priced_as_input() -> None:
    book = PriceBook()
    # gpt-4o-mini has no audio price: its audio tokens must not pass as text input.
    audio = book.price("openai", "gpt-4o-mini", Usage(input_tokens=5, audio_input_tokens=9))
    assert audio.cost is None and audio.unpriced == ("audio_input_tokens",)
    # gpt-realtime does price audio: exactly the library's figure.
    u = Usage(input_tokens=1000, audio_input_tokens=2000, output_tokens=10,
              audio_output_tokens=30)
    expected = Decimal(genai_prices.calc_price(
        genai_prices.Usage(input_tokens=3000, input_audio_tokens=2000, output_tokens=40,
                           output_audio_tokens=30),
        "gpt-realtime", provider_id="openai").total_price)
    assert book.price("openai", "gpt-realtime", u).cost == expected
    assert book.price("openai", "gpt-realtime", u).cost == expected  # the fast path too
    # A per-request item the model has no price for is named too.
    search = book.price("openai", "o3-mini", Usage(input_tokens=5,
                                                   requests=(("code_executions", 1),)))
    assert search.cost is None and search.unpriced == ("code_executions",)


# --- buckets and fees the cloud providers bill ------------------------------------------


def test_reasoning_at_its_own_rate_in_the_library_and_an_override() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=100, output_tokens=1_000, reasoning_tokens=600,
                  citation_tokens=300)
    price = book.price("perplexity", "sonar-deep-research", usage)
    # 100 in at $2, 400 visible out at $8, 600 reasoning at $3, 300 citations at $2 /M.
    assert price.cost == (Decimal(100 * 2 + 400 * 8 + 600 * 3 + 300 * 2)
                          / Decimal(1_000_000))
    o = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                      output_cost_per_token=Decimal("0.000004"),
                      output_cost_per_reasoning_token=Decimal("0.000002"),
                      citation_cost_per_token=Decimal("0.0000005"))
    assert cost_from_override(usage, o) == (Decimal("0.0001") + Decimal("0.0016")
                                            + Decimal("0.0012") + Decimal("0.00015"))
    # Without a reasoning price, reasoning is output at the output rate.
    plain = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                          output_cost_per_token=Decimal("0.000004"),
                          citation_cost_per_token=Decimal("0.0000005"))
    assert cost_from_override(usage, plain) == (Decimal("0.0001") + Decimal("0.004")
                                                + Decimal("0.00015"))


def test_per_request_table_prices_its_items_and_the_library_the_tokens() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=1_000, output_tokens=100,
                  requests=(("search_context_size_low", 1),))
    library = book.price("perplexity", "sonar", usage)
    assert library.cost == Decimal("0.0011") + Decimal("0.012")  # the library's one fee
    table = PriceOverride(per_request={"search_context_size_low": Decimal("0.005")})
    exact = book.price("perplexity", "sonar", usage, table)
    assert exact.cost == Decimal("0.0011") + Decimal("0.005")
    assert exact.source is not None and exact.source.endswith("+ config")


def test_a_time_of_day_price_is_never_cached() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=1_000_000)
    first = book.price("deepseek", "deepseek-chat", usage)
    assert book._rates[("deepseek", "deepseek-chat")] is None  # asked every call
    assert first.cost in (Decimal("0.27"), Decimal("0.135"))
    assert book.price("openai", "gpt-4o-mini", usage).cost == Decimal("0.15")
    assert book._rates[("openai", "gpt-4o-mini")] is not None


def test_an_override_without_token_prices_of_the_buckets_used_is_unpriced() -> None:
    # Only a cache-read price: the override is not ignored, the input is named unpriced.
    o = PriceOverride(cache_read_input_token_cost=Decimal("0.0000001"))
    price = PriceBook().price("openai", "gpt-4o-mini",
                              Usage(input_tokens=10, cache_read_tokens=5), o)
    assert price.cost is None and price.unpriced == ("input_tokens",)
