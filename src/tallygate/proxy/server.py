"""Running the proxy: one process, or N worker processes sharing the port.

Workers are processes (Python threads would share one core); each binds the port with
SO_REUSEPORT and runs its own loop, gateway and delivery worker on the shared outbox.
SIGTERM stops accepting connections, lets calls and streams in flight finish, drains
the outbox for ``drain_timeout_s`` and leaves the rest for the next start.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from tallygate.config import ProxySettings

GC_THRESHOLDS = (50_000, 20, 20)  # the served process's (CPython's default: 700, 10, 10)

log = logging.getLogger("tallygate.proxy")

# How long in-flight calls and streams get to finish after SIGTERM.
INFLIGHT_GRACE_S = 30.0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class _CleanErrors(RequestHandler):
    """aiohttp's connection handler, except that a request it cannot parse gets a JSON
    400 that does not echo the offending bytes (a header line may hold a key)."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # One WARNING line, no traceback, no bytes (tallygate.log_safety rewrites it).
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        body = {"error": {"message": "malformed HTTP request", "type": "invalid_request_error",
                          "param": None, "code": "malformed_http"}}
        resp = web.Response(status=status if 400 <= status < 500 else 400,
                            body=orjson.dumps(body), content_type="application/json")
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _CleanErrors(self, loop=self._loop, **self._kwargs)


# After an early answer (a 408, a 413) aiohttp reads the rest of the body for this long
# before closing, so that the client sees the answer; its default is 10 s.
LINGERING_S = 2.0


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer malformed HTTP with a clean 400."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("lingering_time", LINGERING_S)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # same state, only the handler it makes differs
        return server


async def serve_async(settings: ProxySettings, host: str, port: int, *,
                      reuse_port: bool = False, ready: Any = None) -> None:
    from tallygate.proxy.app import create_app

    app = create_app(settings)
    runner = GatewayRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=INFLIGHT_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=2048)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # the gateway started: close its outbox and worker
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    # What start-up made (price tables, config, routes, imported modules) lives as long
    # as the process: out of the collector's sight, a full collection walks only what
    # calls make, not the ~60,000 from start-up (a full pass over those held the event
    # loop for about 40 ms on the 2-core bench machine).
    gc.collect()
    gc.freeze()
    # Calls free almost everything they make by reference count. With CPython's default
    # thresholds the collector still took about 9% of the loop's time at c=50 on the
    # bench machine (some 180 young, 16 middle and 1.5 full passes a second, the full
    # ones 15-27 ms each); with a young pass only once 50,000 more objects are alive
    # than at the last one, there was one pass (13-21 ms) in ten seconds.
    gc.set_threshold(*GC_THRESHOLDS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("tallygate listening on http://%s:%d (pid %d)", host, port, os.getpid())
    if ready is not None:
        ready()
    await stop.wait()
    log.info("tallygate stopping: finishing calls in flight, draining the outbox")
    await runner.cleanup()


class ListenError(Exception):
    """The port cannot be bound (in use, no permission)."""


def _worker_main(settings: ProxySettings, host: str, port: int, reuse_port: bool) -> None:
    _install_uvloop()
    try:
        asyncio.run(serve_async(settings, host, port, reuse_port=reuse_port))
    except ListenError as exc:
        log.error("tallygate: %s", exc)
        sys.exit(1)


def serve(settings: ProxySettings, host: str, port: int, workers: int = 1) -> int:
    if workers <= 1:
        _worker_main(settings, host, port, reuse_port=False)
        return 0
    ctx = multiprocessing.get_context("fork")
    # Made before the fork, so that every worker counts rate limits and deployment
    # failures (cooldowns) in the same memory.
    from tallygate.access.shared_limits import SharedCounters
    from tallygate.routing.worker_cooldowns import CooldownTable

    deployments = sum(len(group) for group in settings.models.values())
    # Where the workers leave their metrics snapshots for whichever serves /metrics.
    metrics_dir = tempfile.mkdtemp(prefix="tallygate-metrics-")
    settings = replace(settings, extra={**settings.extra, "workers": workers,
                                        "shared_limits": SharedCounters(),
                                        "shared_cooldowns": CooldownTable(2 * deployments + 64),
                                        "metrics_dir": metrics_dir})
    procs = [ctx.Process(target=_worker_main, args=(settings, host, port, True),
                         name=f"tallygate-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for p in procs:
        p.join()
        code = code or (p.exitcode or 0)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else 1


def configure_logging(level: str = "INFO", *, verbose: bool = False,
                      json_logs: bool = False) -> None:
    """Logs to stderr at ``level``; ``verbose`` (``litellm_settings.set_verbose``) puts
    tallygate's own loggers at DEBUG, ``json_logs`` writes one JSON object a line.
    Called again once the config is read (``force``: the handler is replaced)."""
    from tallygate.log_format import TEXT_FORMAT, JsonFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("tallygate").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    from tallygate import log_safety

    log_safety.install(handlers=True)  # no credential in any line, whoever logs it
