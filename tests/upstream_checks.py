"""What every test of a broken upstream checks after a call: how the client was answered,
what was billed (the spend ledger, with its flags), and that no reservation is left."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (
    UPSTREAM_KEY,
    RunningProxy,
    config_dict,
    http,
    proxy_settings,
    run_proxy,
)
from tests.test_access_keys import generate

Outcome = Literal["billed", "incomplete", "502"]


@dataclass
class Gate:
    """A running proxy, a budgeted virtual key and what it takes to check a call."""

    proxy: RunningProxy
    key: str

    def post(self, door: str, body: dict[str, Any]) -> Any:
        path = "/v1/chat/completions" if door == "chat" else "/v1/messages"
        return http("POST", self.proxy.base_url + path, body, key=self.key)

    def ledger(self, call_id: str) -> list[dict[str, Any]]:
        logs = http("GET", self.proxy.base_url + "/spend/logs").json()["logs"]
        return [row for row in logs if row["call_id"] == call_id]

    def billed_rows(self, call_id: str) -> list[dict[str, Any]]:
        """The ledger rows of ``call_id``, read from the database (fast, for many calls)."""
        async def read() -> list[dict[str, Any]]:
            keys = self.proxy.gateway.keys
            await keys.flush_settlements()
            assert keys.db is not None
            return await keys.db.fetch("SELECT call_id, flags FROM access_ledger "
                                       "WHERE call_id = ?", call_id)
        return self.proxy.call(read())

    def reserved(self) -> int:
        async def read() -> int:
            db = self.proxy.gateway.keys.db
            assert db is not None
            row = await db.fetchone("SELECT coalesce(sum(reserved_micros), 0) AS r "
                                    "FROM access_budgets")
            return int(row["r"])
        return self.proxy.call(read())


@pytest.fixture(scope="module", name="fakes")
def fakes_fixture() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    """An OpenAI and an Anthropic stand-in for a module, both requiring the upstream key."""
    with run_in_thread(FakeOpenAI()) as gpt, run_in_thread(FakeAnthropic()) as claude:
        gpt.require_api_key = claude.require_api_key = UPSTREAM_KEY
        yield gpt, claude


def gate_config(tmp_path: Path, models: list[dict[str, Any]]) -> Any:
    return proxy_settings(tmp_path, config_dict(models, tmp_path, lago=False))


def make_gate(proxy: RunningProxy) -> Gate:
    key = generate(proxy.base_url, customer_id="acme", max_budget=1000)["key"]
    return Gate(proxy, key)


@contextmanager
def serve_gate(tmp_path: Path, models: list[dict[str, Any]]) -> Iterator[Gate]:
    """A proxy serving ``models`` (no Lago), with its budgeted key."""
    with run_proxy(gate_config(tmp_path, models)) as proxy:
        yield make_gate(proxy)


def check_call(gate: Gate, door: str, stream: bool, reply: Any, outcome: Outcome,
               *, estimated: bool | None = None) -> dict[str, Any] | None:
    """Assert the answer and the bill of one call; returns its ledger row if billed."""
    call_id = reply.headers.get("x-tallygate-call-id")
    assert call_id, reply.headers
    assert "Traceback" not in reply.text
    rows = gate.ledger(call_id)
    assert gate.reserved() == 0, "a reservation was left behind"
    if outcome == "502":
        assert reply.status == 502, reply.text
        body = reply.json()
        if door == "chat":
            assert set(body) == {"error"}, body
        else:
            assert body["type"] == "error" and body["error"]["type"] == "api_error", body
        assert rows == [], rows  # a failure is not billed
        return None
    assert reply.status == 200, reply.text
    assert len(rows) == 1, rows  # what the client received is billed, once
    row = rows[0]
    if stream:
        _check_stream_end(door, reply.text, outcome)
    if outcome == "incomplete":
        assert "incomplete" in row["flags"], row
    else:
        assert "incomplete" not in row["flags"], row
    if estimated is not None:
        assert ("estimated_usage" in row["flags"]) is estimated, row
    return row


def _check_stream_end(door: str, text: str, outcome: Outcome) -> None:
    frames = [f for f in text.split("\n\n") if f.strip()]
    last = frames[-1]
    if door == "chat":
        if outcome == "billed":
            assert last == "data: [DONE]", frames[-3:]
        else:  # an in-band error the OpenAI SDK raises; no [DONE] the upstream never sent
            assert "[DONE]" not in text and last.startswith('data: {"error"'), frames[-3:]
    elif outcome == "billed":
        assert last.startswith("event: message_stop"), frames[-3:]
    else:
        assert "message_stop" not in text and last.startswith("event: error"), frames[-3:]
