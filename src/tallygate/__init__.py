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
    from tallygate.sdk import (
        acompletion,
        aembedding,
        completion,
        embedding,
    )

__version__ = "0.1.0"

callbacks: list[Callback] = []
success_callback: list[Callback] = []
failure_callback: list[Callback] = []

_LAZY = {
    "completion": "tallygate.sdk",
    "acompletion": "tallygate.sdk",
    "embedding": "tallygate.sdk",
    "aembedding": "tallygate.sdk",
}
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
    "TallygateError",
    "UpstreamConnectionError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "Usage",
    "UsageEvent",
    "__version__",
    "acompletion",
    "aembedding",
    "callbacks",
    "completion",
    "embedding",
    "failure_callback",
    "flush",
    "success_callback",
]


def flush(timeout_s: float = 10.0) -> None:
    """Deliver pending usage events now, waiting up to ``timeout_s`` seconds."""
    from tallygate.runtime import runtime

    runtime.flush(timeout_s)


def __getattr__(name: str) -> Any:
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
