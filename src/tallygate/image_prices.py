"""Per-image list prices of the image models billed per image (not per token).

genai-prices has no per-image prices. OpenAI prices DALL-E images by size and quality
(https://openai.com/api/pricing); Google prices Imagen per image whatever its aspect
ratio (https://cloud.google.com/vertex-ai/generative-ai/pricing), listed under ``*``. Token-priced
image models (gpt-image-1) are priced from their reported tokens instead, and are not
listed here.
"""

from __future__ import annotations

from decimal import Decimal

# (provider, model) -> {"quality/size": USD per image}
_PRICES: dict[tuple[str, str], dict[str, Decimal]] = {
    ("openai", "dall-e-3"): {
        "standard/1024x1024": Decimal("0.040"),
        "standard/1024x1792": Decimal("0.080"),
        "standard/1792x1024": Decimal("0.080"),
        "hd/1024x1024": Decimal("0.080"),
        "hd/1024x1792": Decimal("0.120"),
        "hd/1792x1024": Decimal("0.120"),
    },
    ("openai", "dall-e-2"): {
        "standard/256x256": Decimal("0.016"),
        "standard/512x512": Decimal("0.018"),
        "standard/1024x1024": Decimal("0.020"),
    },
}
_IMAGEN: dict[str, dict[str, Decimal]] = {
    "imagen-4.0-generate-001": {"*": Decimal("0.04")},
    "imagen-4.0-fast-generate-001": {"*": Decimal("0.02")},
    "imagen-4.0-ultra-generate-001": {"*": Decimal("0.06")},
    "imagen-3.0-generate-002": {"*": Decimal("0.03")},
}
_PRICES.update({("vertex_ai", model): table for model, table in _IMAGEN.items()})
DEFAULT_SIZE = "1024x1024"
DEFAULT_QUALITY = "standard"


def image_variant(size: object, quality: object) -> str:
    """The price variant of a request: ``quality/size``, with OpenAI's defaults."""
    q = quality if isinstance(quality, str) and quality not in ("auto", "") else DEFAULT_QUALITY
    if q in ("low", "medium", "high"):  # gpt-image-1's names; DALL-E takes standard/hd
        q = "hd" if q == "high" else "standard"
    sz = size if isinstance(size, str) and size not in ("auto", "") else DEFAULT_SIZE
    return f"{q}/{sz}"


def image_price(provider: str, model: str, variant: str | None) -> Decimal | None:
    """USD per image, or None when the model or its size/quality has no list price."""
    # Azure OpenAI lists the same per-image prices as OpenAI.
    table = _PRICES.get(("openai" if provider == "azure" else provider, model))
    if table is None:
        return None
    return table.get(variant or f"{DEFAULT_QUALITY}/{DEFAULT_SIZE}", table.get("*"))
