"""Routing options a request may carry in its body, as LiteLLM accepts them there:
``fallbacks`` (model group names, or ``{"model": name, **params}`` whose call uses those
request params, e.g. its own ``messages``), ``num_retries``, ``timeout`` and
``disable_fallbacks``. They are the gateway's, so they are taken off the body before it
goes upstream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tallygate.errors import BadRequestError
from tallygate.routing.settings import Fallback, FallbackTo, fallback_entry

BODY_KEYS = ("fallbacks", "num_retries", "timeout", "disable_fallbacks")


@dataclass(frozen=True, slots=True)
class RouteOptions:
    num_retries: int | None = None
    timeout: float | None = None
    fallbacks: tuple[Fallback, ...] | None = None     # None: the config's
    disable_fallbacks: bool = False

    @property
    def fallback_params(self) -> bool:
        """Whether a fallback of the request carries params of its own."""
        return any(isinstance(f, FallbackTo) for f in self.fallbacks or ())


NO_OPTIONS = RouteOptions()


def _bad(message: str, path: str) -> Exception:
    return BadRequestError(f"'{path}' {message}", param=path, code="invalid_type")


def _fallbacks(value: Any) -> tuple[Fallback, ...]:
    if not isinstance(value, list):
        raise BadRequestError("'fallbacks' must be a list of model names", param="fallbacks",
                              code="invalid_type")
    return tuple(fallback_entry(item, f"fallbacks[{i}]", _bad)
                 for i, item in enumerate(value))


def pop_options(body: dict[str, Any]) -> RouteOptions:
    """Take the routing options off ``body``; a wrong type is a 400 naming the field."""
    if not any(key in body for key in BODY_KEYS):
        return NO_OPTIONS
    retries = body.pop("num_retries", None)
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                or retries < 0):
        raise BadRequestError("'num_retries' must be a non-negative integer",
                              param="num_retries", code="invalid_type")
    timeout = body.pop("timeout", None)
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or timeout <= 0):
        raise BadRequestError("'timeout' must be a positive number of seconds",
                              param="timeout", code="invalid_type")
    raw = body.pop("fallbacks", None)
    disable = body.pop("disable_fallbacks", None)
    if disable is not None and not isinstance(disable, bool):
        raise BadRequestError("'disable_fallbacks' must be a boolean",
                              param="disable_fallbacks", code="invalid_type")
    return RouteOptions(num_retries=retries,
                        timeout=float(timeout) if timeout is not None else None,
                        fallbacks=_fallbacks(raw) if raw is not None else None,
                        disable_fallbacks=bool(disable))
