"""A stand-in Cohere v2 API server speaking the published wire format over HTTP.

    async with FakeCohere() as fake:
        fake.input_tokens, fake.output_tokens = 120, 30    # usage.billed_units
        client = cohere.AsyncClientV2(api_key="k", base_url=fake.url)

Routes (Cohere's API reference, v2): ``POST /v2/chat`` (JSON, or with ``"stream": true``
server-sent events ``message-start``, ``content-start``, ``content-delta``...,
``content-end``, ``tool-plan-delta``, ``tool-call-start|delta|end``, ``message-end``
with ``finish_reason`` and ``usage``) and ``POST /v2/embed`` (``embeddings`` by type,
``meta.billed_units``). Auth is ``Authorization: Bearer``. Errors are ``{"id",
"message"}`` with the status. Usage reports ``billed_units`` (what Cohere charges) and
``tokens`` (the raw count, larger: it includes the prompt template).

Stricter than the real API on one point, on purpose: a request field the v2 reference
does not name is refused with a 400, so a translation that sends OpenAI's names
(``top_p``, ``stop``) instead of Cohere's (``p``, ``stop_sequences``) fails loudly.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server_base import (
    FakeServer,
    FakeToolCall,
    Received,
    run_in_thread,
    split_text,
)

__all__ = ["FakeCohere", "FakeToolCall", "run_in_thread"]

CHAT_FIELDS = frozenset({
    "model", "messages", "tools", "strict_tools", "documents", "citation_options",
    "response_format", "safety_mode", "max_tokens", "stop_sequences", "temperature",
    "seed", "frequency_penalty", "presence_penalty", "k", "p", "logprobs", "tool_choice",
    "thinking", "priority", "stream"})
EMBED_FIELDS = frozenset({"model", "texts", "images", "inputs", "input_type",
                          "embedding_types", "truncate", "output_dimension", "max_tokens",
                          "priority"})
ROLES = frozenset({"system", "user", "assistant", "tool"})


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class FakeCohere(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.reply_text = "Hello from the fake Command model."
        self.thinking_text: str | None = None   # a thinking content item before the text
        self.tool_call: FakeToolCall | None = None
        self.tool_plan = "I will call the tool."  # with a tool call, instead of the text
        self.input_tokens = 11        # billed_units.input_tokens
        self.output_tokens = 9        # billed_units.output_tokens
        self.template_tokens = 200    # tokens.input_tokens counts these on top: not billed
        self.billed_units = True      # False: the answer has no billed_units at all
        self.finish_reason = "COMPLETE"
        self.stream_chunks = 3
        self.stream_error: str | None = None  # message-end carries this error, ERROR finish
        self.embed_tokens = 6         # meta.billed_units.input_tokens of /v2/embed
        self.dimension = 4
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v2/chat", self._chat), web.post("/v2/embed", self._embed)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"id": f"err-fake-{next(self._ids)}", "message": message}

    def _authorised(self, request: web.Request) -> bool:
        if self.require_api_key is None:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.require_api_key}"

    async def _admit(self, request: web.Request) -> tuple[Received, web.Response | None]:
        """Record a request; the answer it gets instead when unauthorised or when a
        scripted error is due."""
        got = await self.record(request)
        if not self._authorised(request):
            return got, self.error(401, "invalid api token")
        return got, self.take_error()

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {"tokens": {
            "input_tokens": self.input_tokens + self.template_tokens,
            "output_tokens": self.output_tokens}}
        if self.billed_units:
            usage["billed_units"] = {"input_tokens": self.input_tokens,
                                     "output_tokens": self.output_tokens}
        return usage

    def _check_chat(self, body: dict[str, Any]) -> str | None:
        unknown = sorted(set(body) - CHAT_FIELDS)
        if unknown:
            return f"invalid request: unknown field {unknown[0]!r}"
        if not isinstance(body.get("model"), str):
            return "invalid request: model is required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "invalid request: messages must not be empty"
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return "invalid request: each message needs a valid role"
            if m["role"] == "tool" and not m.get("tool_call_id"):
                return "invalid request: tool messages need a tool_call_id"
            if m["role"] == "assistant" and not (m.get("content") or m.get("tool_calls")):
                return "invalid request: message must not be empty in a turn"
        if "stream" in body and not isinstance(body["stream"], bool):
            return "invalid request: stream must be a boolean"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        got, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        body = got.body or {}
        problem = self._check_chat(body)
        if problem:
            return self.error(400, problem)
        mid = f"fake-chat-{next(self._ids)}"
        finish = "TOOL_CALL" if self.tool_call is not None else self.finish_reason
        if body.get("stream"):
            return await self.send_stream(request, self._frames(mid, finish))
        message: dict[str, Any] = {"role": "assistant"}
        if self.tool_call is not None:
            message["tool_plan"] = self.tool_plan
            message["tool_calls"] = [{"id": self.tool_call.id, "type": "function",
                                      "function": {"name": self.tool_call.name,
                                                   "arguments": self._arguments()}}]
        else:
            content: list[dict[str, Any]] = []
            if self.thinking_text:
                content.append({"type": "thinking", "thinking": self.thinking_text})
            content.append({"type": "text", "text": self.reply_text})
            message["content"] = content
        return await self.send_json(request, {"id": mid, "finish_reason": finish,
                                              "message": message, "usage": self.usage()})

    def _arguments(self) -> str:
        assert self.tool_call is not None
        return orjson.dumps(self.tool_call.arguments).decode()

    def _frames(self, mid: str, finish: str) -> list[bytes]:
        events: list[dict[str, Any]] = [{"type": "message-start", "id": mid, "delta": {
            "message": {"role": "assistant", "content": [], "tool_plan": "",
                        "tool_calls": [], "citations": []}}}]
        if self.tool_call is not None:
            events += [{"type": "tool-plan-delta", "delta": {"message": {"tool_plan": p}}}
                       for p in split_text(self.tool_plan, self.stream_chunks)]
            events.append({"type": "tool-call-start", "index": 0, "delta": {"message": {
                "tool_calls": {"id": self.tool_call.id, "type": "function",
                               "function": {"name": self.tool_call.name, "arguments": ""}}}}})
            events += [{"type": "tool-call-delta", "index": 0, "delta": {"message": {
                "tool_calls": {"function": {"arguments": p}}}}}
                for p in split_text(self._arguments(), self.stream_chunks)]
            events.append({"type": "tool-call-end", "index": 0})
        else:
            index = 0
            if self.thinking_text:
                events += self._content(index, "thinking", self.thinking_text)
                index += 1
            events += self._content(index, "text", self.reply_text)
        end: dict[str, Any] = {"finish_reason": finish, "usage": self.usage()}
        if self.stream_error:
            end = {"finish_reason": "ERROR", "error": self.stream_error, "usage": self.usage()}
        events.append({"type": "message-end", "delta": end})
        return [_event(e) for e in events]

    def _content(self, index: int, kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [{"type": "content-start", "index": index, "delta": {
            "message": {"content": {"type": kind, kind: ""}}}}]
        events += [{"type": "content-delta", "index": index, "delta": {
            "message": {"content": {kind: p}}}} for p in split_text(text, self.stream_chunks)]
        events.append({"type": "content-end", "index": index})
        return events

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        got, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        body = got.body or {}
        unknown = sorted(set(body) - EMBED_FIELDS)
        if unknown:
            return self.error(400, f"invalid request: unknown field {unknown[0]!r}")
        texts = body.get("texts")
        if not isinstance(texts, list) or not texts:
            return self.error(400, "invalid request: texts must not be empty")
        if not body.get("input_type"):
            return self.error(400, "invalid request: valid input_type must be provided "
                                   "with the provided model")
        dimension = int(body.get("output_dimension") or self.dimension)
        vectors = [[round(0.1 * (i + 1) + 0.01 * d, 4) for d in range(dimension)]
                   for i in range(len(texts))]
        types = body.get("embedding_types") or ["float"]
        embeddings: dict[str, Any] = {}
        for kind in types:
            if kind != "float":
                return self.error(400, f"the fake serves float embeddings only, not {kind}")
            embeddings["float"] = vectors
        return await self.send_json(request, {
            "id": f"fake-embed-{next(self._ids)}", "response_type": "embeddings_by_type",
            "embeddings": embeddings, "texts": texts,
            "meta": {"api_version": {"version": "2"},
                     "billed_units": {"input_tokens": self.embed_tokens}}})
