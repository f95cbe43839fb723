"""The OpenAI Codex CLI (``codex exec``) through the proxy, against stand-in upstreams:
an OpenAI deployment (the Responses API passed through) and an Anthropic one
(translated). Codex runs a shell command the model asks for, sends its output back and
prints the model's answer; every upstream call is billed once.

Codex (``@openai/codex``, pinned below) is installed from npm at set-up into
``.cache/npm`` in the work tree (kept between runs). It runs with a fresh CODEX_HOME
whose config.toml names the proxy as its only model provider (``wire_api =
"responses"``), update checks and analytics off, and any other connection sent to a
closed loopback port. What Codex asks for was read from its own requests: one
``POST {base_url}/responses`` per turn (streamed, ``store: false``), nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import FakeToolCall
from tests.npm_tools import NPM_ROOT, npm_install
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    RunningProxy,
    anthropic_entry,
    anthropic_upstream_fixture,
    config_dict,
    free_port,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)

CODEX_VERSION = "0.171.0"
NPM_CACHE = NPM_ROOT
MARKER = "codex-ran-this-4711"


@pytest.fixture(scope="session", name="codex")
def codex_fixture() -> Path:
    """The codex binary, installed from npm on first use (fails, never skips, when npm
    is missing or the install fails: this test is how Codex support is proven)."""
    binary = NPM_CACHE / "node_modules" / ".bin" / "codex"
    package = NPM_CACHE / "node_modules" / "@openai" / "codex" / "package.json"
    if package.exists() and json.loads(package.read_text())["version"] == CODEX_VERSION:
        return binary
    npm_install("@openai/codex", CODEX_VERSION, NPM_CACHE, what="the Codex CLI", save=True)
    return binary


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                  claude: FakeAnthropic) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def run_codex(codex: Path, home: Path, workdir: Path, base_url: str, key: str, model: str,
              prompt: str, *, web_search: bool = True) -> subprocess.CompletedProcess[str]:
    home.mkdir()
    workdir.mkdir()
    closed = f"http://127.0.0.1:{free_port()}"  # anything else Codex tries goes nowhere
    (home / "config.toml").write_text(f'''
model = "{model}"
model_provider = "tallygate"
check_for_update_on_startup = false
{'' if web_search else 'web_search = "disabled"'}

[model_providers.tallygate]
name = "tallygate"
base_url = "{base_url}/v1"
env_key = "TALLYGATE_API_KEY"
wire_api = "responses"

[analytics]
enabled = false
''')
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(home), "TALLYGATE_API_KEY": key, "LANG": "C.UTF-8",
           "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "ALL_PROXY": closed,
           "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([str(codex), "exec", "--skip-git-repo-check", prompt],
                          cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


def customer_key(proxy: RunningProxy, customer: str) -> str:
    reply = http("POST", proxy.base_url + "/key/generate",
                 {"key_alias": customer, "customer_id": customer})
    return str(reply.json()["key"])


def tool_output(request: dict[str, object]) -> str:
    items = request["input"]
    assert isinstance(items, list)
    outputs = [i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
    assert len(outputs) == 1, outputs
    return json.dumps(outputs[0]["output"])


def test_codex_exec_through_the_proxy_to_openai(codex: Path, tmp_path: Path,
                                                proxy: RunningProxy, lago: FakeLago,
                                                upstream: FakeOpenAI) -> None:
    upstream.tool_call = FakeToolCall("exec_command", {"cmd": f"echo {MARKER}"},
                                      id="call_codex_1")
    upstream.reply_text = "The command printed the marker."
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 900, 600, 20
    done = run_codex(codex, tmp_path / "home", tmp_path / "work", proxy.base_url,
                     customer_key(proxy, "codex-team"), "gpt", "Run the marker command.")
    assert done.returncode == 0, done.stderr
    assert "The command printed the marker." in done.stdout
    # Two turns: the tool call, then the answer after its output.
    assert [r.path for r in upstream.received] == ["/v1/responses"] * 2
    first, second = upstream.requests
    assert first["model"] == second["model"] == "gpt-4o-mini"
    assert first["stream"] is True and first["store"] is False
    assert any(t.get("type") == "web_search" for t in first["tools"])  # passed through
    assert MARKER in tool_output(second)
    wait_for(lambda: len(lago.events) == 2)
    for ev in lago.events.values():
        assert ev.external_subscription_id == "codex-team"
        assert ev.properties["uncached_input_tokens"] == 300
        assert ev.properties["cached_input_tokens"] == 600
        assert ev.properties["usage_source"] == "provider"


def test_codex_exec_through_the_proxy_to_anthropic(codex: Path, tmp_path: Path,
                                                   proxy: RunningProxy, lago: FakeLago,
                                                   claude: FakeAnthropic) -> None:
    """Claude behind Codex: the Responses requests translated (web search switched off
    in Codex, since only OpenAI runs it)."""
    claude.tool_call = FakeToolCall("exec_command", {"cmd": f"echo {MARKER}"},
                                    id="toolu_codex_1")
    claude.reply_text, claude.reply_after_tool = "", "Claude saw the marker."
    result = run_codex(codex, tmp_path / "home", tmp_path / "work", proxy.base_url,
                       customer_key(proxy, "codex-claude"), "claude", "Run the marker.",
                       web_search=False)
    assert result.returncode == 0, result.stderr
    assert "Claude saw the marker." in result.stdout
    assert len(claude.requests) == 2
    tools = {t["name"] for t in claude.requests[0]["tools"]}
    assert "exec_command" in tools
    assert any("__" in name for name in tools)  # a namespace tool's functions, flattened
    results = [b for m in claude.requests[1]["messages"] for b in m["content"]
               if isinstance(b, dict) and b.get("type") == "tool_result"]
    assert len(results) == 1 and MARKER in json.dumps(results[0])
    wait_for(lambda: len(lago.events) == 2)
    assert {ev.external_subscription_id for ev in lago.events.values()} == {"codex-claude"}
