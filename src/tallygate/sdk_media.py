"""The SDK's calls billed in other units, with LiteLLM's names and signatures:
``image_generation`` / ``image_edit``, ``transcription``, ``speech``, ``rerank``,
``moderation`` (and their ``a``-prefixed async forms). They run through
``tallygate.media``, as the proxy's doors do, so each is billed the same way: one usage
event of its kind, in its unit."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tallygate import callback_dispatch as cb
from tallygate import media
from tallygate.event import UsageEvent
from tallygate.multipart import FilePart, FormValue
from tallygate.pricing import default_price_book
from tallygate.response import ModelResponse
from tallygate.runtime import runtime
from tallygate.sdk import _prepare


class SpeechResponse:
    """Audio bytes, as openai's ``HttpxBinaryResponseContent`` gives them, plus the bill."""

    def __init__(self, content: bytes, content_type: str, usage_event: UsageEvent) -> None:
        self.content = content
        self.content_type = content_type
        self.usage_event = usage_event

    def read(self) -> bytes:
        return self.content

    def write_to_file(self, file: str | os.PathLike[str]) -> None:
        Path(file).write_bytes(self.content)

    stream_to_file = write_to_file

    @property
    def call_id(self) -> str:
        return self.usage_event.call_id


async def _run(model: str, build: Any, kwargs: dict[str, Any], *, user: str | None,
               metadata: Mapping[str, Any] | None, api_base: str | None,
               api_key: str | None, timeout: float | None,
               callbacks: Sequence[cb.Callback] | None) -> tuple[media.MediaAnswer, UsageEvent]:
    deployment, params, ctx, recorder = _prepare(
        model, None, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout)
    await runtime.aensure_sinks(recorder.resolved.sinks)
    req = build(deployment.model, params)
    return await media.call(deployment, req, ctx, recorder, default_price_book)


def _json_answer(answer: media.MediaAnswer, event: UsageEvent) -> ModelResponse:
    if answer.is_json:
        return ModelResponse(answer.json(), event)
    return ModelResponse({"text": answer.body.decode("utf-8", errors="replace")}, event)


def _file_part(file: Any) -> FilePart:
    """A file as LiteLLM and openai take it: bytes, a path, an open file, or a
    ``(name, content[, content_type])`` tuple."""
    if isinstance(file, FilePart):
        return file
    if isinstance(file, tuple):
        name, content = file[0], file[1]
        ctype = file[2] if len(file) > 2 else "application/octet-stream"
        data = content if isinstance(content, bytes) else content.read()
        return FilePart(str(name), data, ctype)
    if isinstance(file, bytes):
        return FilePart("upload", file)
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return FilePart(path.name, path.read_bytes())
    data = file.read()
    return FilePart(Path(getattr(file, "name", "upload")).name, data)


def _form(params: Mapping[str, Any], files: Mapping[str, Any]) -> list[tuple[str, FormValue]]:
    fields: list[tuple[str, FormValue]] = []
    for name, value in params.items():
        if isinstance(value, list | dict):
            fields.append((name, orjson.dumps(value).decode()))
        elif isinstance(value, bool):
            fields.append((name, "true" if value else "false"))
        else:
            fields.append((name, str(value)))
    for name, value in files.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            fields.append((name, _file_part(item)))
    return fields


# -- images -----------------------------------------------------------------------------


async def aimage_generation(prompt: str, model: str | None = None, *, user: str | None = None,
                            metadata: Mapping[str, Any] | None = None,
                            api_base: str | None = None, api_key: str | None = None,
                            timeout: float | None = None,
                            callbacks: Sequence[cb.Callback] | None = None,
                            **kwargs: Any) -> ModelResponse:
    """An image from a prompt (OpenAI's ``images/generations``), billed per image by size
    and quality, or per token for token-priced models. ``model`` defaults to
    ``dall-e-2``, as OpenAI's does."""
    kwargs["prompt"] = prompt
    answer, event = await _run(model or "dall-e-2", media.image_generation_request, kwargs,
                               user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks)
    return _json_answer(answer, event)


def image_generation(prompt: str, model: str | None = None, **kwargs: Any) -> ModelResponse:
    return runtime.run(aimage_generation(prompt, model, **kwargs))


async def aimage_edit(image: Any, prompt: str, model: str | None = None, *,
                      mask: Any = None, user: str | None = None,
                      metadata: Mapping[str, Any] | None = None, api_base: str | None = None,
                      api_key: str | None = None, timeout: float | None = None,
                      callbacks: Sequence[cb.Callback] | None = None,
                      **kwargs: Any) -> ModelResponse:
    """An edit of uploaded ``image`` (one, or a list) by ``prompt``, billed like a
    generation."""
    kwargs["prompt"] = prompt
    files = {"image": image} if mask is None else {"image": image, "mask": mask}

    def build(model_name: str, params: dict[str, Any]) -> media.MediaRequest:
        return media.image_edit_request(model_name, _form(params, files))

    answer, event = await _run(model or "dall-e-2", build, kwargs, user=user,
                               metadata=metadata, api_base=api_base, api_key=api_key,
                               timeout=timeout, callbacks=callbacks)
    return _json_answer(answer, event)


def image_edit(image: Any, prompt: str, model: str | None = None,
               **kwargs: Any) -> ModelResponse:
    return runtime.run(aimage_edit(image, prompt, model, **kwargs))


# -- audio ------------------------------------------------------------------------------


async def atranscription(model: str, file: Any, *, user: str | None = None,
                         metadata: Mapping[str, Any] | None = None,
                         api_base: str | None = None, api_key: str | None = None,
                         timeout: float | None = None,
                         callbacks: Sequence[cb.Callback] | None = None,
                         translation: bool = False, **kwargs: Any) -> ModelResponse:
    """Speech to text (OpenAI's ``audio/transcriptions``; ``translation=True``:
    ``audio/translations``), billed per second of audio or per token. ``.text`` is the
    transcript, whatever ``response_format``."""
    upload = {"file": file}

    def build(model_name: str, params: dict[str, Any]) -> media.MediaRequest:
        return media.transcription_request(model_name, _form(params, upload),
                                           translation=translation)

    answer, event = await _run(model, build, kwargs, user=user, metadata=metadata,
                               api_base=api_base, api_key=api_key, timeout=timeout,
                               callbacks=callbacks)
    return _json_answer(answer, event)


def transcription(model: str, file: Any, **kwargs: Any) -> ModelResponse:
    return runtime.run(atranscription(model, file, **kwargs))


async def aspeech(model: str, input: str, voice: Any = None, *, user: str | None = None,
                  metadata: Mapping[str, Any] | None = None, api_base: str | None = None,
                  api_key: str | None = None, timeout: float | None = None,
                  callbacks: Sequence[cb.Callback] | None = None,
                  **kwargs: Any) -> SpeechResponse:
    """Text to speech (OpenAI's ``audio/speech``): the audio bytes, billed per character."""
    kwargs.update(input=input, voice=voice)
    answer, event = await _run(model, media.speech_request, kwargs, user=user,
                               metadata=metadata, api_base=api_base, api_key=api_key,
                               timeout=timeout, callbacks=callbacks)
    return SpeechResponse(answer.body, answer.content_type, event)


def speech(model: str, input: str, voice: Any = None, **kwargs: Any) -> SpeechResponse:
    return runtime.run(aspeech(model, input, voice, **kwargs))


# -- rerank and moderation --------------------------------------------------------------


async def arerank(model: str, query: str, documents: list[Any], top_n: int | None = None,
                  *, user: str | None = None, metadata: Mapping[str, Any] | None = None,
                  api_base: str | None = None, api_key: str | None = None,
                  timeout: float | None = None,
                  callbacks: Sequence[cb.Callback] | None = None,
                  **kwargs: Any) -> ModelResponse:
    """Documents ranked by relevance to ``query`` (Cohere's shape, which Jina and Voyage
    share), billed per search unit or per token."""
    kwargs.update(query=query, documents=documents, top_n=top_n)
    answer, event = await _run(model, media.rerank_request, kwargs, user=user,
                               metadata=metadata, api_base=api_base, api_key=api_key,
                               timeout=timeout, callbacks=callbacks)
    return _json_answer(answer, event)


def rerank(model: str, query: str, documents: list[Any], top_n: int | None = None,
           **kwargs: Any) -> ModelResponse:
    return runtime.run(arerank(model, query, documents, top_n, **kwargs))


async def amoderation(input: Any, model: str | None = None, *, user: str | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      api_base: str | None = None, api_key: str | None = None,
                      timeout: float | None = None,
                      callbacks: Sequence[cb.Callback] | None = None,
                      **kwargs: Any) -> ModelResponse:
    """OpenAI's ``moderations``; ``model`` defaults to ``omni-moderation-latest``."""
    kwargs["input"] = input
    answer, event = await _run(model or "omni-moderation-latest", media.moderation_request,
                               kwargs, user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks)
    return _json_answer(answer, event)


def moderation(input: Any, model: str | None = None, **kwargs: Any) -> ModelResponse:
    return runtime.run(amoderation(input, model, **kwargs))
