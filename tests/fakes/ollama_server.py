"""A stand-in Ollama server speaking its native API over HTTP (docs/api.md).

    async with FakeOllama() as fake:
        fake.prompt_eval_count, fake.eval_count = 26, 12
        client = ollama.AsyncClient(host=fake.url)

Routes: ``POST /api/chat`` (``message``; tools), ``POST /api/generate`` (``response``)
and ``POST /api/embed`` (``embeddings``, ``prompt_eval_count``). Chat and generate
stream unless the body says ``"stream": false``, as Ollama does: NDJSON, one object a
line, the last with ``done: true``, ``done_reason`` and the counts. Errors are
``{"error": "..."}`` with the status; an error after the stream began is an
``{"error": ...}`` line. A count set to None is left out of the answer, as Ollama
leaves out ``prompt_eval_count`` when its prompt cache served the whole prompt.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server_base import FakeServer, FakeToolCall, run_in_thread, split_text

__all__ = ["FakeOllama", "FakeToolCall", "run_in_thread"]

CREATED_AT = "2025-10-26T17:15:24.097767Z"
ROLES = frozenset({"system", "user", "assistant", "tool"})


def _line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


class FakeOllama(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.models = {"llama3.2", "llava", "all-minilm", "gpt-oss:20b"}
        self.reply_text = "Hello from the fake llama."
        self.thinking_text: str | None = None
        self.tool_call: FakeToolCall | None = None
        self.prompt_eval_count: int | None = 26
        self.eval_count: int | None = 12
        self.done_reason = "stop"
        self.stream_chunks = 3
        self.stream_error: str | None = None  # an {"error"} line after the first piece
        self.embed_count: int | None = 8

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/api/chat", self._chat), web.post("/api/generate", self._generate),
                web.post("/api/embed", self._embed)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"error": message}

    async def _begin(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        got = await self.record(request)
        if (self.require_api_key is not None
                and request.headers.get("Authorization") != f"Bearer {self.require_api_key}"):
            return {}, self.error(401, "unauthorized")
        refusal = self.take_error()
        if refusal is not None:
            return {}, refusal
        body = got.body or {}
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return body, self.error(400, "model is required")
        if model not in self.models:
            return body, self.error(404, f"model '{model}' not found")
        for image in body.get("images") or ():
            if not self._base64(image):
                return body, self.error(400, "illegal base64 data at input byte 0")
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            return body, self.error(400, "json: cannot unmarshal options")
        return body, None

    @staticmethod
    def _base64(value: object) -> bool:
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            return False
        return True

    def _counts(self) -> dict[str, Any]:
        out: dict[str, Any] = {"total_duration": 5043500667, "load_duration": 5025959,
                               "prompt_eval_duration": 325953000, "eval_duration": 4709213000}
        if self.prompt_eval_count is not None:
            out["prompt_eval_count"] = self.prompt_eval_count
        if self.eval_count is not None:
            out["eval_count"] = self.eval_count
        return out

    def _message(self, content: str, thinking: str | None = None,
                 tool_calls: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls and self.tool_call is not None:
            message["tool_calls"] = [{"function": {"name": self.tool_call.name,
                                                   "arguments": self.tool_call.arguments}}]
        return message

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._begin(request)
        if refusal is not None:
            return refusal
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self.error(400, "messages must be a list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return self.error(400, "invalid message role")
            for image in m.get("images") or ():
                if not self._base64(image):
                    return self.error(400, "illegal base64 data at input byte 0")
        calls = self.tool_call is not None and bool(body.get("tools"))
        text = "" if calls else self.reply_text
        head = {"model": body["model"], "created_at": CREATED_AT}
        if body.get("stream", True) is False:
            return await self.send_json(request, {
                **head, "message": self._message(text, self.thinking_text, calls),
                "done_reason": self.done_reason, "done": True, **self._counts()})
        lines = []
        if self.thinking_text:
            lines += [{**head, "message": {"role": "assistant", "content": "", "thinking": p},
                       "done": False} for p in split_text(self.thinking_text, 2)]
        lines += [{**head, "message": self._message(p), "done": False}
                  for p in split_text(text, self.stream_chunks) if p]
        if calls:
            lines.append({**head, "message": self._message("", tool_calls=True),
                          "done": False})
        lines.append({**head, "message": self._message(""), "done_reason": self.done_reason,
                      "done": True, **self._counts()})
        return await self._stream(request, lines)

    async def _stream(self, request: web.Request,
                      lines: list[dict[str, Any]]) -> web.StreamResponse:
        if self.stream_error:
            lines = [*lines[:1], {"error": self.stream_error}]
        return await self.send_stream(request, [_line(x) for x in lines],
                                      content_type="application/x-ndjson")

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._begin(request)
        if refusal is not None:
            return refusal
        if not isinstance(body.get("prompt", ""), str):
            return self.error(400, "prompt must be a string")
        head = {"model": body["model"], "created_at": CREATED_AT}
        if body.get("stream", True) is False:
            answer: dict[str, Any] = {**head, "response": self.reply_text, "done": True,
                                      "done_reason": self.done_reason, "context": [1, 2, 3],
                                      **self._counts()}
            if self.thinking_text:
                answer["thinking"] = self.thinking_text
            return await self.send_json(request, answer)
        lines = [{**head, "response": p, "done": False}
                 for p in split_text(self.reply_text, self.stream_chunks)]
        lines.append({**head, "response": "", "done": True, "done_reason": self.done_reason,
                      "context": [1, 2, 3], **self._counts()})
        return await self._stream(request, lines)

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._begin(request)
        if refusal is not None:
            return refusal
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return self.error(400, "input must be a string or a list of strings")
        dimension = int(body.get("dimensions") or 4)
        answer: dict[str, Any] = {
            "model": body["model"],
            "embeddings": [[round(0.01 * (i + 1) + 0.001 * d, 5) for d in range(dimension)]
                           for i in range(len(texts))],
            "total_duration": 14143917, "load_duration": 1019500}
        if self.embed_count is not None:
            answer["prompt_eval_count"] = self.embed_count
        return await self.send_json(request, answer)
