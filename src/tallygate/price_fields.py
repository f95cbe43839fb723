"""Request fields that change what the provider charges, priced or refused up front.

OpenAI's ``service_tier`` bills the same tokens at other rates (``priority`` costs more,
``flex`` less). A call is billed at the tier it asked for when the price library knows
that tier's rates for the model (genai-prices' price variants); ``auto``, ``default``
or no tier bill the standard rates. A tier with no known price for some deployment of
the group is refused with a 400 before anything is sent, rather than billed at the
wrong price.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from tallygate.errors import BadRequestError
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment

STANDARD_TIERS = frozenset({"auto", "default"})
_NONE: Mapping[str, str] = MappingProxyType({})


def price_context(params: Mapping[str, Any], deployments: Sequence[Deployment],
                  prices: PriceBook) -> Mapping[str, str]:
    """The price context of a call (``{"service_tier": ...}`` or empty); 400 when it asks
    for rates that are not known for every deployment that may serve it."""
    tier = params.get("service_tier")
    if tier is None or tier in STANDARD_TIERS:
        return _NONE
    if not isinstance(tier, str) or not tier:
        raise BadRequestError("'service_tier' must be a string such as 'auto', 'default', "
                              "'flex' or 'priority'", param="service_tier",
                              code="invalid_type")
    context = {"service_tier": tier}
    for deployment in deployments:
        model = deployment.base_model or deployment.model
        if not prices.knows_context(deployment.provider, model, deployment.price,
                                    context):
            raise BadRequestError(
                f"service_tier {tier!r} is not priced for model {model!r} on "
                "this gateway, so the call could not be billed correctly; use 'auto' or "
                "'default'", param="service_tier", code="unpriced_service_tier")
    return MappingProxyType(context)
