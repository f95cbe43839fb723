"""Fixtures for the SDK tests: an isolated tallygate runtime per test, and the fakes.

Every SDK test gets its own outbox file (``TALLYGATE_DATABASE_URL``) and JSONL path,
no LAGO_* or provider key variables from the outside, empty module switches, and a
fresh runtime (loop thread, outbox, sinks, delivery worker) that is shut down after it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tallygate
from tallygate import transport
from tallygate.runtime import runtime
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.fakes.openai_server import FakeOpenAI, run_in_thread

EVENT_CODE = "llm_usage"
MESSAGES = [{"role": "user", "content": "Say hello."}]
_OUTSIDE_ENV = ("LAGO_API_BASE", "LAGO_API_KEY", "LAGO_API_EVENT_CODE", "LAGO_API_CHARGE_BY",
                "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TALLYGATE_LAGO_SINGLE_EVENT",
                "TALLYGATE_LAGO_BATCH_SIZE", "TALLYGATE_LAGO_TIMEOUT_S",
                "TALLYGATE_WEBHOOK_URL", "TALLYGATE_FLUSH_TIMEOUT")


@dataclass
class SdkPaths:
    outbox: Path
    jsonl: Path


def reset_sdk() -> None:
    """Empty the module switches and shut the runtime down (the next call starts anew)."""
    tallygate.callbacks = []
    tallygate.success_callback = []
    tallygate.failure_callback = []
    tallygate.drop_params = False
    runtime.shutdown(timeout_s=2.0)


@pytest.fixture
def sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SdkPaths]:
    for name in _OUTSIDE_ENV:
        monkeypatch.delenv(name, raising=False)
    paths = SdkPaths(outbox=tmp_path / "outbox.db", jsonl=tmp_path / "usage.jsonl")
    monkeypatch.setenv("TALLYGATE_DATABASE_URL", str(paths.outbox))
    monkeypatch.setenv("TALLYGATE_JSONL_PATH", str(paths.jsonl))
    reset_sdk()
    yield paths
    reset_sdk()


@pytest.fixture
async def loop_session() -> AsyncIterator[None]:
    """For async tests: close the aiohttp session tallygate made on the test's loop."""
    yield
    await transport.close_session()


@pytest.fixture
def lago(sdk: SdkPaths, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLago]:
    """A running FakeLago with LAGO_API_BASE/KEY/EVENT_CODE pointing at it."""
    with FakeLago() as server:
        monkeypatch.setenv("LAGO_API_BASE", server.url)
        monkeypatch.setenv("LAGO_API_KEY", TEST_API_KEY)
        monkeypatch.setenv("LAGO_API_EVENT_CODE", EVENT_CODE)
        yield server
        # Deliver or give up before the server goes away, so nothing outlives the test.
        reset_sdk()


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        yield fake


@pytest.fixture
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with run_in_thread(FakeAnthropic()) as fake:
        yield fake


def openai_kwargs(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    """The per-call arguments that send a call to the fake OpenAI."""
    return {"messages": MESSAGES, "api_base": fake.base_url, "api_key": "sk-test", **extra}


def anthropic_kwargs(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {"messages": MESSAGES, "api_base": fake.base_url, "api_key": "sk-ant-test",
            **extra}


def tallygate_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("tallygate") and r.levelno >= logging.WARNING
            and text in r.getMessage()]
