"""A fault inside the gateway itself still answers in the OpenAI shape, with the call id."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    RunningProxy,
    assert_openai_error,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)


@pytest.fixture(name="proxy")
def proxy_fixture(tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url)], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        yield proxy


def test_a_broken_outbox_gives_an_openai_shaped_500_with_the_call_id(
        proxy: RunningProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Someone drops the outbox table under the running gateway: the write must fail loudly.
    with sqlite3.connect(tmp_path / "outbox.db") as conn:
        conn.execute("DROP TABLE outbox")
    reply = http("POST", proxy.base_url + "/v1/chat/completions",
                 {"model": "gpt-4o-mini", "user": "c1",
                  "messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(reply, 500, code="internal_error")
    call_id = reply.headers[CALL_ID_HEADER]
    assert any(call_id in r.getMessage() for r in caplog.records)
