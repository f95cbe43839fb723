"""``bedrock/`` models through the SDK (``completion``, streams, ``embedding``) with the
Lago switch on, against the SigV4-checking stand-in: billed once each, at a cost worked
out by hand. And no credential reaches a log, even at DEBUG."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import tallygate
from tests.bedrock_support import CLAUDE, ROLE_ARN, aws_env_fixture, loopback_aws_env
from tests.fakes.bedrock_server import (
    ACCESS_KEY,
    SECRET_KEY,
    FakeBedrock,
    IssuedCredentials,
    run_in_thread,
)
from tests.fakes.lago_server import FakeLago
from tests.sdk_fixtures import MESSAGES, SdkPaths

__all__ = ["aws_env_fixture"]

pytestmark = pytest.mark.timeout(60)
MTOK = Decimal(1_000_000)
SESSION_KEY = "ASIAFAKESESSION00002"
SESSION_SECRET = "sdk/session+secret/000000000000000002"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjSDKsession//token+2=="


@pytest.fixture(name="fake")
def fake_fixture(aws_env: Path) -> Iterator[FakeBedrock]:
    with run_in_thread(FakeBedrock()) as fake:
        yield fake


def bedrock_kwargs(fake: FakeBedrock, **extra: Any) -> dict[str, Any]:
    return {"aws_bedrock_runtime_endpoint": fake.url, "aws_region_name": fake.region,
            "aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, **extra}


def test_completion_and_stream_billed_in_lago(sdk: SdkPaths, lago: FakeLago,
                                              fake: FakeBedrock) -> None:
    tallygate.success_callback = ["lago"]
    fake.input_tokens, fake.output_tokens = 500, 120
    fake.cache_read_tokens, fake.cache_write_tokens = 2000, 300
    # $3.30 in, $16.50 out, $0.33 cache reads, $4.125 5-minute writes (per MTok)
    expected = (500 * Decimal("3.3") + 120 * Decimal("16.5") + 2000 * Decimal("0.33")
                + 300 * Decimal("4.125")) / MTOK
    assert expected == Decimal("0.0055275")
    answer = tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES,
                                  user="sdk-cust", **bedrock_kwargs(fake))
    assert answer.choices[0].message.content == "Hello from the fake Bedrock."
    assert answer.cost == expected
    stream = tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES, stream=True,
                                  user="sdk-cust", **bedrock_kwargs(fake))
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake Bedrock."
    assert stream.usage_event is not None and stream.usage_event.cost == expected
    tallygate.flush()
    for call_id in (answer.call_id, stream.call_id):
        assert lago.count(call_id) == 1
        props = lago.events[call_id].properties
        assert Decimal(props["response_cost"]) == expected
        assert (props["uncached_input_tokens"], props["cached_input_tokens"],
                props["cache_creation_input_tokens"]) == (500, 2000, 300)


async def test_async_stream_closed_early_is_billed_once(sdk: SdkPaths, fake: FakeBedrock,
                                                        loop_session: None) -> None:
    fake.reply_text = "token " * 60
    fake.stream_chunks, fake.chunk_delay = 60, 0.02
    stream = await tallygate.acompletion(model=f"bedrock/{CLAUDE}", messages=MESSAGES,
                                         stream=True, **bedrock_kwargs(fake))
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 4:
            break
    await stream.aclose()
    event = stream.usage_event
    assert event is not None and {"client_disconnected", "estimated_usage"} <= event.flags
    assert 0 < event.usage.output_tokens < 60
    assert event.cost == (event.usage.input_tokens * Decimal("3.3")
                          + event.usage.output_tokens * Decimal("16.5")) / MTOK


def test_embedding_billed_on_input_tokens(sdk: SdkPaths, fake: FakeBedrock) -> None:
    result = tallygate.embedding(model="bedrock/amazon.titan-embed-text-v2:0",
                                 input="embed these four words", **bedrock_kwargs(fake))
    assert result.data[0]["embedding"][:2] == [0.001, 0.002]
    assert result.usage_event.usage.input_tokens == 5
    assert result.cost == 5 * Decimal("0.02") / MTOK


def _secrets(fake: FakeBedrock) -> list[str]:
    issued = [c for c in fake.credentials.values() if c.role_arn]
    return [SECRET_KEY, SESSION_SECRET, SESSION_TOKEN,
            *(c.secret for c in issued), *(c.token or "" for c in issued)]


def test_credentials_never_in_logs_in_process(sdk: SdkPaths, fake: FakeBedrock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, botocore's included, at DEBUG
    fake.credentials[SESSION_KEY] = IssuedCredentials(SESSION_SECRET, SESSION_TOKEN)
    fake.roles.add(ROLE_ARN)
    session = bedrock_kwargs(fake, aws_access_key_id=SESSION_KEY,
                             aws_secret_access_key=SESSION_SECRET,
                             aws_session_token=SESSION_TOKEN)
    tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES, **session)
    role = bedrock_kwargs(fake, aws_role_name=ROLE_ARN, aws_session_name="log-check",
                          aws_sts_endpoint=fake.url)
    list(tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES, stream=True,
                              **role))
    with pytest.raises(tallygate.TallygateError):
        tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES,
                             **bedrock_kwargs(fake, aws_secret_access_key="bad/secret+99"))
    assert fake.sts_calls and len(fake.checks) >= 2
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    for secret in [*_secrets(fake), "bad/secret+99"]:
        assert secret and secret not in text


def test_credentials_never_in_the_proxy_log(tmp_path: Path, fake: FakeBedrock) -> None:
    """The real ``tallygate`` command at --log-level DEBUG, calling Bedrock with a session
    token and through an assumed role: its whole stderr holds none of the secrets."""
    from tests.proxy_harness import MASTER_KEY, cli_env, config_dict, http, run_cli

    fake.credentials[SESSION_KEY] = IssuedCredentials(SESSION_SECRET, SESSION_TOKEN)
    fake.roles.add(ROLE_ARN)
    base = {"aws_bedrock_runtime_endpoint": fake.url, "aws_region_name": fake.region}
    cfg = config_dict([
        {"model_name": "session", "litellm_params": {
            "model": f"bedrock/{CLAUDE}", **base, "aws_access_key_id": SESSION_KEY,
            "aws_secret_access_key": "os.environ/MY_AWS_SECRET",
            "aws_session_token": "os.environ/MY_AWS_TOKEN"}},
        {"model_name": "role", "litellm_params": {
            "model": f"bedrock/{CLAUDE}", **base, "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY, "aws_role_name": ROLE_ARN,
            "aws_session_name": "cli", "aws_sts_endpoint": fake.url}},
    ], tmp_path, lago=False)
    env = cli_env({**loopback_aws_env(tmp_path), "MY_AWS_SECRET": SESSION_SECRET,
                   "MY_AWS_TOKEN": SESSION_TOKEN})
    with run_cli(tmp_path, cfg, env, args=("--log-level", "DEBUG")) as proc:
        for model in ("session", "role"):
            for stream in (False, True):
                reply = http("POST", proc.base_url + "/v1/chat/completions", {
                    "model": model, "messages": MESSAGES, "user": "u", "stream": stream},
                    key=MASTER_KEY)
                assert reply.status == 200, reply.text
        proc.stop()
        log = proc.stderr
    assert len(fake.sts_calls) == 1 and len(fake.checks) == 4
    assert "DEBUG" in log  # the log was on at DEBUG
    for secret in _secrets(fake):
        assert secret and secret not in log


def test_import_tallygate_does_not_load_botocore() -> None:
    code = textwrap.dedent("""\
        import sys
        import tallygate
        from tallygate.providers.registry import get_provider
        get_provider("bedrock")  # every adapter module imported, Bedrock's included
        print(sorted(m for m in sys.modules if m.startswith("botocore")))
        """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_unsupported_openai_params_refused_or_dropped(sdk: SdkPaths, fake: FakeBedrock) -> None:
    """LiteLLM's drop_params: what Converse has no place for (penalties, seed, a JSON
    response format, parallel_tool_calls) is a 400 naming it, or dropped on request."""
    assert "response_format" not in tallygate.get_supported_openai_params(f"bedrock/{CLAUDE}")
    with pytest.raises(tallygate.BadRequestError) as info:
        tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES, seed=7,
                             presence_penalty=0.5, **bedrock_kwargs(fake))
    assert info.value.param == "presence_penalty" and not fake.requests
    answer = tallygate.completion(model=f"bedrock/{CLAUDE}", messages=MESSAGES, seed=7,
                                  drop_params=True, **bedrock_kwargs(fake))
    assert answer.choices[0].message.content == "Hello from the fake Bedrock."
    assert "seed" not in fake.requests[-1]
