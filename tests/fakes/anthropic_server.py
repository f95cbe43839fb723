"""A stand-in Anthropic Messages API server speaking the real wire format over HTTP.

    async with FakeAnthropic() as fake:
        fake.input_tokens, fake.cache_read_tokens, fake.cache_write_tokens = 200, 800, 100
        client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="k")
        ...

Routes: POST /v1/messages, JSON or SSE (message_start, content_block_start, ping,
content_block_delta..., content_block_stop, message_delta, message_stop), and
POST /v1/messages/count_tokens. Knobs: cache writes by lifetime (``cache_write_tokens``
5-minute, ``cache_write_1h_tokens`` one hour), ``web_searches`` (server tool blocks and
``server_tool_use`` usage), a thinking block, a tool call, and ``turns``: one scripted
answer per request, in order (for agents that loop over tool calls).
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from aiohttp import web

from tests.fakes import malformed
from tests.fakes.server_base import (
    FakeServer,
    FakeToolCall,
    FakeTurn,
    Received,
    run_in_thread,
    split_text,
)

__all__ = ["FakeAnthropic", "FakeToolCall", "FakeTurn", "api_key_of", "run_in_thread"]

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


def api_key_of(got: Received) -> str | None:
    """The key a request carries: ``x-api-key``, or a bearer token (newer SDKs send that)."""
    key = got.headers.get("x-api-key")
    if key is None and got.headers.get("Authorization", "").startswith("Bearer "):
        key = got.headers["Authorization"][len("Bearer "):]
    return key


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class FakeAnthropic(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.reply_text = "Hello from the fake Claude."
        self.input_tokens = 12        # uncached input only, as Anthropic reports it
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0   # 5-minute cache writes
        self.cache_write_1h_tokens = 0
        self.output_tokens = 7
        self.web_searches = 0         # web_search server tool calls made in the answer
        self.counted_tokens: int | None = None  # count_tokens' answer (None: len/4)
        self.turns: list[FakeTurn] = []         # consumed one per messages request
        self.thinking_text: str | None = None  # a thinking block before the text
        self.thinking_tokens = 0      # reported in output_tokens_details when > 0
        self.stop_reason = "end_turn"
        self.tool_call: FakeToolCall | None = None  # a tool_use block after the text
        # Once the tool's result comes back, answer this text instead of calling again.
        self.reply_after_tool: str | None = None
        self.stream_chunks = 3
        # Newer API versions repeat input and cache counts in message_delta's usage.
        self.full_delta_usage = False
        # An ``error`` event of this type after the first text delta (then the stream ends).
        self.stream_error_type: str | None = None
        self.stream_error_message = "fake stream error"
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """What an Anthropic client takes as ``base_url`` (it adds /v1/messages)."""
        return self.url

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self._messages),
                web.post("/v1/messages/count_tokens", self._count_tokens)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"type": "error",
                "error": {"type": error_type or ERROR_TYPES.get(status, "api_error"),
                          "message": message},
                "request_id": "req_fake"}

    def usage(self, output_tokens: int | None = None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write_tokens + self.cache_write_1h_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation": {"ephemeral_5m_input_tokens": self.cache_write_tokens,
                               "ephemeral_1h_input_tokens": self.cache_write_1h_tokens},
            "output_tokens": self.output_tokens if output_tokens is None else output_tokens,
            "service_tier": "standard",
        }
        if self.web_searches:
            usage["server_tool_use"] = {"web_search_requests": self.web_searches}
        if self.thinking_tokens:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        return usage

    def _tool_answered(self, body: dict[str, Any]) -> bool:
        if self.tool_call is None or self.reply_after_tool is None:
            return False
        return any(isinstance(b, dict) and b.get("type") == "tool_result"
                   and b.get("tool_use_id") == self.tool_call.id
                   for m in body.get("messages") or () if isinstance(m.get("content"), list)
                   for b in m["content"])

    def _blocks(self, turn: FakeTurn) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thinking_text:
            blocks.append({"type": "thinking", "thinking": self.thinking_text,
                           "signature": "sig_fake"})
        for i in range(self.web_searches):
            tool_id = f"srvtoolu_fake{i + 1}"
            blocks.append({"type": "server_tool_use", "id": tool_id, "name": "web_search",
                           "input": {"query": f"fake query {i + 1}"}})
            blocks.append({"type": "web_search_tool_result", "tool_use_id": tool_id,
                           "content": [{"type": "web_search_result", "title": "A page",
                                        "url": f"https://example.com/{i + 1}",
                                        "encrypted_content": "enc_fake", "page_age": None}]})
        if turn.reply_text:
            blocks.append({"type": "text", "text": turn.reply_text})
        if turn.tool_call is not None:
            blocks.append({"type": "tool_use", "id": turn.tool_call.id,
                           "name": turn.tool_call.name, "input": turn.tool_call.arguments})
        return blocks

    async def _admit(self, request: web.Request) -> tuple[Received, web.Response | None]:
        """Record a request; the answer it gets instead when its key or its
        anthropic-version is wrong, or when a scripted error is due."""
        got = await self.record(request)
        if self.require_api_key is not None and api_key_of(got) != self.require_api_key:
            return got, self.error(401, "invalid x-api-key")
        if not got.headers.get("anthropic-version"):
            return got, self.error(400, "anthropic-version: header is required")
        return got, self.take_error()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        got, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        raw = self.take_raw()
        if raw is not None:
            return await self.send_raw(request, raw)
        body = got.body or {}
        for name in ("model", "messages", "max_tokens"):
            if name not in body:
                return self.error(400, f"{name}: Field required")
        extra = set(body.get("metadata") or {}) - {"user_id"}
        if extra:  # the Messages API takes no other metadata
            return self.error(400, f"metadata.{sorted(extra)[0]}: Extra inputs are not "
                                   "permitted")
        mid = f"msg_fake{next(self._ids)}"
        if self.turns:
            turn = self.turns.pop(0)
        elif self._tool_answered(body):  # the tool's result came back: answer, done
            turn = FakeTurn(self.reply_after_tool or "")
        else:
            turn = FakeTurn(self.reply_text, self.tool_call)
        stop_reason = "tool_use" if turn.tool_call is not None else self.stop_reason
        blocks = self._blocks(turn)
        message = {
            "id": mid, "type": "message", "role": "assistant", "model": body["model"],
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": self.usage(),
        }
        if self.malformed:
            return await self.send_raw(request, malformed.anthropic_messages(
                self.malformed, bool(body.get("stream")),
                self._frames(mid, body["model"], stop_reason, blocks), message))
        if body.get("stream"):
            return await self.send_stream(request,
                                          self._frames(mid, body["model"], stop_reason, blocks))
        return await self.send_json(request, message)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        got, refusal = await self._admit(request)
        if refusal is not None:
            return refusal
        body = got.body or {}
        for name in ("model", "messages"):
            if name not in body:
                return self.error(400, f"{name}: Field required")
        for name in ("max_tokens", "stream", "metadata"):
            if name in body:
                return self.error(400, f"{name}: Extra inputs are not permitted")
        count = self.counted_tokens
        if count is None:
            count = len(orjson.dumps([body.get("system"), body["messages"],
                                      body.get("tools")])) // 4
        return await self.send_json(request, {"input_tokens": count})

    def _frames(self, mid: str, model: str, stop_reason: str,
                blocks: list[dict[str, Any]]) -> list[bytes]:
        # message_start reports the input side and a token or so of output so far; the
        # searches are counted at the end.
        start_usage = self.usage(output_tokens=min(1, self.output_tokens))
        start_usage.pop("server_tool_use", None)
        events: list[dict[str, Any]] = [{"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": start_usage}}]
        for index, block in enumerate(blocks):
            kind = block["type"]
            if kind == "web_search_tool_result":  # sent whole, in its start event
                events.append({"type": "content_block_start", "index": index,
                               "content_block": block})
                events.append({"type": "content_block_stop", "index": index})
                continue
            if kind == "text":
                start: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p}
                          for p in split_text(block["text"], self.stream_chunks)]
            elif kind == "thinking":
                start = {"type": "thinking", "thinking": ""}
                deltas = [{"type": "thinking_delta", "thinking": block["thinking"]},
                          {"type": "signature_delta", "signature": block["signature"]}]
            else:  # tool_use and server_tool_use
                start = {"type": kind, "id": block["id"], "name": block["name"],
                         "input": {}}
                args = orjson.dumps(block["input"]).decode()
                deltas = [{"type": "input_json_delta", "partial_json": ""}]
                deltas += [{"type": "input_json_delta", "partial_json": p}
                           for p in split_text(args, self.stream_chunks)]
            events.append({"type": "content_block_start", "index": index,
                           "content_block": start})
            if index == 0:
                events.append({"type": "ping"})
            for delta in deltas:
                events.append({"type": "content_block_delta", "index": index, "delta": delta})
                if self.stream_error_type and delta["type"] == "text_delta":
                    events.append({"type": "error", "error": {
                        "type": self.stream_error_type,
                        "message": self.stream_error_message}})
                    return [_event(e) for e in events]
            events.append({"type": "content_block_stop", "index": index})
        if self.full_delta_usage:
            delta_usage = self.usage()
            delta_usage.pop("service_tier")
        else:
            delta_usage = {"output_tokens": self.output_tokens}
            if self.web_searches:  # counted when the searches are done, at the end
                delta_usage["server_tool_use"] = {"web_search_requests": self.web_searches}
            if self.thinking_tokens:
                delta_usage["output_tokens_details"] = {"thinking_tokens": self.thinking_tokens}
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                       "usage": delta_usage})
        events.append({"type": "message_stop"})
        return [_event(e) for e in events]
