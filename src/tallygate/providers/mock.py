"""A built-in provider that answers in-process: try the SDK and proxy with no key.

``model="mock/<name>"`` answers ``mock_response`` (or a fixed sentence) in the OpenAI
wire format, with realistic usage estimated from the messages, streaming included.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import UpstreamError
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    UpstreamRequest,
)
from tallygate.providers.openai import DONE_FRAME, OpenAIStreamDecoder, upstream_error
from tallygate.providers.registry import register
from tallygate.usage import Usage

DEFAULT_REPLY = "This is a mock response from tallygate."


def _split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


class MockProvider(Provider):
    name = "mock"
    is_local = True

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = dict(params)
        body["stream"] = stream
        return UpstreamRequest(url="mock://", headers={}, body=orjson.dumps(body))

    def local_chat(self, deployment: Deployment, params: dict[str, Any]) -> bytes:
        reply = params.get("mock_response") or deployment.mock_response or DEFAULT_REPLY
        if not isinstance(reply, str):
            reply = str(reply)
        prompt = estimate_prompt_tokens(params.get("messages") or ())
        completion = estimate_text_tokens(reply)
        usage = Usage(input_tokens=prompt, output_tokens=completion).to_openai()
        ident = "chatcmpl-mock-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        model = deployment.model
        if not params.get("stream"):
            return orjson.dumps({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply}}],
                "usage": usage,
            })
        frames = []
        base = {"id": ident, "object": "chat.completion.chunk", "created": created,
                "model": model}
        pieces = _split_words(reply)
        for i, piece in enumerate(pieces):
            delta: dict[str, Any] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            frames.append({**base, "choices": [{"index": 0, "delta": delta,
                                                "finish_reason": None}]})
        frames.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        frames.append({**base, "choices": [], "usage": usage})
        return b"".join(b"data: " + orjson.dumps(f) + b"\n\n" for f in frames) + DONE_FRAME

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        return ChatResult(body=parsed, usage=Usage.from_openai(parsed.get("usage")), raw=body)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        return OpenAIStreamDecoder(include_usage)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return upstream_error(status, body, headers)


register(MockProvider())
