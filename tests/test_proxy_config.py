"""config.yaml features, through the real CLI where exit status and stderr matter."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import openai

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    billed,
    cli_env,
    config_dict,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_cli,
    run_cli_once,
    run_proxy,
    write_config,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def test_os_environ_keys(tmp_path: Path, upstream: FakeOpenAI, lago: FakeLago) -> None:
    entry = openai_entry("gpt-4o-mini", upstream.base_url)
    entry["litellm_params"]["api_key"] = "os.environ/MY_UPSTREAM_KEY"
    cfg = config_dict([entry], tmp_path, general={"master_key": "os.environ/MY_MASTER_KEY"})
    env = cli_env({"MY_UPSTREAM_KEY": UPSTREAM_KEY, "MY_MASTER_KEY": "sk-from-env",
                   **lago_env(lago)})
    with run_cli(tmp_path, cfg, env) as proc:
        client = openai.OpenAI(base_url=proc.base_url + "/v1", api_key="sk-from-env",
                               max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, user="cust-env")  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content == upstream.reply_text
        # upstream insists on UPSTREAM_KEY: the env value reached it
        assert upstream.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        billed(lago, raw.headers[CALL_ID_HEADER], "cust-env")
        assert http("GET", proc.base_url + "/v1/models", key=MASTER_KEY).status == 401
    assert proc.returncode == 0


def test_unset_environ_name_exits_2(tmp_path: Path) -> None:
    entry = openai_entry("gpt-4o-mini", "http://127.0.0.1:9/v1")
    entry["litellm_params"]["api_key"] = "os.environ/NOT_SET_ANYWHERE_XYZ"
    path = write_config(tmp_path, config_dict([entry], tmp_path, lago=False))
    done = run_cli_once(path, cli_env())
    assert done.returncode == 2, done.stderr
    assert "NOT_SET_ANYWHERE_XYZ" in done.stderr
    assert "model_list[0].litellm_params.api_key" in done.stderr


def test_wrong_shape_exits_2_naming_the_path(tmp_path: Path) -> None:
    cfg = config_dict([openai_entry("a", "http://127.0.0.1:9/v1"),
                       {"model_name": "b", "litellm_params": {"api_base": "http://x"}}],
                      tmp_path, lago=False)
    done = run_cli_once(write_config(tmp_path, cfg), cli_env())
    assert done.returncode == 2, done.stderr
    assert "model_list[1].litellm_params.model: required" in done.stderr
    assert "Traceback" not in done.stderr


def test_not_yaml_and_missing_file_exit_2(tmp_path: Path) -> None:
    done = run_cli_once(write_config(tmp_path, "model_list: [\n  - {"), cli_env())
    assert done.returncode == 2 and "not valid YAML" in done.stderr
    done = run_cli_once(tmp_path / "nope.yaml", cli_env())
    assert done.returncode == 2 and "nope.yaml" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_keys_one_warning_and_starts(tmp_path: Path, upstream: FakeOpenAI) -> None:
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url, weird_param=1)],
                      tmp_path, lago=False, general={"alerting": ["slack"]})
    cfg["litellm_settings"] = {"cache": True}
    cfg["some_top_level_thing"] = {"a": 1}
    with run_cli(tmp_path, cfg, cli_env()) as proc:
        reply = http("POST", proc.base_url + "/v1/chat/completions",
                     {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "u"})
        assert reply.status == 200, reply.text
        proc.stop()
    warnings = [line for line in proc.stderr.splitlines() if "unknown keys" in line]
    assert len(warnings) == 1, proc.stderr
    for key in ("model_list[0].litellm_params.weird_param", "general_settings.alerting",
                "litellm_settings.cache", "some_top_level_thing"):
        assert key in warnings[0]
    assert "WARNING" in warnings[0]


def test_tallygate_settings_alias(tmp_path: Path, upstream: FakeOpenAI, lago: FakeLago) -> None:
    cfg = config_dict([{"model_name": "gpt-4o-mini", "tallygate_params": {
        "model": "openai/gpt-4o-mini", "api_base": upstream.base_url,
        "api_key": UPSTREAM_KEY}}], tmp_path, lago=False)
    cfg["tallygate_settings"] = {"callbacks": ["lago"]}
    settings = proxy_settings(tmp_path, cfg, lago_env(lago))
    assert settings.sinks == ("lago",)
    with run_proxy(settings) as proxy:
        reply = http("POST", proxy.base_url + "/v1/chat/completions",
                     {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "alias"})
        assert reply.status == 200, reply.text
        billed(lago, reply.headers[CALL_ID_HEADER], "alias")


def test_same_model_name_shuffles_over_deployments(tmp_path: Path, upstream: FakeOpenAI) -> None:
    with run_in_thread(FakeOpenAI()) as second:
        second.require_api_key = UPSTREAM_KEY
        cfg = config_dict([openai_entry("pool", upstream.base_url),
                           openai_entry("pool", second.base_url)], tmp_path, lago=False)
        with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
            for _ in range(40):
                reply = http("POST", proxy.base_url + "/v1/chat/completions",
                             {"model": "pool", "messages": MESSAGES, "user": "u"})
                assert reply.status == 200, reply.text
        # P(one side gets nothing in 40 fair draws) = 2 * 2**-40
        assert len(upstream.requests) > 0 and len(second.requests) > 0
        assert len(upstream.requests) + len(second.requests) == 40


def test_price_overrides(tmp_path: Path, upstream: FakeOpenAI, lago: FakeLago) -> None:
    upstream.prompt_tokens, upstream.cached_tokens, upstream.completion_tokens = 1000, 400, 50
    entry = openai_entry("priced", upstream.base_url, model="my-private-model",
                         input_cost_per_token=0.000003, output_cost_per_token="1.5e-05",
                         cache_read_input_token_cost=3e-07)
    cfg = config_dict([entry], tmp_path)
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        reply = http("POST", proxy.base_url + "/v1/chat/completions",
                     {"model": "priced", "messages": MESSAGES, "user": "p"})
        assert reply.status == 200, reply.text
        expected = (600 * Decimal("0.000003") + 400 * Decimal("3e-07")
                    + 50 * Decimal("1.5e-05"))
        assert Decimal(reply.headers[COST_HEADER]) == expected
        ev = billed(lago, reply.headers[CALL_ID_HEADER], "p")
        assert Decimal(ev.properties["response_cost"]) == expected
        assert ev.properties["unknown_price"] == "false"


def test_missing_lago_env_exits_2_naming_them(tmp_path: Path) -> None:
    cfg = config_dict([openai_entry("gpt-4o-mini", "http://127.0.0.1:9/v1")], tmp_path)
    done = run_cli_once(write_config(tmp_path, cfg),
                        cli_env({"LAGO_API_BASE": "http://127.0.0.1:9"}))
    assert done.returncode == 2, done.stderr
    assert "LAGO_API_KEY" in done.stderr and "LAGO_API_EVENT_CODE" in done.stderr
    assert "Traceback" not in done.stderr


def test_empty_environ_master_key_exits_2(tmp_path: Path) -> None:
    """``master_key: os.environ/NAME`` with NAME set to "" must not start an open proxy."""
    cfg = config_dict([openai_entry("gpt-4o-mini", "http://127.0.0.1:9/v1")], tmp_path,
                      lago=False, general={"master_key": "os.environ/MY_EMPTY_MASTER"})
    done = run_cli_once(write_config(tmp_path, cfg), cli_env({"MY_EMPTY_MASTER": ""}),
                        timeout=10)
    assert done.returncode == 2, done.stderr
    assert "general_settings.master_key" in done.stderr and "MY_EMPTY_MASTER" in done.stderr


def test_environment_variables_give_the_provider_key(tmp_path: Path,
                                                     upstream: FakeOpenAI) -> None:
    """LiteLLM's ``environment_variables`` block: OPENAI_API_KEY set there is the key of
    deployments that name none."""
    entry = openai_entry("gpt-4o-mini", upstream.base_url)
    del entry["litellm_params"]["api_key"]
    cfg = config_dict([entry], tmp_path, lago=False)
    cfg["environment_variables"] = {"OPENAI_API_KEY": UPSTREAM_KEY}
    with run_cli(tmp_path, cfg, cli_env()) as proc:
        reply = http("POST", proc.base_url + "/v1/chat/completions",
                     {"model": "gpt-4o-mini", "messages": MESSAGES, "user": "u"})
        assert reply.status == 200, reply.text
    assert upstream.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_port_in_use_exits_1_with_a_message(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.proxy_harness import CLI

    cfg = config_dict([openai_entry("gpt-4o-mini", "http://127.0.0.1:9/v1")], tmp_path,
                      lago=False)
    path = write_config(tmp_path, cfg)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(CLI), "--config", str(path), "--host", "127.0.0.1",
                               "--port", str(port)], env=cli_env(), capture_output=True,
                              text=True, timeout=20)
    assert done.returncode == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
