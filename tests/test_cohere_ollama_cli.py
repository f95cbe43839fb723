"""A LiteLLM config naming Cohere and Ollama deployments starts the real ``tallygate``
command, serves calls to both, and no upstream credential shows up anywhere: not in the
log (at DEBUG), the answers, the error bodies, the metrics or the Lago events."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tallygate.errors import ConfigError
from tests.fakes.cohere_server import FakeCohere
from tests.fakes.lago_server import FakeLago
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (
    MASTER_KEY,
    cli_env,
    config_dict,
    http,
    lago_env,
    proxy_settings,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

COHERE_KEY = "co-live-Zq7x9SECRETcohere"
OLLAMA_KEY = "ollama-cloud-SECRET-4711"


def test_config_with_cohere_and_ollama_serves_and_leaks_no_key(tmp_path: Path) -> None:
    with FakeLago() as lago, run_in_thread(FakeCohere()) as co, \
            run_in_thread(FakeOllama()) as ol:
        co.require_api_key, ol.require_api_key = COHERE_KEY, OLLAMA_KEY
        cfg = config_dict([
            # The key from COHERE_API_KEY, as LiteLLM reads it; the base as a full URL.
            {"model_name": "command", "litellm_params": {
                "model": "cohere/command-a-03-2025", "api_base": co.url + "/v2/chat"}},
            {"model_name": "embed", "litellm_params": {
                "model": "cohere/embed-v4.0", "api_base": co.url,
                "input_type": "search_query"}},
            {"model_name": "llama", "litellm_params": {
                "model": "ollama_chat/llama3.2", "api_base": ol.url,
                "api_key": "os.environ/MY_OLLAMA_KEY", "num_ctx": 2048,
                "input_cost_per_token": 0.0000001, "output_cost_per_token": 0.0000004}},
            {"model_name": "llama-gen", "litellm_params": {
                "model": "ollama/llama3.2", "api_base": ol.url, "api_key": OLLAMA_KEY}},
        ], tmp_path)
        env = cli_env({**lago_env(lago), "COHERE_API_KEY": COHERE_KEY,
                       "MY_OLLAMA_KEY": OLLAMA_KEY})
        answers: list[str] = []
        with run_cli(tmp_path, cfg, env, args=("--log-level", "DEBUG")) as cli, \
                openai.OpenAI(base_url=cli.base_url + "/v1", api_key=MASTER_KEY,
                              max_retries=0) as client:
            for model in ("command", "llama", "llama-gen"):
                reply = client.chat.completions.create(
                    model=model, user="acme", messages=[{"role": "user", "content": "Hi"}])
                answers.append(reply.model_dump_json())
                chunks = list(client.chat.completions.create(
                    model=model, user="acme", stream=True,
                    messages=[{"role": "user", "content": "Hi"}]))
                answers += [c.model_dump_json() for c in chunks]
            emb = client.embeddings.create(model="embed", input="hello", user="acme")
            answers.append(emb.model_dump_json())
            assert co.requests[-1]["input_type"] == "search_query"  # from litellm_params
            assert ol.requests[0]["options"] == {"num_ctx": 2048}
            # Upstreams that quote our key back in their refusal: the client sees neither.
            co.fail(401, f"invalid api token {COHERE_KEY}")
            ol.fail(401, f"unauthorized key {OLLAMA_KEY}")
            for model in ("command", "llama"):
                reply_raw = http("POST", cli.base_url + "/v1/chat/completions", {
                    "model": model, "user": "acme",
                    "messages": [{"role": "user", "content": "Hi"}]})
                assert reply_raw.status == 401
                answers.append(reply_raw.text)
            metrics = http("GET", cli.base_url + "/metrics").text
            wait_for(lambda: len(lago.stored) == 7, timeout=15)
        log = cli.stderr
    assert cli.returncode == 0
    assert "llama" in metrics and "command" in metrics
    events = json.dumps([e.as_json() for e in lago.stored])
    for secret in (COHERE_KEY, OLLAMA_KEY):
        for where, text in (("log", log), ("answers", "\n".join(answers)),
                            ("metrics", metrics), ("lago", events)):
            assert secret not in text, f"{secret[:8]}... found in the {where}"
    # The keys did reach the upstreams, each in its own header shape.
    assert co.received[0].headers["Authorization"] == f"Bearer {COHERE_KEY}"
    assert ol.received[0].headers["Authorization"] == f"Bearer {OLLAMA_KEY}"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    for model, base, needle in (
            ("cohere_chat/v1/command-r", None, "v1"),
            ("ollama_chat/llama3.2", "http://127.0.0.1:11434/v1", "/v1")):
        params = {"model": model, **({"api_base": base} if base else {})}
        cfg = config_dict([{"model_name": "m", "litellm_params": params}], tmp_path,
                          lago=False)
        with pytest.raises(ConfigError) as err:
            proxy_settings(tmp_path, cfg)
        assert err.value.message.startswith("model_list[0].litellm_params")
        assert needle in err.value.message
