"""Imagen on Vertex AI: OpenAI's ``images/generations`` body as an Imagen
``:predict`` request, and its ``predictions`` back as OpenAI's images answer.

From Google's Imagen reference: ``instances[0].prompt``, ``parameters.sampleCount`` (1-4)
and ``parameters.aspectRatio`` (``1:1``, ``3:4``, ``4:3``, ``9:16``, ``16:9``); each
prediction carries ``bytesBase64Encoded`` and ``mimeType``, or ``raiFilteredReason`` when
the image was filtered (not returned, not billed).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tallygate.errors import BadRequestError, UpstreamError

# OpenAI sizes -> Imagen aspect ratios (Imagen takes no pixel size).
_ASPECT = {"1024x1024": "1:1", "256x256": "1:1", "512x512": "1:1", "1792x1024": "16:9",
           "1024x1792": "9:16", "1536x1024": "4:3", "1024x1536": "3:4"}
_PASSED = ("negativePrompt", "personGeneration", "seed", "safetySetting", "language")


def predict_body(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    params: dict[str, Any] = {"sampleCount": int(data.get("n") or 1)}
    size = data.get("size")
    if size not in (None, "auto"):
        if size not in _ASPECT:
            raise BadRequestError(f"size {size!r} has no Imagen aspect ratio (use one of "
                                  f"{', '.join(_ASPECT)})", param="size")
        params["aspectRatio"] = _ASPECT[size]
    if data.get("response_format") == "url":
        raise BadRequestError("Imagen returns image bytes only: use response_format "
                              "'b64_json'", param="response_format")
    params.update({k: data[k] for k in _PASSED if data.get(k) is not None})
    return {"instances": [{"prompt": data["prompt"]}], "parameters": params}


def images_answer(body: bytes) -> bytes:
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise UpstreamError("Imagen answered with a non-object body")
    images = [{"b64_json": p["bytesBase64Encoded"], "mime_type": p.get("mimeType")}
              for p in parsed.get("predictions") or ()
              if isinstance(p, dict) and isinstance(p.get("bytesBase64Encoded"), str)]
    return orjson.dumps({"created": int(time.time()), "data": images})
