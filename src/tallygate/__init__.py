"""tallygate: an LLM gateway that bills.

``import tallygate`` stays cheap: the HTTP client and the price data load on first use.
Module switches mirror LiteLLM's: ``tallygate.callbacks = ["lago"]`` (or
``success_callback``) meters every successful call into Lago.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from tallygate.callback_dispatch import Callback, CustomLogger
from tallygate.errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ConfigError,
    ModelNotFoundError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    TallygateError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tallygate.event import FailureEvent, UsageEvent
from tallygate.usage import Usage

if TYPE_CHECKING:
    from tallygate.model_info import (
        get_model_info,
        get_supported_openai_params,
        model_cost,
    )
    from tallygate.sdk import (
        acompletion,
        aembedding,
        completion,
        embedding,
    )
    from tallygate.sdk_helpers import (
        completion_cost,
        cost_per_token,
        stream_chunk_builder,
        token_counter,
    )
    from tallygate.sdk_media import (
        aimage_edit,
        aimage_generation,
        amoderation,
        arerank,
        aspeech,
        atranscription,
        image_edit,
        image_generation,
        moderation,
        rerank,
        speech,
        transcription,
    )
    from tallygate.sdk_responses import (
        aresponses,
        atext_completion,
        responses,
        text_completion,
    )
    from tallygate.sdk_router import Router

__version__ = "0.1.0"

callbacks: list[Callback] = []
success_callback: list[Callback] = []
failure_callback: list[Callback] = []
#: LiteLLM's switch: drop the OpenAI parameters a provider does not take instead of
#: failing (each call can say ``drop_params=`` too)
drop_params: bool = False

_LAZY = {
    "completion": "tallygate.sdk",
    "acompletion": "tallygate.sdk",
    "embedding": "tallygate.sdk",
    "aembedding": "tallygate.sdk",
    "Router": "tallygate.sdk_router",
    **{name: "tallygate.sdk_media" for name in (
        "image_generation", "aimage_generation", "image_edit", "aimage_edit",
        "transcription", "atranscription", "speech", "aspeech", "rerank", "arerank",
        "moderation", "amoderation")},
    **{name: "tallygate.sdk_responses" for name in (
        "responses", "aresponses", "text_completion", "atext_completion")},
    **{name: "tallygate.sdk_helpers" for name in (
        "completion_cost", "cost_per_token", "token_counter", "stream_chunk_builder")},
    **{name: "tallygate.model_info" for name in (
        "get_model_info", "model_cost", "get_supported_openai_params")},
}
# LiteLLM's supports_<capability>(model) helpers, answered by tallygate.model_info.
_CAPABILITIES = ("function_calling", "parallel_function_calling", "vision", "reasoning",
                 "response_schema", "system_messages", "tool_choice", "pdf_input",
                 "web_search", "prompt_caching", "audio_input", "audio_output")
_SWITCHES = ("callbacks", "success_callback", "failure_callback")

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "Callback",
    "ConfigError",
    "CustomLogger",
    "FailureEvent",
    "ModelNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "Router",
    "TallygateError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "Usage",
    "UsageEvent",
    "__version__",
    "acompletion",
    "aembedding",
    "aimage_edit",
    "aimage_generation",
    "amoderation",
    "arerank",
    "aresponses",
    "aspeech",
    "atext_completion",
    "atranscription",
    "callbacks",
    "completion",
    "completion_cost",
    "cost_per_token",
    "drop_params",
    "embedding",
    "failure_callback",
    "flush",
    "get_model_info",
    "get_supported_openai_params",
    "image_edit",
    "image_generation",
    "model_cost",
    "moderation",
    "rerank",
    "responses",
    "speech",
    "stream_chunk_builder",
    "success_callback",
    "text_completion",
    "token_counter",
    "transcription",
]


def flush(timeout_s: float = 10.0) -> None:
    """Deliver pending usage events now, waiting up to ``timeout_s`` seconds."""
    from tallygate.runtime import runtime

    runtime.flush(timeout_s)


def _supports(capability: str) -> Any:
    def check(model: str, custom_llm_provider: str | None = None) -> bool:
        from tallygate.model_info import supports

        if custom_llm_provider and "/" not in model:
            model = f"{custom_llm_provider}/{model}"
        return supports(capability, model)
    check.__name__ = f"supports_{capability}"
    check.__doc__ = f"Whether the model supports {capability.replace('_', ' ')}."
    return check


def __getattr__(name: str) -> Any:
    if name.startswith("supports_") and name[len("supports_"):] in _CAPABILITIES:
        check = _supports(name[len("supports_"):])
        globals()[name] = check
        return check
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tallygate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Module(types.ModuleType):
    """Validates callback switches when they are set, so a missing LAGO_* variable is
    reported where "lago" is enabled, not at the first call."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SWITCHES:
            from tallygate.callback_dispatch import resolve
            from tallygate.runtime import runtime

            value = list(value)
            names = resolve(value, [], []).sinks if name != "failure_callback" else ()
            runtime.ensure_sinks(names)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Module
