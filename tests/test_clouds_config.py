"""A LiteLLM config naming every cloud provider starts the real ``tallygate`` command and
serves them (``examples/clouds.yaml``); provider settings are read as LiteLLM reads them
or refused, never ignored."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from tallygate.config import parse_config
from tallygate.errors import ConfigError
from tallygate.providers.registry import provider_names
from tests.fakes.openai_compat_server import FakeCompat
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import cli_env, http, run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "clouds.yaml"
PREFIXES = ("azure", "azure_ai", "mistral", "deepseek", "groq", "together_ai",
            "fireworks_ai", "xai", "openrouter", "perplexity", "cerebras", "nvidia_nim",
            "hosted_vllm", "lm_studio", "cohere", "ollama_chat", "ollama", "openai")


def test_the_example_names_every_provider_and_the_registry_has_them() -> None:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    used = {e["litellm_params"]["model"].split("/", 1)[0] for e in cfg["model_list"]}
    assert used == set(PREFIXES)
    assert set(PREFIXES) <= set(provider_names())


def test_the_example_config_starts_and_serves(tmp_path: Path) -> None:
    with run_in_thread(FakeCompat("azure")) as azure, \
            run_in_thread(FakeCompat("deepseek")) as deepseek:
        azure.answer_model = "gpt-4o-2024-08-06"
        deepseek.require_api_key = "sk-ds-example"
        env = cli_env({"AZURE_API_BASE": azure.url, "AZURE_API_KEY": "az-example",
                       "AZURE_AI_API_BASE": "https://example.services.ai.azure.com",
                       "AZURE_AI_API_KEY": "ai-example",
                       "DEEPSEEK_API_KEY": "sk-ds-example",
                       "DEEPSEEK_API_BASE": deepseek.base_url})
        with run_cli(tmp_path, EXAMPLE.read_text(), env) as proc:
            models = http("GET", proc.base_url + "/v1/models").json()
            names = {m["id"] for m in models["data"]}
            assert len(names) == 18 and "azure-gpt-4o" in names
            reply = http("POST", proc.base_url + "/v1/chat/completions", {
                "model": "azure-gpt-4o", "user": "ex",
                "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status == 200, reply.text
            assert azure.received[-1].path == \
                "/openai/deployments/my-gpt4o-deployment/chat/completions"
            assert azure.received[-1].headers["api-key"] == "az-example"
            # model_info.base_model prices it (gpt-4o), whatever the answer names.
            cost = (Decimal(12) * Decimal("2.5") + Decimal(7) * 10) / Decimal(1_000_000)
            assert Decimal(reply.headers["x-tallygate-response-cost"]) == cost
            reply = http("POST", proc.base_url + "/v1/chat/completions", {
                "model": "deepseek-chat", "user": "ex",
                "messages": [{"role": "user", "content": "Hi"}]})
            assert reply.status == 200, reply.text
            assert deepseek.received[-1].path == "/beta/chat/completions"
        assert proc.returncode == 0
        assert "az-example" not in proc.stderr and "sk-ds-example" not in proc.stderr


def _one(params: dict[str, object], env: dict[str, str] | None = None) -> object:
    cfg = {"model_list": [{"model_name": "m", "litellm_params": params}]}
    return parse_config(cfg, env or {}).models["m"][0]


def test_keys_and_bases_come_from_litellms_variables() -> None:
    dep = _one({"model": "groq/llama"}, {"GROQ_API_BASE": "http://groq.local/openai/v1"})
    assert dep.api_base == "http://groq.local/openai/v1"  # type: ignore[attr-defined]
    cfg = {"model_list": [{"model_name": "m", "litellm_params": {"model": "together_ai/x"}}],
           "environment_variables": {"TOGETHERAI_API_KEY": "tk"}}
    assert parse_config(cfg, {}).models["m"][0].api_key == "tk"


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match="api_base: required for hosted_vllm"):
        _one({"model": "hosted_vllm/qwen"})
    with pytest.raises(ConfigError, match="search_context_size_huge: unknown"):
        _one({"model": "perplexity/sonar",
              "search_context_cost_per_query": {"search_context_size_huge": 1}})
    with pytest.raises(ConfigError, match="api_base: required for azure_ai"):
        _one({"model": "azure_ai/Phi-4"})


def test_unknown_provider_params_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    _one({"model": "mistral/mistral-small-latest", "vertex_project": "p"})
    assert "vertex_project" in caplog.text
