"""Run the proxy for tests: in-process (a thread with its own loop) or as the real CLI.

    settings = proxy_settings(tmp_path, config_dict, environ)
    with run_proxy(settings) as proxy:           # in-process
        client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY)
        proxy.gateway.outbox ...                 # the running Gateway
        proxy.call(coro)                         # run a coroutine on the proxy's loop

    with run_cli(tmp_path, config_dict, env) as proc:   # `tallygate --config ...`
        ...; proc.stop(); proc.stderr

Every outbox database and JSONL usage log lives under the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anthropic
import openai
import pytest
import yaml
from aiohttp import web

from tallygate.config import ProxySettings, parse_config
from tallygate.proxy.app import CALL_ID_HEADER, COST_HEADER, GATEWAY, create_app
from tallygate.proxy.gateway import Gateway
from tallygate.proxy.server import GatewayRunner
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread

if TYPE_CHECKING:
    from google import genai

T = TypeVar("T")

__all__ = ["CALL_ID_HEADER", "COST_HEADER"]  # re-exported for the tests

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / ".venv" / "bin" / "tallygate"
MASTER_KEY = "sk-1234"
UPSTREAM_KEY = "sk-upstream-secret-4711"
EVENT_CODE = "llm_usage"


def lago_env(lago: FakeLago) -> dict[str, str]:
    return {"LAGO_API_BASE": lago.url, "LAGO_API_KEY": TEST_API_KEY,
            "LAGO_API_EVENT_CODE": EVENT_CODE}


def openai_entry(name: str, base_url: str, model: str = "gpt-4o-mini",
                 **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"openai/{model}", "api_base": base_url, "api_key": UPSTREAM_KEY, **params}}


def anthropic_entry(name: str, base_url: str, model: str = "claude-3-5-haiku-20241022",
                    **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {
        "model": f"anthropic/{model}", "api_base": base_url, "api_key": UPSTREAM_KEY,
        **params}}


def config_dict(models: list[dict[str, Any]], tmp_path: Path, *, lago: bool = True,
                general: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A LiteLLM-shaped config with the outbox and JSONL log under ``tmp_path``."""
    cfg: dict[str, Any] = {
        "model_list": models,
        "general_settings": {"master_key": MASTER_KEY,
                             "database_url": str(tmp_path / "outbox.db"),
                             "jsonl_path": str(tmp_path / "usage.jsonl"),
                             **(general or {})},
    }
    if lago:
        cfg["litellm_settings"] = {"callbacks": ["lago"]}
    return cfg


def proxy_settings(tmp_path: Path, cfg: Mapping[str, Any],
                   environ: Mapping[str, str] | None = None) -> ProxySettings:
    return parse_config(dict(cfg), dict(environ or {}), config_path=tmp_path / "config.yaml")


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)


async def await_for(check: Callable[[], T], timeout: float = 10.0,
                    interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- in-process --------------------------------------------------------------------


@dataclass
class RunningProxy:
    base_url: str       # http://127.0.0.1:PORT (no /v1)
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    app: web.Application | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the proxy's loop (e.g. outbox reads) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def outbox_stats(self, sink: str | None = None) -> Any:
        """The outbox's rows (of ``sink``; every sink's, the ledger's too, by default)."""
        assert self.gateway.outbox is not None
        return self.call(self.gateway.outbox.stats(sink))


@contextmanager
def run_proxy(settings: ProxySettings) -> Iterator[RunningProxy]:
    """``create_app(settings)`` served on 127.0.0.1:<free port> by a background thread
    with its own loop, so sync clients (the openai SDK) can call it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tallygate-proxy", daemon=True)
    thread.start()
    app = create_app(settings)
    runner = GatewayRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(15)
        yield RunningProxy(f"http://127.0.0.1:{port}", app[GATEWAY], loop, app)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --- the real CLI in a subprocess --------------------------------------------------


@dataclass
class CliProxy:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    config_path: Path
    returncode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            self.returncode = self.proc.wait(timeout)
        return self.returncode


def write_config(tmp_path: Path, cfg: Mapping[str, Any] | str,
                 name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(dict(cfg)))
    return path


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal explicit environment: no inherited LAGO_* or provider keys."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    env.update(extra or {})
    return env


def run_cli_once(config_path: Path, env: Mapping[str, str], *args: str,
                 timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``tallygate --config ...`` expecting it to exit by itself (config errors)."""
    return subprocess.run([str(CLI), "--config", str(config_path), "--host", "127.0.0.1",
                           "--port", str(free_port()), *args],
                          env=dict(env), capture_output=True, text=True, timeout=timeout)


def _alive(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/health/liveliness", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def run_cli(tmp_path: Path, cfg: Mapping[str, Any] | str, env: Mapping[str, str], *,
            workers: int = 1, startup_timeout: float = 20.0,
            config_name: str = "config.yaml", args: tuple[str, ...] = ()) -> Iterator[CliProxy]:
    """The real ``tallygate --config <yaml> --port N`` until SIGTERM at exit."""
    config_path = write_config(tmp_path, cfg, config_name)
    port = free_port()
    stderr_path = tmp_path / f"proxy-{port}.stderr"
    cmd = [str(CLI), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cmd += list(args)
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.DEVNULL, stderr=err,
                                cwd=tmp_path)
    cli = CliProxy(proc, port, stderr_path, config_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _alive(cli.base_url):
            if proc.poll() is not None:
                raise AssertionError(f"tallygate exited with {proc.returncode}:\n{cli.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"tallygate did not come up:\n{cli.stderr}")
            time.sleep(0.05)
        yield cli
    finally:
        if proc.poll() is None:
            try:
                cli.stop()
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise


async def post_json(url: str, body: Any, *, key: str | None = MASTER_KEY,
                    headers: Mapping[str, str] | None = None,
                    data: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """A plain HTTP POST; returns (status, headers, parsed JSON or text)."""
    h = dict(headers or {})
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    async with aiohttp.ClientSession() as s:
        kwargs: dict[str, Any] = {"data": data, "headers": h} if data is not None else {
            "json": body, "headers": h}
        async with s.post(url, **kwargs) as resp:
            text = await resp.text()
            try:
                parsed: Any = await resp.json(content_type=None)
            except ValueError:
                parsed = text
            return resp.status, dict(resp.headers), parsed


@dataclass
class Reply:
    status: int
    headers: dict[str, str]   # lower-cased names
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)


def http(method: str, url: str, body: Any = None, *, key: str | None = MASTER_KEY,
         data: bytes | None = None, headers: Mapping[str, str] | None = None,
         timeout: float = 30.0) -> Reply:
    """A plain sync HTTP request (urllib): the curl of the docs, errors included."""
    import json
    import urllib.error
    import urllib.request

    h = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    if data is None and body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                         resp.read().decode())
    except urllib.error.HTTPError as exc:
        # Closed here: an error kept alive by its traceback would hold its socket until
        # the garbage collector, which reports it as a leak (a ResourceWarning).
        with exc:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()},
                         exc.read().decode())


def gemini_client(base_url: str, key: str = MASTER_KEY) -> genai.Client:
    """Google's google-genai SDK on the proxy's Gemini door (v1beta), one attempt a call."""
    from google import genai
    from google.genai import types

    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=base_url, api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1)))


async def leave_stream(url: str, body: Mapping[str, Any], *, count: int,
                       marker: bytes = b"data: ",
                       headers: Mapping[str, str] | None = None) -> str:
    """POST a streamed call (as the master key unless ``headers`` say otherwise), read
    until ``marker`` came ``count`` times and hang up mid-stream; the call id."""
    async with aiohttp.ClientSession() as s:
        resp = await s.post(url, json=dict(body), headers=dict(
            headers or {"Authorization": f"Bearer {MASTER_KEY}"}))
        assert resp.status == 200
        call_id = resp.headers[CALL_ID_HEADER]
        got = b""
        while got.count(marker) < count:
            got += await resp.content.readany()
        resp.close()  # hang up mid-stream
    return call_id


def raw_exchange(base_url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as it is (malformed HTTP too) on a socket to ``base_url`` and read
    until the server closes it or ``timeout`` passes without a byte."""
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            if not got:
                break
            chunks.append(got)
        return b"".join(chunks)


def assert_openai_error(reply: Reply, status: int, *, code: str | None = None,
                        param: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    """The status and the exact OpenAI error shape {"error": {message,type,param,code}}."""
    assert reply.status == status, (reply.status, reply.text)
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    if error_type is not None:
        assert err["type"] == error_type, err
    return dict(err)


# --- fixtures (import them into a test module: `from tests.proxy_harness import ...`) --


@pytest.fixture(name="lago")
def lago_fixture() -> Iterator[FakeLago]:
    with FakeLago() as lago:
        yield lago
        assert lago.schema_violations == []


@pytest.fixture(name="upstream")
def openai_upstream_fixture() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="claude")
def anthropic_upstream_fixture() -> Iterator[FakeAnthropic]:
    with run_in_thread(FakeAnthropic()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


# The official SDK as the client of a module's own ``proxy`` fixture (one of the two, as
# ``client``), closed after the test with its pooled sockets.

@pytest.fixture(name="client")
def openai_client_fixture(proxy: RunningProxy) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                       max_retries=0) as client:
        yield client


@pytest.fixture(name="client")
def anthropic_client_fixture(proxy: RunningProxy) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=proxy.base_url, api_key=MASTER_KEY,
                             max_retries=0) as client:
        yield client


def billed(lago: FakeLago, call_id: str, customer: str, *, timeout: float = 10.0) -> Any:
    """The one Lago event of ``call_id`` (waits for delivery), checked for its customer."""
    wait_for(lambda: call_id in lago.events, timeout)
    assert lago.count(call_id) == 1, f"{call_id} stored {lago.count(call_id)} times"
    ev = lago.events[call_id]
    assert ev.external_subscription_id == customer, (ev.external_subscription_id, customer)
    assert ev.code == EVENT_CODE
    return ev
