"""Who signs Bedrock requests, and how: botocore's SigV4 over the exact URL sent, its
credential chain, STS AssumeRole with refresh, Bedrock API keys. The stand-in recomputes
every signature with botocore, so a request tallygate signs wrongly fails here."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tallygate
from tallygate import transport
from tallygate.errors import ConfigError, UpstreamPermissionDeniedError
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider
from tests.bedrock_support import CLAUDE, PROFILE_ARN, ROLE_ARN, aws_env_fixture
from tests.fakes.bedrock_server import ACCESS_KEY, SECRET_KEY, FakeBedrock, IssuedCredentials

__all__ = ["aws_env_fixture"]

HI = [{"role": "user", "content": "Hi"}]
SESSION_KEY = "ASIAFAKESESSION00001"
SESSION_SECRET = "session/secret+0000000000000000000001"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEFAKE//session+token=="


@pytest.fixture(name="fake")
async def fake_fixture(aws_env: Path, sdk: Any, loop_session: None
                       ) -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock() as fake:
        yield fake


def where(fake: FakeBedrock, **params: Any) -> dict[str, Any]:
    return {"aws_bedrock_runtime_endpoint": fake.url, "aws_region_name": fake.region,
            **params}


def keys(**extra: Any) -> dict[str, Any]:
    return {"aws_access_key_id": ACCESS_KEY, "aws_secret_access_key": SECRET_KEY, **extra}


async def ask(fake: FakeBedrock, model: str = CLAUDE, **params: Any) -> Any:
    return await tallygate.acompletion(model=f"bedrock/{model}", messages=HI,
                                       **where(fake, **params))


async def test_static_keys_sign_with_sigv4(fake: FakeBedrock) -> None:
    answer = await ask(fake, **keys())
    assert answer.choices[0].message.content == "Hello from the fake Bedrock."
    got = fake.received[-1]
    auth = got.headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{fake.region}/bedrock/aws4_request" in auth  # signing name bedrock
    assert "X-Amz-Security-Token" not in got.headers
    assert fake.checks[-1].access_key == ACCESS_KEY and not fake.auth_failures


async def test_session_token_goes_as_x_amz_security_token(fake: FakeBedrock) -> None:
    fake.credentials[SESSION_KEY] = IssuedCredentials(SESSION_SECRET, SESSION_TOKEN)
    await ask(fake, aws_access_key_id=SESSION_KEY, aws_secret_access_key=SESSION_SECRET,
              aws_session_token=SESSION_TOKEN)
    assert fake.received[-1].headers["X-Amz-Security-Token"] == SESSION_TOKEN
    assert "x-amz-security-token" in fake.received[-1].headers["Authorization"]
    with pytest.raises(UpstreamPermissionDeniedError) as info:
        await ask(fake, aws_access_key_id=SESSION_KEY, aws_secret_access_key=SESSION_SECRET)
    assert info.value.status_code == 403 and info.value.code == "UnrecognizedClientException"


async def test_wrong_secret_is_a_403_that_quotes_nothing(fake: FakeBedrock) -> None:
    with pytest.raises(UpstreamPermissionDeniedError) as info:
        await ask(fake, aws_access_key_id=ACCESS_KEY, aws_secret_access_key="wrong-secret-42")
    assert info.value.code == "InvalidSignatureException"
    assert "wrong-secret-42" not in info.value.message and ACCESS_KEY not in info.value.message
    assert fake.auth_failures[-1].error_type == "InvalidSignatureException"


async def test_arn_model_id_is_signed_exactly_as_sent(fake: FakeBedrock) -> None:
    await ask(fake, PROFILE_ARN, **keys())
    assert fake.model_ids == [PROFILE_ARN] and not fake.auth_failures
    assert fake.raw_paths == ["/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3A"
                              "application-inference-profile%2Fa1b2c3d4e5f6/converse"]
    # The control: the same signed request through an HTTP client that re-quotes the URL
    # (aiohttp with a plain str URL turns %3A back into ':') is refused, as AWS would.
    provider = get_provider("bedrock")
    deployment = Deployment(provider="bedrock", model=PROFILE_ARN, params=where(fake, **keys()))
    request = provider.chat_request(deployment, {"messages": HI}, False)
    await provider.authorize(deployment, request)
    request.encoded_url = False
    answer = await transport.post(request, 10)
    assert answer.status == 403 and answer.headers["x-amzn-errortype"].startswith(
        "InvalidSignatureException")
    assert fake.raw_paths[-1].startswith("/model/arn:aws:bedrock:")


async def test_assume_role_through_sts_once_then_cached(fake: FakeBedrock) -> None:
    fake.roles.add(ROLE_ARN)
    role = keys(aws_role_name=ROLE_ARN, aws_session_name="tallygate-test",
                aws_sts_endpoint=fake.url, aws_external_id="ext-1")
    await ask(fake, **role)
    await ask(fake, **role)
    assert len(fake.sts_calls) == 1
    call = fake.sts_calls[0]
    assert (call.role_arn, call.session_name, call.external_id, call.access_key) == (
        ROLE_ARN, "tallygate-test", "ext-1", ACCESS_KEY)
    issued = fake.credentials[call.issued_key]
    assert [c.access_key for c in fake.checks] == [call.issued_key] * 2
    assert fake.received[-1].headers["X-Amz-Security-Token"] == issued.token


async def test_assumed_credentials_are_refreshed_before_they_expire(fake: FakeBedrock) -> None:
    fake.roles.add(ROLE_ARN)
    # 14 minutes left is inside botocore's 15-minute advisory window: each call renews
    fake.sts_duration_s = 14 * 60
    role = keys(aws_role_name=ROLE_ARN, aws_session_name="refresh", aws_sts_endpoint=fake.url)
    for _ in range(3):
        await ask(fake, **role)
    assert len(fake.sts_calls) == 3
    # each request went with the credentials issued just before it, still valid
    assert [c.access_key for c in fake.checks] == [s.issued_key for s in fake.sts_calls]


async def test_sts_refusal_is_a_403_and_is_not_remembered(fake: FakeBedrock) -> None:
    role = keys(aws_role_name=ROLE_ARN, aws_session_name="s1", aws_sts_endpoint=fake.url)
    with pytest.raises(UpstreamPermissionDeniedError) as info:
        await ask(fake, **role)
    assert info.value.code == "aws_credentials" and "AccessDenied" in info.value.message
    assert "123456789012:user" not in info.value.message
    fake.roles.add(ROLE_ARN)
    await ask(fake, **role)  # fixed in IAM: the next call assumes the role
    assert len(fake.sts_calls) == 1


async def test_profile_from_the_shared_credentials_file(fake: FakeBedrock,
                                                        aws_env: Path) -> None:
    fake.credentials["AKIAPROFILE000000001"] = IssuedCredentials("profile-secret")
    (aws_env / "aws-credentials").write_text(textwrap.dedent("""\
        [team]
        aws_access_key_id = AKIAPROFILE000000001
        aws_secret_access_key = profile-secret
        """))
    await ask(fake, aws_profile_name="team")
    assert fake.checks[-1].access_key == "AKIAPROFILE000000001"


async def test_default_chain_from_the_environment(fake: FakeBedrock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_BEDROCK_RUNTIME_ENDPOINT", fake.url)
    monkeypatch.setenv("AWS_REGION", fake.region)
    answer = await tallygate.acompletion(model=f"bedrock/{CLAUDE}", messages=HI)
    assert answer.usage_event.provider == "bedrock"
    assert fake.checks[-1].access_key == ACCESS_KEY


async def test_no_credentials_anywhere_is_a_clear_config_error(fake: FakeBedrock) -> None:
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        await ask(fake)


async def test_bedrock_api_keys_as_bearer_tokens(fake: FakeBedrock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake.bearer_tokens.update({"ABSK-config-key", "ABSK-env-key"})
    await ask(fake, api_key="ABSK-config-key")
    assert fake.received[-1].headers["Authorization"] == "Bearer ABSK-config-key"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSK-env-key")
    await ask(fake)
    assert fake.received[-1].headers["Authorization"] == "Bearer ABSK-env-key"
    await ask(fake, **keys())  # a deployment that names its keys signs with them
    assert fake.received[-1].headers["Authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert [c.bearer for c in fake.checks] == [True, True, False]


async def test_credential_resolution_never_blocks_the_loop(fake: FakeBedrock,
                                                           aws_env: Path) -> None:
    # a credential_process that takes 0.6 s: botocore runs it while the loop serves on
    script = aws_env / "slow_creds.py"
    script.write_text(textwrap.dedent(f"""\
        import json, time
        time.sleep(0.6)
        print(json.dumps({{"Version": 1, "AccessKeyId": "{ACCESS_KEY}",
                           "SecretAccessKey": "{SECRET_KEY}"}}))
        """))
    (aws_env / "aws-config").write_text(
        f"[profile slow]\ncredential_process = {sys.executable} {script}\n")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        await ask(fake, aws_profile_name="slow")
    finally:
        ticker.cancel()
    assert fake.checks[-1].access_key == ACCESS_KEY
    assert ticks >= 20, f"the loop was blocked: {ticks} ticks in >= 0.6 s"
