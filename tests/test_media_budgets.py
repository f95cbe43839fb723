"""Budgets on calls with no token bound (images here): admission reserves the
conservative cap (``max_reservation_usd``), settles at the billed cost, and leaves
nothing reserved."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.fakes.openai_server import FakeOpenAI
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    config_dict,
    http,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
    wait_for,
)
from tests.test_access_keys import _reserved, generate, ledger_rows


def test_image_calls_reserve_the_cap_and_settle_the_bill(tmp_path: Path,
                                                         upstream: FakeOpenAI) -> None:
    cfg = config_dict([openai_entry("img", upstream.base_url, "gpt-image-1")], tmp_path,
                      lago=False)
    cfg["access_settings"] = {"max_reservation_usd": "0.10"}
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        base = proxy.base_url
        key = generate(base, key_alias="painter", max_budget="0.05")["key"]
        # A token-priced image model: the body bounds no tokens, so no estimate of the
        # cost could be made from it.
        body: dict[str, Any] = {"model": "img", "prompt": "a lighthouse"}
        # Two calls at once: the first holds the cap ($0.10, over the $0.05 budget), so
        # the second is refused while it is in flight (a zero reservation would let both
        # through).
        upstream.latency = 0.5
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda _: http(
                "POST", base + "/v1/images/generations", body, key=key), range(2)))
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 429], [r.text for r in replies]
        refused = next(r for r in replies if r.status == 429)
        assert "budget exceeded for key 'painter'" in refused.text
        assert len(upstream.received) == 1
        rows = wait_for(lambda: ledger_rows(base, key_alias="painter")["logs"])
        assert len(rows) == 1 and Decimal(str(rows[0]["spend"])) == (
            11 * Decimal("0.000005") + 4160 * Decimal("0.00004"))
        assert wait_for(lambda: proxy.call(_reserved(proxy)) == 0)
