"""Shared pieces of the router tests: deployments with their own prices, load through
the proxy, and the billing checks every routed call must pass.

Each deployment gets its own price override, so the cost of a call says which
deployment answered it; ``check_billing`` holds every 200 to: one Lago event, its
``model_id`` the one the ``x-litellm-model-id`` header named, its cost that
deployment's price for the usage the stand-in reported.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (
    CALL_ID_HEADER,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    config_dict,
    http,
    wait_for,
)

MESSAGES = [{"role": "user", "content": "hi"}]
PROMPT, COMPLETION = 12, 7  # what FakeOpenAI reports by default


def priced(name: str, base_url: str, model_id: str, price_in: str, price_out: str,
           model: str = "gpt-4o-mini", **params: Any) -> dict[str, Any]:
    """A deployment of ``name`` with its own id and price."""
    return {"model_name": name,
            "litellm_params": {"model": f"openai/{model}", "api_base": base_url,
                               "api_key": UPSTREAM_KEY, "input_cost_per_token": price_in,
                               "output_cost_per_token": price_out, **params},
            "model_info": {"id": model_id}}


def cost(price_in: str, price_out: str, prompt: int = PROMPT,
         completion: int = COMPLETION) -> Decimal:
    return prompt * Decimal(price_in) + completion * Decimal(price_out)


def router_config(tmp_path: Path, models: list[dict[str, Any]],
                  router: Mapping[str, Any] | None = None, **general: Any) -> dict[str, Any]:
    cfg = config_dict(models, tmp_path, general=general)
    if router is not None:
        cfg["router_settings"] = dict(router)
    return cfg


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any


async def load(base_url: str, n: int, *, concurrency: int = 20, key: str = MASTER_KEY,
               body: Mapping[str, Any] | None = None, stream: bool = False,
               model: str = "g") -> list[Reply]:
    """``n`` chat calls, ``concurrency`` at a time, each with its own customer."""
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def one(session: aiohttp.ClientSession, i: int) -> Reply:
        payload: dict[str, Any] = {"model": model, "messages": MESSAGES, "user": f"c{i % 5}",
                                   **(body or {})}
        if stream:
            payload["stream"] = True
        async with sem, session.post(base_url + "/v1/chat/completions", json=payload,
                                     headers={"Authorization": f"Bearer {key}"}) as resp:
            raw = await resp.read()
            parsed: Any = raw
            if not stream:
                try:
                    import orjson

                    parsed = orjson.loads(raw)
                except ValueError:
                    parsed = raw
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()},
                         parsed)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, i) for i in range(n))))


def run_load(base_url: str, n: int, **kwargs: Any) -> tuple[list[Reply], float]:
    started = time.perf_counter()
    replies = asyncio.run(load(base_url, n, **kwargs))
    return replies, time.perf_counter() - started


def check_billing(lago: FakeLago, replies: Sequence[Reply],
                  prices: Mapping[str, Decimal], *, timeout: float = 30.0) -> Counter[str]:
    """Every 200 billed exactly once in Lago, at the price of the deployment that
    answered (``prices``: model id -> cost of one call). Returns calls per model id."""
    ok = [r for r in replies if r.status == 200]
    ids = [r.headers[CALL_ID_HEADER] for r in ok]
    wait_for(lambda: all(i in lago.events for i in ids), timeout)
    served: Counter[str] = Counter()
    for reply, call_id in zip(ok, ids, strict=True):
        assert lago.count(call_id) == 1, f"{call_id} stored {lago.count(call_id)} times"
        props = lago.events[call_id].properties
        model_id = reply.headers["x-litellm-model-id"]
        assert props["model_id"] == model_id, (props, reply.headers)
        assert Decimal(props["response_cost"]) == prices[model_id], (model_id, props)
        assert int(props["attempts"]) >= 1
        served[model_id] += 1
    assert len(set(ids)) == len(ids)
    return served


def reservations_left(proxy: RunningProxy) -> tuple[int, int]:
    """(reservation rows, micro-USD reserved on budgets) once settlements are written."""
    gw = proxy.gateway
    proxy.call(gw.keys.flush_settlements())
    db = gw.keys.db
    assert db is not None
    rows = proxy.call(db.fetch("SELECT count(*) AS n FROM access_reservations"))
    held = proxy.call(db.fetch("SELECT coalesce(sum(reserved_micros), 0) AS n "
                               "FROM access_budgets"))
    return int(rows[0]["n"]), int(held[0]["n"])


def spend_micros(proxy: RunningProxy, customer: str) -> int:
    db = proxy.gateway.keys.db
    assert db is not None
    rows = proxy.call(db.fetch("SELECT spend_micros FROM access_budgets "
                               "WHERE scope = 'customer' AND id = ?", customer))
    return int(rows[0]["spend_micros"])


def budgeted_key(base_url: str, customer: str = "acme", budget: float = 1000) -> str:
    """A virtual key billing ``customer``, whose budget every call reserves against."""
    made = http("POST", base_url + "/customer/new", {"user_id": customer,
                                                     "max_budget": budget})
    assert made.status == 200, made.text
    reply = http("POST", base_url + "/key/generate", {"customer_id": customer})
    assert reply.status == 200, reply.text
    key: str = reply.json()["key"]
    return key


def attempts_of(fake: FakeOpenAI) -> int:
    return len(fake.received)
