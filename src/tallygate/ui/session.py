"""Dashboard sessions: a signed cookie, its expiry, and the CSRF token bound to it.

The cookie holds who logged in (the master key's holder, or one virtual key by its
token, the key's SHA-256, never the key itself), a random nonce and the expiry, signed
with HMAC-SHA256. The secret is ``TALLYGATE_UI_SECRET`` when set, else derived from the
master key, so every worker process and every gateway of one deployment accepts the
same cookie without sharing memory. The CSRF token is an HMAC of the nonce: a form
posted without this session's token is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import orjson
from aiohttp import web

COOKIE = "tallygate_ui"
SECRET_ENV = "TALLYGATE_UI_SECRET"
TTL_ENV = "TALLYGATE_UI_SESSION_TTL"
DEFAULT_TTL_S = 8 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    role: Literal["master", "key"]
    token: str | None  # the virtual key's token (hash) for a key session
    nonce: str
    expires_at: float

    @property
    def is_master(self) -> bool:
        return self.role == "master"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, master_key: str | None, environ: Mapping[str, str]) -> None:
        configured = environ.get(SECRET_ENV)
        if configured:
            self._secret = hashlib.sha256(configured.encode()).digest()
        elif master_key:
            self._secret = hmac.new(master_key.encode(), b"tallygate-ui-session-v1",
                                    hashlib.sha256).digest()
        else:  # an open proxy: sessions last as long as this process
            self._secret = secrets.token_bytes(32)
        self.ttl_s = float(environ.get(TTL_ENV) or DEFAULT_TTL_S)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, role: Literal["master", "key"], token: str | None) -> tuple[str, Session]:
        session = Session(role, token, secrets.token_urlsafe(16), time.time() + self.ttl_s)
        payload = _b64(orjson.dumps({"r": role, "t": token, "n": session.nonce,
                                     "e": session.expires_at}))
        return f"{payload}.{self._sign(payload)}", session

    def read(self, request: web.Request) -> Session | None:
        """The request's valid, unexpired session, or None."""
        value = request.cookies.get(COOKIE)
        if not value or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = orjson.loads(_unb64(payload))
            session = Session(data["r"], data["t"], str(data["n"]), float(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.role not in ("master", "key") or session.expires_at <= time.time():
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._secret, f"csrf:{session.nonce}".encode(),
                        hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(str(presented),
                                                       self.csrf_token(session))


def served_over_tls(request: web.Request) -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, value: str,
               max_age: float) -> None:
    response.set_cookie(COOKIE, value, max_age=int(max_age), path="/ui", httponly=True,
                        samesite="Strict", secure=served_over_tls(request))


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/ui", httponly=True, samesite="Strict",
                        secure=served_over_tls(request))


def same_origin(request: web.Request) -> bool:
    """A browser's cross-site POST names its Origin: refuse one that is not ours."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("X-Forwarded-Host") or request.host
    return origin.split("://", 1)[-1] == host
