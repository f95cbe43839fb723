"""`resolve_subscription_from_lago: true` through the real proxy and the Lago stand-in
over HTTP: a key bound to a customer bills the subscription Lago lists for it, asks
Lago once for many calls, and falls back to the customer id when Lago has none or is
down."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.lago_server import TEST_API_KEY, FakeLago
from tests.proxy_harness import (
    CALL_ID_HEADER,
    config_dict,
    http,
    lago_env,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.test_access_keys import chat, generate, ledger_rows, mock_entry

SUBS = "/api/v1/subscriptions"


def _settings(tmp_path: Path, lago: FakeLago, resolve: bool = True) -> Any:
    cfg = config_dict([mock_entry()], tmp_path, lago=True)
    cfg["access_settings"] = {"resolve_subscription_from_lago": resolve}
    return proxy_settings(tmp_path, cfg, lago_env(lago))


async def _burst(base: str, key: str, n: int) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession() as s:
        async def one() -> tuple[int, str]:
            async with s.post(base + "/v1/chat/completions",
                              headers={"Authorization": f"Bearer {key}"},
                              json={"model": "m", "max_tokens": 10,
                                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                return r.status, r.headers[CALL_ID_HEADER]
        return await asyncio.gather(*(one() for _ in range(n)))


def test_bound_key_bills_the_subscription_lago_lists(tmp_path: Path) -> None:
    with FakeLago() as lago:
        lago.add_subscription("acme", "sub_acme_old", status="terminated")
        lago.add_subscription("acme", "sub_acme_pro")
        lago.add_subscription("globex", "sub_globex")
        with run_proxy(_settings(tmp_path, lago)) as proxy:
            base = proxy.base_url
            key = generate(base, customer_id="acme")["key"]
            ids = [chat(base, key).headers[CALL_ID_HEADER] for _ in range(3)]
            # Five at once for another customer: they share one request to Lago.
            other = generate(base, customer_id="globex")["key"]
            burst = asyncio.run(_burst(base, other, 5))
            assert [status for status, _ in burst] == [200] * 5
            wait_for(lambda: all(i in lago.events for i in ids + [c for _, c in burst]))
            assert {lago.events[i].external_subscription_id for i in ids} == {"sub_acme_pro"}
            assert {lago.events[c].external_subscription_id for _, c in burst} == {
                "sub_globex"}
            asked = lago.requests_to(SUBS, "GET")
            assert len(asked) == 2, [r.path for r in asked]   # one per customer
            assert all(r.headers["Authorization"] == f"Bearer {TEST_API_KEY}" for r in asked)
            # The ledger keeps both: who pays and the subscription billed.
            rows = ledger_rows(base, customer_id="acme")["logs"]
            assert {(r["customer_id"], r["billed_to"]) for r in rows} == {
                ("acme", "sub_acme_pro")}
        assert lago.schema_violations == []


def test_fallbacks_no_subscription_lago_down_and_local_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with FakeLago() as lago:
        lago.add_subscription("known", "sub_known")
        with run_proxy(_settings(tmp_path, lago)) as proxy:
            base = proxy.base_url
            # Lago lists none for "newco": the customer id is billed (LiteLLM's way).
            newco = chat(base, generate(base, customer_id="newco")["key"])
            # A customer record's own external_subscription_id wins; Lago is not asked.
            assert http("POST", base + "/customer/new", {
                "customer_id": "local", "external_subscription_id": "sub_local"}).status == 200
            local = chat(base, generate(base, customer_id="local")["key"])
            asked_before = len(lago.requests_to(SUBS, "GET"))
            assert asked_before == 1                    # newco only

            # Learn "known", then Lago goes down: the known answer is kept, and a
            # customer never seen bills its id; the calls are served either way.
            known_key = generate(base, customer_id="known")["key"]
            first_known = chat(base, known_key)
            early = [r.headers[CALL_ID_HEADER] for r in (newco, local, first_known)]
            wait_for(lambda: all(c in lago.events for c in early))
            lago.fail_with(503)
            down_new = chat(base, generate(base, customer_id="fresh")["key"])
            assert down_new.status == 200 and first_known.status == 200
            proxy.call(_expire(proxy, "known"))          # as if the 5 minutes had passed
            still_known = chat(base, known_key)
            assert still_known.status == 200
            lago.clear_faults()

            want = [(newco, "newco"), (local, "sub_local"), (first_known, "sub_known"),
                    (down_new, "fresh"), (still_known, "sub_known")]
            calls = {r.headers[CALL_ID_HEADER]: sub for r, sub in want}
            wait_for(lambda: all(c in lago.events for c in calls), timeout=15)
            for call_id, sub in calls.items():
                assert lago.events[call_id].external_subscription_id == sub, call_id
        assert "cannot read the Lago subscription" in caplog.text
        assert TEST_API_KEY not in caplog.text


async def _expire(proxy: Any, customer: str) -> None:
    reader = proxy.gateway.keys.lago
    assert reader is not None
    _, value = reader._subs[customer]
    reader._subs[customer] = (0.0, value)


def test_lookup_off_by_default(tmp_path: Path) -> None:
    with FakeLago() as lago:
        lago.add_subscription("acme", "sub_acme_pro")
        with run_proxy(_settings(tmp_path, lago, resolve=False)) as proxy:
            call = chat(proxy.base_url, generate(proxy.base_url, customer_id="acme")["key"])
            call_id = call.headers[CALL_ID_HEADER]
            wait_for(lambda: call_id in lago.events)
            assert lago.events[call_id].external_subscription_id == "acme"
            assert lago.requests_to(SUBS, "GET") == []
