"""A stand-in rerank API in the three published shapes, chosen by ``shape``:

* ``"cohere"``: Cohere's ``POST /v1/rerank`` and ``/v2/rerank``, answering ``results``
  (index, relevance_score) and ``meta.billed_units.search_units`` (one per query of up
  to 100 documents);
* ``"jina"``: Jina's ``POST /v1/rerank``, answering ``results`` and
  ``usage.total_tokens``;
* ``"voyage"``: Voyage's ``POST /v1/rerank``, answering ``data`` and
  ``usage.total_tokens``.

Scores are deterministic: a document scores by the query words it contains.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

from aiohttp import web

from tests.fakes.server_base import FakeServer

Shape = Literal["cohere", "jina", "voyage"]


class FakeRerank(FakeServer):
    def __init__(self, shape: Shape = "cohere") -> None:
        super().__init__()
        self.shape: Shape = shape
        self.tokens_per_document = 10  # Jina / Voyage usage
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/rerank", self._rerank), web.post("/v2/rerank", self._rerank)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        if self.shape == "cohere":
            return {"message": message}
        return {"detail": message}

    async def _rerank(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        expected = self.require_api_key
        if expected is not None and got.headers.get("Authorization") != f"Bearer {expected}":
            return self.error(401, "invalid api token")
        refusal = self.take_error()
        if refusal is not None:
            return refusal
        body = got.body or {}
        query, docs = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list) or not docs:
            return self.error(400, "query and documents are required")
        texts = [d if isinstance(d, str) else str(d.get("text", "")) for d in docs]
        words = set(query.lower().split())
        scored = sorted(((sum(w in t.lower() for w in words) / (len(words) or 1), i)
                         for i, t in enumerate(texts)), key=lambda p: (-p[0], p[1]))
        top = body.get("top_n") or body.get("top_k") or len(texts)
        ranked = [{"index": i, "relevance_score": round(s, 4)} for s, i in scored[:int(top)]]
        model = str(body.get("model") or "rerank-v3.5")
        tokens = self.tokens_per_document * len(texts)
        if self.shape == "cohere":
            version = "2" if request.path.startswith("/v2") else "1"
            answer: dict[str, Any] = {
                "id": f"rerank-fake{next(self._ids)}", "results": ranked,
                "meta": {"api_version": {"version": version},
                         "billed_units": {"search_units": math.ceil(len(texts) / 100)}}}
        elif self.shape == "jina":
            answer = {"model": model, "usage": {"total_tokens": tokens},
                      "results": [{**r, "document": {"text": texts[int(r["index"])]}}
                                  for r in ranked]}
        else:
            answer = {"object": "list", "model": model, "usage": {"total_tokens": tokens},
                      "data": ranked}
        return await self.send_json(request, answer)
