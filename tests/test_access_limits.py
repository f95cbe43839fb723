"""Rate limits through the real proxy over HTTP: a deployment's own rpm (in memory and
in Redis), and a key's tpm counted with the token estimate, corrected after the call."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (
    MASTER_KEY,
    assert_openai_error,
    openai_entry,
    run_proxy,
    wait_for,
)
from tests.test_access_keys import PRICES, chat, generate, settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def _deployment(name: str, reply: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "mock/m", "mock_response": reply,
                                                   **PRICES, **params}}


@pytest.mark.parametrize("store", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_each_deployment_has_its_own_rpm(tmp_path: Path, store: str) -> None:
    # A fresh group name per run: Redis counters outlive the test for a minute.
    group = f"g-{uuid.uuid4().hex[:8]}"
    models = [_deployment(group, "from deployment A", rpm=2),
              _deployment(group, "from deployment B", rpm=2)]
    access = {"redis_url": REDIS_URL} if store == "redis" else None
    with run_proxy(settings(tmp_path, models=models, access=access)) as proxy:
        replies = [chat(proxy.base_url, MASTER_KEY, user="c", model=group) for _ in range(5)]
        assert [r.status for r in replies] == [200, 200, 200, 200, 429]
        served = [r.json()["choices"][0]["message"]["content"] for r in replies[:4]]
        # Each deployment took exactly its 2: a full one is skipped, not hit.
        assert sorted(served) == ["from deployment A"] * 2 + ["from deployment B"] * 2
        assert {r.headers["x-ratelimit-limit-requests"] for r in replies[:4]} == {"2"}
        err = assert_openai_error(replies[4], 429, code="rate_limit_exceeded")
        assert f"every deployment of model {group!r}" in err["message"]
        assert int(replies[4].headers["retry-after"]) >= 1
        assert replies[4].headers["x-ratelimit-limit-requests"] == "2"
        assert replies[4].headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-reset-requests" in replies[4].headers


def test_deployment_without_limit_takes_the_overflow(tmp_path: Path) -> None:
    models = [_deployment("g", "limited", rpm=1), _deployment("g", "unlimited")]
    with run_proxy(settings(tmp_path, models=models)) as proxy:
        replies = [chat(proxy.base_url, MASTER_KEY, user="c", model="g") for _ in range(6)]
        assert [r.status for r in replies] == [200] * 6
        served = [r.json()["choices"][0]["message"]["content"] for r in replies]
        assert served.count("limited") <= 1


def _clear_of_a_minute_boundary(seconds: float = 15.0) -> None:
    """The limits are sliding one-minute windows: a count made just before a minute
    turns is carried, weighted, into the next one, and its correction after the turn
    lands in the new minute. Start where the next ``seconds`` stay within one minute."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.1)


def test_key_tpm_counts_the_estimate_then_the_real_tokens(tmp_path: Path) -> None:
    _clear_of_a_minute_boundary()
    with run_in_thread(FakeOpenAI()) as fake:
        fake.prompt_tokens, fake.completion_tokens = 100, 50   # 150 real tokens a call
        cfg_models = [openai_entry("gpt", fake.base_url, **PRICES)]
        with run_proxy(settings(tmp_path, models=cfg_models)) as proxy:
            base = proxy.base_url
            key = generate(base, customer_id="acme", tpm_limit=400)["key"]

            # A call asking for up to 1000 output tokens counts ~1000 at once...
            fake.latency = 2.0
            first: list[Any] = []
            slow = threading.Thread(target=lambda: first.append(
                chat(base, key, model="gpt", max_tokens=1000)))
            slow.start()
            wait_for(lambda: len(fake.requests) == 1)
            fake.latency = 0.0
            # ... so while it runs, the key is over its 400 tokens per minute.
            refused = chat(base, key, model="gpt", max_tokens=10)
            err = assert_openai_error(refused, 429, code="rate_limit_exceeded")
            assert "400 tokens per minute" in err["message"]
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["x-ratelimit-limit-tokens"] == "400"
            assert len(fake.requests) == 1          # refused before going upstream
            slow.join(10)
            assert first[0].status == 200

            # Settled, it counts its real 150 tokens: two more calls fit (150, 300 < 400).
            second = chat(base, key, model="gpt", max_tokens=10)
            assert second.status == 200, second.text
            remaining = int(second.headers["x-ratelimit-remaining-tokens"])
            # 400 - 150 (first, corrected) - this call's estimate (prompt + 10)
            assert 400 - 150 - 30 <= remaining < 400 - 100
            assert chat(base, key, model="gpt", max_tokens=10).status == 200
            # 450 real tokens now: the window is full.
            assert_openai_error(chat(base, key, model="gpt", max_tokens=10), 429,
                                code="rate_limit_exceeded")
            assert len(fake.requests) == 3
