"""OAuth2 access tokens for Google Cloud (Vertex AI) from a service account, via google-auth.

google-auth builds and signs the JWT assertion and trades it for an access token at the
key's ``token_uri``; no JWT code of ours. Its refresh is blocking, so it runs in a
worker thread, never on an event loop. A token is cached until shortly before it
expires and shared by every call (on any event loop) that uses the same key; a refresh
is done by one call at a time while the others wait for its result. The private key
stays inside google-auth's credentials object: never logged, never in an error, never
in a repr.

google-auth is imported on first use, so ``import tallygate`` stays cheap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tallygate.errors import (
    ConfigError,
    UpstreamAuthenticationError,
    UpstreamConnectionError,
    UpstreamError,
)

log = logging.getLogger("tallygate.providers.google_auth")

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Google's tokens live an hour; take a new one this long before the old one expires.
EXPIRY_MARGIN_S = 300.0
_REQUIRED = ("client_email", "private_key", "token_uri")


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A parsed service-account key file. Only the email and project are shown."""

    client_email: str
    project_id: str | None
    info: Mapping[str, Any] = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """Tells keys apart without holding their text as a dict key."""
        return hashlib.sha256(orjson.dumps(dict(self.info), option=orjson.OPT_SORT_KEYS)
                              ).hexdigest()


def load_service_account(value: object, where: str) -> ServiceAccount:
    """A service account from a key file's path, its JSON text, or the parsed mapping.
    Errors name ``where`` (the litellm_params key) and quote nothing of the key."""
    if isinstance(value, Mapping):
        info: object = dict(value)
    elif isinstance(value, str) and value.strip().startswith("{"):
        try:
            info = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{where}: is neither a readable key file path nor valid "
                              "service-account JSON") from None
    elif isinstance(value, str) and value.strip():
        path = Path(value.strip()).expanduser()
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read the key file {str(path)!r} "
                              f"({exc.strerror})") from None
        try:
            info = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ConfigError(f"{where}: the key file {str(path)!r} is not valid "
                              "JSON") from None
    else:
        raise ConfigError(f"{where}: must be a key file path or service-account JSON")
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: service-account JSON must be an object")
    kind = info.get("type")
    if kind is not None and kind != "service_account":
        raise ConfigError(f"{where}: credentials of type {kind!r} are not supported; "
                          "use a service account key (type service_account)")
    missing = [k for k in _REQUIRED if not isinstance(info.get(k), str) or not info.get(k)]
    if missing:
        raise ConfigError(f"{where}: the service-account JSON lacks {', '.join(missing)}")
    project = info.get("project_id")
    return ServiceAccount(client_email=info["client_email"],
                          project_id=project if isinstance(project, str) and project else None,
                          info=info)


_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _refresh_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="tallygate-google-auth")
        return _executor


class TokenSource:
    """Access tokens of one service account, cached and refreshed one at a time."""

    def __init__(self, account: ServiceAccount, scope: str = CLOUD_PLATFORM_SCOPE) -> None:
        self.account = account
        self._scope = scope
        self._lock = threading.Lock()   # guards the fields below; held only briefly
        self._token: str | None = None
        self._valid_until = 0.0         # time.monotonic() after which it is refreshed
        self._pending: concurrent.futures.Future[str] | None = None
        self._credentials: Any = None
        self._transport: Any = None

    def __repr__(self) -> str:
        return f"TokenSource({self.account.client_email!r})"

    def check(self) -> None:
        """Build google-auth's credentials now (a bad private key fails here, at
        config load, not at the first call)."""
        self._credentials_object()

    def _credentials_object(self) -> Any:
        if self._credentials is None:
            from google.oauth2 import service_account

            try:
                build = service_account.Credentials.from_service_account_info
                self._credentials = build(dict(self.account.info),  # type: ignore[no-untyped-call]
                                          scopes=[self._scope])
            except (ValueError, TypeError) as exc:
                # google-auth's messages name fields, never the key's text.
                raise ConfigError(f"the service account key of {self.account.client_email} "
                                  f"cannot be used: {type(exc).__name__}") from None
        return self._credentials

    async def token(self, *, rejected: str | None = None) -> str:
        """A valid access token. ``rejected``: a token the upstream refused (401); it
        is dropped unless a newer one replaced it already."""
        with self._lock:
            if rejected is not None and rejected == self._token:
                self._token = None
            if self._token is not None and time.monotonic() < self._valid_until:
                return self._token
            if self._pending is None:
                self._pending = _refresh_executor().submit(self._refresh)
            pending = self._pending
        return await _token_result(pending, self.account)

    def _refresh(self) -> str:
        """In a worker thread: one token fetch through google-auth."""
        try:
            from google.auth.transport.requests import Request

            credentials = self._credentials_object()
            if self._transport is None:
                self._transport = Request()
            credentials.refresh(self._transport)
            token = str(credentials.token)
            lifetime = _seconds_left(credentials.expiry)
            with self._lock:
                self._token = token
                self._valid_until = time.monotonic() + lifetime - EXPIRY_MARGIN_S
                self._pending = None
            return token
        except BaseException:
            with self._lock:
                self._pending = None
            raise


def _seconds_left(expiry: object) -> float:
    # google-auth keeps expiry as a naive UTC datetime.
    if not isinstance(expiry, datetime.datetime):
        return 3600.0
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return (expiry.replace(tzinfo=None) - now).total_seconds()


async def _token_result(pending: concurrent.futures.Future[str],
                        account: ServiceAccount) -> str:
    from google.auth import exceptions

    try:
        # Shielded: a caller that gives up must not cancel the refresh others wait for.
        return await asyncio.shield(asyncio.wrap_future(pending))
    except exceptions.RefreshError as exc:
        # The token endpoint's own words name the problem (invalid_grant...), never the key.
        log.warning("the Google token endpoint refused the service account %s: %s",
                    account.client_email, str(exc)[:300])
        if getattr(exc, "retryable", False):  # the endpoint failed (5xx), not the key
            raise UpstreamError("the Google OAuth token endpoint failed; try again") from None
        raise UpstreamAuthenticationError(
            "the Google token endpoint refused the gateway's service account credentials; "
            "check vertex_credentials", status_code=401) from None
    except exceptions.TransportError as exc:
        log.warning("cannot reach the Google token endpoint for %s: %s",
                    account.client_email, type(exc).__name__)
        raise UpstreamConnectionError("cannot reach the Google OAuth token endpoint") from None


_sources_lock = threading.Lock()
_sources: dict[str, TokenSource] = {}


def token_source(account: ServiceAccount) -> TokenSource:
    """The one TokenSource of this service account (shared by every deployment and
    every event loop that uses it)."""
    key = account.fingerprint
    with _sources_lock:
        source = _sources.get(key)
        if source is None:
            source = _sources[key] = TokenSource(account)
        return source
