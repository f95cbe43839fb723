"""Classes 3 and 4 of issue 13: a broken upstream never breaks billing.

Each mode of the stand-ins (tests.fakes.malformed) is one malformed answer, through both
doors, streamed and not. Whatever the upstream sends: no 5xx of the gateway's own and no
traceback; a stream request answered with an HTML page or plain JSON is a 502, not
billed; a malformed 200 answer is a 502, not billed; a stream that ends without [DONE]
or message_stop ends with an in-band error the SDKs raise, and what was sent is billed
and flagged ``incomplete``; noise inside a stream is skipped and the call billed; and no
reservation is ever left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import MASTER_KEY, anthropic_entry, openai_entry
from tests.upstream_checks import (  # noqa: F401  (the fakes fixture)
    Gate,
    Outcome,
    check_call,
    fakes_fixture,
    serve_gate,
)

HI = [{"role": "user", "content": "hi"}]

# (upstream, stream, mode, outcome) for both doors
CASES: list[tuple[str, bool, str, Outcome]] = [
    *[("openai", True, m, "billed") for m in (
        "choices_strings", "content_list", "delta_string", "tool_calls_string",
        "chunk_array", "non_json_line", "broken_json")],
    ("openai", True, "no_done", "incomplete"),
    ("openai", True, "no_done_no_usage", "incomplete"),
    *[("openai", True, m, "502") for m in ("html", "plain_json", "error_json_200")],
    *[("openai", False, m, "502") for m in (
        "message_string", "choices_strings", "choices_missing", "content_number",
        "body_array", "html")],
    *[("anthropic", True, m, "billed") for m in (
        "non_json_line", "broken_json", "delta_string", "text_list", "block_string",
        "index_string", "event_array")],
    ("anthropic", True, "no_message_stop", "incomplete"),
    *[("anthropic", True, m, "502") for m in ("html", "plain_json")],
    *[("anthropic", False, m, "502") for m in (
        "content_string", "blocks_strings", "text_not_string", "tool_input_string",
        "body_array", "html")],
]


@pytest.fixture(scope="module", name="gate")
def gate_fixture(tmp_path_factory: pytest.TempPathFactory,
                 fakes: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[Gate]:
    gpt, claude = fakes
    with serve_gate(tmp_path_factory.mktemp("malformed"), [
            openai_entry("openai", gpt.base_url),
            anthropic_entry("anthropic", claude.base_url)]) as gate:
        yield gate


@pytest.fixture(autouse=True)
def _reset(fakes: tuple[FakeOpenAI, FakeAnthropic]) -> Iterator[None]:
    yield
    for fake in fakes:
        fake.malformed = None
        fake.raw_answers.clear()


def _body(door: str, model: str, stream: bool) -> dict[str, Any]:
    if door == "chat":
        return {"model": model, "messages": HI, "stream": stream}
    return {"model": model, "max_tokens": 50, "messages": HI, "stream": stream}


@pytest.mark.parametrize("door", ["chat", "messages"])
@pytest.mark.parametrize(("upstream", "stream", "mode", "outcome"), CASES)
def test_a_malformed_answer_never_breaks_billing(
        gate: Gate, fakes: tuple[FakeOpenAI, FakeAnthropic], caplog: pytest.LogCaptureFixture,
        door: str, upstream: str, stream: bool, mode: str, outcome: Outcome) -> None:
    fake = fakes[0] if upstream == "openai" else fakes[1]
    fake.malformed = mode
    reply = gate.post(door, _body(door, upstream, stream))
    check_call(gate, door, stream, reply, outcome)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_the_sdks_raise_the_in_band_error(gate: Gate,
                                          fakes: tuple[FakeOpenAI, FakeAnthropic]) -> None:
    base = gate.proxy.base_url
    fakes[0].malformed = "no_done"
    with openai.OpenAI(base_url=base + "/v1", api_key=MASTER_KEY, max_retries=0) as client:
        stream = client.chat.completions.create(model="openai", messages=HI,  # type: ignore[arg-type]
                                                stream=True, user="u")
        with pytest.raises(openai.APIError, match="ended before its end marker"):
            for _ in stream:
                pass
    fakes[1].malformed = "no_message_stop"
    with anthropic.Anthropic(base_url=base, api_key=MASTER_KEY, max_retries=0) as claude, \
            pytest.raises(anthropic.APIStatusError, match="ended before its end marker"), \
            claude.messages.stream(model="anthropic", max_tokens=50, messages=HI,  # type: ignore[arg-type]
                                   metadata={"user_id": "u"}) as events:
        for _ in events:
            pass


def test_a_stream_that_breaks_before_any_output_bills_nothing(
        gate: Gate, fakes: tuple[FakeOpenAI, FakeAnthropic], tmp_path: Path) -> None:
    from tests.fakes.malformed import RawAnswer

    # Every try (the router retries twice) ends before anything: nothing was sent, so
    # the call fails with its status (502), billed nothing.
    fakes[0].raw_answers[:] = [RawAnswer([b": keep-alive\n\n"]) for _ in range(3)]
    reply = gate.post("chat", _body("chat", "openai", True))
    assert reply.status == 502 and "[DONE]" not in reply.text, reply.text
    assert gate.ledger(reply.headers["x-tallygate-call-id"]) == []
    assert gate.reserved() == 0
