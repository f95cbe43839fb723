"""A LiteLLM config with ``bedrock/`` deployments loads with LiteLLM's litellm_params, and
what tallygate cannot honour is refused at load, naming the key."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tests.bedrock_support import CLAUDE, PROFILE_ARN, aws_env_fixture

__all__ = ["aws_env_fixture"]


def config(**params: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "claude", "litellm_params": {
        "model": f"bedrock/{CLAUDE}", **params}}]}


def test_litellm_bedrock_config_loads(aws_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cfg = {"model_list": [
        {"model_name": "claude", "litellm_params": {
            "model": f"bedrock/{CLAUDE}", "aws_access_key_id": "os.environ/MY_KEY_ID",
            "aws_secret_access_key": "os.environ/MY_SECRET", "aws_region_name": "us-east-1"}},
        {"model_name": "claude", "litellm_params": {
            "model": f"bedrock/{PROFILE_ARN}", "aws_role_name": "arn:aws:iam::1:role/r",
            "aws_session_name": "gw", "aws_sts_endpoint": "https://sts.us-east-1.amazonaws.com",
            "aws_bedrock_runtime_endpoint": "https://vpce.example/"},
         "model_info": {"base_model": f"bedrock/{CLAUDE}"}},
        {"model_name": "nova", "litellm_params": {
            "model": "bedrock/us.amazon.nova-pro-v1:0", "aws_profile_name": "prod"}},
        {"model_name": "keyed", "litellm_params": {
            "model": "bedrock/amazon.nova-lite-v1:0", "api_key": "os.environ/BEDROCK_KEY"}},
    ]}
    settings = parse_config(cfg, {"MY_KEY_ID": "AKIA1", "MY_SECRET": "s3cret",
                                  "BEDROCK_KEY": "ABSK-1"})
    first, second = settings.models["claude"]
    assert (first.provider, first.model) == ("bedrock", CLAUDE)
    assert dict(first.params) == {"aws_access_key_id": "AKIA1",
                                  "aws_secret_access_key": "s3cret",
                                  "aws_region_name": "us-east-1"}
    assert "s3cret" not in repr(first)
    assert second.model == PROFILE_ARN and second.base_model == CLAUDE
    assert second.params["aws_role_name"] == "arn:aws:iam::1:role/r"
    assert settings.models["nova"][0].params == {"aws_profile_name": "prod"}
    assert settings.models["keyed"][0].api_key == "ABSK-1"
    assert not [r for r in caplog.records if "unknown keys" in r.getMessage()]


@pytest.mark.parametrize(("params", "key"), [
    ({"aws_web_identity_token": "tok", "aws_role_name": "r"}, "aws_web_identity_token"),
    ({"aws_session_tags": [{"Key": "a", "Value": "b"}]}, "aws_session_tags"),
    ({"aws_access_key_id": "AKIA1"}, "aws_secret_access_key"),
    ({"aws_region_name": "US East"}, "aws_region_name"),
])
def test_what_cannot_be_honoured_is_refused(aws_env: Path, params: dict[str, Any],
                                            key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(**params), {})
    assert info.value.message.startswith("model_list[0].litellm_params: ")
    assert key in info.value.message


def test_unknown_bedrock_keys_are_warned_about(aws_env: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    parse_config(config(aws_region_name="us-east-1", aws_bedrock_guardrail="x"), {})
    warned = [r.getMessage() for r in caplog.records if "unknown keys" in r.getMessage()]
    assert warned and "aws_bedrock_guardrail" in warned[0]


def test_environment_variables_block_feeds_the_aws_params(aws_env: Path) -> None:
    """LiteLLM puts ``environment_variables`` into the process environment, where its
    Bedrock code reads AWS_*; tallygate binds them to the deployments at load."""
    cfg = {"environment_variables": {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY":
                                     "env-secret", "AWS_SESSION_TOKEN": "env-token",
                                     "AWS_REGION_NAME": "eu-west-1"},
           "model_list": [
               {"model_name": "a", "litellm_params": {"model": f"bedrock/{CLAUDE}"}},
               {"model_name": "b", "litellm_params": {  # its own key: no env token with it
                   "model": f"bedrock/{CLAUDE}", "aws_access_key_id": "AKIAOWN",
                   "aws_secret_access_key": "own", "aws_region_name": "us-east-2"}},
               {"model_name": "c", "litellm_params": {"model": f"bedrock/{PROFILE_ARN}"}}]}
    settings = parse_config(cfg, {})
    assert dict(settings.models["a"][0].params) == {
        "aws_access_key_id": "AKIAENV", "aws_secret_access_key": "env-secret",
        "aws_session_token": "env-token", "aws_region_name": "eu-west-1"}
    assert dict(settings.models["b"][0].params) == {
        "aws_access_key_id": "AKIAOWN", "aws_secret_access_key": "own",
        "aws_region_name": "us-east-2"}
    # an ARN's region comes before the environment's, as in LiteLLM
    assert "aws_region_name" not in settings.models["c"][0].params


def test_the_sdk_refuses_the_same(aws_env: Path, sdk: Any) -> None:
    import tallygate

    with pytest.raises(ConfigError, match="aws_web_identity_token"):
        tallygate.completion(model=f"bedrock/{CLAUDE}", messages=[{"role": "user",
                                                                   "content": "hi"}],
                             aws_web_identity_token="tok", aws_role_name="r")
