"""The most a call can cost: what its budget reservation holds.

Every input a provider bills is counted, and counted high:

- text anywhere in the request as the caller sent it, whichever door (message content,
  names, tool calls and their arguments, tool definitions, ``system``, ``functions``,
  ``response_format`` schemas, prompts): one token per UTF-8 byte, which no byte-level
  BPE tokenizer (OpenAI's, Anthropic's) can exceed;
- each image at the most an image costs on the model (``IMAGE_TOKENS``), each audio
  clip and file from the size of its data;
- output: ``n`` (or ``best_of``) choices of ``max_completion_tokens`` / ``max_tokens``
  / ``max_output_tokens``, or, without
  one, of the model's own output limit (``max_output_tokens``; an unknown model gets
  ``DEFAULT_MAX_OUTPUT_TOKENS``), plus a ``prediction``'s tokens (rejected predicted
  tokens are billed as output); with audio output asked for, at the dearer rate.

The usage is priced at the dearest deployment of the model group (a ``service_tier``
at its own rates). An unknown price reserves ``access_settings.max_reservation_usd``.
A reservation never exceeds the largest budget it is held against: a call that may
cost more than a budget holds all of it, so no other call passes that budget while it
runs, and the budget is passed by at most that one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from tallygate.engine import priced_model
from tallygate.price_fields import STANDARD_TIERS, requested_tier
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment
from tallygate.usage import Usage

TOKENS_PER_MESSAGE = 4   # role and framing tokens a chat message adds
REPLY_PRIMING = 3        # the tokens that prime the reply
# The most one image costs: OpenAI's gpt-4o-mini bills 2,833 + 5,667 per 512 px tile,
# 8 tiles for a 768x2048 image (other OpenAI models stay under 4,000: gpt-4o 1,445,
# the patch-priced ones 1,536 patches times at most 2.46); Claude resizes images to
# about 1,600 tokens.
IMAGE_TOKENS_DEFAULT = 4_000
IMAGE_TOKENS = (("gpt-4o-mini", 48_169),)
# Audio input at the lowest usual bitrate (8 kbit/s, 10 tokens a second): a token for
# every 100 bytes of audio data.
AUDIO_BYTES_PER_TOKEN = 100
# Output limits per model name prefix (longest first), from the providers' model pages.
MAX_OUTPUT_TOKENS: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 16_384), ("gpt-4o", 16_384), ("gpt-4.1", 32_768),
    ("gpt-4.5", 16_384), ("gpt-4-turbo", 4_096), ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 4_096), ("gpt-5", 128_000), ("o1-mini", 65_536), ("o1", 100_000),
    ("o3", 100_000), ("o4-mini", 100_000),
    ("claude-3-haiku", 4_096), ("claude-3-opus", 4_096), ("claude-3-5", 8_192),
    ("claude-3-7-sonnet", 64_000), ("claude-sonnet-4", 64_000), ("claude-opus-4-5", 64_000),
    ("claude-opus-4", 32_000), ("claude-haiku-4", 64_000),
)
# A model not in the table: more than any model above, so never too little.
DEFAULT_MAX_OUTPUT_TOKENS = 128_000
# What a provider adapter sends when the caller gave no max_tokens (it then bounds the
# output): the Anthropic adapter's default.
ADAPTER_MAX_TOKENS = {"anthropic": 4_096}


def max_output_tokens(model: str) -> int:
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, limit in sorted(MAX_OUTPUT_TOKENS, key=lambda p: -len(p[0])):
        if name.startswith(prefix):
            return limit
    return DEFAULT_MAX_OUTPUT_TOKENS


def _bytes(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode())
    return len(orjson.dumps(value)) if value is not None else 0


def _image_tokens(model: str) -> int:
    name = model.lower()
    return next((n for prefix, n in IMAGE_TOKENS if prefix in name), IMAGE_TOKENS_DEFAULT)


# Parts that are images, whatever the API: OpenAI chat, Responses, Anthropic.
_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
_AUDIO_TYPES = frozenset({"input_audio"})
# Request fields the provider does not bill as input (the gateway's own, or settings).
_NOT_INPUT = frozenset({"model", "metadata", "user", "safety_identifier", "mock_response",
                        "stream", "stream_options", "max_tokens", "max_completion_tokens",
                        "max_output_tokens", "n", "best_of", "temperature", "top_p", "top_k",
                        "seed", "service_tier", "store", "logprobs", "top_logprobs",
                        "cache_control"})


def _audio_tokens(part: Mapping[str, Any]) -> int:
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, Mapping) else None
    size = len(data) * 3 // 4 if isinstance(data, str) else 0  # base64 -> bytes
    return -(-size // AUDIO_BYTES_PER_TOKEN) + 1


def _walk(value: object, model: str, top: bool = False) -> tuple[int, int]:
    """(text-priced, audio) tokens of a request value: every string one token a byte,
    images and audio by their own rule, token ids one token each."""
    if isinstance(value, str):
        return _bytes(value), 0
    if isinstance(value, bool) or value is None:
        return 1, 0
    if isinstance(value, int | float):
        return 1, 0  # a token id, or a number in a schema
    text = audio = 0
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind in _IMAGE_TYPES:
            return _image_tokens(model), 0
        if kind in _AUDIO_TYPES:
            return 0, _audio_tokens(value)
        for key, item in value.items():
            if top and key in _NOT_INPUT:
                continue
            t, a = _walk(item, model)
            text, audio = text + t + (0 if top else _bytes(key)), audio + a
        return text, audio
    if isinstance(value, list | tuple):
        for item in value:
            t, a = _walk(item, model)
            text, audio = text + t, audio + a
    return text, audio


def request_body(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request as the caller sent it: the door's ``body`` when it keeps one (the
    Messages, Responses and completions doors), else the params (chat, embeddings)."""
    body = params.get("body")
    return body if isinstance(body, Mapping) else params


def prompt_tokens(params: Mapping[str, Any], model: str) -> tuple[int, int]:
    """(text-priced, audio) input tokens of a request, counted high: everything it
    carries (messages, system, tools, schemas, prompts) plus each message's framing."""
    body = request_body(params)
    text, audio = _walk(body, model, top=True)
    messages = body.get("messages", body.get("input"))
    count = len(messages) if isinstance(messages, list) else 1
    return REPLY_PRIMING + TOKENS_PER_MESSAGE * count + text, audio


def embedding_tokens(params: Mapping[str, Any]) -> int:
    value = params.get("input")
    if isinstance(value, str):
        return _bytes(value)
    items: Iterable[Any] = value if isinstance(value, list) else ()
    return sum(len(i) if isinstance(i, list) else 1 if isinstance(i, int) else _bytes(i)
               for i in items)


def _output_tokens(params: Mapping[str, Any], deployment: Deployment) -> int:
    limit = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            limit = value
            break
    if limit is None:
        limit = min(max_output_tokens(deployment.base_model or deployment.model),
                    ADAPTER_MAX_TOKENS.get(deployment.provider, DEFAULT_MAX_OUTPUT_TOKENS))
    body = request_body(params)
    choices = 1
    for name in ("n", "best_of"):  # best_of completions are all billed
        value = body.get(name, params.get(name))
        if isinstance(value, int) and not isinstance(value, bool) and value > choices:
            choices = value
    prediction = params.get("prediction")
    predicted = _bytes(prediction.get("content")) if isinstance(prediction, Mapping) else 0
    return choices * limit + predicted


def worst_case_usages(params: Mapping[str, Any], deployment: Deployment) -> list[Usage]:
    """The usages the call can reach on ``deployment`` (the dearest one is reserved)."""
    model = deployment.base_model or deployment.model
    if "messages" not in params:  # embeddings: input only
        return [Usage(input_tokens=embedding_tokens(params))]
    text, audio = prompt_tokens(params, model)
    out = _output_tokens(params, deployment)
    usages = [Usage(input_tokens=text, audio_input_tokens=audio, output_tokens=out)]
    modalities = params.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        usages.append(Usage(input_tokens=text, audio_input_tokens=audio,
                            audio_output_tokens=out))
    return usages


def worst_case_cost(params: Mapping[str, Any], deployments: Sequence[Deployment],
                    prices: PriceBook) -> Decimal | None:
    """The most the call can cost at the dearest deployment; None if a price is unknown."""
    tier = requested_tier(params)
    context = ({"service_tier": tier} if isinstance(tier, str) and tier not in STANDARD_TIERS
               else None)
    worst = Decimal(0)
    for deployment in deployments:
        model = priced_model(deployment, None)
        if model is None and (deployment.price is None or deployment.price.is_empty()):
            return None  # no model to price it as (Azure without base_model): unknown
        for usage in worst_case_usages(params, deployment):
            price = prices.price(deployment.provider, model or deployment.model, usage,
                                 deployment.price, context=context)
            if price.cost is None:
                return None
            worst = max(worst, price.cost)
    return worst
