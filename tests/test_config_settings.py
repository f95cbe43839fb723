"""litellm_settings flags and keys LiteLLM acts on that tallygate does not: each does
what LiteLLM's does, or is refused or warned about, never silently ignored."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tallygate.config import parse_config
from tallygate.errors import ConfigError

ENTRY: dict[str, Any] = {"model_name": "m", "litellm_params": {"model": "mock/x",
                                                                "mock_response": "hi"}}


def test_flags_are_read() -> None:
    settings = parse_config({"model_list": [ENTRY], "litellm_settings": {
        "drop_params": True, "set_verbose": "os.environ/VERBOSE", "json_logs": False}},
        environ={"VERBOSE": "true"})
    assert (settings.drop_params, settings.set_verbose, settings.json_logs) == (
        True, True, False)
    assert not parse_config({"model_list": [ENTRY]}).drop_params


def test_a_flag_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"litellm_settings\.drop_params: must be true or false"):
        parse_config({"model_list": [ENTRY], "litellm_settings": {"drop_params": "yes"}})


def test_keys_without_effect_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    entry = {"model_name": "m", "litellm_params": {**ENTRY["litellm_params"],
                                                    "stream_timeout": 5, "max_retries": 2}}
    with caplog.at_level(logging.WARNING, "tallygate.config"):
        parse_config({"model_list": [entry],
                      "litellm_settings": {"failure_callback": ["lago"]}})
    (warning,) = [r.getMessage() for r in caplog.records if "no effect" in r.getMessage()]
    for key in ("model_list[0].litellm_params.stream_timeout",
                "model_list[0].litellm_params.max_retries", "litellm_settings.failure_callback"):
        assert key in warning
