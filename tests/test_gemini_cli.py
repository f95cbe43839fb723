"""Gemini CLI itself (``gemini -p`` from npm) through the proxy's Gemini door.

The Gemini stand-in is scripted to make Gemini CLI call its ``read_file`` tool and then
answer. Gemini CLI runs in API-key mode (``GEMINI_API_KEY`` a virtual key bound to a
customer), ``GOOGLE_GEMINI_BASE_URL`` on the proxy on loopback, its settings.json in a
temporary HOME with usage statistics, telemetry and auto-update off, and an HTTPS
proxy that goes nowhere, so nothing can leave the machine. It is installed at test
set-up, pinned, into the worktree's ``.cache/npm/gemini-cli`` (gitignored); without npm
the test fails and says why.

What Gemini CLI 0.61 calls, found from its traffic: ``POST /v1beta/models/{model}:
streamGenerateContent?alt=sse`` once per turn (tools as ``parametersJsonSchema``,
``thinkingConfig``, the key in ``x-goog-api-key``); no ``countTokens``, model listing or
embeddings in ``-p`` mode (the test checks that no route it called went unserved).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.gemini_server import FakeGemini
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall, FakeTurn, Received, run_in_thread
from tests.npm_tools import NPM_ROOT, npm_install, version_output
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    RunningProxy,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

GEMINI_CLI = "@google/gemini-cli"
GEMINI_CLI_VERSION = "0.61.0"
# Its own npm prefix, so that other npm-installed tools in .cache/npm never prune it.
NPM_CACHE = NPM_ROOT / "gemini-cli"
GEMINI_BIN = NPM_CACHE / "node_modules" / ".bin" / "gemini"
MODEL = "gemini-2.5-flash"
SECRET = "pineapple"
CUSTOMER = "team-gem"


def _version() -> str | None:
    out = version_output(GEMINI_BIN, NPM_CACHE, {"GEMINI_CLI_NO_RELAUNCH": "1"})
    return out.strip().split()[-1] if out else None


def install_gemini_cli() -> Path:
    """``gemini`` at the pinned version in ``.cache/npm``, installed from npm if needed."""
    if _version() == GEMINI_CLI_VERSION:
        return GEMINI_BIN
    npm_install(GEMINI_CLI, GEMINI_CLI_VERSION, NPM_CACHE, what="Gemini CLI",
                node=" (20 or later)")
    if _version() != GEMINI_CLI_VERSION:
        pytest.fail(f"{GEMINI_BIN} --version is not {GEMINI_CLI_VERSION} after installing it")
    return GEMINI_BIN


@pytest.fixture(name="gemini_bin", scope="module")
def gemini_bin_fixture() -> Path:
    return install_gemini_cli()


@pytest.fixture(name="gemini")
def gemini_fixture() -> Iterator[FakeGemini]:
    with run_in_thread(FakeGemini()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, gemini: FakeGemini,
                  upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([
        {"model_name": MODEL, "litellm_params": {
            "model": f"gemini/{MODEL}", "api_base": gemini.base_url, "api_key": UPSTREAM_KEY}},
        openai_entry("gpt-coder", upstream.base_url, model="gpt-4o-mini"),
    ], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _home(tmp_path: Path) -> Path:
    """A HOME whose Gemini CLI settings turn off usage statistics, telemetry and updates
    and pick API-key auth."""
    home = tmp_path / "home"
    (home / ".gemini").mkdir(parents=True)
    settings = {"privacy": {"usageStatisticsEnabled": False},
                "telemetry": {"enabled": False},
                "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
                "security": {"auth": {"selectedType": "gemini-api-key"}}}
    (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    return home


def _run_gemini(gemini_bin: Path, tmp_path: Path, proxy: RunningProxy,
                model: str) -> dict[str, object]:
    """``gemini -p`` asking for the secret in hello.txt, billed through a key bound to a
    customer; its JSON result."""
    key = http("POST", proxy.base_url + "/key/generate",
               {"key_alias": "dev-gem", "customer_id": CUSTOMER}).json()["key"]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(_home(tmp_path)),
        "LANG": "C.UTF-8", "GEMINI_API_KEY": key, "GOOGLE_GEMINI_BASE_URL": proxy.base_url,
        "GEMINI_CLI_TRUST_WORKSPACE": "true", "GEMINI_CLI_NO_RELAUNCH": "1",
        # Anything not for the proxy on loopback goes to a port where nothing listens.
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    done = subprocess.run(
        [str(gemini_bin), "-p", "What is the secret word in hello.txt?", "-m", model,
         "--output-format", "json"],
        cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result: dict[str, object] = json.loads(done.stdout)
    assert result["response"] == f"The secret word is {SECRET}.", result
    return result


def _workspace(tmp_path: Path) -> FakeToolCall:
    work = tmp_path / "work"
    work.mkdir()
    (work / "hello.txt").write_text(f"secret word: {SECRET}\n")
    return FakeToolCall("read_file", {"file_path": str(work / "hello.txt")})


def _billed_once_each(lago: FakeLago, calls: list[Received], proxy: RunningProxy,
                      buckets: tuple[int, int, int]) -> None:
    """Every upstream call billed exactly once, to the key's customer, with its buckets
    (uncached input, cache read, output); and no route Gemini CLI called went unserved."""
    wait_for(lambda: len(lago.stored) == len(calls))
    assert len({ev.transaction_id for ev in lago.stored}) == len(calls)
    for ev in lago.stored:
        assert ev.external_subscription_id == CUSTOMER
        p = ev.properties
        assert (p["uncached_input_tokens"], p["cached_input_tokens"],
                p["output_tokens"]) == buckets
        assert p["usage_source"] == "provider" and p["unknown_price"] == "false"
    metrics = http("GET", proxy.base_url + "/metrics").text
    assert 'route="no_route"' not in metrics
    assert 'route="gemini_stream"' in metrics


def test_gemini_cli_passed_through_to_gemini(tmp_path: Path, gemini_bin: Path,
                                             proxy: RunningProxy, lago: FakeLago,
                                             gemini: FakeGemini) -> None:
    gemini.turns = [FakeTurn("Reading it.", _workspace(tmp_path)),
                    FakeTurn(f"The secret word is {SECRET}.")]
    gemini.script.prompt_tokens, gemini.script.cached_tokens = 9040, 9000
    gemini.script.candidates_tokens = 25
    _run_gemini(gemini_bin, tmp_path, proxy, MODEL)
    calls = [r for r in gemini.received if ":" in r.path]
    assert len(calls) == 2
    for got in calls:
        assert got.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
        assert got.query == "alt=sse"
        assert got.headers["x-goog-api-key"] == UPSTREAM_KEY  # the gateway's, not the user's
    second = json.dumps(calls[1].body)
    assert "functionResponse" in second and SECRET in second
    _billed_once_each(lago, calls, proxy, (40, 9000, 25))


def test_gemini_cli_translated_to_openai(tmp_path: Path, gemini_bin: Path,
                                         proxy: RunningProxy, lago: FakeLago,
                                         upstream: FakeOpenAI) -> None:
    """The same session against an OpenAI model: Gemini CLI's tools become function
    tools, its thinking config is dropped, the tool call and its result round-trip."""
    upstream.turns = [FakeTurn("", _workspace(tmp_path)),
                      FakeTurn(f"The secret word is {SECRET}.")]
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 9040, 9000, 25
    _run_gemini(gemini_bin, tmp_path, proxy, "gpt-coder")
    calls = [r for r in upstream.received if r.path == "/v1/chat/completions"]
    assert len(calls) == 2
    for got in calls:
        body = got.body
        assert body is not None and body["model"] == "gpt-4o-mini" and body["stream"] is True
        assert any(t["function"]["name"] == "read_file" for t in body["tools"])
    second = calls[1].body
    assert second is not None
    results = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(results) == 1 and SECRET in json.dumps(results[0])
    _billed_once_each(lago, calls, proxy, (40, 9000, 25))
