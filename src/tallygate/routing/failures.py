"""What kind of failure an attempt met, and what it says about its deployment.

Kinds follow LiteLLM's exception classes (the names ``retry_policy`` and
``allowed_fails_policy`` use). A kind is read from the status code first; only the two
kinds no status tells apart (a prompt over the context window, a content-policy
refusal: both 400s) are read from the provider's error code or message.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

from tallygate.errors import (
    TallygateError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from tallygate.routing.settings import ErrorKind

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length",
                            "context_window_exceeded"})
_CONTEXT_TEXT = ("context length", "context window", "prompt is too long",
                 "maximum context", "too many tokens", "input is too long",
                 "reduce the length of the messages")
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter",
                           "content_policy"})
_POLICY_TEXT = ("content management policy", "content policy", "content filter",
                "safety system", "flagged as potentially violating")


@dataclass(frozen=True, slots=True)
class Failure:
    kind: ErrorKind
    status: int
    retry_after_s: float | None     # what the upstream asked for, when it said
    upstream: bool                  # the provider failed (not our own refusal)

    @property
    def retryable(self) -> bool:
        """Worth another try by default: 429, 5xx, timeouts, refused or dropped
        connections. Never 400 / 401 / 403 / 404 / 422."""
        return self.kind in ("rate_limit", "server", "timeout")

    @property
    def blames_deployment(self) -> bool:
        """Counts toward the deployment's cooldown: it, not the request, is at fault."""
        return self.upstream and self.kind in ("rate_limit", "server", "timeout", "auth",
                                               "not_found")


def _matches(exc: TallygateError, codes: frozenset[str], texts: tuple[str, ...]) -> bool:
    if exc.code is not None and exc.code in codes:
        return True
    message = exc.message.lower()
    return any(t in message for t in texts)


def classify(exc: BaseException) -> Failure | None:
    """The failure an attempt's exception stands for; None for an error that is no
    upstream's (a bug, our own 400 before sending): the router passes it on as it is."""
    if not isinstance(exc, UpstreamError):
        return None
    status = exc.status_code
    if isinstance(exc, UpstreamTimeoutError):
        return Failure("timeout", status, None, True)
    if isinstance(exc, UpstreamConnectionError):
        return Failure("server", status, None, True)
    if status == 429:
        return Failure("rate_limit", status, retry_after(exc), True)
    if status in (400, 413, 422):
        if _matches(exc, _CONTEXT_CODES, _CONTEXT_TEXT):
            return Failure("context_window", status, None, True)
        if _matches(exc, _POLICY_CODES, _POLICY_TEXT):
            return Failure("content_policy", status, None, True)
        return Failure("bad_request", status, None, True)
    if status in (401, 403):
        return Failure("auth", status, None, True)
    if status == 404:
        return Failure("not_found", status, None, True)
    if status == 408:
        return Failure("timeout", status, retry_after(exc), True)
    if 400 <= status < 500:
        return Failure("bad_request", status, None, True)
    return Failure("server", status, retry_after(exc), True)


def retry_after(exc: TallygateError) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    headers = {k.lower(): v for k, v in exc.headers.items()}
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
