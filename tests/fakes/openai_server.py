"""A stand-in OpenAI API server speaking the real wire format over HTTP.

    async with FakeOpenAI() as fake:
        fake.reply_text, fake.prompt_tokens, fake.cached_tokens = "Hi!", 1000, 800
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k")
        ...
        assert fake.requests[-1]["model"] == "gpt-4o-mini"

Routes: POST /v1/chat/completions (JSON or SSE), POST /v1/completions (the legacy text
completions, JSON or SSE, ``echo`` and several prompts), POST /v1/embeddings,
GET /v1/models, images, audio and moderations (``tests/fakes/openai_media.py``), and
the Responses API (``tests/fakes/openai_responses.py``): POST
/v1/responses (JSON or SSE), GET and DELETE /v1/responses/{id}. ``responses_enabled =
False`` makes the server one of the OpenAI-compatible servers without the Responses API
(404 there). Like OpenAI, a reasoning model (o1, o3, o4-mini, gpt-5...) refuses
``max_tokens`` and a temperature other than 1 on chat.
"""

from __future__ import annotations

import base64
import itertools
import re
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import malformed
from tests.fakes.openai_media import MediaAPI
from tests.fakes.openai_responses import ResponsesAPI
from tests.fakes.server_base import (
    FakeServer,
    FakeToolCall,
    FakeTurn,
    run_in_thread,
    split_text,
)

__all__ = ["FakeOpenAI", "FakeToolCall", "FakeTurn", "run_in_thread"]

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                403: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_error"}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_REASONING = re.compile(r"(o[1-9]|gpt-5)([-.].*)?")


def billed_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens of a request as the fake bills them (``bill_request``)."""
    chars, images = 0, 0
    for message in body.get("messages") or ():
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content or ""}]
        for part in parts:
            if part.get("type") == "image_url":
                images += 85 if part["image_url"].get("detail") == "low" else 765
            else:
                chars += len(str(part.get("text") or ""))
        chars += len(orjson.dumps(message.get("tool_calls") or []))
    for name in ("tools", "functions", "response_format"):
        if body.get(name):
            chars += len(orjson.dumps(body[name]))
    return 4 * len(body.get("messages") or ()) + 3 + -(-chars // 4) + images


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
        self.turns: list[FakeTurn] = []  # consumed one per chat request, before the above
        self.stream_chunks = 3        # content pieces in a stream
        self.models = ["gpt-4o-mini", "text-embedding-3-small"]
        self.embedding_dim = 8
        # Bill what the request carries, as OpenAI does: every message, tool definition
        # and response_format (about 4 characters a token), each image (85 tokens at
        # "low" detail, 765 otherwise: a 1024x1024 image at "high"), and n choices of
        # completion_tokens each. Off: the fixed prompt_tokens above.
        self.bill_request = False
        self._ids = itertools.count(1)
        # The Responses API: built-in tool calls and a reasoning item in its answers.
        self.responses_enabled = True
        self.web_searches = 0
        self.reasoning_summary: str | None = None
        self.responses = ResponsesAPI(self)
        self.media = MediaAPI(self)  # images, audio, moderations

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return self.url + "/v1"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat),
                web.post("/v1/completions", self._completions),
                web.post("/v1/embeddings", self._embeddings),
                web.get("/v1/models", self._models), *self.responses.routes(),
                *self.media.routes()]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"error": {"message": message,
                          "type": error_type or _ERROR_TYPES.get(status, "server_error"),
                          "param": None, "code": _ERROR_CODES.get(status)}}

    def usage(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        prompt, completion = self.prompt_tokens, self.completion_tokens
        if self.bill_request and body is not None:
            prompt = billed_prompt_tokens(body)
            completion *= int(body.get("n") or 1)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
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
        raw = self.take_raw()
        if raw is not None:
            return await self.send_raw(request, raw)
        if not body.get("messages"):
            return self.error(400, "'messages' is a required property")
        model = str(body.get("model") or "gpt-4o-mini")
        refusal = self._reasoning_refusal(model, body)
        if refusal is not None:
            return refusal
        cid = f"chatcmpl-fake{next(self._ids)}"
        turn = self.turns.pop(0) if self.turns else FakeTurn(self.reply_text, self.tool_call)
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if self.malformed:
            return await self.send_raw(request, malformed.openai_chat(
                self.malformed, stream, self._frames(cid, model, include_usage, turn),
                self._completion(cid, model, turn, body)))
        if stream:
            return await self.send_stream(request, self._frames(cid, model, include_usage,
                                                                turn))
        return await self.send_json(request, self._completion(cid, model, turn, body))

    def _completion(self, cid: str, model: str, turn: FakeTurn,
                    request: dict[str, Any] | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": turn.reply_text,
                                   "refusal": None, "annotations": []}
        finish = self.finish_reason
        if turn.tool_call is not None:
            turn.tool_call.openai_message(message)
            finish = "tool_calls"
        n = int((request or {}).get("n") or 1) if self.bill_request else 1
        return {
            "id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_fake",
            "choices": [{"index": i, "message": message, "logprobs": None,
                         "finish_reason": finish} for i in range(n)],
            "usage": self.usage(request),
        }

    def _frames(self, cid: str, model: str, include_usage: bool,
                turn: FakeTurn) -> list[bytes]:
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
        if turn.tool_call is None:
            chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            chunks += [chunk({"content": p}) for p in split_text(turn.reply_text,
                                                                  self.stream_chunks)]
        else:
            chunks += [chunk(d) for d in turn.tool_call.openai_deltas(self.stream_chunks)]
            finish = "tool_calls"
        chunks.append(chunk({}, finish))
        if include_usage:
            last = chunk({})
            last["choices"], last["usage"] = [], self.usage()
            chunks.append(last)
        return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]

    def _reasoning_refusal(self, model: str, body: dict[str, Any]) -> web.Response | None:
        """OpenAI's answers to what its reasoning models do not take."""
        if not _REASONING.fullmatch(model):
            return None
        if "max_tokens" in body:
            return self._unsupported("max_tokens", "Unsupported parameter: 'max_tokens' is "
                                     "not supported with this model. Use "
                                     "'max_completion_tokens' instead.", "unsupported_parameter")
        for name in ("temperature", "top_p"):
            if body.get(name) not in (None, 1):
                return self._unsupported(name, f"Unsupported value: '{name}' does not support "
                                         f"{body[name]} with this model. Only the default (1) "
                                         "value is supported.", "unsupported_value")
        return None

    @staticmethod
    def _unsupported(param: str, message: str, code: str) -> web.Response:
        return web.Response(status=400, content_type="application/json", body=orjson.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "param": param,
                       "code": code}}))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        prompt = body.get("prompt")
        if prompt is None:
            return self.error(400, "'prompt' is a required property")
        prompts: list[Any] = (prompt if isinstance(prompt, list) and prompt
                              and not isinstance(prompt[0], int) else [prompt])
        model = str(body.get("model") or "gpt-3.5-turbo-instruct")
        cid = f"cmpl-fake{next(self._ids)}"
        created = int(time.time())
        echo = bool(body.get("echo"))

        def text_of(i: int) -> str:
            p = prompts[i]
            return (p if echo and isinstance(p, str) else "") + self.reply_text

        def chunk(choices: list[dict[str, Any]]) -> dict[str, Any]:
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": model, "choices": choices}

        if not body.get("stream"):
            return await self.send_json(request, {**chunk([
                {"text": text_of(i), "index": i, "logprobs": None,
                 "finish_reason": self.finish_reason} for i in range(len(prompts))]),
                "usage": self.usage()})
        frames = []
        for i in range(len(prompts)):
            pieces = split_text(self.reply_text, self.stream_chunks)
            if echo and isinstance(prompts[i], str):
                pieces.insert(0, prompts[i])
            frames += [chunk([{"text": p, "index": i, "logprobs": None,
                               "finish_reason": None}]) for p in pieces]
            frames.append(chunk([{"text": "", "index": i, "logprobs": None,
                                  "finish_reason": self.finish_reason}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append({**chunk([]), "usage": self.usage()})
        return await self.send_stream(request, [b"data: " + orjson.dumps(f) + b"\n\n"
                                                for f in frames] + [b"data: [DONE]\n\n"])

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        raw = self.take_raw()
        if raw is not None:
            return await self.send_raw(request, raw)
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
        answer = {"object": "list", "data": data, "model": str(body.get("model") or ""),
                  "usage": {"prompt_tokens": self.prompt_tokens,
                            "total_tokens": self.prompt_tokens}}
        if self.malformed:
            return await self.send_raw(request, malformed.openai_embedding(self.malformed,
                                                                           answer))
        return await self.send_json(request, answer)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        return await self.send_json(request, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]})
