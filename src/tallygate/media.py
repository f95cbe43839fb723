"""Calls billed in units other than chat tokens: images, audio, rerank, moderation.

One place builds each upstream request (OpenAI's wire format: JSON, or multipart for
uploads) and reads the unit it is billed in from the answer; both the SDK
(``image_generation``, ``transcription``, ``speech``, ``rerank``, ``moderation``) and
the proxy's doors run them through ``call``, so a call is billed the same whichever
way it came. Units: images per image by size and quality, or tokens for token-priced
image models; transcriptions per second of audio or per token; speech per character;
rerank per search unit (Cohere) or per token (Jina, Voyage); moderation per token
(estimated: OpenAI does not report it, and prices it at zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tallygate.engine import (
    CallContext,
    Recorder,
    authorized_post,
    failure_event,
    make_event,
)
from tallygate.errors import BadRequestError, TallygateError, UpstreamError
from tallygate.estimate import estimate_text_tokens
from tallygate.event import CallKind, UsageEvent
from tallygate.image_prices import image_variant
from tallygate.multipart import FilePart, FormBody, FormValue, encode_form
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider
from tallygate.usage import Usage, request_counts

# Without a reported duration, an upload's seconds are estimated at 128 kbit/s.
_ESTIMATED_BYTES_PER_SECOND = 16_000
# Cohere bills one search unit per query of up to 100 documents.
_DOCS_PER_SEARCH_UNIT = 100


@dataclass(frozen=True, slots=True)
class MediaAnswer:
    status: int
    body: bytes
    content_type: str

    def json(self) -> dict[str, Any]:
        data = orjson.loads(self.body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    @property
    def is_json(self) -> bool:
        return self.content_type.split(";", 1)[0].strip().endswith("json")


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """One upstream call: its API path, body, and how its answer's usage is read."""

    kind: CallKind
    path: str
    body: bytes | FormBody  # a form streams its files from the upload's spool
    content_type: str
    read_usage: Callable[[MediaAnswer], Usage]
    variant: str | None = None  # the price variant (an image's quality/size)


def _json(kind: CallKind, path: str, body: Mapping[str, Any],
          read: Callable[[MediaAnswer], Usage], variant: str | None = None) -> MediaRequest:
    return MediaRequest(kind, path, orjson.dumps(dict(body)), "application/json", read, variant)


def _with_model(params: Mapping[str, Any], model: str) -> dict[str, Any]:
    return {**{k: v for k, v in params.items() if v is not None}, "model": model}


# --- images ----------------------------------------------------------------------------


def image_usage(answer: MediaAnswer) -> Usage:
    """Tokens when the answer reports them (gpt-image-1), else one count per image."""
    data = answer.json()
    raw = data.get("usage")
    if isinstance(raw, dict) and raw.get("input_tokens") is not None:
        details = raw.get("input_tokens_details")
        d = details if isinstance(details, dict) else {}
        total_in = _int(raw.get("input_tokens"))
        image_in = min(_int(d.get("image_tokens")), total_in)
        return Usage(input_tokens=total_in - image_in, image_input_tokens=image_in,
                     output_tokens=_int(raw.get("output_tokens")))
    images = data.get("data")
    n = len(images) if isinstance(images, list) else 0
    return Usage(requests=request_counts({"images": n}))


def image_generation_request(model: str, params: Mapping[str, Any]) -> MediaRequest:
    if not isinstance(params.get("prompt"), str) or not params["prompt"]:
        raise BadRequestError("'prompt' is required (a non-empty string)", param="prompt")
    return _json("image", "images/generations", _with_model(params, model), image_usage,
                 image_variant(params.get("size"), params.get("quality")))


def image_edit_request(model: str, fields: Sequence[tuple[str, FormValue]]) -> MediaRequest:
    values = dict(fields)
    if not any(isinstance(v, FilePart) for n, v in fields if n.startswith("image")):
        raise BadRequestError("'image' is required (an uploaded file)", param="image")
    if not isinstance(values.get("prompt"), str):
        raise BadRequestError("'prompt' is required", param="prompt")
    body = encode_form(_form_with_model(fields, model))
    return MediaRequest("image", "images/edits", body, body.content_type, image_usage,
                        image_variant(values.get("size"), values.get("quality")))


# --- audio -----------------------------------------------------------------------------


def _form_with_model(fields: Sequence[tuple[str, FormValue]],
                     model: str) -> list[tuple[str, FormValue]]:
    return [("model", model), *((n, v) for n, v in fields if n not in ("model", "metadata"))]


def transcription_usage(upload_bytes: int) -> Callable[[MediaAnswer], Usage]:
    def read(answer: MediaAnswer) -> Usage:
        data: dict[str, Any] = {}
        if answer.is_json:
            data = answer.json()
        raw = data.get("usage")
        if isinstance(raw, dict) and raw.get("type") == "tokens":
            details = raw.get("input_token_details")
            d = details if isinstance(details, dict) else {}
            total_in = _int(raw.get("input_tokens"))
            audio = min(_int(d.get("audio_tokens")), total_in)
            return Usage(input_tokens=total_in - audio, audio_input_tokens=audio,
                         output_tokens=_int(raw.get("output_tokens")))
        if isinstance(raw, dict) and raw.get("type") == "duration":
            return Usage(requests=request_counts({"audio_seconds": _seconds(raw.get("seconds"))}))
        if isinstance(data.get("duration"), int | float):  # verbose_json
            return Usage(requests=request_counts({"audio_seconds": _seconds(data["duration"])}))
        seconds = max(1, math.ceil(upload_bytes / _ESTIMATED_BYTES_PER_SECOND))
        return Usage(requests=request_counts({"audio_seconds": seconds}), source="estimated")
    return read


def transcription_request(model: str, fields: Sequence[tuple[str, FormValue]], *,
                          translation: bool = False) -> MediaRequest:
    upload = next((v for n, v in fields if n == "file" and isinstance(v, FilePart)), None)
    if upload is None:
        raise BadRequestError("'file' is required (an uploaded audio file)", param="file")
    body = encode_form(_form_with_model(fields, model))
    path = "audio/translations" if translation else "audio/transcriptions"
    # The file's size is only the fallback measure (an answer without a duration).
    return MediaRequest("transcription", path, body, body.content_type,
                        transcription_usage(upload.size))


def speech_request(model: str, params: Mapping[str, Any]) -> MediaRequest:
    text = params.get("input")
    if not isinstance(text, str) or not text:
        raise BadRequestError("'input' is required (the text to speak)", param="input")
    if not isinstance(params.get("voice"), str | dict):
        raise BadRequestError("'voice' is required", param="voice")
    chars = len(text)
    # OpenAI's speech answer is the audio itself: the unit billed is the input's length.
    return _json("speech", "audio/speech", _with_model(params, model),
                 lambda _: Usage(requests=request_counts({"input_characters": chars})))


# --- moderation and rerank -------------------------------------------------------------


def moderation_request(model: str, params: Mapping[str, Any]) -> MediaRequest:
    if params.get("input") is None:
        raise BadRequestError("'input' is required", param="input")
    tokens = estimate_text_tokens(_text_of(params["input"]))
    return _json("moderation", "moderations", _with_model(params, model),
                 lambda _: Usage(input_tokens=tokens, source="estimated"))


def rerank_usage(documents: int) -> Callable[[MediaAnswer], Usage]:
    def read(answer: MediaAnswer) -> Usage:
        data = answer.json()
        meta = data.get("meta")
        billed = meta.get("billed_units") if isinstance(meta, dict) else None
        if isinstance(billed, dict) and billed.get("search_units") is not None:  # Cohere
            return Usage(requests=request_counts(
                {"rerank_searches": _int(billed.get("search_units"))}))
        raw = data.get("usage")
        if isinstance(raw, dict) and raw.get("total_tokens") is not None:  # Jina, Voyage
            return Usage(input_tokens=_int(raw.get("total_tokens")))
        units = max(1, math.ceil(documents / _DOCS_PER_SEARCH_UNIT))
        return Usage(requests=request_counts({"rerank_searches": units}), source="estimated")
    return read


def rerank_request(model: str, params: Mapping[str, Any]) -> MediaRequest:
    if not isinstance(params.get("query"), str):
        raise BadRequestError("'query' is required (a string)", param="query")
    docs = params.get("documents")
    if not isinstance(docs, list) or not docs:
        raise BadRequestError("'documents' must be a non-empty list", param="documents")
    return _json("rerank", "rerank", _with_model(params, model), rerank_usage(len(docs)))


# --- the call --------------------------------------------------------------------------


async def call(deployment: Deployment, req: MediaRequest, ctx: CallContext,
               recorder: Recorder, prices: PriceBook) -> tuple[MediaAnswer, UsageEvent]:
    """Send the request and bill its answer: one event of ``req.kind``. A failure bills
    nothing and is recorded."""
    try:
        provider = get_provider(deployment.provider)
        request = provider.media_request(deployment, req.path, req.body, req.content_type)
        resp = await authorized_post(provider, deployment, request)
        if resp.status >= 400:
            raise provider.error_from_response(resp.status, resp.body, resp.headers)
        body, ctype = provider.media_response(deployment, req.path, resp.body,
                                              resp.headers.get("Content-Type", ""))
        answer = MediaAnswer(resp.status, body, ctype)
        try:
            usage = req.read_usage(answer)
        except TallygateError:
            raise
        except Exception as exc:
            raise UpstreamError(f"upstream answered 200 with a body that is not the "
                                f"expected /{req.path} answer ({type(exc).__name__})") from None
    except BaseException as exc:
        await recorder.record_failure(failure_event(ctx, deployment, exc))
        raise
    event = make_event(ctx, deployment, usage, prices, kind=req.kind, variant=req.variant)
    await recorder.record(event)
    return answer, event


def _seconds(value: object) -> int:
    """Billed seconds: a fractional duration rounds up."""
    return math.ceil(value) if isinstance(value, int | float) and value > 0 else 0


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _text_of(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return _text_of(value.get("text"))
    return ""
