"""Stand-ins for the OpenAI-compatible clouds, one flavor per provider, over real HTTP.

    async with FakeCompat("deepseek") as fake:
        fake.prompt_tokens, fake.cached_tokens, fake.reasoning_tokens = 1000, 800, 30
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k")

Each flavor follows its provider's published wire format: its paths (Azure's
``/openai/deployments/{d}/...?api-version=`` and ``/openai/v1/...``, Groq's
``/openai/v1``, Fireworks' ``/inference/v1``, OpenRouter's ``/api/v1``, Perplexity's
bare ``/chat/completions``...), its auth header (Azure's ``api-key``), its usage fields
(DeepSeek's cache hit/miss counts, xAI's and Perplexity's reasoning counted beside
completion tokens, Together's top-level ``cached_tokens``, OpenRouter's ``cost``,
Perplexity's search fees and cost breakdown, Groq's ``x_groq``), its stream shapes
(Azure's first chunk with no choices and its content-filter annotations, Mistral's and
Perplexity's usage in the last content chunk, DeepSeek's ``reasoning_content`` and
keep-alive comments) and its error bodies (Mistral's and Cerebras' flat ones, Azure's
``content_filter``, DeepSeek's 402, OpenRouter's numeric codes).

The knobs count what is billed: ``completion_tokens`` are all output tokens, reasoning
included; a flavor that reports reasoning beside completion tokens subtracts it.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import orjson
from aiohttp import web

from tests.fakes.openai_media import MediaAPI
from tests.fakes.server_base import FakeServer, FakeToolCall, split_text

__all__ = ["FLAVORS", "FakeCompat", "FakeToolCall"]

Auth = Literal["bearer", "azure"]


@dataclass(frozen=True)
class Flavor:
    name: str
    prefix: str                      # what an OpenAI client's base_url adds to the host
    chat: tuple[str, ...]            # chat routes
    embeddings: tuple[str, ...] = ()
    auth: Auth = "bearer"
    flat_errors: bool = False        # {"object": "error", "message": ...} (Mistral, Cerebras)
    #: request fields the provider accepts, others refused with 422 (Mistral)
    strict_fields: frozenset[str] | None = None
    usage_in_last_chunk: bool = False  # usage rides the finish chunk, unasked
    completions: tuple[str, ...] = ()  # the legacy text completions route, if served
    extra: dict[str, Any] = field(default_factory=dict)


_MISTRAL_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
    "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
    "frequency_penalty", "n", "prediction", "parallel_tool_calls", "safe_prompt",
    "prompt_mode", "input", "encoding_format", "output_dimension"})

FLAVORS: dict[str, Flavor] = {f.name: f for f in (
    Flavor("azure", "", ("/openai/deployments/{deployment}/chat/completions",
                         "/openai/v1/chat/completions"),
           ("/openai/deployments/{deployment}/embeddings", "/openai/v1/embeddings"),
           auth="azure"),
    Flavor("azure_ai", "/models", ("/models/chat/completions", "/chat/completions"),
           ("/models/embeddings",), auth="azure"),
    Flavor("mistral", "/v1", ("/v1/chat/completions",), ("/v1/embeddings",),
           flat_errors=True, strict_fields=_MISTRAL_FIELDS, usage_in_last_chunk=True),
    Flavor("deepseek", "/beta", ("/chat/completions", "/beta/chat/completions",
                                 "/v1/chat/completions")),
    Flavor("groq", "/openai/v1", ("/openai/v1/chat/completions",)),
    Flavor("together_ai", "/v1", ("/v1/chat/completions",), ("/v1/embeddings",),
           usage_in_last_chunk=True, completions=("/v1/completions",)),
    Flavor("fireworks_ai", "/inference/v1", ("/inference/v1/chat/completions",),
           ("/inference/v1/embeddings",), completions=("/inference/v1/completions",)),
    Flavor("xai", "/v1", ("/v1/chat/completions",)),
    Flavor("openrouter", "/api/v1", ("/api/v1/chat/completions",)),
    Flavor("perplexity", "", ("/chat/completions",), usage_in_last_chunk=True),
    Flavor("cerebras", "/v1", ("/v1/chat/completions",), flat_errors=True),
    Flavor("nvidia_nim", "/v1", ("/v1/chat/completions",), ("/v1/embeddings",)),
    Flavor("hosted_vllm", "/v1", ("/v1/chat/completions",), ("/v1/embeddings",),
           completions=("/v1/completions",)),
    Flavor("lm_studio", "/v1", ("/v1/chat/completions",), ("/v1/embeddings",),
           completions=("/v1/completions",)),
)}

_FILTER_OK = {sev: {"filtered": False, "severity": "safe"}
              for sev in ("hate", "self_harm", "sexual", "violence")}


class FakeCompat(FakeServer):
    def __init__(self, flavor: str) -> None:
        super().__init__()
        self.flavor = FLAVORS[flavor]
        self.reply_text = f"Hello from the fake {flavor}."
        self.reasoning_text = ""           # DeepSeek/vLLM reasoning_content
        self.prompt_tokens = 12
        self.cached_tokens = 0
        self.completion_tokens = 7         # all output, reasoning included
        self.reasoning_tokens = 0
        self.finish_reason = "stop"
        self.tool_call: FakeToolCall | None = None
        self.stream_chunks = 3
        self.answer_model: str | None = None  # the model the answer names (Azure's)
        # provider extras
        self.sources_used = 0              # xAI live search
        self.cost: str | None = None       # OpenRouter usage.cost / xAI ticks (USD)
        self.search_context_size: str | None = "low"   # Perplexity
        self.num_search_queries = 0        # Perplexity deep research
        self.citation_tokens = 0
        self.request_cost: str | None = "0.005"
        self.x_groq_only = False           # Groq: usage only in x_groq (older streams)
        self.keep_alive = False            # DeepSeek: SSE comments while thinking
        self.content_filtered = False      # Azure: the output was filtered
        self._ids = itertools.count(1)
        # Azure OpenAI's images, audio and moderations, under the deployment's path.
        self.media = MediaAPI(self, "/openai/deployments/{deployment}",
                              auth=lambda headers: self._refuse(SimpleNamespace(
                                  headers=headers)))

    # -- addresses ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url`` (Azure: the resource root)."""
        return self.url + self.flavor.prefix

    def routes(self) -> list[web.RouteDef]:
        out = [web.post(path, self._chat) for path in self.flavor.chat]
        out += [web.post(path, self._embeddings) for path in self.flavor.embeddings]
        out += [web.post(path, self._completions) for path in self.flavor.completions]
        if self.flavor.name == "azure":
            out += self.media.routes()
        return out

    # -- errors -------------------------------------------------------------------------

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        kind = error_type or ("invalid_request_error" if status < 500 else "server_error")
        name = self.flavor.name
        if self.flavor.flat_errors:
            return {"object": "error", "message": message, "type": kind, "param": None,
                    "code": str(status) if status >= 400 else None}
        if name == "openrouter":
            return {"error": {"code": status, "message": message,
                              "metadata": {"provider_name": "fake"}}}
        if name == "azure":
            return {"error": {"code": str(status), "message": message}}
        return {"error": {"message": message, "type": kind, "param": None,
                          "code": None}}

    def fail_content_filter(self) -> None:
        """Azure's refusal of a prompt by its content filter."""
        self.fail(400)
        self.errors[-1].body = {"error": {
            "message": "The response was filtered due to the prompt triggering Azure "
                       "OpenAI's content management policy.",
            "type": None, "param": "prompt", "code": "content_filter", "status": 400,
            "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                "hate": {"filtered": True, "severity": "high"},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": False, "severity": "safe"}}}}}

    def fail_insufficient_balance(self) -> None:
        """DeepSeek's 402."""
        self.fail(402)
        self.errors[-1].body = {"error": {"message": "Insufficient Balance",
                                          "type": "unknown_error", "param": None,
                                          "code": "invalid_request_error"}}

    def _refuse(self, got: Any) -> web.Response | None:
        expected = self.require_api_key
        if expected is None:
            return None
        bearer = got.headers.get("Authorization") == f"Bearer {expected}"
        key = got.headers.get("api-key") == expected
        if bearer or (self.flavor.auth == "azure" and key):
            return None
        if self.flavor.name == "azure":
            return web.Response(status=401, content_type="application/json", body=orjson.dumps(
                {"error": {"code": "401", "message": "Access denied due to invalid "
                           "subscription key or wrong API endpoint."}}))
        return self.error(401, "Invalid API key provided.")

    # -- usage ----------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        name = self.flavor.name
        completion = self.completion_tokens
        if name in ("xai", "perplexity"):
            completion -= self.reasoning_tokens  # reasoning counted beside completion
        total = self.prompt_tokens + self.completion_tokens
        out: dict[str, Any] = {"prompt_tokens": self.prompt_tokens,
                               "completion_tokens": completion, "total_tokens": total}
        details = {"reasoning_tokens": self.reasoning_tokens}
        cached = {"cached_tokens": self.cached_tokens}
        if name == "deepseek":
            out["prompt_cache_hit_tokens"] = self.cached_tokens
            out["prompt_cache_miss_tokens"] = self.prompt_tokens - self.cached_tokens
            out["completion_tokens_details"] = details
        elif name == "together_ai":
            out["cached_tokens"] = self.cached_tokens
        elif name == "perplexity":
            out["search_context_size"] = self.search_context_size
            out["citation_tokens"] = self.citation_tokens
            out["num_search_queries"] = self.num_search_queries
            out["reasoning_tokens"] = self.reasoning_tokens
            if self.request_cost is not None or self.cost is not None:
                out["cost"] = self._perplexity_cost()
        elif name == "mistral":
            out["prompt_tokens_details"] = cached
        else:
            out["prompt_tokens_details"] = {**cached, "audio_tokens": 0}
            out["completion_tokens_details"] = {**details, "audio_tokens": 0}
        if name == "xai":
            out["prompt_tokens_details"]["text_tokens"] = self.prompt_tokens
            out["num_sources_used"] = self.sources_used
            if self.cost is not None:
                out["cost_in_usd_ticks"] = int(float(self.cost) * 10**10)
        if name == "openrouter":
            out["cost"] = float(self.cost) if self.cost is not None else 0
            out["is_byok"] = False
            out["cost_details"] = {"upstream_inference_cost": None}
        if name == "groq":
            out.update({"queue_time": 0.01, "prompt_time": 0.002, "completion_time": 0.01,
                        "total_time": 0.012})
        if name == "cerebras":
            out["time_info"] = {"queue_time": 0.0001, "total_time": 0.01}
        return out

    def _perplexity_cost(self) -> dict[str, Any]:
        cost: dict[str, Any] = {"input_tokens_cost": 0.0, "output_tokens_cost": 0.0}
        if self.request_cost is not None:
            cost["request_cost"] = float(self.request_cost)
        if self.citation_tokens:
            cost["citation_tokens_cost"] = 0.001
        if self.num_search_queries:
            cost["search_queries_cost"] = 0.005 * self.num_search_queries
        cost["total_cost"] = float(self.cost) if self.cost is not None else 0.0
        return cost

    # -- handlers -------------------------------------------------------------------------

    async def _gate(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        got = await self.record(request)
        refusal = self._refuse(got)
        if refusal is not None:
            return {}, refusal
        body = got.body or {}
        if self.flavor.name == "azure" and "/deployments/" in request.path \
                and not request.query.get("api-version"):
            return body, web.Response(status=404, content_type="application/json",
                                      body=b'{"error":{"code":"404","message":"Resource not '
                                           b'found"}}')
        strict = self.flavor.strict_fields
        if strict is not None:
            extra = sorted(set(body) - strict)
            if extra:
                detail = [{"type": "extra_forbidden", "loc": ["body", k],
                           "msg": "Extra inputs are not permitted", "input": body[k]}
                          for k in extra]
                return body, web.Response(status=422, content_type="application/json",
                                          body=orjson.dumps({
                                              "object": "error", "message": {"detail": detail},
                                              "type": "invalid_request_error", "param": None,
                                              "code": None}))
        return body, self.take_error()

    def _model(self, request: web.Request, body: dict[str, Any]) -> str:
        if self.answer_model is not None:
            return self.answer_model
        return str(body.get("model") or request.match_info.get("deployment") or "model")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        if not body.get("messages"):
            return self.error(400, "'messages' is a required property")
        model = self._model(request, body)
        cid = f"chatcmpl-{self.flavor.name}{next(self._ids)}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return await self.send_stream(request, self._frames(
                cid, model, bool(options.get("include_usage"))))
        return await self.send_json(request, self._answer(cid, model))

    def _message(self) -> tuple[dict[str, Any], str]:
        finish = "content_filter" if self.content_filtered else self.finish_reason
        message: dict[str, Any] = {"role": "assistant", "content": self.reply_text}
        if self.reasoning_text:
            message["reasoning_content"] = self.reasoning_text
        if self.tool_call is not None:
            self.tool_call.openai_message(message)
            finish = "tool_calls"
        if self.content_filtered:
            message["content"] = None
        return message, finish

    def _answer(self, cid: str, model: str) -> dict[str, Any]:
        message, finish = self._message()
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                                  "finish_reason": finish}
        out: dict[str, Any] = {"id": cid, "object": "chat.completion",
                               "created": int(time.time()), "model": model,
                               "choices": [choice], "usage": self.usage()}
        if self.flavor.name == "azure":
            out["prompt_filter_results"] = [{"prompt_index": 0,
                                             "content_filter_results": _FILTER_OK}]
            choice["content_filter_results"] = _FILTER_OK
            out["system_fingerprint"] = "fp_azure"
        if self.flavor.name == "perplexity":
            out["citations"] = ["https://example.com/a", "https://example.com/b"]
            out["search_results"] = [{"title": "A", "url": "https://example.com/a"}]
        if self.flavor.name == "openrouter":
            out["provider"] = "FakeCloud"
        return out

    def _frames(self, cid: str, model: str, include_usage: bool) -> list[bytes]:
        name = self.flavor.name
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": finish}
            if name == "azure":
                choice["content_filter_results"] = _FILTER_OK if delta.get("content") else {}
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [choice]}

        frames: list[dict[str, Any]] = []
        if name == "azure":  # the prompt's filter results come first, with no choices
            frames.append({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                           "prompt_filter_results": [{"prompt_index": 0,
                                                      "content_filter_results": _FILTER_OK}]})
        message, finish = self._message()
        if self.reasoning_text:
            frames.append(chunk({"role": "assistant", "content": None,
                                 "reasoning_content": ""}))
            frames += [chunk({"reasoning_content": p})
                       for p in split_text(self.reasoning_text, self.stream_chunks)]
        if self.tool_call is not None:
            frames += [chunk(d) for d in self.tool_call.openai_deltas(self.stream_chunks)]
        elif message.get("content"):
            frames.append(chunk({"role": "assistant", "content": ""}))
            frames += [chunk({"content": p})
                       for p in split_text(self.reply_text, self.stream_chunks)]
        last = chunk({}, finish)
        if self.flavor.usage_in_last_chunk:
            last["usage"] = self.usage()
        if name == "groq":
            last["x_groq"] = {"id": "req_fake", "usage": self.usage()}
        frames.append(last)
        if include_usage and not self.flavor.usage_in_last_chunk and not self.x_groq_only:
            usage_chunk = chunk({})
            usage_chunk["choices"], usage_chunk["usage"] = [], self.usage()
            frames.append(usage_chunk)
        out = [b"data: " + orjson.dumps(f) + b"\n\n" for f in frames]
        if self.keep_alive:
            out.insert(1, b": keep-alive\n\n")
        if name == "openrouter":
            out.insert(0, b": OPENROUTER PROCESSING\n\n")
        return [*out, b"data: [DONE]\n\n"]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """The legacy text completions: one prompt, JSON or SSE with a usage chunk."""
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        if body.get("prompt") is None:
            return self.error(400, "'prompt' is a required property")
        cid, created = f"cmpl-{self.flavor.name}{next(self._ids)}", int(time.time())

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            choices = [] if text is None else [{"text": text, "index": 0, "logprobs": None,
                                                "finish_reason": finish}]
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": self._model(request, body), "choices": choices}

        if not body.get("stream"):
            return await self.send_json(request, {**chunk(self.reply_text, self.finish_reason),
                                                  "usage": self.usage()})
        frames = [chunk(p, None) for p in split_text(self.reply_text, self.stream_chunks)]
        frames.append(chunk("", self.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            frames.append({**chunk(None, None), "usage": self.usage()})
        return await self.send_stream(request, [b"data: " + orjson.dumps(f) + b"\n\n"
                                                for f in frames] + [b"data: [DONE]\n\n"])

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        inputs = body.get("input")
        if not inputs:
            return self.error(400, "'input' is a required property")
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        data = [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1)] * 4}
                for i in range(len(items))]
        return await self.send_json(request, {
            "object": "list", "data": data, "model": self._model(request, body),
            "usage": {"prompt_tokens": self.prompt_tokens,
                      "total_tokens": self.prompt_tokens}})
