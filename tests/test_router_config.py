"""router_settings in LiteLLM's names, checked at start: a fallback or alias naming a
model group that does not exist exits 2 naming its path; unknown router keys are
warned about like other unknown keys; litellm_settings gives defaults."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tallygate.errors import ConfigError
from tests.proxy_harness import (
    cli_env,
    config_dict,
    openai_entry,
    proxy_settings,
    run_cli_once,
    write_config,
)

BASE = "http://127.0.0.1:9/v1"


def _cfg(tmp_path: Path, router: dict[str, Any] | None = None,
         **top: Any) -> dict[str, Any]:
    cfg = config_dict([openai_entry("gpt", BASE), openai_entry("gpt", BASE),
                       openai_entry("claude", BASE),
                       openai_entry("anthropic/*", BASE, model="*")], tmp_path, lago=False)
    if router is not None:
        cfg["router_settings"] = router
    cfg.update(top)
    return cfg


def test_a_fallback_to_an_unknown_group_exits_2_naming_the_path(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {"fallbacks": [{"gpt": ["claude", "gtp-5"]}]})
    done = run_cli_once(write_config(tmp_path, cfg), cli_env())
    assert done.returncode == 2, done.stderr
    assert "router_settings.fallbacks.gpt[1]: unknown model group 'gtp-5'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("router", "message"), [
    ({"fallbacks": [{"nope": ["gpt"]}]}, "router_settings.fallbacks: unknown model group"),
    ({"context_window_fallbacks": [{"gpt": ["x"]}]},
     "router_settings.context_window_fallbacks.gpt[0]: unknown model group 'x'"),
    ({"content_policy_fallbacks": [{"gpt": "x"}]},
     "router_settings.content_policy_fallbacks.gpt[0]: unknown model group 'x'"),
    ({"default_fallbacks": ["x"]}, "router_settings.default_fallbacks[0]"),
    ({"model_group_alias": {"gpt4": "gpt-4o"}},
     "router_settings.model_group_alias.gpt4: unknown model group 'gpt-4o'"),
    ({"model_group_alias": {"gpt4": {"model": "x", "hidden": True}}},
     "router_settings.model_group_alias.gpt4: unknown model group 'x'"),
    ({"routing_strategy": "round-robin"}, "router_settings.routing_strategy: must be one of"),
    ({"num_retries": -1}, "router_settings.num_retries"),
    ({"cooldown_time": "soon"}, "router_settings.cooldown_time: must be a number"),
    ({"fallbacks": "claude"}, "router_settings.fallbacks: must be a list"),
    ({"redis_port": 6380}, "router_settings.redis_port: needs redis_host"),
])
def test_router_settings_errors_name_the_path(tmp_path: Path, router: dict[str, Any],
                                              message: str) -> None:
    with pytest.raises(ConfigError) as err:
        proxy_settings(tmp_path, _cfg(tmp_path, router))
    assert message in err.value.message, err.value.message


def test_names_that_reach_a_group_are_accepted(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, {
        # a wildcard group's model, an alias, a deployment id, and "*" as every group
        "fallbacks": [{"gpt": ["anthropic/claude-3-5-haiku", "big"]},
                      {"*": ["my-claude-id"]}],
        "model_group_alias": {"big": "claude"}})
    cfg["model_list"][2]["model_info"] = {"id": "my-claude-id"}
    s = proxy_settings(tmp_path, cfg).router
    assert s.fallbacks["gpt"] == ("anthropic/claude-3-5-haiku", "big")
    assert s.fallbacks["*"] == ("my-claude-id",)
    assert s.aliases == {"big": "claude"}


def test_duplicate_deployment_ids_are_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    cfg["model_list"][0]["model_info"] = {"id": "same"}
    cfg["model_list"][2]["model_info"] = {"id": "same"}
    with pytest.raises(ConfigError) as err:
        proxy_settings(tmp_path, cfg)
    assert "model_list[2].model_info.id: 'same' is also the id of model_list[0]" \
        in err.value.message


def test_unknown_router_keys_are_warned_about(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tallygate.config")
    cfg = _cfg(tmp_path, {"num_retries": 1, "enable_tag_filtering": True,
                          "retry_policy": {"TimeoutErrorRetries": 2, "TeapotErrorRetries": 1},
                          "routing_strategy_args": {"ttl": 60}})
    s = proxy_settings(tmp_path, cfg).router
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "router_settings.enable_tag_filtering" in warning
    assert "router_settings.retry_policy.TeapotErrorRetries" in warning
    # routing_strategy_args is read by latency-based-routing only: said so.
    assert "router_settings.routing_strategy_args.ttl" in warning
    assert s.num_retries == 1 and s.retry_policy == {"timeout": 2}


def test_defaults_from_litellm_settings_and_deployments(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, litellm_settings={"num_retries": 5, "request_timeout": 12,
                                           "allowed_fails": 7, "cooldown_time": 9,
                                           "fallbacks": [{"gpt": ["claude"]}]})
    cfg["model_list"][0]["litellm_params"].update(
        {"order": 1, "weight": 3, "rpm": 10, "tpm": 1000, "max_retries": 2,
         "stream_timeout": 30})
    cfg["model_list"][1]["tpm"] = 500   # LiteLLM also takes rpm/tpm beside litellm_params
    s = proxy_settings(tmp_path, cfg).router
    assert (s.num_retries, s.timeout_s, s.allowed_fails, s.cooldown_s) == (5, 12, 7, 9)
    assert s.fallbacks == {"gpt": ("claude",)}
    first, second = s.deployments["gpt"]
    assert (first.order, first.weight, first.rpm, first.tpm, first.max_retries,
            first.stream_timeout) == (1, 3, 10, 1000, 2, 30)
    assert second.tpm == 500 and second.order is None
    # Ids are stable (same config, same id: shared cooldowns need it) and distinct.
    again = proxy_settings(tmp_path, cfg).router.deployments["gpt"]
    assert first.model_id == again[0].model_id != second.model_id
    assert s.deployments["anthropic/*"][0].template == "openai/*"

    over = _cfg(tmp_path, {"num_retries": 1, "timeout": 3},
                litellm_settings={"num_retries": 5, "request_timeout": 12})
    r = proxy_settings(tmp_path, over).router
    assert (r.num_retries, r.timeout_s) == (1, 3)


def test_redis_settings_make_one_url(tmp_path: Path) -> None:
    s = proxy_settings(tmp_path, _cfg(tmp_path, {
        "redis_host": "cache.internal", "redis_port": 6380,
        "redis_password": "os.environ/REDIS_PW"}), {"REDIS_PW": "p@ss/word"}).router
    assert s.redis_url == "redis://:p%40ss%2Fword@cache.internal:6380/0"
