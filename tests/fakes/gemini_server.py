"""A stand-in Gemini API (Google AI Studio) speaking the published wire format over HTTP.

    async with FakeGemini() as fake:
        fake.script.prompt_tokens, fake.script.cached_tokens = 1000, 800
        client = genai.Client(api_key="k", http_options={"base_url": fake.url})
        ...

Routes (from Google's generateContent reference): ``POST /v1beta/models/{model}:
generateContent``, ``:streamGenerateContent`` (``?alt=sse``: SSE events separated by
CRLF CRLF, as Google sends them; without it one JSON array), ``:embedContent``,
``:batchEmbedContents``, ``:countTokens`` (``contents`` or a whole
``generateContentRequest``; ``totalTokens`` counted as text / 4). The key goes in
``x-goog-api-key`` (or ``?key=``): a missing key
is 403 PERMISSION_DENIED, a wrong one 400 INVALID_ARGUMENT (API_KEY_INVALID), as Google
answers. Bodies are checked as Google checks them: unknown fields (in either the
camelCase or the snake_case JSON names), empty contents or parts, roles other than
user / model, function schemas outside Gemini's Schema subset are 400s naming the field.

``GeminiScript`` (``fake.script``) sets the answer; the Vertex stand-in reuses it.
``fake.turns`` (a list of ``FakeTurn``), when set, script the next answers' text and tool call
one request each (an agent's turns), the rest of the script unchanged.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server_base import FakeServer, FakeToolCall, FakeTurn, Received, split_text

__all__ = ["FakeGemini", "FakeToolCall", "GeminiScript", "google_error_body"]

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

_BODY_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                "safetySettings", "cachedContent", "labels", "model"}
_CONFIG_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                  "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed",
                  "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
                  "thinkingConfig", "responseModalities", "mediaResolution", "speechConfig",
                  "audioTimestamp", "enableEnhancedCivicAnswers", "imageConfig"}
_PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
                "thought", "thoughtSignature", "executableCode", "codeExecutionResult",
                "videoMetadata", "partMetadata", "mediaResolution"}
_SCHEMA_FIELDS = {"type", "format", "title", "description", "nullable", "enum", "maxItems",
                  "minItems", "properties", "required", "minProperties", "maxProperties",
                  "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
                  "default", "items", "minimum", "maximum"}
_SCHEMA_TYPES = {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"}


def google_error_body(status: int, message: str, *,
                      details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Google's error shape ``{"error": {"code", "message", "status"}}``."""
    err: dict[str, Any] = {"code": status, "message": message,
                           "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


def camel(name: str) -> str:
    """Google's JSON takes proto field names in snake_case or lowerCamelCase alike."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _fields(obj: Any, known: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadRequest(f"Invalid value at '{where}', expected an object")
    out = {}
    for key, value in obj.items():
        name = camel(key)
        if name not in known:
            raise BadRequest(f'Invalid JSON payload received. Unknown name "{key}" at '
                             f"'{where}': Cannot find field.")
        out[name] = value
    return out


def check_schema(schema: Any, where: str) -> None:
    s = _fields(schema, _SCHEMA_FIELDS, where)
    kind = s.get("type")
    if kind is not None and str(kind).upper() not in _SCHEMA_TYPES:
        raise BadRequest(f"Invalid value at '{where}.type' ({kind})")
    if "enum" in s and not all(isinstance(v, str) for v in s["enum"]):
        raise BadRequest(f"Invalid value at '{where}.enum', expected strings")
    if str(kind).upper() == "OBJECT" and "properties" in s and not s["properties"]:
        raise BadRequest(f"{where}.properties: should be non-empty for OBJECT type")
    for name, sub in (s.get("properties") or {}).items():
        check_schema(sub, f"{where}.properties[{name}]")
    if "items" in s:
        check_schema(s["items"], f"{where}.items")
    for i, sub in enumerate(s.get("anyOf") or ()):
        check_schema(sub, f"{where}.any_of[{i}]")


def check_generate_body(body: dict[str, Any] | None) -> dict[str, Any]:
    """The request checked as Google checks it; returns it with camelCase top-level and
    generationConfig names."""
    b = _fields(body or {}, _BODY_FIELDS, "")
    contents = b.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        c = _fields(content, {"role", "parts"}, f"contents[{i}]")
        if c.get("role", "user") not in ("user", "model", "function"):
            raise BadRequest(f"Please use a valid role: user, model. (contents[{i}])")
        parts = c.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadRequest(f"* GenerateContentRequest.contents[{i}].parts: contents.parts "
                             "must not be empty.")
        for j, part in enumerate(parts):
            p = _fields(part, _PART_FIELDS, f"contents[{i}].parts[{j}]")
            if not p:
                raise BadRequest(f"contents[{i}].parts[{j}]: a part needs data")
    if "systemInstruction" in b:
        system = _fields(b["systemInstruction"], {"role", "parts"}, "system_instruction")
        if not system.get("parts"):
            raise BadRequest("system_instruction.parts must not be empty")
    for i, tool in enumerate(b.get("tools") or ()):
        t = _fields(tool, {"functionDeclarations", "googleSearch", "codeExecution",
                           "urlContext", "googleSearchRetrieval"}, f"tools[{i}]")
        for j, decl in enumerate(t.get("functionDeclarations") or ()):
            where = f"tools[{i}].function_declarations[{j}]"
            d = _fields(decl, {"name", "description", "parameters", "parametersJsonSchema",
                               "response", "responseJsonSchema", "behavior"}, where)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}", str(d.get("name", ""))):
                raise BadRequest(f"* {where}.name: Invalid function name.")
            if "parameters" in d:
                check_schema(d["parameters"], f"{where}.parameters")
    config = _fields(b.get("generationConfig") or {}, _CONFIG_FIELDS, "generation_config")
    if "responseSchema" in config:
        check_schema(config["responseSchema"], "generation_config.response_schema")
    b["generationConfig"] = config
    return b


@dataclass
class GeminiScript:
    """What the next answers say. Counts are what Google reports: ``prompt_tokens``
    includes ``cached_tokens``; ``thoughts_tokens`` and ``tool_use_prompt_tokens`` are
    outside the prompt and candidate counts."""

    reply_text: str = "Hello from the fake Gemini."
    prompt_tokens: int = 12
    cached_tokens: int = 0
    candidates_tokens: int = 7
    thoughts_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    thought_text: str | None = None       # a thought part, sent when includeThoughts
    tool_call: FakeToolCall | None = None  # a functionCall part after the text
    thought_signature: str | None = None   # on the functionCall part (Gemini 3)
    require_signature: str | None = None   # 400 unless history's calls carry this one
    finish_reason: str = "STOP"
    block_reason: str | None = None        # promptFeedback.blockReason, no candidates
    stream_chunks: int = 3
    model_version: str | None = None
    embedding_dim: int = 4
    embed_usage: bool = True               # usageMetadata in embedding answers
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def usage(self, candidates: int | None = None) -> dict[str, Any]:
        cands = self.candidates_tokens if candidates is None else candidates
        meta: dict[str, Any] = {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": cands,
            "totalTokenCount": (self.prompt_tokens + cands + self.thoughts_tokens
                                + self.tool_use_prompt_tokens),
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": self.prompt_tokens}],
        }
        if self.cached_tokens:
            meta["cachedContentTokenCount"] = self.cached_tokens
            meta["cacheTokensDetails"] = [{"modality": "TEXT",
                                           "tokenCount": self.cached_tokens}]
        if self.thoughts_tokens:
            meta["thoughtsTokenCount"] = self.thoughts_tokens
        if self.tool_use_prompt_tokens:
            meta["toolUsePromptTokenCount"] = self.tool_use_prompt_tokens
        return meta

    def check_signatures(self, body: dict[str, Any]) -> None:
        if self.require_signature is None:
            return
        for content in body["contents"]:
            for part in content.get("parts") or ():
                if "functionCall" in part or "function_call" in part:
                    got = part.get("thoughtSignature") or part.get("thought_signature")
                    if got != self.require_signature:
                        raise BadRequest("Function call is missing a thought_signature in "
                                         "functionCall parts.")

    def _parts(self, include_thoughts: bool) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self.thought_text and include_thoughts:
            parts.append({"text": self.thought_text, "thought": True})
        if self.reply_text:
            parts.append({"text": self.reply_text})
        if self.tool_call is not None:
            call: dict[str, Any] = {"functionCall": {"name": self.tool_call.name,
                                                     "args": self.tool_call.arguments}}
            if self.thought_signature:
                call["thoughtSignature"] = self.thought_signature
            parts.append(call)
        return parts

    def _answers(self, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
        """The answer as stream chunks (one chunk for a plain answer)."""
        config = body["generationConfig"]
        include = bool((config.get("thinkingConfig") or {}).get("includeThoughts")
                       or (config.get("thinkingConfig") or {}).get("include_thoughts"))
        rid = f"resp-fake-{next(self._ids)}"
        head = {"modelVersion": self.model_version or model, "responseId": rid}
        if self.block_reason:
            return [{"promptFeedback": {"blockReason": self.block_reason, "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                 "blocked": True}]},
                "usageMetadata": {"promptTokenCount": self.prompt_tokens,
                                  "totalTokenCount": self.prompt_tokens}, **head}]
        n = int(config.get("candidateCount") or 1)
        if self.finish_reason == "SAFETY":
            return [{"candidates": [{"index": i, "finishReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH",
                 "blocked": True}]} for i in range(n)],
                "usageMetadata": self.usage(0), **head}]
        parts = self._parts(include)
        return [{"candidates": [{"index": i, "content": {"role": "model", "parts": parts},
                                 "finishReason": self.finish_reason} for i in range(n)],
                 "usageMetadata": self.usage(), **head}]

    def answer(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return self._answers(body, model)[0]

    def stream(self, body: dict[str, Any], model: str) -> list[dict[str, Any]]:
        """Chunks as Google streams them: text in pieces, each chunk carrying the usage
        so far (cumulative), the function call and finishReason on the last."""
        whole = self._answers(body, model)[0]
        if ("candidates" not in whole or not self.reply_text
                or "content" not in whole["candidates"][0]):
            return [whole]
        candidate = whole["candidates"][0]
        parts = candidate["content"]["parts"]
        texts = split_text(self.reply_text, self.stream_chunks)
        others = [p for p in parts if p.get("text") != self.reply_text]
        thoughts = [p for p in others if p.get("thought")]
        calls = [p for p in others if not p.get("thought")]
        chunks = []
        for k, piece in enumerate(texts):
            last = k == len(texts) - 1
            chunk_parts = (thoughts if k == 0 else []) + [{"text": piece}]
            if last:
                chunk_parts += calls
            cand: dict[str, Any] = {"index": 0,
                                    "content": {"role": "model", "parts": chunk_parts}}
            if last:
                cand["finishReason"] = candidate["finishReason"]
            so_far = self.candidates_tokens if last else max(
                1, self.candidates_tokens * (k + 1) // (len(texts) + 1))
            chunks.append({"candidates": [cand], "usageMetadata": self.usage(so_far),
                           "modelVersion": whole["modelVersion"],
                           "responseId": whole["responseId"]})
        return chunks

    def embeddings(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors = [[round(0.1 * (i + 1) + 0.01 * j, 4) for j in range(self.embedding_dim)]
                   for i in range(len(texts))]
        return vectors, sum(max(1, len(t) // 4) for t in texts)


def sse_frames(chunks: list[dict[str, Any]]) -> list[bytes]:
    # Google ends each event with CRLF CRLF.
    return [b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in chunks]


# A 1x1 PNG, base64, for Imagen's predictions.
IMAGEN_PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
              "AAAABJRU5ErkJggg==")


def imagen_predict(body: dict[str, Any] | None, filtered: int) -> web.Response:
    """Imagen's ``:predict``: ``instances[0].prompt``, ``parameters.sampleCount``
    images (the first ``filtered`` of them filtered, as Google's RAI filter
    answers: a reason, no bytes)."""
    b = _fields(body or {}, {"instances", "parameters"}, "request")
    instances = b.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(
            instances[0], dict) or not isinstance(instances[0].get("prompt"), str):
        raise BadRequest("* PredictRequest.instances[0].prompt: a prompt is required")
    params = _fields(b.get("parameters") or {}, {
        "sampleCount", "aspectRatio", "negativePrompt", "personGeneration", "seed",
        "safetySetting", "language", "outputOptions", "includeRaiReason"}, "parameters")
    count = int(params.get("sampleCount") or 4)
    if not 1 <= count <= 4:
        raise BadRequest("* parameters.sampleCount: must be between 1 and 4")
    if params.get("aspectRatio") not in (None, "1:1", "3:4", "4:3", "9:16", "16:9"):
        raise BadRequest("* parameters.aspectRatio: unsupported aspect ratio")
    predictions: list[dict[str, Any]] = []
    for i in range(count):
        if i < filtered:
            predictions.append({"raiFilteredReason": "filtered by the safety filter"})
        else:
            predictions.append({"bytesBase64Encoded": IMAGEN_PNG, "mimeType": "image/png"})
    return web.json_response({"predictions": predictions})


class FakeGemini(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.script = GeminiScript()
        self.turns: list[FakeTurn] = []

    @property
    def base_url(self) -> str:
        """What tallygate's gemini ``api_base`` takes (the version included)."""
        return self.url + "/v1beta"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1beta/models/{target}", self._models)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        details = None
        if status == 429:
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": "17s"}]
        return google_error_body(status, message, details=details)

    def _key_refusal(self, request: web.Request, got: Received) -> web.Response | None:
        key = got.headers.get("x-goog-api-key") or request.query.get("key")
        if self.require_api_key is None:
            return None
        if not key:
            return self.error(403, "Method doesn't allow unregistered callers (callers "
                              "without established identity). Please use API Key or other "
                              "form of API consumer identity to call this API.")
        if key != self.require_api_key:
            return web.json_response(google_error_body(
                400, "API key not valid. Please pass a valid API key.", details=[{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]), status=400)
        return None

    async def _models(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        refusal = self._key_refusal(request, got)
        if refusal is not None:
            return refusal
        scripted = self.take_error()
        if scripted is not None:
            return scripted
        model, _, method = request.match_info["target"].partition(":")
        try:
            if method in ("generateContent", "streamGenerateContent"):
                return await self.generate(request, got.body, model, method)
            if method in ("embedContent", "batchEmbedContents"):
                return self._embed(got.body, model, method)
            if method == "countTokens":
                return self._count(got.body, model)
        except BadRequest as exc:
            return self.error(400, exc.message)
        return self.error(404, f"Method {method!r} not found for models/{model}.")

    async def generate(self, request: web.Request, raw: dict[str, Any] | None, model: str,
                       method: str) -> web.StreamResponse:
        body = check_generate_body(raw)
        self.script.check_signatures(body)
        if self.turns:
            turn = self.turns.pop(0)
            self.script.reply_text, self.script.tool_call = turn.reply_text, turn.tool_call
        if method == "generateContent":
            return await self.send_json(request, self.script.answer(body, model))
        chunks = self.script.stream(body, model)
        if request.query.get("alt") == "sse":
            return await self.send_stream(request, sse_frames(chunks))
        return web.Response(body=orjson.dumps(chunks), content_type="application/json")

    def _count(self, body: dict[str, Any] | None, model: str) -> web.Response:
        b = _fields(body or {}, {"contents", "generateContentRequest"}, "")
        if "generateContentRequest" in b:
            inner = _fields(b["generateContentRequest"], _BODY_FIELDS, "generate_content_request")
            if inner.get("model") != f"models/{model}":
                raise BadRequest("generate_content_request.model must be models/" + model)
            request = check_generate_body({k: v for k, v in inner.items() if k != "model"})
        else:
            request = check_generate_body({"contents": b.get("contents")})
        text = orjson.dumps(request.get("contents")) + orjson.dumps(
            request.get("systemInstruction") or {}) + orjson.dumps(request.get("tools") or [])
        total = max(1, len(text) // 4)
        return web.json_response({"totalTokens": total, "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": total}]})

    def _embed(self, body: dict[str, Any] | None, model: str, method: str) -> web.Response:
        b = body or {}
        if method == "embedContent":
            requests = [b]
        else:
            requests = b.get("requests") or []
            if not requests:
                raise BadRequest("* BatchEmbedContentsRequest.requests: is empty")
        texts = []
        for i, one in enumerate(requests):
            r = _fields(one, {"model", "content", "taskType", "title",
                              "outputDimensionality"}, f"requests[{i}]")
            if method == "batchEmbedContents" and r.get("model") != f"models/{model}":
                raise BadRequest(f"requests[{i}].model must be models/{model}")
            parts = (r.get("content") or {}).get("parts") or []
            if not parts:
                raise BadRequest(f"requests[{i}].content.parts must not be empty")
            texts.append("".join(str(p.get("text", "")) for p in parts))
        vectors, tokens = self.script.embeddings(texts)
        answer: dict[str, Any]
        if method == "embedContent":
            answer = {"embedding": {"values": vectors[0]}}
        else:
            answer = {"embeddings": [{"values": v} for v in vectors]}
        if self.script.embed_usage:
            answer["usageMetadata"] = {"promptTokenCount": tokens, "totalTokenCount": tokens}
        return web.json_response(answer)
