"""The Gemini door's embeddings: ``:embedContent`` and ``:batchEmbedContents``.

Passed through as they came to ``gemini/`` deployments (usage from ``usageMetadata``
when Google reports it, else estimated from the texts and flagged so), translated for
the others into an OpenAI embeddings call whose vectors come back in Google's shape.
Billed like any embeddings call: input tokens only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.doors.gemini_to_chat import bad, fields
from tallygate.errors import UpstreamError
from tallygate.estimate import estimate_text_tokens
from tallygate.providers.base import ChatResult
from tallygate.usage import Usage

EMBED_METHODS = ("embedContent", "batchEmbedContents")


def _text(request: Mapping[str, Any], where: str) -> str:
    content = fields(request.get("content"), f"{where}.content")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise bad(f"{where}.content.parts must not be empty", f"{where}.content.parts")
    return "".join(str(fields(p, f"{where}.content.parts").get("text") or "") for p in parts)


def embed_params(data: Mapping[str, Any], batch: bool) -> dict[str, Any]:
    """OpenAI embeddings params (``input`` a list of texts) for a Gemini embed body;
    the body itself under ``body``. A 400 naming the field for a malformed one."""
    body = fields(data, "body")
    if batch:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise bad("requests must be a non-empty list", "requests")
        ones = [fields(r, f"requests[{i}]") for i, r in enumerate(requests)]
        where = [f"requests[{i}]" for i in range(len(ones))]
    else:
        ones, where = [body], [""]
    texts = [_text(one, at or "body") for one, at in zip(ones, where, strict=True)]
    params: dict[str, Any] = {"input": texts, "body": data, "batch": batch}
    dims = ones[0].get("outputDimensionality")
    if dims is not None:
        params["dimensions"] = dims
    return params


def native_answer(texts: list[str]) -> Any:
    """A reader of a native embed answer: the bytes as they came, usage as reported or
    estimated from the texts."""
    def read(body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict) or not ("embedding" in parsed
                                                or "embeddings" in parsed):
            raise UpstreamError("upstream answered 200 with a body that is not an "
                                "embeddings answer")
        meta = parsed.get("usageMetadata")
        tokens = meta.get("promptTokenCount") if isinstance(meta, Mapping) else None
        if isinstance(tokens, int) and not isinstance(tokens, bool):
            usage = Usage(input_tokens=tokens)
        else:
            usage = Usage(input_tokens=sum(estimate_text_tokens(t) for t in texts),
                          source="estimated")
        return ChatResult(body=parsed, usage=usage, raw=body)
    return read


def to_gemini_embeddings(body: Mapping[str, Any], batch: bool) -> dict[str, Any]:
    """An OpenAI embeddings list as ``EmbedContentResponse`` / ``BatchEmbedContentsResponse``."""
    def index(row: Mapping[str, Any]) -> int:
        value = row.get("index")
        return value if isinstance(value, int) else 0

    rows = sorted((d for d in body.get("data") or () if isinstance(d, Mapping)), key=index)
    vectors = [{"values": list(d.get("embedding") or [])} for d in rows]
    if batch:
        return {"embeddings": vectors}
    return {"embedding": vectors[0] if vectors else {"values": []}}
