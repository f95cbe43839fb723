"""A fast OpenAI-compatible upstream for the benchmarks: raw asyncio protocol on uvloop.

Answers ``POST /v1/chat/completions`` with a fixed completion that carries usage, or with
an SSE stream of ``--chunks`` content chunks (plus a usage chunk when the request asks
``stream_options.include_usage``) and ``[DONE]``. ``--latency-ms`` delays every answer,
``--chunk-delay-ms`` spaces the stream chunks. ``GET /health`` and ``GET /v1/models``
answer 200. ``GET /_stats`` tells how many chat completions (plain and streamed) were
answered; ``POST /_reset`` zeroes the counts. A benchmark compares those with the
events that reached Lago: every answered call must be billed. Every answer is prebuilt
bytes, so one process serves tens of thousands of requests a second and is not what a
benchmark measures.

    python bench/upstream.py --port 18000 [--chunks 20] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
PROMPT_TOKENS, COMPLETION_TOKENS = 12, 8
COUNTS = {"chat": 0, "stream": 0}


def _http(status: str, ctype: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Answers:
    def __init__(self, chunks: int) -> None:
        created = int(time.time())
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                 "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}
        body = {"id": "chatcmpl-bench", "object": "chat.completion", "created": created,
                "model": "gpt-4o-mini", "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "Hello from bench."}}],
                "usage": usage}
        self.completion = _http("200 OK", b"application/json",
                                json.dumps(body, separators=(",", ":")).encode())
        self.models = _http("200 OK", b"application/json", b'{"object":"list","data":[{"id":'
                            b'"gpt-4o-mini","object":"model","created":0,"owned_by":"bench"}]}')
        self.health = _http("200 OK", b"application/json", b'{"status":"ok"}')
        self.not_found = _http("404 Not Found", b"application/json",
                               b'{"error":{"message":"no route","type":"invalid_request_error"}}')
        self.stream_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
                "model": "gpt-4o-mini", "system_fingerprint": "fp_bench"}

        def frame(obj: dict[str, object]) -> bytes:
            return _chunked(b"data: " + json.dumps({**base, **obj}, separators=(",", ":"))
                            .encode() + b"\n\n")

        self.frames: list[bytes] = []
        for i in range(chunks):
            delta: dict[str, str] = {"content": "tok "}
            if i == 0:
                delta["role"] = "assistant"
            last = i == chunks - 1
            self.frames.append(frame({"choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                   "finish_reason": "stop" if last else None}]}))
        self.usage_frame = frame({"choices": [], "usage": {
            "prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks,
            "total_tokens": PROMPT_TOKENS + chunks}})
        self.done = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def stream(self, usage: bool) -> list[bytes]:
        frames = [self.stream_head + self.frames[0], *self.frames[1:]]
        if usage:
            frames.append(self.usage_frame)
        frames.append(self.done)
        return frames


class Upstream(asyncio.Protocol):
    answers: Answers
    latency = 0.0
    chunk_delay = 0.0

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pending: list[list[bytes]] = []   # answers waiting behind a delayed one
        self.busy = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(lower[i + 17: j if j > 0 else None])
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4: end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
        parts = line.split(b" ")
        method, path = parts[0], parts[1] if len(parts) > 1 else b"/"
        a = self.answers
        if method == b"POST" and path.endswith(b"/chat/completions"):
            if STREAM_RE.search(body):
                COUNTS["stream"] += 1
                frames = a.stream(bool(USAGE_RE.search(body)))
            else:
                COUNTS["chat"] += 1
                frames = [a.completion]
        elif path == b"/_stats":
            frames = [_http("200 OK", b"application/json", json.dumps(COUNTS).encode())]
        elif method == b"POST" and path == b"/_reset":
            COUNTS.update(chat=0, stream=0)
            frames = [a.health]
        elif method == b"GET" and path.endswith(b"/models"):
            frames = [a.models]
        elif method == b"GET" and path.startswith(b"/health"):
            frames = [a.health]
        else:
            frames = [a.not_found]
        if not self.latency and not self.chunk_delay and not self.busy:
            assert self.transport is not None
            self.transport.write(b"".join(frames))
            return
        self.pending.append(frames)
        if not self.busy:
            self.busy = True
            self.task = asyncio.ensure_future(self.drain_pending())

    async def drain_pending(self) -> None:
        while self.pending:
            frames = self.pending.pop(0)
            if self.latency:
                await asyncio.sleep(self.latency)
            for k, f in enumerate(frames):
                if self.transport is None:
                    return
                if k and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                self.transport.write(f)
        self.busy = False


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    print(f"upstream on http://{host}:{port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18000)
    p.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    p.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between chunks")
    args = p.parse_args()
    Upstream.answers = Answers(args.chunks)
    Upstream.latency = args.latency_ms / 1000
    Upstream.chunk_delay = args.chunk_delay_ms / 1000
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
