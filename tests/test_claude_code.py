"""Claude Code itself (``claude -p`` from npm) through the proxy to the Anthropic stand-in.

The stand-in is scripted to make Claude Code call its Read tool and then finish. Claude
Code runs with its telemetry, error reports, auto-updates and non-essential traffic off,
``ANTHROPIC_BASE_URL`` on the proxy on loopback and an HTTPS proxy that goes nowhere, so
nothing can leave the machine. It is installed at test set-up, pinned, into the
worktree's ``.cache/npm/claude-code`` (gitignored); without npm the test fails and says
why.

What Claude Code 2.1 calls, found from its traffic: ``POST /v1/messages?beta=true``
(streamed, its beta flags in ``anthropic-beta``, ``metadata.user_id`` a JSON object of
device, account and session ids), one per turn; no ``count_tokens``, ``/v1/models`` or
HEAD requests in ``-p`` mode with non-essential traffic off (the test checks that no
route it called went unserved). As root it refuses ``--dangerously-skip-permissions``,
so the test allows the one tool it needs with ``--allowedTools Read``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic_server import FakeAnthropic, FakeTurn
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall, Received
from tests.npm_tools import NPM_ROOT, npm_install, version_output
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    UPSTREAM_KEY,
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
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

CLAUDE_CODE = "@anthropic-ai/claude-code"
CLAUDE_CODE_VERSION = "2.1.332"
# Its own npm prefix, so that other npm-installed tools in .cache/npm (the Codex CLI) and
# this one never prune each other.
NPM_CACHE = NPM_ROOT / "claude-code"
CLAUDE_BIN = NPM_CACHE / "node_modules" / ".bin" / "claude"
MODEL = "claude-sonnet-4-5"
SECRET = "pineapple"


def _version() -> str | None:
    out = version_output(CLAUDE_BIN, NPM_CACHE, {"DISABLE_AUTOUPDATER": "1"})
    return out.split()[0] if out else None


def install_claude_code() -> Path:
    """``claude`` at the pinned version in ``.cache/npm``, installed from npm if needed."""
    if _version() == CLAUDE_CODE_VERSION:
        return CLAUDE_BIN
    npm_install(CLAUDE_CODE, CLAUDE_CODE_VERSION, NPM_CACHE, what="Claude Code")
    if _version() != CLAUDE_CODE_VERSION:
        # npm versions that hold back install scripts leave the native binary unlinked:
        # run the package's own postinstall, which links it.
        script = NPM_CACHE / "node_modules" / CLAUDE_CODE / "install.cjs"
        subprocess.run(["node", str(script)], cwd=script.parent, capture_output=True,
                       timeout=120)
    if _version() != CLAUDE_CODE_VERSION:
        pytest.fail(f"{CLAUDE_BIN} --version is not {CLAUDE_CODE_VERSION} after installing it")
    return CLAUDE_BIN


@pytest.fixture(name="claude_bin", scope="module")
def claude_bin_fixture() -> Path:
    return install_claude_code()


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, claude: FakeAnthropic,
                  upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([anthropic_entry("claude-native", claude.base_url, model=MODEL),
                       openai_entry("gpt-coder", upstream.base_url, model="gpt-5-mini")],
                      tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def _claude_env(home: Path, proxy: RunningProxy, key: str, model: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": proxy.base_url, "ANTHROPIC_API_KEY": key,
        # Every model Claude Code may pick (a small one for side tasks too) is the group.
        "ANTHROPIC_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Anything not for the proxy on loopback goes to a port where nothing listens.
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _run_claude(claude_bin: Path, tmp_path: Path, proxy: RunningProxy,
                group: str) -> dict[str, object]:
    """``claude -p`` asking for the secret in hello.txt, billed through a key bound to a
    customer (how to bill a user of the agent); its JSON result."""
    work, home = tmp_path / "work", tmp_path / "home"
    # A user of the agent bills through their own key, bound to their customer.
    key = http("POST", proxy.base_url + "/key/generate",
               {"key_alias": "dev-ana", "customer_id": "team-ana"}).json()["key"]
    done = subprocess.run(
        [str(claude_bin), "-p", "What is the secret word in hello.txt?", "--allowedTools",
         "Read", "--output-format", "json", "--model", group],
        cwd=work, env=_claude_env(home, proxy, key, group), capture_output=True,
        text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result: dict[str, object] = json.loads(done.stdout)
    assert result["is_error"] is False and result["num_turns"] == 2, result
    assert result["result"] == f"The secret word is {SECRET}."
    return result


def _workspace(tmp_path: Path) -> FakeToolCall:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / "hello.txt").write_text(f"secret word: {SECRET}\n")
    return FakeToolCall("Read", {"file_path": str(work / "hello.txt")}, id="toolu_cc_1")


def _billed_once_each(lago: FakeLago, calls: list[Received], proxy: RunningProxy) -> None:
    """Every upstream call billed exactly once, to the key's customer, with its cache
    buckets; and no route Claude Code called went unserved."""
    wait_for(lambda: len(lago.stored) == len(calls))
    assert len({ev.transaction_id for ev in lago.stored}) == len(calls)
    for ev in lago.stored:
        assert ev.external_subscription_id == "team-ana"
        p = ev.properties
        assert (p["uncached_input_tokens"], p["cached_input_tokens"],
                p["output_tokens"]) == (40, 9000, 25)
        assert p["usage_source"] == "provider" and p["unknown_price"] == "false"
    metrics = http("GET", proxy.base_url + "/metrics").text
    assert 'route="no_route"' not in metrics
    assert 'route="messages"' in metrics


def test_claude_code_native_to_anthropic(tmp_path: Path, claude_bin: Path,
                                         proxy: RunningProxy, lago: FakeLago,
                                         claude: FakeAnthropic) -> None:
    claude.turns = [FakeTurn("Reading it.", _workspace(tmp_path)),
                    FakeTurn(f"The secret word is {SECRET}.")]
    claude.input_tokens, claude.cache_read_tokens, claude.cache_write_tokens = 40, 9000, 3000
    claude.output_tokens = 25
    _run_claude(claude_bin, tmp_path, proxy, "claude-native")

    # Two turns: the tool call, then the answer after the tool's result.
    calls = [r for r in claude.received if r.path == "/v1/messages"]
    assert len(calls) == 2
    second = calls[1].body
    assert second is not None
    results = [b for m in second["messages"] if isinstance(m.get("content"), list)
               for b in m["content"] if b.get("type") == "tool_result"]
    assert len(results) == 1 and SECRET in json.dumps(results[0])
    for got in calls:
        assert got.body is not None and got.body["model"] == MODEL
        assert got.query == "beta=true" and got.body.get("stream") is True
        assert "claude-code-20250219" in got.headers["anthropic-beta"]
        assert got.headers["x-api-key"] == UPSTREAM_KEY  # the gateway's key, not the user's
        agent = json.loads(got.body["metadata"]["user_id"])
        assert {"device_id", "session_id"} <= set(agent)
    _billed_once_each(lago, calls, proxy)
    assert all(ev.properties["cache_creation_input_tokens"] == 3000 for ev in lago.stored)


def test_claude_code_translated_to_an_openai_reasoning_model(
        tmp_path: Path, claude_bin: Path, proxy: RunningProxy, lago: FakeLago,
        upstream: FakeOpenAI) -> None:
    """The same session against gpt-5-mini: Claude Code's thinking, context edits and
    deferred tools are dropped, max_tokens goes as max_completion_tokens (the stand-in
    refuses max_tokens, as OpenAI does), the tool call and its result round-trip."""
    upstream.turns = [FakeTurn("", _workspace(tmp_path)),
                      FakeTurn(f"The secret word is {SECRET}.")]
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 9040, 9000, 25
    _run_claude(claude_bin, tmp_path, proxy, "gpt-coder")
    calls = [r for r in upstream.received if r.path == "/v1/chat/completions"]
    assert len(calls) == 2
    for got in calls:
        body = got.body
        assert body is not None and body["model"] == "gpt-5-mini"
        assert body["max_completion_tokens"] > 0 and "max_tokens" not in body
        assert "thinking" not in body and "context_management" not in body
        assert any(t["function"]["name"] == "Read" for t in body["tools"])
    second = calls[1].body
    assert second is not None
    tool_results = [m for m in second["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 1 and SECRET in json.dumps(tool_results[0])
    _billed_once_each(lago, calls, proxy)
