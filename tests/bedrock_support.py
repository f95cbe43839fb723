"""What the Bedrock tests share: an AWS environment that reaches nothing but loopback, the
stand-in's clients, and config entries for ``bedrock/`` deployments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.bedrock_server import ACCESS_KEY, SECRET_KEY, FakeBedrock

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"   # priced by genai-prices ("aws")
PROFILE_ARN = ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/"
               "a1b2c3d4e5f6")
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-caller"
AWS_ENV_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_REGION_NAME", "AWS_ROLE_NAME", "AWS_SESSION_NAME", "AWS_PROFILE_NAME",
                 "AWS_STS_ENDPOINT", "AWS_BEARER_TOKEN_BEDROCK", "AWS_BEDROCK_RUNTIME_ENDPOINT",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_EXTERNAL_ID")


def loopback_aws_env(tmp_path: Path) -> dict[str, str]:
    """Variables that keep botocore off the network and out of the real ~/.aws."""
    return {"AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials")}


@pytest.fixture(name="aws_env", autouse=False)
def aws_env_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    for name in AWS_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in loopback_aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    yield tmp_path


_open_clients: list[Any] = []


def boto3_client(fake: FakeBedrock, service: str = "bedrock-runtime", *,
                 secret: str = SECRET_KEY, access_key: str = ACCESS_KEY,
                 token: str | None = None) -> Any:
    """A boto3 client of the stand-in (no retries); closed by ``close_boto3_clients``."""
    import boto3
    from botocore.config import Config

    client = boto3.client(service, endpoint_url=fake.url, region_name=fake.region,
                          aws_access_key_id=access_key, aws_secret_access_key=secret,
                          aws_session_token=token,
                          config=Config(retries={"total_max_attempts": 1}))
    _open_clients.append(client)
    return client


def close_boto3_clients() -> None:
    while _open_clients:
        _open_clients.pop().close()


def bedrock_entry(name: str, fake: FakeBedrock, model: str = CLAUDE,
                  **params: Any) -> dict[str, Any]:
    """A ``bedrock/`` deployment signed with the stand-in's static key."""
    litellm_params: dict[str, Any] = {
        "model": f"bedrock/{model}", "aws_bedrock_runtime_endpoint": fake.url,
        "aws_region_name": fake.region, "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY, **params}
    return {"model_name": name, "litellm_params": {k: v for k, v in litellm_params.items()
                                                   if v is not None}}
