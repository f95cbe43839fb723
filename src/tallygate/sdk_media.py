"""The SDK's calls billed in other units, with LiteLLM's names and signatures:
``image_generation`` / ``image_edit``, ``transcription``, ``speech``, ``rerank``,
``moderation`` (and their ``a``-prefixed async forms). They run through
``tallygate.media``, as the proxy's doors do, so each is billed the same way: one usage
event of its kind, in its unit. Per-call ``num_retries`` / ``fallbacks`` (and every
``tallygate.Router`` media call) go through ``tallygate.routing`` as ``completion``'s
do (``routed_media``): each attempt is billed only if it answers, so the call is billed
once, on the deployment that answered. A file is read once, before the first attempt,
so a retry sends it whole again."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from tallygate import callback_dispatch as cb
from tallygate import media
from tallygate.engine import CallContext
from tallygate.event import UsageEvent
from tallygate.multipart import FilePart, FormValue
from tallygate.pricing import default_price_book
from tallygate.providers.base import Deployment
from tallygate.response import ModelResponse
from tallygate.runtime import runtime
from tallygate.sdk import SdkRecorder, _route
from tallygate.sdk_routing import Route


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


# (the deployment's model name, the call's params) -> the upstream request of one attempt
Build = Callable[[str, dict[str, Any]], media.MediaRequest]


async def routed_media(route: Route, build: Build, params: dict[str, Any], ctx: CallContext,
                       recorder: SdkRecorder) -> tuple[media.MediaAnswer, UsageEvent]:
    """A media call's attempts on the deployments ``route`` gives (at once, or through
    the router); tallygate.Router's media calls come here too."""
    build("check", dict(params))  # a 400 before any attempt, as the proxy's doors do
    await runtime.aensure_sinks(recorder.resolved.sinks)

    async def one(deployment: Deployment, actx: CallContext
                  ) -> tuple[media.MediaAnswer, UsageEvent]:
        req = build(deployment.model, dict(params))  # a retry sees the params as they came
        return await media.call(deployment, req, actx, recorder, default_price_book)

    return await route.run(ctx, one, params=params)


async def _run(model: str, build: Build, kwargs: dict[str, Any], *, user: str | None,
               metadata: Mapping[str, Any] | None, api_base: str | None,
               api_key: str | None, timeout: float | None,
               callbacks: Sequence[cb.Callback] | None, num_retries: int | None,
               fallbacks: list[Any] | None) -> tuple[media.MediaAnswer, UsageEvent]:
    route, params, ctx, recorder = _route(
        model, None, kwargs, user=user, metadata=metadata, callbacks=callbacks,
        api_base=api_base, api_key=api_key, timeout=timeout, num_retries=num_retries,
        fallbacks=fallbacks)
    return await routed_media(route, build, params, ctx, recorder)


def json_answer(answer: media.MediaAnswer, event: UsageEvent) -> ModelResponse:
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


def read_files(files: Mapping[str, Any]) -> dict[str, FilePart | list[FilePart]]:
    """Each upload read once (an open file can be read only once): every attempt sends
    the same bytes."""
    return {name: [_file_part(v) for v in value] if isinstance(value, list)
            else _file_part(value) for name, value in files.items()}


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


# -- the calls' requests (shared with tallygate.Router's media methods) ------------------


def image_edit_build(image: Any, mask: Any = None) -> Build:
    files = read_files({"image": image} if mask is None else {"image": image, "mask": mask})
    return lambda model, params: media.image_edit_request(model, _form(params, files))


def transcription_build(file: Any, *, translation: bool = False) -> Build:
    upload = read_files({"file": file})
    return lambda model, params: media.transcription_request(
        model, _form(params, upload), translation=translation)


# -- images -----------------------------------------------------------------------------


async def aimage_generation(prompt: str, model: str | None = None, *, user: str | None = None,
                            metadata: Mapping[str, Any] | None = None,
                            api_base: str | None = None, api_key: str | None = None,
                            timeout: float | None = None,
                            callbacks: Sequence[cb.Callback] | None = None,
                            num_retries: int | None = None,
                            fallbacks: list[Any] | None = None,
                            **kwargs: Any) -> ModelResponse:
    """An image from a prompt (OpenAI's ``images/generations``), billed per image by size
    and quality, or per token for token-priced models. ``model`` defaults to
    ``dall-e-2``, as OpenAI's does."""
    kwargs["prompt"] = prompt
    answer, event = await _run(model or "dall-e-2", media.image_generation_request, kwargs,
                               user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return json_answer(answer, event)


def image_generation(prompt: str, model: str | None = None, **kwargs: Any) -> ModelResponse:
    return runtime.run(aimage_generation(prompt, model, **kwargs))


async def aimage_edit(image: Any, prompt: str, model: str | None = None, *,
                      mask: Any = None, user: str | None = None,
                      metadata: Mapping[str, Any] | None = None, api_base: str | None = None,
                      api_key: str | None = None, timeout: float | None = None,
                      callbacks: Sequence[cb.Callback] | None = None,
                      num_retries: int | None = None, fallbacks: list[Any] | None = None,
                      **kwargs: Any) -> ModelResponse:
    """An edit of uploaded ``image`` (one, or a list) by ``prompt``, billed like a
    generation."""
    kwargs["prompt"] = prompt
    answer, event = await _run(model or "dall-e-2", image_edit_build(image, mask), kwargs,
                               user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return json_answer(answer, event)


def image_edit(image: Any, prompt: str, model: str | None = None,
               **kwargs: Any) -> ModelResponse:
    return runtime.run(aimage_edit(image, prompt, model, **kwargs))


# -- audio ------------------------------------------------------------------------------


async def atranscription(model: str, file: Any, *, user: str | None = None,
                         metadata: Mapping[str, Any] | None = None,
                         api_base: str | None = None, api_key: str | None = None,
                         timeout: float | None = None,
                         callbacks: Sequence[cb.Callback] | None = None,
                         translation: bool = False, num_retries: int | None = None,
                         fallbacks: list[Any] | None = None, **kwargs: Any) -> ModelResponse:
    """Speech to text (OpenAI's ``audio/transcriptions``; ``translation=True``:
    ``audio/translations``), billed per second of audio or per token. ``.text`` is the
    transcript, whatever ``response_format``."""
    answer, event = await _run(model, transcription_build(file, translation=translation),
                               kwargs, user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return json_answer(answer, event)


def transcription(model: str, file: Any, **kwargs: Any) -> ModelResponse:
    return runtime.run(atranscription(model, file, **kwargs))


async def aspeech(model: str, input: str, voice: Any = None, *, user: str | None = None,
                  metadata: Mapping[str, Any] | None = None, api_base: str | None = None,
                  api_key: str | None = None, timeout: float | None = None,
                  callbacks: Sequence[cb.Callback] | None = None,
                  num_retries: int | None = None, fallbacks: list[Any] | None = None,
                  **kwargs: Any) -> SpeechResponse:
    """Text to speech (OpenAI's ``audio/speech``): the audio bytes, billed per character."""
    kwargs.update(input=input, voice=voice)
    answer, event = await _run(model, media.speech_request, kwargs, user=user,
                               metadata=metadata, api_base=api_base, api_key=api_key,
                               timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return SpeechResponse(answer.body, answer.content_type, event)


def speech(model: str, input: str, voice: Any = None, **kwargs: Any) -> SpeechResponse:
    return runtime.run(aspeech(model, input, voice, **kwargs))


# -- rerank and moderation --------------------------------------------------------------


async def arerank(model: str, query: str, documents: list[Any], top_n: int | None = None,
                  *, user: str | None = None, metadata: Mapping[str, Any] | None = None,
                  api_base: str | None = None, api_key: str | None = None,
                  timeout: float | None = None,
                  callbacks: Sequence[cb.Callback] | None = None,
                  num_retries: int | None = None, fallbacks: list[Any] | None = None,
                  **kwargs: Any) -> ModelResponse:
    """Documents ranked by relevance to ``query`` (Cohere's shape, which Jina and Voyage
    share), billed per search unit or per token."""
    kwargs.update(query=query, documents=documents, top_n=top_n)
    answer, event = await _run(model, media.rerank_request, kwargs, user=user,
                               metadata=metadata, api_base=api_base, api_key=api_key,
                               timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return json_answer(answer, event)


def rerank(model: str, query: str, documents: list[Any], top_n: int | None = None,
           **kwargs: Any) -> ModelResponse:
    return runtime.run(arerank(model, query, documents, top_n, **kwargs))


async def amoderation(input: Any, model: str | None = None, *, user: str | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      api_base: str | None = None, api_key: str | None = None,
                      timeout: float | None = None,
                      callbacks: Sequence[cb.Callback] | None = None,
                      num_retries: int | None = None, fallbacks: list[Any] | None = None,
                      **kwargs: Any) -> ModelResponse:
    """OpenAI's ``moderations``; ``model`` defaults to ``omni-moderation-latest``."""
    kwargs["input"] = input
    answer, event = await _run(model or "omni-moderation-latest", media.moderation_request,
                               kwargs, user=user, metadata=metadata, api_base=api_base,
                               api_key=api_key, timeout=timeout, callbacks=callbacks,
                               num_retries=num_retries, fallbacks=fallbacks)
    return json_answer(answer, event)


def moderation(input: Any, model: str | None = None, **kwargs: Any) -> ModelResponse:
    return runtime.run(amoderation(input, model, **kwargs))
