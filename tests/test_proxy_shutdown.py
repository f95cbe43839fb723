"""SIGTERM on the real CLI: streams in flight finish, exit 0, usage delivered or kept."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    billed,
    cli_env,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    run_cli,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "hi"}]


class StreamReader(threading.Thread):
    """Reads one streaming chat call to its end in the background."""

    def __init__(self, base_url: str, customer: str) -> None:
        super().__init__(daemon=True)
        self.url = base_url + "/v1/chat/completions"
        self.customer = customer
        self.first_chunk = threading.Event()
        self.body = b""
        self.call_id = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        import json

        req = urllib.request.Request(self.url, method="POST", data=json.dumps({
            "model": "gpt-4o-mini", "messages": MESSAGES, "user": self.customer,
            "stream": True}).encode(), headers={"Authorization": f"Bearer {MASTER_KEY}",
                                                "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                self.call_id = resp.headers[CALL_ID_HEADER]
                while chunk := resp.read1(65536):
                    self.body += chunk
                    if b"data: " in self.body:
                        self.first_chunk.set()
        except BaseException as exc:
            self.error = exc
        finally:
            self.first_chunk.set()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_streams_and_delivers(tmp_path: Path, lago: FakeLago,
                                               upstream: FakeOpenAI, workers: int) -> None:
    upstream.stream_chunks, upstream.chunk_delay = 20, 0.05  # a 1 s stream
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url)], tmp_path)
    with run_cli(tmp_path, cfg, cli_env(lago_env(lago)), workers=workers) as proc:
        readers = [StreamReader(proc.base_url, f"term-{i}") for i in range(3)]
        for r in readers:
            r.start()
        for r in readers:
            assert r.first_chunk.wait(10)
        time.sleep(0.1)
        proc.proc.send_signal(signal.SIGTERM)
        for r in readers:
            r.join(15)
            assert r.error is None, r.error
            assert r.body.endswith(b"data: [DONE]\n\n"), r.body[-200:]
            assert b'"finish_reason":"stop"' in r.body
        assert proc.stop(timeout=20) == 0, proc.stderr
        # The drain delivered them before exit: no waiting needed.
        for r in readers:
            ev = billed(lago, r.call_id, r.customer, timeout=0.5)
            assert ev.properties["usage_source"] == "provider"
            assert "client_disconnected" not in ev.properties.get("flags", "")


def test_sigterm_with_lago_down_keeps_events_for_next_start(
        tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> None:
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url)], tmp_path,
                      general={"drain_timeout_s": 0.5})
    env = cli_env(lago_env(lago))
    lago.stop()
    with run_cli(tmp_path, cfg, env) as proc:
        reply = http("POST", proc.base_url + "/v1/chat/completions",
                     {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "kept"})
        assert reply.status == 200, reply.text
        call_id = reply.headers[CALL_ID_HEADER]
        assert proc.stop(timeout=20) == 0, proc.stderr
    assert lago.stored == []
    lago.start()  # Lago is back, same port; the next start delivers what was kept
    with run_cli(tmp_path, cfg, env) as proc:
        billed(lago, call_id, "kept", timeout=10)
        ready = http("GET", proc.base_url + "/health/readiness").json()
        wait_for(lambda: http("GET", proc.base_url + "/health/readiness"
                              ).json()["outbox"]["pending"] == 0)
        assert ready["status"] in ("healthy", "degraded")
