"""Done as a user sees it: ``tallygate --config`` with a LiteLLM config holding gemini/,
vertex_ai/ Gemini and vertex_ai/ Claude deployments (the README's example, pointed at
the stand-ins) starts, and the openai SDK's chat and stream calls to each are answered
and billed exactly in Lago."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import openai
import yaml

from tests.fakes.gemini_server import FakeGemini
from tests.fakes.lago_server import FakeLago
from tests.fakes.server_base import run_in_thread
from tests.fakes.vertex_server import FakeVertex
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    billed,
    cli_env,
    lago_env,
    lago_fixture,
    run_cli,
    run_cli_once,
    write_config,
)

MTOK = Decimal(1_000_000)

CONFIG = """
model_list:
  - model_name: gemini-flash
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_key: os.environ/GEMINI_API_KEY
      api_base: {gemini}
  - model_name: vertex-gemini
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      vertex_project: tg-project
      vertex_location: us-central1
      vertex_credentials: {key_file}
      api_base: {vertex}
  - model_name: vertex-claude
    litellm_params:
      model: vertex_ai/claude-haiku-4-5@20251001
      vertex_location: us-east5
      vertex_credentials: os.environ/VERTEX_CREDENTIALS_JSON
      api_base: {vertex}
litellm_settings:
  callbacks: ["lago"]
general_settings:
  master_key: sk-1234
  database_url: {db}
"""


def test_litellm_config_starts_and_bills_each(tmp_path: Path, lago: FakeLago) -> None:
    with run_in_thread(FakeGemini()) as gemini, run_in_thread(FakeVertex()) as vertex:
        gemini.require_api_key = "AIza-cli"
        key_file = tmp_path / "sa.json"
        key_file.write_text(json.dumps(vertex.service_account()))
        cfg = CONFIG.format(gemini=gemini.base_url, vertex=vertex.url, key_file=key_file,
                            db=tmp_path / "outbox.db")
        assert yaml.safe_load(cfg)  # plain YAML, as LiteLLM reads it
        env = cli_env({**lago_env(lago), "GEMINI_API_KEY": "AIza-cli",
                       "VERTEX_CREDENTIALS_JSON": json.dumps(vertex.service_account())})
        gemini.script.prompt_tokens, gemini.script.candidates_tokens = 1000, 100
        vertex.script.prompt_tokens, vertex.script.candidates_tokens = 1000, 100
        vertex.claude.input_tokens, vertex.claude.output_tokens = 1000, 100
        flash = (1000 * Decimal("0.3") + 100 * Decimal("2.5")) / MTOK
        haiku = (1000 * Decimal("1") + 100 * Decimal("5")) / MTOK
        with run_cli(tmp_path, cfg, env) as proxy:
            client = openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY,
                                   max_retries=0)
            for model, cost in (("gemini-flash", flash), ("vertex-gemini", flash),
                                ("vertex-claude", haiku)):
                raw = client.chat.completions.with_raw_response.create(
                    model=model, user="cli-cust",
                    messages=[{"role": "user", "content": "Hi"}])
                assert raw.parse().choices[0].message.content
                ev = billed(lago, raw.headers[CALL_ID_HEADER], "cli-cust")
                assert Decimal(ev.properties["response_cost"]) == cost
                raw = client.chat.completions.with_raw_response.create(
                    model=model, user="cli-cust", stream=True,
                    messages=[{"role": "user", "content": "Hi"}])
                assert "".join(c.choices[0].delta.content or "" for c in raw.parse()
                               if c.choices)
                ev = billed(lago, raw.headers[CALL_ID_HEADER], "cli-cust")
                assert Decimal(ev.properties["response_cost"]) == cost
        assert "PRIVATE KEY" not in proxy.stderr
        # The project of vertex-claude came from the key's project_id.
        assert any("/projects/tg-project/locations/us-east5/publishers/anthropic/" in r.path
                   for r in vertex.received)


def test_a_vertex_deployment_without_project_does_not_start(tmp_path: Path) -> None:
    with run_in_thread(FakeVertex()) as vertex:
        key_file = tmp_path / "sa.json"
        key_file.write_text(json.dumps(vertex.service_account(project_id=None)))
        path = write_config(tmp_path, {"model_list": [{
            "model_name": "v", "litellm_params": {"model": "vertex_ai/gemini-2.5-flash",
                                                  "vertex_credentials": str(key_file)}}]})
        done = run_cli_once(path, cli_env())
    assert done.returncode == 2
    assert "model_list[0].litellm_params: vertex_project: required" in done.stderr
    assert "PRIVATE KEY" not in done.stderr

