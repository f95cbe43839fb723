"""The legacy text completions' checks and translation, without the HTTP route: the
completions door (``openai_completions``) and the SDK's ``text_completion`` share them.
A provider without ``/completions`` gets one prompt as one user turn of a chat call,
rendered back as a ``text_completion``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import BadRequestError
from tallygate.providers.base import Deployment
from tallygate.usage import Usage

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for a text completion
GATEWAY_KEYS = ("metadata", "mock_response", "drop_params")  # read here, never sent upstream
# Completion params a chat call takes under the same name.
_CHAT_KEYS = ("temperature", "top_p", "stop", "presence_penalty", "frequency_penalty",
              "seed", "n", "logit_bias", "user", "safety_identifier")
_HANDLED = frozenset({"model", "prompt", "max_tokens", "stream", "stream_options", "echo",
                      "suffix", "logprobs", "best_of", *_CHAT_KEYS, *GATEWAY_KEYS})


def _bad(message: str, param: str, code: str = "invalid_type") -> BadRequestError:
    return BadRequestError(message, param=param, code=code)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt_text(prompt: object) -> str:
    """The prompt's text for the estimates (token ids count as themselves)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return ""


def check_completion(data: Mapping[str, Any]) -> None:
    prompt = data.get("prompt")
    if prompt is None:
        raise _bad("missing required parameter: 'prompt'", "prompt",
                   "missing_required_parameter")
    tokens = isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)
    batches = isinstance(prompt, list) and prompt and all(
        isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt)
    texts = isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
    if not (isinstance(prompt, str) or tokens or batches or texts):
        raise _bad("'prompt' must be a string, a non-empty array of strings, or token ids",
                   "prompt")
    for name, kind in (("stream", bool), ("echo", bool), ("user", str),
                       ("safety_identifier", str), ("metadata", dict),
                       ("stream_options", dict), ("suffix", str)):
        value = data.get(name)
        if value is not None and not isinstance(value, kind):
            raise _bad(f"'{name}' must be a {kind.__name__}", name)
    for name in ("max_tokens", "n", "best_of", "logprobs"):
        value = data.get(name)
        if value is not None and (not _is_int(value) or value < 0):
            raise _bad(f"'{name}' must be a non-negative integer", name)


def admission_params(data: dict[str, Any]) -> dict[str, Any]:
    """What the access policy reads (who pays, ``max_tokens``, the prompt as one message
    for the estimates), with the body itself under ``body``."""
    check_completion(data)
    params: dict[str, Any] = {
        "model": data["model"], "metadata": data.get("metadata") or {},
        "messages": [{"role": "user", "content": _prompt_text(data["prompt"])}],
        "max_tokens": data.get("max_tokens") or DEFAULT_MAX_TOKENS,
        "stream": bool(data.get("stream")), "body": data}
    for name in ("user", "safety_identifier"):
        if data.get(name):
            params[name] = data[name]
    return params


# --- translated: a chat call ------------------------------------------------------------

def to_chat(data: Mapping[str, Any], deployment: Deployment) -> tuple[dict[str, Any], list[str]]:
    """(chat params, dropped fields) for a provider without ``/completions``."""
    prompt = data["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise _refuse("several prompts or token-id prompts", "prompt", deployment)
        prompt = prompt[0]
    for name in ("suffix", "logprobs"):
        if data.get(name) is not None:
            raise _refuse(f"'{name}'", name, deployment)
    if (data.get("best_of") or 1) > 1:
        raise _refuse("'best_of' over 1", "best_of", deployment)
    chat: dict[str, Any] = {"model": data["model"],
                            "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": data.get("max_tokens") or DEFAULT_MAX_TOKENS}
    chat.update({k: data[k] for k in _CHAT_KEYS if data.get(k) is not None})
    if deployment.provider == "mock" and data.get("mock_response") is not None:
        chat["mock_response"] = data["mock_response"]
    return chat, [k for k in data if k not in _HANDLED]


def _refuse(what: str, param: str, deployment: Deployment) -> BadRequestError:
    return BadRequestError(
        f"{what}: not supported for provider {deployment.provider!r} (model "
        f"{deployment.model!r}), which has no text completions endpoint; the prompt is "
        "sent as one chat turn", param=param, code="unsupported_parameter")


def _choice(index: object, text: str, finish: object) -> dict[str, Any]:
    return {"text": text, "index": index if _is_int(index) else 0, "logprobs": None,
            "finish_reason": finish}


def to_text_completion(body: Mapping[str, Any], usage: Usage, echo: str,
                       call_id: str) -> dict[str, Any]:
    """A chat.completion as a text_completion (the billed usage, the echo in front)."""
    choices = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        choices.append(_choice(choice.get("index"), echo + (content or ""),
                               choice.get("finish_reason")))
    return {"id": "cmpl-" + call_id.removeprefix("tg-"), "object": "text_completion",
            "created": body.get("created") or int(time.time()),
            "model": body.get("model") or "", "choices": choices, "usage": usage.to_openai()}


class TextChunks:
    """Chat chunks as text_completion chunks (the echo first, if asked)."""

    def __init__(self, call_id: str, model: str, echo: str) -> None:
        self.id = "cmpl-" + call_id.removeprefix("tg-")
        self.model = model
        self.created = int(time.time())
        self._echo = echo

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {"id": self.id, "object": "text_completion", "created": self.created,
                 "model": self.model, "choices": choices, **extra}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if self._echo:
            out.append(self._frame([_choice(0, self._echo, None)]))
            self._echo = ""
        choices = [c for c in chunk.get("choices") or () if isinstance(c, dict)]
        for choice in choices:
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if text or choice.get("finish_reason"):
                out.append(self._frame([_choice(choice.get("index"), text or "",
                                                choice.get("finish_reason"))]))
        if not choices and isinstance(chunk.get("usage"), dict):
            out.append(self._frame([], usage=chunk["usage"]))
        return out
