"""Who is calling: the master key check (constant time; keys never logged)."""

from __future__ import annotations

import hmac

from aiohttp import web

from tallygate.errors import AuthenticationError


def presented_key(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer``, or ``x-api-key`` / ``api-key`` headers."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return request.headers.get("x-api-key") or request.headers.get("api-key")


def check_master_key(request: web.Request, master_key: str | None) -> None:
    if master_key is None:
        return
    key = presented_key(request)
    if key is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'",
                                  code="missing_api_key")
    if not hmac.compare_digest(key.encode(), master_key.encode()):
        raise AuthenticationError("invalid API key")
