"""What the fake provider servers share: lifecycle, recording, errors, drops, pacing.

A fake is a real aiohttp server on 127.0.0.1 with an ephemeral port. Use it as
``async with FakeX() as fake:`` in async tests, or ``with run_in_thread(FakeX()) as fake:``
in sync tests (the server then runs on its own loop in a background thread).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

import orjson
from aiohttp import web
from multidict import CIMultiDict

DropMode = Literal["before", "mid"]


@dataclass
class Received:
    """One request the fake got."""

    method: str
    path: str
    headers: CIMultiDict[str]  # case-insensitive, as HTTP headers are
    body: dict[str, Any] | None
    query: str = ""            # the query string, without "?"


@dataclass
class FakeError:
    """An error answer to send instead of the next normal one."""

    status: int
    body: dict[str, Any] | bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeToolCall:
    """Makes the fake answer with one tool call instead of (after) its text."""

    name: str
    arguments: dict[str, Any]
    id: str = "call_fake_1"

    def openai_deltas(self, pieces: int) -> list[dict[str, Any]]:
        """The stream deltas of this tool call: its head, then its arguments in pieces."""
        args = orjson.dumps(self.arguments).decode()
        return [{"role": "assistant", "content": None, "tool_calls": [{
                    "index": 0, "id": self.id, "type": "function",
                    "function": {"name": self.name, "arguments": ""}}]},
                *({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}
                  for p in split_text(args, pieces))]

    def openai_message(self, message: dict[str, Any]) -> None:
        """Make an OpenAI chat answer's ``message`` this tool call (its content None)."""
        message["content"] = None
        message["tool_calls"] = [{
            "id": self.id, "type": "function",
            "function": {"name": self.name, "arguments": orjson.dumps(self.arguments).decode()}}]


@dataclass
class FakeTurn:
    """One scripted answer: its text and, optionally, a tool call after it."""

    reply_text: str = ""
    tool_call: FakeToolCall | None = None


def split_text(text: str, pieces: int) -> list[str]:
    """``text`` in ``pieces`` nearly equal parts (fewer if the text is shorter)."""
    pieces = max(1, min(pieces, len(text) or 1))
    size, extra = divmod(len(text), pieces)
    out, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return out


class FakeServer:
    """Base of the fakes. Knobs are plain attributes; set them at any time in a test."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.sent: list[bytes] = []                 # every answer body, as sent
        self.errors: list[FakeError] = []           # FIFO: each answers one request
        self.latency = 0.0                          # seconds before any answer
        self.chunk_delay = 0.0                      # seconds between stream frames
        self.drop_connection: DropMode | None = None  # close before / in the middle
        self.require_api_key: str | None = None
        # Broken answers (tests.fakes.malformed): a named mode for every request until
        # set back to None, or verbatim answers for the next requests (FIFO).
        self.malformed: str | None = None
        self.raw_answers: list[Any] = []
        # Per request (numbered from 0, as they arrive): an error to answer instead, or
        # None to answer normally. After ``errors``, which come first.
        self.fault: Callable[[int], FakeError | None] | None = None
        self.answered = 0  # requests answered with a success
        self._numbered = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    # -- for subclasses ---------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        # As large as the providers' own upload limits (OpenAI's audio: 25 MB).
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what tests read and set --------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every JSON body received, in order."""
        return [r.body for r in self.received if r.body is not None]

    def fail(self, status: int, message: str | None = None, *, error_type: str | None = None,
             headers: dict[str, str] | None = None, times: int = 1) -> None:
        """Answer the next ``times`` requests with this error, in the provider's shape."""
        body = self.error_body(status, message or f"fake error {status}", error_type)
        for _ in range(times):
            self.errors.append(FakeError(status, body, dict(headers or {})))

    def fail_in_bursts(self, status: int, *, every: int, burst: int,
                       message: str | None = None, headers: dict[str, str] | None = None
                       ) -> None:
        """From now on, answer ``burst`` requests of every ``every`` with this error
        (``every=1, burst=1``: all of them); ``heal()`` stops it."""
        body = self.error_body(status, message or f"fake error {status}", None)
        error = FakeError(status, body, dict(headers or {}))
        self.fault = lambda n: error if n % every < burst else None

    def heal(self) -> None:
        self.fault = None

    # -- helpers for handlers ---------------------------------------------------------

    async def record(self, request: web.Request) -> Received:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        got = Received(request.method, request.path, CIMultiDict(request.headers),
                       body if isinstance(body, dict) else None, request.query_string)
        self.received.append(got)
        if self.latency:
            await asyncio.sleep(self.latency)
        return got

    def take_error(self) -> web.Response | None:
        number = self._numbered
        self._numbered += 1
        if self.errors:
            err = self.errors.pop(0)
        elif self.fault is not None and (found := self.fault(number)) is not None:
            err = found
        else:
            self.answered += 1
            return None
        data = err.body if isinstance(err.body, bytes) else orjson.dumps(err.body)
        return web.Response(status=err.status, body=data, headers=err.headers,
                            content_type="application/json")

    def take_raw(self) -> Any:
        return self.raw_answers.pop(0) if self.raw_answers else None

    async def send_raw(self, request: web.Request, raw: Any) -> web.StreamResponse:
        """Send a ``malformed.RawAnswer`` as it is (frames one write each)."""
        headers = {"Content-Type": raw.content_type, **raw.headers}
        if isinstance(raw.body, bytes):
            return web.Response(status=raw.status, body=raw.body, headers=headers)
        response = web.StreamResponse(status=raw.status, headers=headers)
        await response.prepare(request)
        try:
            for frame in raw.body:
                await response.write(frame)
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
            await response.write_eof()
        except ConnectionError:
            pass  # the gateway stopped reading (it does after an error event): fine
        return response

    def error(self, status: int, message: str, error_type: str | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(
            self.error_body(status, message, error_type)), content_type="application/json")

    def _drop(self, request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()

    async def send_json(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        data = orjson.dumps(body)
        self.sent.append(data)
        if self.drop_connection is None:
            return web.Response(body=data, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        if self.drop_connection == "mid":
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
        self._drop(request)
        return response

    async def send_stream(self, request: web.Request, frames: list[bytes],
                          content_type: str = "text/event-stream") -> web.StreamResponse:
        """Send stream frames (SSE by default) with ``chunk_delay`` between them; honours
        ``drop_connection``."""
        response = web.StreamResponse(headers={"Content-Type": content_type,
                                               "Cache-Control": "no-cache"})
        if self.drop_connection == "before":
            self._drop(request)
            return response
        await response.prepare(request)
        cut = len(frames) // 2 if self.drop_connection == "mid" else len(frames)
        self.sent.append(b"".join(frames[:cut]))
        for i, frame in enumerate(frames[:cut]):
            if i and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await response.write(frame)
        if self.drop_connection == "mid":
            self._drop(request)
            return response
        await response.write_eof()
        return response


S = TypeVar("S", bound=FakeServer)


@contextmanager
def run_in_thread(server: S) -> Iterator[S]:
    """Run ``server`` on its own event loop in a daemon thread (for sync tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
