"""``litellm_settings.set_verbose`` (DEBUG logs for tallygate) and ``json_logs`` (one
JSON object a log line), as LiteLLM means them, with the real CLI and its stderr."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    UPSTREAM_KEY,
    cli_env,
    config_dict,
    http,
    openai_entry,
    openai_upstream_fixture,
    run_cli,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def _serve_one_call(tmp_path: Path, upstream: FakeOpenAI, settings: dict[str, bool]) -> str:
    cfg = config_dict([openai_entry("gpt", upstream.base_url)], tmp_path, lago=False)
    cfg["litellm_settings"] = settings
    with run_cli(tmp_path, cfg, cli_env()) as proc:
        reply = http("POST", proc.base_url + "/v1/chat/completions",
                     {"model": "gpt", "messages": MESSAGES, "user": "u"})
        assert reply.status == 200, reply.text
        assert proc.stop() == 0
    return proc.stderr


def test_set_verbose_logs_debug(tmp_path: Path, upstream: FakeOpenAI) -> None:
    quiet = _serve_one_call(tmp_path, upstream, {})
    assert " DEBUG " not in quiet
    verbose = _serve_one_call(tmp_path, upstream, {"set_verbose": True})
    debug = [line for line in verbose.splitlines() if " DEBUG tallygate" in line]
    assert any("chat gpt -> openai/gpt-4o-mini" in line for line in debug), verbose
    assert UPSTREAM_KEY not in verbose and MASTER_KEY not in verbose


def test_json_logs_one_object_a_line(tmp_path: Path, upstream: FakeOpenAI) -> None:
    stderr = _serve_one_call(tmp_path, upstream, {"json_logs": True, "set_verbose": True})
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records, stderr
    for record in records:
        assert set(record) >= {"timestamp", "level", "name", "message"}
    messages = [r["message"] for r in records]
    assert any(m.startswith("tallygate listening on http://127.0.0.1:") for m in messages)
    assert any(r["level"] == "DEBUG" and "chat gpt -> openai/gpt-4o-mini" in r["message"]
               for r in records)
    assert UPSTREAM_KEY not in stderr
