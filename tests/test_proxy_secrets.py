"""Keys never reach logs: the master key, the Lago key and the upstream key, in the
in-process logs (DEBUG, caplog) and in the CLI's stderr."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    billed,
    cli_env,
    config_dict,
    free_port,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_cli,
    run_proxy,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "hi"}]
WRONG_LAGO_KEY = "lago-key-that-lago-refuses-99"


def _traffic(base_url: str, upstream: FakeOpenAI) -> None:
    """Successes and every kind of failure, so that every logging path runs."""
    ok = http("POST", base_url + "/v1/chat/completions",
              {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "sec"})
    assert ok.status == 200, ok.text
    http("POST", base_url + "/v1/chat/completions",
         {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "sec", "stream": True})
    http("POST", base_url + "/v1/chat/completions",
         {"model": "gpt-4o-mini", "messages": MESSAGES}, key="sk-wrong-key")
    http("POST", base_url + "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES})
    upstream.require_api_key = "something-else"  # upstream refuses our key: 401 passed on
    http("POST", base_url + "/v1/chat/completions",
         {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "sec"})
    upstream.require_api_key = UPSTREAM_KEY
    http("POST", base_url + "/v1/chat/completions",
         {"model": "down", "messages": MESSAGES, "user": "sec", "stream": True})
    http("GET", base_url + "/metrics", key=None)
    http("GET", base_url + "/health/readiness", key=None)


def _models(upstream: FakeOpenAI) -> list[dict[str, object]]:
    return [openai_entry("gpt-4o-mini", upstream.base_url),
            openai_entry("down", f"http://127.0.0.1:{free_port()}/v1")]


def test_no_key_in_in_process_logs(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    env = {**lago_env(lago), "LAGO_API_KEY": WRONG_LAGO_KEY}  # Lago answers 401: paused
    with run_proxy(proxy_settings(tmp_path, config_dict(_models(upstream), tmp_path), env)) \
            as proxy:
        _traffic(proxy.base_url, upstream)
        wait_for(lambda: lago.requests_to("/api/v1/events/batch"))
        wait_for(lambda: any("lago" in r.getMessage().lower() for r in caplog.records
                             if r.levelno >= logging.WARNING))
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert text  # something was logged
    for secret in (MASTER_KEY, WRONG_LAGO_KEY, UPSTREAM_KEY, "sk-wrong-key"):
        assert secret not in text, secret


def test_no_key_in_cli_stderr(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> None:
    cfg = config_dict(_models(upstream), tmp_path)
    with run_cli(tmp_path, cfg, cli_env(lago_env(lago)), args=("--log-level", "DEBUG")) as proc:
        _traffic(proc.base_url, upstream)
        wait_for(lambda: len(lago.stored) >= 2)
        before = len(lago.requests_to("/api/v1/events/batch"))
        lago.api_keys = {"rotated"}  # now Lago refuses our key
        ok = http("POST", proc.base_url + "/v1/chat/completions",
                  {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "sec2"})
        assert ok.status == 200
        wait_for(lambda: len(lago.requests_to("/api/v1/events/batch")) > before)
        assert proc.stop() == 0
    err = proc.stderr
    assert "DEBUG" in err or "INFO" in err
    for secret in (MASTER_KEY, TEST_API_KEY, UPSTREAM_KEY, "sk-wrong-key"):
        assert secret not in err, secret
