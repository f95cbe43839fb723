"""LiteLLM's cost and token helpers: ``completion_cost``, ``cost_per_token``,
``token_counter``, ``stream_chunk_builder``.

``completion_cost`` of an answer tallygate returned is the exact Decimal that answer's
usage event billed (not a recomputation); for other answers, or a model with a prompt
and completion, it prices with the same price book. Token counts are estimates
(~4 characters a token): no maintained tokenizer ships its vocabularies offline
(tiktoken downloads them on first use), so ``token_counter`` says so once in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from tallygate.errors import BadRequestError
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.pricing import default_price_book
from tallygate.providers.base import PRICE_KEYS, PriceOverride
from tallygate.providers.registry import split_model
from tallygate.response import ResponseObject
from tallygate.usage import Usage

log = logging.getLogger("tallygate")
_warned_estimate = False


def _plain(value: Any) -> Any:
    if isinstance(value, ResponseObject):
        return value.model_dump()
    if hasattr(value, "model_dump") and not isinstance(value, Mapping):
        return value.model_dump()
    return value


def _price(model: str, usage: Usage, custom: Mapping[str, Any] | None) -> Decimal:
    provider, name = split_model(model)
    override = None
    if custom:
        values: dict[str, Any] = {k: Decimal(str(v)) for k, v in custom.items()
                                  if k in PRICE_KEYS and v is not None}
        override = PriceOverride(**values)
    price = default_price_book.price(provider, name, usage, override)
    if price.cost is None:
        buckets = ", ".join(price.unpriced) or "any usage"
        raise BadRequestError(f"no price known for model {model!r} ({buckets}); pass "
                              "custom_cost_per_token or set prices in the deployment",
                              param="model", code="unknown_price")
    return price.cost


def completion_cost(completion_response: Any = None, model: str | None = None,
                    prompt: str = "", messages: list[dict[str, Any]] | None = None,
                    completion: str = "", *, usage: Any = None,
                    custom_cost_per_token: Mapping[str, Any] | None = None,
                    **_: Any) -> Decimal:
    """The cost of a call in USD, as an exact Decimal.

    * an answer tallygate returned (``completion``, ``responses``, ``image_generation``,
      a finished stream...): exactly what its usage event billed;
    * any OpenAI-shaped answer with ``usage`` and ``model``: priced from its usage;
    * ``model`` with ``usage`` (an OpenAI usage dict or a ``Usage``), or with
      ``prompt``/``messages`` and ``completion`` text (estimated tokens).
    An unknown price raises (never a silent zero), as LiteLLM's does."""
    event = getattr(completion_response, "usage_event", None)
    if event is not None:
        if event.cost is None:
            raise BadRequestError(f"the call {event.call_id} has no known price "
                                  f"(unpriced: {', '.join(event.unpriced) or 'model'})",
                                  code="unknown_price")
        return Decimal(event.cost)
    if completion_response is not None:
        body = _plain(completion_response)
        if not isinstance(body, Mapping):
            raise BadRequestError("completion_response must be an answer object or dict",
                                  param="completion_response")
        model = model or body.get("model")
        usage = usage if usage is not None else body.get("usage")
    if not model:
        raise BadRequestError("completion_cost needs a model", param="model")
    if usage is not None:
        u = usage if isinstance(usage, Usage) else Usage.from_openai(_plain(usage))
        return _price(model, u or Usage(), custom_cost_per_token)
    in_tokens = (estimate_prompt_tokens(messages) if messages
                 else estimate_text_tokens(prompt))
    u = Usage(input_tokens=in_tokens, output_tokens=estimate_text_tokens(completion),
              source="estimated")
    return _price(model, u, custom_cost_per_token)


def cost_per_token(model: str, prompt_tokens: int = 0, completion_tokens: int = 0,
                   **_: Any) -> tuple[Decimal, Decimal]:
    """(prompt cost, completion cost) in USD for these token counts."""
    return (_price(model, Usage(input_tokens=prompt_tokens), None) if prompt_tokens
            else Decimal(0),
            _price(model, Usage(output_tokens=completion_tokens), None) if completion_tokens
            else Decimal(0))


def token_counter(model: str = "", text: str | list[str] | None = None,
                  messages: list[dict[str, Any]] | None = None, **_: Any) -> int:
    """Tokens of ``messages`` (chat framing included) or ``text``: an estimate."""
    global _warned_estimate
    if not _warned_estimate:
        _warned_estimate = True
        log.warning("token_counter estimates tokens (~4 characters a token): no tokenizer "
                    "with offline vocabularies is installed")
    if messages is not None:
        return estimate_prompt_tokens(messages)
    if isinstance(text, list):
        return sum(estimate_text_tokens(t) for t in text)
    return estimate_text_tokens(text or "")


def stream_chunk_builder(chunks: Iterable[Any],
                         messages: list[dict[str, Any]] | None = None) -> ResponseObject | None:
    """One ``chat.completion`` assembled from a stream's chunks: content, tool calls
    (their argument pieces joined), finish reasons, and the usage chunk's usage (an
    estimate from ``messages`` and the text when the stream carried none)."""
    items = [c if isinstance(c, Mapping) else _plain(c) for c in chunks]
    if not items:
        return None
    first = items[0]
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    for chunk in items:
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            slot = choices.setdefault(int(choice.get("index") or 0), {
                "role": "assistant", "content": [], "tools": {}, "finish_reason": None})
            delta = choice.get("delta") or {}
            if delta.get("content"):
                slot["content"].append(delta["content"])
            for call in delta.get("tool_calls") or ():
                at = slot["tools"].setdefault(int(call.get("index") or 0), {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                at["id"] = call.get("id") or at["id"]
                fn = call.get("function") or {}
                at["function"]["name"] += fn.get("name") or ""
                at["function"]["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                slot["finish_reason"] = choice["finish_reason"]
    out_choices = []
    text_all = ""
    for index in sorted(choices):
        slot = choices[index]
        text = "".join(slot["content"])
        text_all += text
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if slot["tools"]:
            message["tool_calls"] = [slot["tools"][i] for i in sorted(slot["tools"])]
        elif not text:
            message["content"] = ""
        out_choices.append({"index": index, "message": message,
                            "finish_reason": slot["finish_reason"], "logprobs": None})
    if usage is None:
        prompt = estimate_prompt_tokens(messages or ())
        done = estimate_text_tokens(text_all)
        usage = {"prompt_tokens": prompt, "completion_tokens": done,
                 "total_tokens": prompt + done}
    return ResponseObject({"id": first.get("id"), "object": "chat.completion",
                           "created": first.get("created"), "model": first.get("model"),
                           "system_fingerprint": first.get("system_fingerprint"),
                           "choices": out_choices, "usage": usage})
