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

# Standard rates: OpenAI's auto and default, Anthropic's auto and standard_only.
STANDARD_TIERS = frozenset({"auto", "default", "standard_only"})
_NONE: Mapping[str, str] = MappingProxyType({})


def requested_tier(params: Mapping[str, Any]) -> Any:
    """The call's ``service_tier``: in the params, or in the request body a door keeps
    (the Responses and Messages doors pass it on as it came)."""
    body = params.get("body")
    if "service_tier" not in params and isinstance(body, Mapping):
        return body.get("service_tier")
    return params.get("service_tier")


def price_context(params: Mapping[str, Any], deployments: Sequence[Deployment],
                  prices: PriceBook) -> Mapping[str, str]:
    """The price context of a call (``{"service_tier": ...}`` or empty); 400 when it asks
    for rates that are not known for every deployment that may serve it."""
    tier = requested_tier(params)
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
