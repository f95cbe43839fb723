"""Render a translated call in the Responses API's shape: the Response object from a chat
answer, and the Responses stream events from chat chunks.

Usage in both comes from the billed ``UsageEvent`` (disjoint buckets), so what a client
reads is what Lago is sent: ``input_tokens`` counts all input, cached included, with
``input_tokens_details.cached_tokens`` (cache reads) and ``cache_write_tokens``;
``output_tokens_details.reasoning_tokens`` is a part of ``output_tokens``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.doors.responses_request import ResponsesRequest
from tallygate.usage import Usage

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cache_read_tokens,
                                     "cache_write_tokens": usage.cache_write_all_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


def base_response(rq: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
    """The Response object's fields that echo the request, status in_progress."""
    body = rq.body
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "background": False, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"), "metadata": body.get("metadata") or {},
        "model": model, "output": [], "parallel_tool_calls": body.get("parallel_tool_calls",
                                                                       True),
        "previous_response_id": rq.previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"), "store": rq.store,
        "temperature": body.get("temperature"),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p"), "truncation": body.get("truncation", "disabled"),
        "usage": None, "user": body.get("user"),
    }


def _finish(response: dict[str, Any], finish_reason: object, usage: Usage) -> dict[str, Any]:
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["completed_at"] = int(time.time())
    response["usage"] = usage_dict(usage)
    return response


def _function_call(call_id: str, name: str, arguments: str, status: str,
                   namespaced: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    item: dict[str, Any] = {"id": new_id("fc"), "type": "function_call", "status": status,
                            "call_id": call_id, "name": name, "arguments": arguments}
    if name in namespaced:
        item["namespace"], item["name"] = namespaced[name]
    return item


def _message(text: str, refusal: str | None, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [],
                        "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"id": new_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": content}


def from_chat(base: dict[str, Any], answer: Mapping[str, Any], usage: Usage,
              namespaced: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The finished Response for a chat.completion answer and the billed usage."""
    choices = answer.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in _INCOMPLETE else "completed"
    output: list[dict[str, Any]] = []
    if (isinstance(text, str) and text) or refusal:
        output.append(_message(text if isinstance(text, str) else "", refusal, status))
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") or {}
        output.append(_function_call(str(call.get("id") or new_id("call")),
                                     str(function.get("name") or ""),
                                     str(function.get("arguments") or ""), "completed",
                                     namespaced))
    response = dict(base)
    response["output"] = output
    return _finish(response, finish, usage)


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ResponseStreamEncoder:
    """Responses stream events from OpenAI chat chunks, numbered from 0.

    ``start`` (response.created, response.in_progress), ``feed`` per chunk (an output
    message with its output_text part, or function_call items with their argument
    deltas), ``end`` with the billed usage (the .done events, then response.completed
    or response.incomplete). ``final`` is the finished Response after ``end``.
    """

    def __init__(self, base: dict[str, Any], namespaced: Mapping[str, tuple[str, str]]) -> None:
        self.base = base
        self.namespaced = namespaced
        self.final: dict[str, Any] | None = None
        self._seq = 0
        self._output: list[dict[str, Any]] = []
        self._message: int | None = None    # output index of the open message
        self._text: list[str] = []
        self._calls: dict[int, int] = {}    # chat tool_calls index -> output index
        self._open_calls: list[int] = []
        self._finish: object = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        frame = _sse({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return frame

    def start(self) -> bytes:
        return (self._event("response.created", response=self.base)
                + self._event("response.in_progress", response=self.base))

    def _open_message(self) -> list[bytes]:
        item = _message("", None, "in_progress")
        self._message = len(self._output)
        self._output.append(item)
        self._text = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self._event("response.output_item.added", output_index=self._message,
                            item=item),
                self._event("response.content_part.added", output_index=self._message,
                            item_id=item["id"], content_index=0, part=part)]

    def _close_message(self) -> list[bytes]:
        if self._message is None:
            return []
        index, self._message = self._message, None
        item = self._output[index]
        text = "".join(self._text)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"] = [part]
        item["status"] = "incomplete" if self._finish in _INCOMPLETE else "completed"
        where = {"output_index": index, "item_id": item["id"], "content_index": 0}
        return [self._event("response.output_text.done", text=text, logprobs=[], **where),
                self._event("response.content_part.done", part=part, **where),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _close_calls(self) -> list[bytes]:
        out: list[bytes] = []
        for index in self._open_calls:
            item = self._output[index]
            item["status"] = "completed"
            out.append(self._event("response.function_call_arguments.done", output_index=index,
                                   item_id=item["id"], arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        self._open_calls = []
        return out

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._message is None:
                    out += self._open_message()
                assert self._message is not None
                self._text.append(text)
                out.append(self._event("response.output_text.delta",
                                       output_index=self._message,
                                       item_id=self._output[self._message]["id"],
                                       content_index=0, delta=text, logprobs=[]))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _call_delta(self, call: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        key = call.get("index", 0)
        index = self._calls.get(key)
        if index is None:
            out += self._close_message()
            item = _function_call(str(call.get("id") or new_id("call")),
                                  str(function.get("name") or ""), "", "in_progress",
                                  self.namespaced)
            index = self._calls[key] = len(self._output)
            self._output.append(item)
            self._open_calls.append(index)
            out.append(self._event("response.output_item.added", output_index=index,
                                   item=dict(item)))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item = self._output[index]
            item["arguments"] += arguments
            out.append(self._event("response.function_call_arguments.delta",
                                   output_index=index, item_id=item["id"], delta=arguments))
        return out

    def end(self, usage: Usage) -> bytes:
        out = self._close_message() + self._close_calls()
        response = dict(self.base)
        response["output"] = self._output
        self.final = _finish(response, self._finish, usage)
        kind = "response.completed" if self.final["status"] == "completed" \
            else "response.incomplete"
        out.append(self._event(kind, response=self.final))
        return b"".join(out)

    def error(self, code: str, message: str) -> bytes:
        return self._event("error", code=code, message=message, param=None)
