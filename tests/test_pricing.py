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
    Usage(input_tokens=700, cache_read_tokens=200, cache_write_tokens=100, output_tokens=50),
    Usage(input_tokens=123_457, output_tokens=9_999),
    Usage(input_tokens=250_000, output_tokens=10),  # past a long-context tier
]
MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("openai", "o3-mini"),
          ("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-3-5-haiku-20241022")]


def library_cost(provider: str, model: str, u: Usage) -> Decimal:
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=u.prompt_tokens, cache_read_tokens=u.cache_read_tokens,
                           cache_write_tokens=u.cache_write_tokens,
                           output_tokens=u.output_tokens),
        model, provider_id=provider)
    return Decimal(calc.total_price)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_cost_equals_the_price_library_on_first_and_cached_calls(provider: str,
                                                                 model: str) -> None:
    book = PriceBook()
    for u in USAGES:
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


def test_override_without_cache_prices_charges_cached_tokens_at_the_input_price() -> None:
    o = PriceOverride(input_cost_per_token=Decimal("0.000001"),
                      output_cost_per_token=Decimal("0.000002"))
    u = Usage(input_tokens=1, cache_read_tokens=2, cache_write_tokens=3, output_tokens=4)
    assert cost_from_override(u, o) == Decimal("0.000001") * 6 + Decimal("0.000002") * 4
