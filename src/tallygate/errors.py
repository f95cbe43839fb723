"""One exception tree; every error maps to an OpenAI-shaped error body and status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tallygate.scrub import scrub


class TallygateError(Exception):
    """Base of every error tallygate raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        # Every error message is scrubbed here, so that no credential (an upstream key an
        # upstream quoted back, the master key, a virtual key) reaches a caller or a log.
        message = scrub(message)
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error shape ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


class InternalError(TallygateError):
    """Something failed inside tallygate itself (500)."""

    default_code = "internal_error"


class ConfigError(TallygateError):
    """A configuration value is missing or wrong; raised at start, not at the first call."""

    error_type = "invalid_configuration"


class BadRequestError(TallygateError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(TallygateError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(TallygateError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFoundError(TallygateError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class RequestTimeoutError(TallygateError):
    """The request body did not arrive in time (e.g. shorter than its Content-Length)."""

    status_code = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class MethodNotAllowedError(TallygateError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTooLargeError(TallygateError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(TallygateError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class BudgetExceededError(RateLimitError):
    error_type = "budget_exceeded"
    default_code = "budget_exceeded"


class ServiceUnavailableError(TallygateError):
    """Nothing can serve the call right now (every deployment cooling down); retry later."""

    status_code = 503
    error_type = "service_unavailable"
    default_code = "no_deployments_available"


class UpstreamError(TallygateError):
    """The provider answered with an error, or could not be reached."""

    status_code = 502
    error_type = "upstream_error"

    def __init__(self, message: str, *, status_code: int = 502, param: str | None = None,
                 code: str | None = None, error_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self.status_code = status_code  # type: ignore[misc]  # per-instance: mirrors upstream
        if error_type:
            self.error_type = error_type  # type: ignore[misc]


class UpstreamBadRequestError(UpstreamError, BadRequestError):
    """The provider refused the request (400, 422)."""


class UpstreamAuthenticationError(UpstreamError, AuthenticationError):
    """The provider refused the key (401)."""


class UpstreamPermissionDeniedError(UpstreamError, PermissionDeniedError):
    """The provider refused the key access (403)."""


class UpstreamNotFoundError(UpstreamError, NotFoundError):
    """The provider knows no such model or route (404)."""


class UpstreamRateLimitError(UpstreamError, RateLimitError):
    """The provider is rate limiting us (429); ``headers`` keep its Retry-After."""


_UPSTREAM_BY_STATUS: dict[int, type[UpstreamError]] = {
    400: UpstreamBadRequestError, 422: UpstreamBadRequestError,
    401: UpstreamAuthenticationError, 403: UpstreamPermissionDeniedError,
    404: UpstreamNotFoundError, 429: UpstreamRateLimitError,
}


def retry_after_of(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's Retry-After, as the header to pass on to our caller (none if absent)."""
    retry_after = headers.get("retry-after") or headers.get("Retry-After")
    return {"Retry-After": retry_after} if retry_after else {}


def upstream_error_for(status: int, message: str, *, param: str | None = None,
                       code: str | None = None, error_type: str | None = None,
                       headers: dict[str, str] | None = None) -> UpstreamError:
    """The UpstreamError for an upstream's error status: 4xx keep their status (and are
    also catchable as the matching tallygate error, e.g. RateLimitError), 5xx are 502."""
    out_status = status if 400 <= status < 500 else 502
    if status in (401, 403):
        # The provider refused *our* key; its message may quote part of that key
        # ("Incorrect API key provided: sk-...abcd"), which no caller may see.
        message = (f"the upstream provider refused the gateway's credentials ({status}); "
                   "check the api_key configured for this model")
    cls = _UPSTREAM_BY_STATUS.get(status, UpstreamError)
    return cls(message, status_code=out_status, param=param, code=code,
               error_type=error_type, headers=headers)


class UpstreamTimeoutError(UpstreamError):
    error_type = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=504, code="upstream_timeout")


class UpstreamConnectionError(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=502, code="upstream_unreachable")
