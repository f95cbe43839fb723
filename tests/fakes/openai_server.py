"""A stand-in OpenAI API server speaking the real wire format over HTTP.

    async with FakeOpenAI() as fake:
        fake.reply_text, fake.prompt_tokens, fake.cached_tokens = "Hi!", 1000, 800
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k")
        ...
        assert fake.requests[-1]["model"] == "gpt-4o-mini"

Routes: POST /v1/chat/completions (JSON or SSE), POST /v1/embeddings, GET /v1/models, and
the Responses API (``tests/fakes/openai_responses.py``): POST /v1/responses (JSON or SSE),
GET and DELETE /v1/responses/{id}. ``responses_enabled = False`` makes the server one of
the OpenAI-compatible servers without the Responses API (404 there).
"""

from __future__ import annotations

import base64
import itertools
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_responses import ResponsesAPI
from tests.fakes.server_base import FakeServer, FakeToolCall, run_in_thread, split_text

__all__ = ["FakeOpenAI", "FakeToolCall", "run_in_thread"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                403: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_error"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


class FakeOpenAI(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.reply_text = "Hello from the fake OpenAI."
        self.prompt_tokens = 12
        self.completion_tokens = 7
        self.cached_tokens = 0        # inside prompt_tokens, as OpenAI reports them
        self.reasoning_tokens = 0     # inside completion_tokens
        self.finish_reason = "stop"
        self.tool_call: FakeToolCall | None = None
        self.stream_chunks = 3        # content pieces in a stream
        self.models = ["gpt-4o-mini", "text-embedding-3-small"]
        self.embedding_dim = 8
        self._ids = itertools.count(1)
        # The Responses API: built-in tool calls and a reasoning item in its answers.
        self.responses_enabled = True
        self.web_searches = 0
        self.reasoning_summary: str | None = None
        self.responses = ResponsesAPI(self)

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat),
                web.post("/v1/embeddings", self._embeddings),
                web.get("/v1/models", self._models), *self.responses.routes()]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"error": {"message": message,
                          "type": error_type or _ERROR_TYPES.get(status, "server_error"),
                          "param": None, "code": _ERROR_CODES.get(status)}}

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens,
                                          "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }

    async def _gate(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """Record the request; return the error answer it gets, if any."""
        got = await self.record(request)
        expected = self.require_api_key
        if expected is not None and got.headers.get("Authorization") != f"Bearer {expected}":
            return {}, self.error(401, "Incorrect API key provided.")
        return got.body or {}, self.take_error()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        if not body.get("messages"):
            return self.error(400, "'messages' is a required property")
        model = str(body.get("model") or "gpt-4o-mini")
        cid = f"chatcmpl-fake{next(self._ids)}"
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self.send_stream(request, self._frames(cid, model, include_usage))
        message: dict[str, Any] = {"role": "assistant", "content": self.reply_text,
                                   "refusal": None, "annotations": []}
        finish = self.finish_reason
        if self.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [{
                "id": self.tool_call.id, "type": "function",
                "function": {"name": self.tool_call.name,
                             "arguments": orjson.dumps(self.tool_call.arguments).decode()}}]
            finish = "tool_calls"
        return await self.send_json(request, {
            "id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish}],
            "usage": self.usage(),
        })

    def _frames(self, cid: str, model: str, include_usage: bool) -> list[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None  # OpenAI sends null usage on every chunk but the last
            return out

        chunks = []
        finish = self.finish_reason
        if self.tool_call is None:
            chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            chunks += [chunk({"content": p}) for p in split_text(self.reply_text,
                                                                  self.stream_chunks)]
        else:
            call = self.tool_call
            chunks.append(chunk({"role": "assistant", "content": None, "tool_calls": [{
                "index": 0, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}]}))
            args = orjson.dumps(call.arguments).decode()
            chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                       for p in split_text(args, self.stream_chunks)]
            finish = "tool_calls"
        chunks.append(chunk({}, finish))
        if include_usage:
            last = chunk({})
            last["choices"], last["usage"] = [], self.usage()
            chunks.append(last)
        return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        inputs = body.get("input")
        if inputs is None or inputs == []:
            return self.error(400, "'input' is a required property")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                       and isinstance(inputs[0], int)):
            inputs = [inputs]  # one string, or one list of token ids
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, _ in enumerate(inputs):
            vector = [round(0.1 * (i + 1) + 0.01 * k, 4) for k in range(self.embedding_dim)]
            embedding: Any = vector
            if as_base64:  # little-endian float32, as OpenAI sends it
                packed = struct.pack(f"<{len(vector)}f", *vector)
                embedding = base64.b64encode(packed).decode()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return await self.send_json(request, {
            "object": "list", "data": data, "model": str(body.get("model") or ""),
            "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
        })

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        return await self.send_json(request, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]})
