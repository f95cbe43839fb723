"""Two real gateway processes sharing budgets (PostgreSQL) and rate limits (Redis); the
``usage`` and ``reconcile`` commands on a ledger with known content."""

from __future__ import annotations

import asyncio
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tallygate.access.commands import _reconcile, _usage, run
from tallygate.cli import build_parser
from tests.fakes.lago_server import FakeLago
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema
from tests.proxy_harness import (
    MASTER_KEY,
    cli_env,
    config_dict,
    http,
    lago_env,
    proxy_settings,
    run_cli,
    run_proxy,
    wait_for,
)
from tests.test_access_keys import chat, generate, ledger_rows, mock_entry

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.mark.postgres
@pytest.mark.redis
def test_two_gateways_share_budget_and_rpm(tmp_path: Path) -> None:
    schema = unique_pg_schema()
    cfg = config_dict([mock_entry()], tmp_path, lago=False,
                      general={"database_url": f"{PG_DSN}?schema={schema}"})
    cfg["access_settings"] = {"redis_url": REDIS_URL, "key_cache_ttl_s": 1}
    env = cli_env()
    try:
        with run_cli(tmp_path, cfg, env, config_name="a.yaml") as a, \
                run_cli(tmp_path, cfg, env, config_name="b.yaml") as b:
            # Learn one call's cost, then a key worth 4 calls, made on gateway A.
            assert chat(a.base_url, MASTER_KEY, user="probe").status == 200
            cost = Decimal(str(ledger_rows(a.base_url)["logs"][0]["spend"]))
            key = generate(a.base_url, max_budget=str(cost * 4))["key"]
            statuses = [chat(gw.base_url, key).status for gw in (a, b) * 4]
            assert statuses.count(200) in (4, 5), statuses
            assert statuses[-1] == 429
            err = http("POST", b.base_url + "/v1/chat/completions",
                       {"model": "m", "messages": [{"role": "user", "content": "x"}]}, key=key)
            assert err.status == 429 and "budget exceeded for key" in err.text
            spent = Decimal(str(ledger_rows(b.base_url)["total"]["spend"])) - cost
            assert spent <= cost * 5

            # rpm 3 over both gateways together (Redis).
            limited = generate(b.base_url, rpm_limit=3)["key"]
            got = [chat(gw.base_url, limited).status for gw in (a, b, a, b)]
            assert got == [200, 200, 200, 429], got
            assert "retry-after" in chat(a.base_url, limited).headers

            # A key deleted on B stops working on A (after A's short cache TTL).
            assert http("POST", b.base_url + "/key/delete", {"keys": [limited]}).status == 200
            wait_for(lambda: chat(a.base_url, limited).status == 401, timeout=5, interval=0.2)
    finally:
        asyncio.run(drop_pg_schema(schema))


def _cli(args: list[str], handler: Any) -> tuple[int, str]:
    parsed = build_parser().parse_args(args)
    out = io.StringIO()
    return run(handler, parsed, out), out.getvalue()


def test_usage_and_reconcile_print_known_totals(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "outbox.db")
    with FakeLago() as lago:
        env = lago_env(lago)
        cfg = config_dict([mock_entry()], tmp_path, lago=True)
        with run_proxy(proxy_settings(tmp_path, cfg, env)) as proxy:
            base = proxy.base_url
            k1 = generate(base, key_alias="alpha", customer_id="A")["key"]
            k2 = generate(base, key_alias="beta", customer_id="B")["key"]
            for key in (k1, k1, k1, k2):
                assert chat(base, key).status == 200
            assert chat(base, k2, model="m").status == 200
            cost = Decimal(str(ledger_rows(base)["logs"][0]["spend"]))
            logs = ledger_rows(base)["logs"]
            wait_for(lambda: all(r["call_id"] in lago.events for r in logs))
            wait_for(lambda: proxy.outbox_stats("lago").delivered == 5)

        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code, text = _cli(["usage", "--by", "customer", "--since", "7d", "--db", db], _usage)
        assert code == 0
        lines = {line.split()[0]: line.split() for line in text.splitlines()[1:]}
        assert lines["A"][1:2] == ["3"] and Decimal(lines["A"][4]) == cost * 3
        assert lines["B"][1:2] == ["2"] and Decimal(lines["B"][4]) == cost * 2
        assert lines["TOTAL"][1] == "5" and Decimal(lines["TOTAL"][4]) == cost * 5
        code, text = _cli(["usage", "--by", "key", "--db", db], _usage)
        assert "alpha" in text and "beta" in text and k1 not in text

        code, text = _cli(["reconcile", "--since", "1d", "--db", db], _reconcile)
        assert code == 0, text
        assert "no differences" in text and "5 event(s) listed" in text

        # Make three differences: a ledger row with no outbox row, a Lago event gone,
        # and an outbox row that is not delivered.
        import sqlite3

        conn = sqlite3.connect(db)
        conn.execute("""INSERT INTO access_ledger (call_id, ts_ms, model, provider,
            provider_model, kind, input_tokens, cache_read_tokens, cache_write_tokens,
            output_tokens, cost, status, billed_to, customer_id)
            SELECT 'tg-ghost', ts_ms, model, provider, provider_model, kind, 1, 0, 0, 1,
            cost, 'billed', 'A', 'A' FROM access_ledger LIMIT 1""")
        victim = logs[1]["call_id"]
        conn.execute("UPDATE outbox SET state = 'dead' WHERE call_id = ? AND sink = 'lago'",
                     (logs[2]["call_id"],))
        conn.commit()
        conn.close()
        with lago._lock:
            lago.stored[:] = [ev for ev in lago.stored if ev.transaction_id != victim]
        code, text = _cli(["reconcile", "--since", "1d", "--db", db], _reconcile)
        assert code == 1, text
        assert "tg-ghost: in the ledger, not in the outbox" in text
        assert f"{victim}: billed to" in text and "not in Lago" in text
        assert f"{logs[2]['call_id']}: lago row is dead" in text
        assert "3 difference(s)" in text or "4 difference(s)" in text
