"""Virtual keys through the real proxy over HTTP: admin routes, auth, attribution,
budgets under concurrency, rate limits, the ledger and its /spend routes."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.proxy_harness import (
    MASTER_KEY,
    assert_openai_error,
    config_dict,
    http,
    proxy_settings,
    run_proxy,
    wait_for,
)

# 1 token in = $0.000001, 1 token out = $0.000002: a call's cost is easy to compute.
PRICES = {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002}
REPLY = "one two three four five six seven eight"  # 40 chars -> 10 output tokens


def mock_entry(name: str = "m", **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": "mock/m", "mock_response": REPLY,
                                                   **PRICES, **params}}


def settings(tmp_path: Path, *, access: dict[str, Any] | None = None,
             models: list[dict[str, Any]] | None = None, **general: Any) -> Any:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = config_dict(models or [mock_entry()], tmp_path, lago=False, general=general)
    if access:
        cfg["access_settings"] = access
    return proxy_settings(tmp_path, cfg)


def chat(base: str, key: str | None, *, user: str | None = None, model: str = "m",
         max_tokens: int | None = 10) -> Any:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if user is not None:
        body["user"] = user
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return http("POST", base + "/v1/chat/completions", body, key=key)


def generate(base: str, **spec: Any) -> dict[str, Any]:
    reply = http("POST", base + "/key/generate", spec)
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def ledger_rows(base: str, **query: str) -> dict[str, Any]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    reply = http("GET", f"{base}/spend/logs?{qs}")
    assert reply.status == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def test_key_lifecycle_and_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        made = generate(base, key_alias="app-1", models=["m"], max_budget=5,
                        budget_duration="30d", user_id="u1", metadata={"env": "test"})
        key = made["key"]
        assert key.startswith("sk-tg-") and made["key_alias"] == "app-1"
        assert made["max_budget"] == 5 and made["budget_duration"] == "30d"
        assert made["models"] == ["m"] and made["budget_reset_at"]

        ok = chat(base, key)
        assert ok.status == 200, ok.text

        info = http("GET", f"{base}/key/info?key={key}")
        assert info.status == 200 and key not in info.text
        assert info.json()["info"]["key_alias"] == "app-1"
        listed = http("GET", f"{base}/key/list?return_full_object=true")
        assert listed.json()["total_count"] == 1 and key not in listed.text
        own = http("GET", f"{base}/key/info", key=key)
        assert own.status == 200 and own.json()["info"]["user_id"] == "u1"

        updated = http("POST", base + "/key/update", {"key": key, "models": ["other"]})
        assert updated.status == 200 and key not in updated.text
        assert_openai_error(chat(base, key), 403, code="model_not_allowed")

        # Wrong, expired, deleted keys: 401.
        assert_openai_error(chat(base, "sk-tg-wrong-key-000000000000"), 401)
        expired = generate(base, duration="1s")["key"]
        assert chat(base, expired).status == 200
        wait_for(lambda: chat(base, expired).status == 401, timeout=5, interval=0.2)
        gone = http("POST", base + "/key/delete", {"keys": [key]})
        assert gone.status == 200 and key not in gone.text
        assert gone.json()["deleted_keys"]
        assert_openai_error(chat(base, key), 401)

        # Admin routes refuse anything but the master key.
        other = generate(base)["key"]
        for method, path, body in (("POST", "/key/generate", {}), ("GET", "/key/list", None),
                                   ("POST", "/key/delete", {"keys": [other]}),
                                   ("POST", "/team/new", {}), ("GET", "/spend/logs", None),
                                   ("POST", "/customer/new", {"customer_id": "x"})):
            assert_openai_error(http(method, base + path, body, key=other), 403)
            assert_openai_error(http(method, base + path, body, key=None), 401)
        assert_openai_error(http("GET", f"{base}/key/info?key=" + made["token"], key=other),
                            403)

    # The plain keys appear in no log line.
    for text in (key, expired, other):
        assert text not in caplog.text
    # ... and are stored hashed only.
    raw = (tmp_path / "outbox.db").read_bytes()
    assert key.encode() not in raw and other.encode() not in raw


def test_bound_key_never_bills_another_customer(tmp_path: Path) -> None:
    s = settings(tmp_path, access={"user_field": "ignore"}, charge_by="end_user_id")
    with run_proxy(s) as proxy:
        base = proxy.base_url
        assert http("POST", base + "/customer/new", {"customer_id": "A"}).status == 200
        key = generate(base, customer_id="A")["key"]
        for user in (None, "A", "B", "customer-B"):
            reply = chat(base, key, user=user)
            assert reply.status == 200, reply.text
        logs = ledger_rows(base)["logs"]
        assert len(logs) == 4
        assert {row["customer_id"] for row in logs} == {"A"}
        assert {row["billed_to"] for row in logs} == {"A"}
        # The master key still names the payer with `user`.
        assert chat(base, MASTER_KEY, user="B").status == 200
        assert ledger_rows(base, customer_id="B")["total"]["calls"] == 1

    s = settings(tmp_path / "strict", access={"user_field": "must_match"})
    with run_proxy(s) as proxy:
        key = generate(proxy.base_url, customer_id="A")["key"]
        assert chat(proxy.base_url, key, user="A").status == 200
        assert_openai_error(chat(proxy.base_url, key, user="B"), 403, code="user_not_allowed")
        assert ledger_rows(proxy.base_url, customer_id="B")["total"]["calls"] == 0

    s = settings(tmp_path / "master", access={"user_field": "master_only"})
    with run_proxy(s) as proxy:
        key = generate(proxy.base_url, customer_id="A")["key"]
        assert_openai_error(chat(proxy.base_url, key, user="A"), 403, code="user_not_allowed")
        assert chat(proxy.base_url, key).status == 200


@pytest.mark.parametrize("mode", ["reject", "default_customer", "hold"])
def test_unattributed_calls(tmp_path: Path, mode: str) -> None:
    access: dict[str, Any] = {"unattributed": mode}
    if mode == "default_customer":
        access["default_customer"] = "house"
    with run_proxy(settings(tmp_path, access=access)) as proxy:
        base = proxy.base_url
        key = generate(base)["key"]          # no customer, and no `user` in the body
        reply = chat(base, key)
        if mode == "reject":
            assert_openai_error(reply, 400, code="unattributed")
            assert ledger_rows(base)["total"]["calls"] == 0
            return
        assert reply.status == 200
        logs = ledger_rows(base)["logs"]
        assert len(logs) == 1
        if mode == "default_customer":
            assert logs[0]["customer_id"] == "house" and logs[0]["status"] == "billed"
        else:
            assert logs[0]["customer_id"] is None and logs[0]["status"] == "unattributed"
            held = ledger_rows(base, status="unattributed")["logs"]
            assert [r["call_id"] for r in held] == [logs[0]["call_id"]]


async def _burst(base: str, key: str, n: int) -> list[tuple[int, dict[str, str], str]]:
    async with aiohttp.ClientSession() as s:
        async def one() -> tuple[int, dict[str, str], str]:
            async with s.post(base + "/v1/chat/completions", headers={
                    "Authorization": f"Bearer {key}"}, json={
                    "model": "m", "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}]}) as resp:
                return resp.status, dict(resp.headers), await resp.text()
        return await asyncio.gather(*(one() for _ in range(n)))


def call_cost(base: str) -> Decimal:
    logs = ledger_rows(base)["logs"]
    return Decimal(str(logs[0]["spend"]))


def test_budget_holds_under_100_concurrent_calls(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        # Learn one call's cost with the master key, then give a key 10 calls' worth.
        assert chat(base, MASTER_KEY, user="probe").status == 200
        cost = call_cost(base)
        assert cost > 0
        key = generate(base, key_alias="tight", max_budget=str(cost * 10))["key"]
        results = asyncio.run(_burst(base, key, 100))
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert 1 <= len(ok) <= 11, len(ok)
        assert all(r[0] == 429 for r in refused)
        assert "budget exceeded for key 'tight'" in refused[0][2]
        spent = Decimal(str(ledger_rows(base, key_alias="tight")["total"]["spend"]))
        assert spent <= cost * 10 + cost
        assert spent == cost * len(ok)
        info = http("GET", f"{base}/key/info?key={key}").json()["info"]
        assert Decimal(str(info["spend"])) == spent
        # Everything in flight was settled: nothing stays reserved.
        assert proxy.call(_reserved(proxy)) == 0


async def _reserved(proxy: Any) -> int:
    db = proxy.gateway.keys.db
    row = await db.fetchone("SELECT coalesce(sum(reserved_micros), 0) AS r FROM access_budgets")
    return int(row["r"])


def test_team_and_customer_budgets_name_themselves(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        assert http("POST", base + "/team/new", {"team_id": "t1", "max_budget": 0}).status == 200
        key = generate(base, team_id="t1")["key"]
        err = assert_openai_error(chat(base, key), 429, code="budget_exceeded")
        assert "team 't1'" in err["message"]
        assert http("POST", base + "/customer/new",
                    {"user_id": "cust-9", "max_budget": 0}).status == 200
        err = assert_openai_error(chat(base, MASTER_KEY, user="cust-9"), 429)
        assert "customer 'cust-9'" in err["message"]
        info = http("GET", f"{base}/customer/info?end_user_id=cust-9").json()
        assert info["max_budget"] == 0
        team = http("GET", f"{base}/team/info?team_id=t1").json()
        assert team["team_info"]["max_budget"] == 0 and len(team["keys"]) == 1


def test_rpm_limit_429_with_headers(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        key = generate(base, rpm_limit=3)["key"]
        replies = [chat(base, key) for _ in range(4)]
        assert [r.status for r in replies[:3]] == [200, 200, 200]
        assert replies[0].headers["x-ratelimit-limit-requests"] == "3"
        assert replies[2].headers["x-ratelimit-remaining-requests"] == "0"
        assert_openai_error(replies[3], 429, code="rate_limit_exceeded")
        assert int(replies[3].headers["retry-after"]) >= 1
        assert "3 requests per minute" in replies[3].json()["error"]["message"]
        # Another key is not affected.
        assert chat(base, generate(base)["key"]).status == 200


def test_deployment_rpm_from_litellm_params(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path, models=[mock_entry(rpm=2)])) as proxy:
        statuses = [chat(proxy.base_url, MASTER_KEY, user="c").status for _ in range(3)]
        assert statuses == [200, 200, 429]


def test_spend_routes_totals(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        k1 = generate(base, key_alias="k1", customer_id="A")["key"]
        k2 = generate(base, key_alias="k2", customer_id="B")["key"]
        for key in (k1, k1, k2):
            assert chat(base, key).status == 200
        cost = call_cost(base)
        keys = http("GET", base + "/spend/keys").json()
        by_alias = {item["key_alias"]: item for item in keys["data"]}
        assert by_alias["k1"]["calls"] == 2 and by_alias["k2"]["calls"] == 1
        assert Decimal(str(keys["total"]["spend"])) == cost * 3
        customers = http("GET", base + "/spend/customers").json()
        assert {c["customer_id"]: c["calls"] for c in customers["data"]} == {"A": 2, "B": 1}
        only_b = http("GET", base + "/spend/logs?customer_id=B").json()
        assert only_b["total"]["calls"] == 1 and k2 not in str(only_b)
