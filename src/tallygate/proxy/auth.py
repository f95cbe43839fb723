"""Who is calling: the key a request presents (never logged)."""

from __future__ import annotations

from aiohttp import web


def presented_key(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer``, or ``x-api-key`` / ``api-key`` headers,
    or Google's ``x-goog-api-key`` header / ``?key=`` query (Gemini clients)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return (request.headers.get("x-api-key") or request.headers.get("api-key")
            or request.headers.get("x-goog-api-key") or request.query.get("key") or None)
