"""OpenAI's Responses API for the fake OpenAI server: ``POST /v1/responses`` (JSON or SSE),
``GET`` and ``DELETE /v1/responses/{id}``, written from OpenAI's API reference.

The answer is built from the ``FakeOpenAI`` knobs (``reply_text``, ``prompt_tokens``,
``cached_tokens``, ``completion_tokens``, ``reasoning_tokens``, ``tool_call``,
``stream_chunks``) plus ``web_searches`` (web_search_call items before the answer) and
``reasoning_summary`` (a reasoning item first). A stream sends the events in OpenAI's
order, each with its ``sequence_number``. ``previous_response_id`` must name a response
this server stored (else 400 ``previous_response_not_found``, as OpenAI answers).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tests.fakes.server_base import split_text

if TYPE_CHECKING:
    from tests.fakes.openai_server import FakeOpenAI


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponsesAPI:
    """The Responses routes of one ``FakeOpenAI``; its stored responses by id."""

    def __init__(self, fake: FakeOpenAI) -> None:
        self.fake = fake
        self.stored: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):04d}" + "0" * 24

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/responses", self.create),
                web.get("/v1/responses/{id}", self.retrieve),
                web.delete("/v1/responses/{id}", self.delete)]

    # -- the answer -----------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        f = self.fake
        return {"input_tokens": f.prompt_tokens,
                "input_tokens_details": {"cached_tokens": f.cached_tokens},
                "output_tokens": f.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": f.reasoning_tokens},
                "total_tokens": f.prompt_tokens + f.completion_tokens}

    def _answers_tool(self, body: dict[str, Any]) -> bool:
        """Whether this turn calls the tool: not once its output came back."""
        call = self.fake.tool_call
        if call is None:
            return False
        items = body.get("input") if isinstance(body.get("input"), list) else []
        return not any(isinstance(i, dict) and i.get("type") == "function_call_output"
                       and i.get("call_id") == call.id for i in items)

    def output_items(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        f = self.fake
        items: list[dict[str, Any]] = []
        if f.reasoning_summary is not None:
            items.append({"id": self._id("rs"), "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": f.reasoning_summary}]})
        for n in range(f.web_searches):
            items.append({"id": self._id("ws"), "type": "web_search_call",
                          "status": "completed",
                          "action": {"type": "search", "query": f"fake query {n + 1}"}})
        if self._answers_tool(body):
            call = f.tool_call
            assert call is not None
            items.append({"id": self._id("fc"), "type": "function_call",
                          "status": "completed", "call_id": call.id, "name": call.name,
                          "arguments": orjson.dumps(call.arguments).decode()})
        else:
            items.append({"id": self._id("msg"), "type": "message", "status": "completed",
                          "role": "assistant", "content": [{
                              "type": "output_text", "text": f.reply_text,
                              "annotations": [], "logprobs": []}]})
        return items

    def response(self, body: dict[str, Any], rid: str, status: str,
                 output: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        text = body.get("text") if isinstance(body.get("text"), dict) else {}
        return {
            "id": rid, "object": "response", "created_at": int(time.time()),
            "status": status, "background": False, "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None,
            "model": str(body.get("model")), "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, **text},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_logprobs": 0, "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"), "usage": usage,
            "user": body.get("user"), "metadata": body.get("metadata") or {},
        }

    # -- routes ---------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        f = self.fake
        body, refusal = await f._gate(request)
        if refusal is not None:
            return refusal
        if not f.responses_enabled:
            return f.error(404, "Not Found", "invalid_request_error")
        if not body.get("model") or body.get("input") is None:
            return f.error(400, "Missing required parameter: 'input'.")
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return web.Response(status=400, content_type="application/json", body=orjson.dumps(
                {"error": {"message": f"Previous response with id '{previous}' not found.",
                           "type": "invalid_request_error", "param": "previous_response_id",
                           "code": "previous_response_not_found"}}))
        rid = self._id("resp")
        output = self.output_items(body)
        final = self.response(body, rid, "completed", output, self.usage())
        if body.get("store", True) is not False:
            self.stored[rid] = final
        if body.get("stream"):
            return await f.send_stream(request, self.frames(body, rid, output, final))
        return await f.send_json(request, final)

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        _, refusal = await self.fake._gate(request)
        if refusal is not None:
            return refusal
        stored = self.stored.get(request.match_info["id"])
        if stored is None:
            return self.fake.error(404, "Response not found")
        return await self.fake.send_json(request, stored)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        _, refusal = await self.fake._gate(request)
        if refusal is not None:
            return refusal
        rid = request.match_info["id"]
        if self.stored.pop(rid, None) is None:
            return self.fake.error(404, "Response not found")
        return await self.fake.send_json(request, {"id": rid, "object": "response.deleted",
                                                   "deleted": True})

    # -- the stream -----------------------------------------------------------------

    def frames(self, body: dict[str, Any], rid: str, output: list[dict[str, Any]],
               final: dict[str, Any]) -> list[bytes]:
        seq = itertools.count()
        pieces = self.fake.stream_chunks

        def ev(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **fields})

        started = self.response(body, rid, "in_progress", [], None)
        frames = [ev("response.created", response=started),
                  ev("response.in_progress", response=started)]
        for index, item in enumerate(output):
            kind = item["type"]
            at = {"output_index": index}
            if kind == "message":
                text = item["content"][0]["text"]
                empty = {**item, "status": "in_progress", "content": []}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                where = {**at, "item_id": item["id"], "content_index": 0}
                frames.append(ev("response.output_item.added", item=empty, **at))
                frames.append(ev("response.content_part.added", part=part, **where))
                frames += [ev("response.output_text.delta", delta=p, logprobs=[], **where)
                           for p in split_text(text, pieces)]
                frames.append(ev("response.output_text.done", text=text, logprobs=[], **where))
                frames.append(ev("response.content_part.done", part=item["content"][0],
                                 **where))
            elif kind == "function_call":
                args = item["arguments"]
                frames.append(ev("response.output_item.added",
                                 item={**item, "status": "in_progress", "arguments": ""}, **at))
                frames += [ev("response.function_call_arguments.delta", item_id=item["id"],
                              delta=p, **at) for p in split_text(args, pieces)]
                frames.append(ev("response.function_call_arguments.done", item_id=item["id"],
                                 arguments=args, **at))
            elif kind == "web_search_call":
                frames.append(ev("response.output_item.added",
                                 item={**item, "status": "in_progress"}, **at))
                for phase in ("in_progress", "searching", "completed"):
                    frames.append(ev(f"response.web_search_call.{phase}", item_id=item["id"],
                                     **at))
            elif kind == "reasoning":
                summary = item["summary"][0]
                where = {**at, "item_id": item["id"], "summary_index": 0}
                frames.append(ev("response.output_item.added", item={**item, "summary": []},
                                 **at))
                frames.append(ev("response.reasoning_summary_part.added",
                                 part={"type": "summary_text", "text": ""}, **where))
                frames.append(ev("response.reasoning_summary_text.delta",
                                 delta=summary["text"], **where))
                frames.append(ev("response.reasoning_summary_text.done",
                                 text=summary["text"], **where))
                frames.append(ev("response.reasoning_summary_part.done", part=summary,
                                 **where))
            frames.append(ev("response.output_item.done", item=item, **at))
        frames.append(ev("response.completed", response=final))
        return frames
