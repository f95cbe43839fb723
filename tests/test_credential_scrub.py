"""Classes 6 and 8 of issue 13: no credential in a log line or an answer.

Class 8: whatever an upstream says in an error (a 4xx body quoting the Authorization
header, a message naming the key, an in-stream error event), the caller never reads a
credential the gateway holds: upstream keys, the Lago key, the master key, virtual keys.
Class 6: malformed HTTP (a control byte after the key, a broken Content-Length) is a
clean 400, logged as one line with no traceback and no key, in-process and by the CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    MASTER_KEY,
    UPSTREAM_KEY,
    anthropic_entry,
    anthropic_upstream_fixture,
    cli_env,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    raw_exchange,
    run_cli,
    run_proxy,
)

MESSAGES = [{"role": "user", "content": "hi"}]
RETRIES = 3  # the router's first try and its two retries (a 429 or 5xx is retried)
VIRTUAL_KEY = "sk-tg-" + "Q" * 43


def _secrets() -> tuple[str, ...]:
    return (UPSTREAM_KEY, TEST_API_KEY, MASTER_KEY, VIRTUAL_KEY)


def _quoting(status: int) -> str:
    return (f"bad request: header 'Authorization: Bearer {UPSTREAM_KEY}' (x-api-key "
            f"{UPSTREAM_KEY}); lago {TEST_API_KEY}; gateway {MASTER_KEY}; caller "
            f"{VIRTUAL_KEY}; status {status}")


@pytest.mark.parametrize("status", [400, 404, 409, 422, 429, 500])
def test_upstream_error_messages_are_scrubbed(tmp_path: Path, lago: FakeLago,
                                              upstream: FakeOpenAI, claude: FakeAnthropic,
                                              status: int) -> None:
    cfg = config_dict([openai_entry("gpt", upstream.base_url),
                       anthropic_entry("claude", claude.base_url)], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        answers = []
        for fake, model in ((upstream, "gpt"), (claude, "claude")):
            for stream in (False, True):
                fake.fail(status, _quoting(status), times=RETRIES)
                answers.append(http("POST", proxy.base_url + "/v1/chat/completions",
                                    {"model": model, "messages": MESSAGES, "user": "u",
                                     "stream": stream}))
                fake.fail(status, _quoting(status), times=RETRIES)
                answers.append(http("POST", proxy.base_url + "/v1/messages",
                                    {"model": model, "max_tokens": 5, "messages": MESSAGES,
                                     "stream": stream}))
    for fake in (upstream, claude):
        fake.errors.clear()
    for reply in answers:
        assert reply.status >= 400, reply.text
        assert "bad request: header" in reply.text  # the useful part stays
        for secret in _secrets():
            assert secret not in reply.text, (secret, reply.text)


def test_an_in_stream_upstream_error_is_scrubbed(tmp_path: Path, lago: FakeLago,
                                                 claude: FakeAnthropic) -> None:
    cfg = config_dict([anthropic_entry("claude", claude.base_url)], tmp_path)
    claude.stream_error_type = "overloaded_error"
    claude.stream_error_message = _quoting(529)
    # Frames apart: the stream has begun when the error comes (in the same read as the
    # first event it would be a failed attempt, answered as an error: the test above).
    claude.chunk_delay = 0.2
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        chat = http("POST", proxy.base_url + "/v1/chat/completions",
                    {"model": "claude", "messages": MESSAGES, "user": "u", "stream": True})
        messages = http("POST", proxy.base_url + "/v1/messages",
                        {"model": "claude", "max_tokens": 5, "messages": MESSAGES,
                         "stream": True})
    for reply in (chat, messages):
        assert reply.status == 200 and "error" in reply.text, reply.text
        for secret in _secrets():
            assert secret not in reply.text, (secret, reply.text)


MALFORMED = (
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}"
    "\x01\r\nContent-Length: 2\r\n\r\n{}".encode(),
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIRTUAL_KEY}"
    "\x7f\r\nContent-Length: 2\r\n\r\n{}".encode(),
    f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {VIRTUAL_KEY}\x00\r\n\r\n".encode(),
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}"
    "\r\nContent-Length: 1x\r\n\r\n".encode(),
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MASTER_KEY}"
    f"\r\nX-Other: {VIRTUAL_KEY}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
)


def _check_answers(answers: list[bytes]) -> None:
    for answer in answers:
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer
        for secret in _secrets():
            assert secret.encode() not in answer, (secret, answer)


def test_malformed_http_logs_no_key_in_process(tmp_path: Path, upstream: FakeOpenAI,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = config_dict([openai_entry("gpt", upstream.base_url)], tmp_path, lago=False)
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        answers = [raw_exchange(proxy.base_url, raw) for raw in MALFORMED]
        assert http("POST", proxy.base_url + "/v1/chat/completions",
                    {"model": "gpt", "messages": MESSAGES, "user": "u"}).status == 200
    _check_answers(answers)
    text = _log_text(caplog.records)
    for secret in _secrets():
        assert secret not in text, (secret, text)
    assert "Traceback" not in text
    refused = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert len(refused) == len(MALFORMED), text
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in refused)


def _log_text(records: list[logging.LogRecord]) -> str:
    parts: list[Any] = []
    for r in records:
        parts.append(f"{r.levelname} {r.name} {r.getMessage()} {r.exc_text or ''}")
        if r.exc_info:
            parts.append(logging.Formatter().formatException(r.exc_info))
    return "\n".join(parts)


def test_malformed_http_logs_no_key_in_cli_stderr(tmp_path: Path, upstream: FakeOpenAI) -> None:
    cfg = config_dict([openai_entry("gpt", upstream.base_url)], tmp_path, lago=False)
    with run_cli(tmp_path, cfg, cli_env(), args=("--log-level", "DEBUG")) as proc:
        answers = [raw_exchange(proc.base_url, raw) for raw in MALFORMED]
        assert proc.stop() == 0
    _check_answers(answers)
    err = proc.stderr
    assert "malformed HTTP request" in err, err
    assert "Traceback" not in err, err
    for secret in _secrets():
        assert secret not in err, (secret, err)
