"""Class 5 of issue 13: missing or invalid usage is estimated and flagged, never a zero.

An answer without ``usage``, or with counts that are strings, negative or zero for a
real prompt, is billed on an estimate (``usage_source: estimated``, flag
``estimated_usage``) with a price above zero, through both doors and for embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from tallygate.usage import Usage
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import anthropic_entry, http, openai_entry
from tests.upstream_checks import (  # noqa: F401  (the fakes fixture)
    Gate,
    check_call,
    fakes_fixture,
    serve_gate,
)

HI = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.mark.parametrize("raw", [
    None, {}, {"prompt_tokens": "12", "completion_tokens": 3},
    {"prompt_tokens": 12, "completion_tokens": -5}, {"prompt_tokens": 12},
    {"prompt_tokens": -1, "completion_tokens": 3}, {"prompt_tokens": True, "completion_tokens": 1},
    {"prompt_tokens": 1.5, "completion_tokens": 1}, {"completion_tokens": 4},
])
def test_invalid_openai_usage_reads_as_none(raw: Any) -> None:
    assert Usage.from_openai(raw) is None


@pytest.mark.parametrize("raw", [
    None, {}, {"input_tokens": "12", "output_tokens": 3}, {"input_tokens": 12},
    {"input_tokens": 12, "output_tokens": -5}, {"output_tokens": 5},
])
def test_invalid_anthropic_usage_reads_as_none(raw: Any) -> None:
    assert Usage.from_anthropic(raw) is None


def test_valid_usage_still_reads() -> None:
    assert Usage.from_openai({"prompt_tokens": 12, "completion_tokens": 0}) == Usage(
        input_tokens=12)
    assert Usage.from_openai({"prompt_tokens": 12, "total_tokens": 15}) == Usage(
        input_tokens=12, output_tokens=3)
    assert Usage.from_openai({"prompt_tokens": 12.0, "completion_tokens": 2}) == Usage(
        input_tokens=12, output_tokens=2)
    assert Usage.from_anthropic({"input_tokens": 3, "output_tokens": 4}) == Usage(
        input_tokens=3, output_tokens=4)


@pytest.fixture(scope="module", name="gate")
def gate_fixture(tmp_path_factory: pytest.TempPathFactory,
                 fakes: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[Gate]:
    gpt, claude = fakes
    with serve_gate(tmp_path_factory.mktemp("usage"), [
            openai_entry("openai", gpt.base_url),
            openai_entry("embedder", gpt.base_url, model="text-embedding-3-small"),
            anthropic_entry("anthropic", claude.base_url)]) as gate:
        yield gate


@pytest.fixture(autouse=True)
def _reset(fakes: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[None]:
    yield
    for fake in fakes:
        fake.malformed = None
        fake.prompt_tokens = 12
        if isinstance(fake, FakeAnthropic):
            fake.input_tokens = 12


def _assert_estimated(row: dict[str, Any] | None) -> None:
    assert row is not None
    assert row["prompt_tokens"] > 0, row
    assert Decimal(str(row["spend"])) > 0, row


@pytest.mark.parametrize("door", ["chat", "messages"])
@pytest.mark.parametrize(("upstream", "stream", "mode"), [
    *[("openai", False, m) for m in ("usage_strings", "usage_missing", "usage_negative",
                                     "zero_prompt")],
    *[("openai", True, m) for m in ("usage_strings", "usage_missing", "zero_prompt")],
    ("anthropic", False, "usage_strings"), ("anthropic", False, "usage_missing"),
    ("anthropic", True, "usage_strings"), ("anthropic", True, "zero_prompt"),
])
def test_bad_usage_is_estimated_and_flagged(gate: Gate, fakes: tuple[FakeOpenAI, FakeAnthropic],
                                            door: str, stream: bool, upstream: str,
                                            mode: str) -> None:
    fake = fakes[0] if upstream == "openai" else fakes[1]
    if mode == "zero_prompt":
        fake.prompt_tokens = 0  # a real prompt is never zero tokens
        if isinstance(fake, FakeAnthropic):
            fake.input_tokens = 0
    else:
        fake.malformed = mode
    body: dict[str, Any] = {"model": upstream, "messages": HI, "stream": stream}
    if door == "messages":
        body["max_tokens"] = 50
    reply = gate.post(door, body)
    row = check_call(gate, door, stream, reply, "billed", estimated=True)
    _assert_estimated(row)


@pytest.mark.parametrize("mode", ["usage_missing", "usage_strings"])
def test_embeddings_without_valid_usage_are_estimated(
        gate: Gate, fakes: tuple[FakeOpenAI, FakeAnthropic], mode: str) -> None:
    fakes[0].malformed = mode
    reply = http("POST", gate.proxy.base_url + "/v1/embeddings",
                 {"model": "embedder", "input": ["one sentence to embed", "another one"]},
                 key=gate.key)
    assert reply.status == 200, reply.text
    rows = gate.ledger(reply.headers["x-tallygate-call-id"])
    assert len(rows) == 1 and "estimated_usage" in rows[0]["flags"], rows
    _assert_estimated(rows[0])
