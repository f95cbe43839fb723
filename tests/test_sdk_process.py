"""The SDK in a process of its own, as a script uses it: a cheap import, and the usage
of a script that never calls ``flush()`` delivered when the interpreter exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tallygate
from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.sdk_fixtures import EVENT_CODE, SdkPaths

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(30)  # a hang (deadlock) fails, not blocks

EXPECTED_ALL = {
    "AuthenticationError", "BadRequestError", "BudgetExceededError", "Callback",
    "ConfigError", "CustomLogger", "FailureEvent", "ModelNotFoundError", "NotFoundError",
    "PermissionDeniedError", "RateLimitError", "RequestTooLargeError", "TallygateError",
    "UpstreamConnectionError", "UpstreamError", "UpstreamTimeoutError", "Usage",
    "UsageEvent", "__version__", "acompletion", "aembedding", "callbacks", "completion",
    "embedding", "failure_callback", "flush", "success_callback",
    # LiteLLM's SDK surface beyond chat (issue 16)
    "aimage_edit", "aimage_generation", "amoderation", "aresponses", "arerank", "aspeech",
    "atext_completion", "atranscription", "completion_cost", "cost_per_token",
    "drop_params", "get_model_info", "get_supported_openai_params", "image_edit",
    "image_generation", "model_cost", "moderation", "rerank", "responses", "speech",
    "stream_chunk_builder", "text_completion", "token_counter", "transcription",
    "Router",
}


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LAGO_", "TALLYGATE_", "OPENAI_", "ANTHROPIC_"))}
    env["TALLYGATE_DATABASE_URL"] = str(tmp / "outbox.db")
    env["HOME"] = str(tmp)  # nothing may land in the real home directory
    return env


def test_the_public_surface_is_pinned() -> None:
    assert set(tallygate.__all__) == EXPECTED_ALL
    assert len(tallygate.__all__) == len(EXPECTED_ALL)
    for name in tallygate.__all__:
        assert getattr(tallygate, name) is not None, name


def test_import_tallygate_stays_cheap(tmp_path: Path) -> None:
    proc = run_python("""
        import json, sys
        import tallygate
        heavy = ("aiohttp", "genai_prices", "orjson", "asyncpg", "redis", "yaml")
        print(json.dumps({m: m in sys.modules for m in heavy}))
    """, clean_env(tmp_path), tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded["aiohttp"] is False
    assert loaded["genai_prices"] is False
    assert loaded["asyncpg"] is False and loaded["redis"] is False


def test_a_script_that_never_flushes_is_billed_at_exit(tmp_path: Path) -> None:
    with FakeLago() as lago:
        env = clean_env(tmp_path)
        env.update(LAGO_API_BASE=lago.url, LAGO_API_KEY=TEST_API_KEY,
                   LAGO_API_EVENT_CODE=EVENT_CODE)
        proc = run_python("""
            import tallygate
            tallygate.success_callback = ["lago"]
            r = tallygate.completion(model="mock/gpt-4o-mini", user="customer-42",
                                     messages=[{"role": "user", "content": "hi"}],
                                     mock_response="Hello there.")
            print(r.call_id)
        """, env, tmp_path)
        assert proc.returncode == 0, proc.stderr
        call_id = proc.stdout.strip()
        assert lago.count(call_id) == 1
        assert lago.events[call_id].external_subscription_id == "customer-42"
        assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr, proc.stderr
        assert lago.schema_violations == []


def test_what_lago_did_not_take_is_sent_by_the_next_process(tmp_path: Path) -> None:
    with FakeLago() as lago:
        env = clean_env(tmp_path)
        env.update(LAGO_API_BASE=lago.url, LAGO_API_KEY=TEST_API_KEY,
                   LAGO_API_EVENT_CODE=EVENT_CODE, TALLYGATE_FLUSH_TIMEOUT="0.5")
        script = """
            import tallygate
            tallygate.success_callback = ["lago"]
            r = tallygate.completion(model="mock/gpt-4o-mini", user="customer-42",
                                     messages=[{"role": "user", "content": "hi"}])
            print(r.call_id)
        """
        lago.stop()  # Lago is down while the first script runs and exits
        first = run_python(script, env, tmp_path)
        assert first.returncode == 0, first.stderr
        lago.start()
        second = run_python(script, env, tmp_path)
        assert second.returncode == 0, second.stderr
        for call_id in (first.stdout.strip(), second.stdout.strip()):
            assert lago.count(call_id) == 1, call_id


def test_the_sdk_fixture_points_the_outbox_at_a_temp_file(sdk: SdkPaths) -> None:
    assert os.environ["TALLYGATE_DATABASE_URL"] == str(sdk.outbox)
    assert not sdk.outbox.exists()
    tallygate.success_callback = ["jsonl"]
    assert sdk.outbox.exists()


def test_asyncio_run_leaves_no_open_session_and_provider_429_is_a_rate_limit_error(
        tmp_path: Path) -> None:
    """Each asyncio.run() closes the HTTP session it used (no 'Unclosed client session'
    at exit), and a provider's 429 is catchable as tallygate.RateLimitError."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import asyncio, gc, warnings
        warnings.simplefilter("error")
        import tallygate
        from tests.fakes.openai_server import FakeOpenAI, run_in_thread

        with run_in_thread(FakeOpenAI()) as fake:
            async def call():
                return await tallygate.acompletion(
                    model="openai/gpt-4o-mini", api_base=fake.base_url, api_key="k",
                    messages=[{"role": "user", "content": "hi"}])
            for _ in range(2):
                asyncio.run(call())
            fake.fail(429, "slow down", headers={"retry-after": "3"})
            try:
                asyncio.run(call())
            except tallygate.RateLimitError as exc:
                print("rate-limited", exc.status_code, exc.headers.get("Retry-After"))
            gc.collect()
        print("clean")
    """))
    env = {**os.environ, "TALLYGATE_DATABASE_URL": str(tmp_path / "outbox.db"),
           "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "error"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "rate-limited 429 3" in proc.stdout and "clean" in proc.stdout
    assert "Unclosed" not in proc.stderr, proc.stderr
