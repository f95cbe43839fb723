"""Running the proxy: one process, or N worker processes sharing the port.

Workers are processes (Python threads would share one core); each binds the port with
SO_REUSEPORT and runs its own loop, gateway and delivery worker on the shared outbox.
SIGTERM stops accepting connections, lets calls and streams in flight finish, drains
the outbox for ``drain_timeout_s`` and leaves the rest for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from typing import Any

from aiohttp import web

from tallygate.config import ProxySettings

log = logging.getLogger("tallygate.proxy")

# How long in-flight calls and streams get to finish after SIGTERM.
INFLIGHT_GRACE_S = 30.0


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on exotic platforms
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve_async(settings: ProxySettings, host: str, port: int, *,
                      reuse_port: bool = False, ready: Any = None) -> None:
    from tallygate.proxy.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=INFLIGHT_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=2048)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # the gateway started: close its outbox and worker
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
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
    # Made before the fork, so that every worker counts rate limits in the same memory.
    from tallygate.access.shared_limits import SharedCounters

    # Where the workers leave their metrics snapshots for whichever serves /metrics.
    metrics_dir = tempfile.mkdtemp(prefix="tallygate-metrics-")
    settings = replace(settings, extra={**settings.extra, "shared_limits": SharedCounters(),
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
