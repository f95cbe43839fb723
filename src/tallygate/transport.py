"""The only code that does upstream HTTP: one pooled aiohttp session per event loop.

aiohttp is used rather than httpx because its pool holds up under high concurrency
(httpx's async pool degrades badly there: encode/httpx#3215). A session is bound to the
loop that made it, so each loop (the proxy's, the SDK's background loop, a user's
loop calling ``acompletion``) gets its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from tallygate.errors import UpstreamConnectionError, UpstreamTimeoutError
from tallygate.providers.base import UpstreamRequest

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

DEFAULT_TIMEOUT_S = 600.0


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_closers: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}
_starting: set[asyncio.Task[None]] = set()


async def _close_at_loop_shutdown(s: aiohttp.ClientSession) -> AsyncIterator[None]:
    # A suspended async generator is finalised by the loop's shutdown_asyncgens(), which
    # asyncio.run() calls before closing the loop: the session closes on its own loop.
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        _sessions.pop(loop, None)
        _closers.pop(loop, None)
        await s.close()


def session() -> aiohttp.ClientSession:
    """The pooled session of the running loop, made on first use and closed when the
    loop shuts down (so ``asyncio.run(acompletion(...))`` leaves nothing open)."""
    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        # No default timeout: every call passes its own; cookies would leak between users.
        s = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                  timeout=aiohttp.ClientTimeout(total=None),
                                  auto_decompress=True, skip_auto_headers=("User-Agent",))
        _sessions[loop] = s
        closer = _close_at_loop_shutdown(s)
        _closers[loop] = closer
        task = loop.create_task(_start(closer))
        _starting.add(task)  # the loop holds tasks weakly
        task.add_done_callback(_starting.discard)
    return s


async def _start(gen: AsyncIterator[None]) -> None:
    await gen.__anext__()


async def close_session() -> None:
    """Close the running loop's session (proxy shutdown, tests)."""
    loop = asyncio.get_running_loop()
    s = _sessions.pop(loop, None)
    closer = _closers.pop(loop, None)
    if s is not None and not s.closed:
        await s.close()
    if closer is not None:
        await closer.aclose()  # type: ignore[attr-defined]


def _url(request: UpstreamRequest) -> str | URL:
    # aiohttp re-quotes a str URL (%3A becomes ':'), which breaks a signature over the path.
    return URL(request.url, encoded=True) if request.encoded_url else request.url


def _body(request: UpstreamRequest) -> tuple[Any, dict[str, str]]:
    """What aiohttp sends: the bytes, or a streamed upload (a fresh iteration each post,
    so a post again sends it whole) with its exact length, not chunked (not every
    provider takes a chunked upload)."""
    if request.upload is None:
        return request.body, request.headers
    return (request.upload.chunks(),
            {**request.headers, "Content-Length": str(request.upload.length)})


def _late(timeout: float | None) -> str:
    return f"upstream did not answer within {timeout or DEFAULT_TIMEOUT_S}s"


@functools.lru_cache(maxsize=64)
def _timeout(total: float | None) -> aiohttp.ClientTimeout:
    t = total if total is not None else DEFAULT_TIMEOUT_S
    # sock_read bounds the wait for each piece of a stream, total bounds a plain call.
    return aiohttp.ClientTimeout(total=t, sock_connect=min(t, 30.0))


@functools.lru_cache(maxsize=64)
def _stream_timeout(total: float | None) -> aiohttp.ClientTimeout:
    t = total if total is not None else DEFAULT_TIMEOUT_S
    return aiohttp.ClientTimeout(total=None, sock_connect=min(t, 30.0), sock_read=t)


async def post(request: UpstreamRequest, timeout: float | None) -> UpstreamResponse:
    """POST and read the whole answer; network failures become Upstream*Error."""
    data, headers = _body(request)
    try:
        async with session().post(_url(request), data=data, headers=headers,
                                  timeout=_timeout(timeout)) as resp:
            body = await resp.read()
            return UpstreamResponse(resp.status, resp.headers, body)
    except TimeoutError:
        raise UpstreamTimeoutError(_late(timeout)) from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectionError(f"cannot connect to upstream {exc.host}:{exc.port}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"upstream connection failed: {type(exc).__name__}") from None


@dataclass(slots=True)
class UpstreamStream:
    status: int
    headers: CIMultiDictProxy[str]
    response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self.response.content.iter_any():
                yield data
        except TimeoutError:
            raise UpstreamTimeoutError("upstream stream stalled") from None
        except aiohttp.ClientError as exc:
            raise UpstreamConnectionError(
                f"upstream stream broke: {type(exc).__name__}") from None

    async def read(self) -> bytes:
        return await self.response.read()


@asynccontextmanager
async def open_stream(request: UpstreamRequest,
                      timeout: float | None) -> AsyncIterator[UpstreamStream]:
    """POST and hand back the answer unread, for streaming; closes it on exit."""
    data, headers = _body(request)
    try:
        resp = await session().post(_url(request), data=data, headers=headers,
                                    timeout=_stream_timeout(timeout))
    except TimeoutError:
        raise UpstreamTimeoutError(_late(timeout)) from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamConnectionError(f"cannot connect to upstream {exc.host}:{exc.port}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"upstream connection failed: {type(exc).__name__}") from None
    try:
        yield UpstreamStream(resp.status, resp.headers, resp)
    finally:
        resp.close()  # closing an unfinished answer drops its connection: upstream stops
