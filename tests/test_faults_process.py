"""Issue 4, the proxy process itself: kill -9, SIGTERM, a refused Lago key, a bad event.

Each test runs the real ``tallygate --config ...`` CLI as a subprocess on 127.0.0.1,
with its SQLite outbox under the test's tmp_path, and restarts it on the same outbox
where the issue asks for it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from tests.fakes.lago_server import EXPRESSION_FAILURE, FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fault_support import (
    Outcome,
    assert_exactly_once,
    await_delivered,
    chat_body,
    load,
    mock_config,
    ok_call_ids,
    outbox_cli,
    status_counts,
    until,
    wait_delivered,
)
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    cli_env,
    http,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.slow

# Rows claimed by a killed process come back when their lease runs out (60 s by
# default); a short lease keeps the restart tests short.
LEASE_S = "3"


def outbox_states(db: Path, sink: str = "lago") -> dict[str, int]:
    """The states of ``sink``'s rows."""
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM outbox WHERE sink = ? "
                                 "GROUP BY state", (sink,)))


def ledger_calls(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM access_ledger").fetchone()
    return int(n)


def readiness(base_url: str) -> dict[str, object]:
    reply = http("GET", base_url + "/health/readiness")
    assert reply.status == 200, reply.text
    body: dict[str, object] = reply.json()
    return body


async def test_sigkill_mid_load_then_restart_bills_every_200_once(
        tmp_path: Path, lago: FakeLago) -> None:
    """kill -9 while calls and deliveries are in flight; after a restart on the same
    outbox, every call that got a 200 is in Lago exactly once."""
    cfg = mock_config(tmp_path)
    env = cli_env({**lago_env(lago), "TALLYGATE_OUTBOX_LEASE_S": LEASE_S})
    db = tmp_path / "outbox.db"
    outcomes: list[Outcome] = []
    with run_cli(tmp_path, cfg, env) as proc:
        task = asyncio.create_task(load(proc.base_url, 800, concurrency=16,
                                        outcomes=outcomes))
        await until(lambda: len(outcomes) >= 300 and len(lago.stored) > 0, 30,
                    "300 calls and a delivery")
        proc.proc.kill()
        assert proc.proc.wait(5) == -signal.SIGKILL
        await asyncio.wait_for(task, 30)
    ok = ok_call_ids(outcomes)
    lost = [o for o in outcomes if o.status is None]
    assert len(ok) >= 300 and lost, "the kill did not land in the middle of the load"
    assert {o.status for o in outcomes} <= {200, None}
    # What the kill left behind (read straight from the file): every 200 has its row.
    with sqlite3.connect(db) as conn:
        rows = {cid for (cid,) in conn.execute("SELECT call_id FROM outbox "
                                                "WHERE sink = 'lago'")}
    assert set(ok) <= rows, f"{len(set(ok) - rows)} calls answered 200 have no outbox row"
    left = outbox_states(db)
    assert left.get("pending", 0) + left.get("inflight", 0) > 0, left

    with run_cli(tmp_path, cfg, env):
        await await_delivered(lago, ok, timeout=30)
        await until(lambda: set(outbox_states(db)) == {"delivered"}, 30,
                    f"every row delivered (now {outbox_states(db)})")
    # Calls cut off by the kill may be billed (their row was written) or not, never twice.
    assert_exactly_once(lago, ok, nothing_else=False)
    assert {ev.transaction_id for ev in lago.stored} <= rows
    assert len(lago.stored) == len(rows)


def test_sigterm_stops_accepting_finishes_stream_and_drains(
        tmp_path: Path, lago: FakeLago, upstream: FakeOpenAI) -> None:
    """SIGTERM: the port closes at once, a stream in flight runs to [DONE], events still
    in the outbox are delivered within drain_timeout_s, and the exit status is 0."""
    import json
    import urllib.request

    upstream.stream_chunks, upstream.chunk_delay = 25, 0.08   # a 2 s stream
    cfg = mock_config(tmp_path, general={"drain_timeout_s": 5})
    cfg["model_list"].append(openai_entry("streamer", upstream.base_url))
    env = cli_env(lago_env(lago))
    db = tmp_path / "outbox.db"
    with run_cli(tmp_path, cfg, env) as proc:
        # Events waiting in the outbox at SIGTERM: Lago answers slowly, so deliveries
        # are still going on when the signal comes.
        lago.slow = 0.3
        ids = []
        for i in range(20):
            reply = http("POST", proc.base_url + "/v1/chat/completions", chat_body(i))
            assert reply.status == 200, reply.text
            ids.append(reply.headers[CALL_ID_HEADER])
        body = {**chat_body(99, stream=True), "model": "streamer"}
        req = urllib.request.Request(
            proc.base_url + "/v1/chat/completions", data=json.dumps(body).encode(),
            method="POST", headers={"Authorization": f"Bearer {MASTER_KEY}",
                                    "Content-Type": "application/json"})
        resp = urllib.request.urlopen(req, timeout=30)
        stream_id = resp.headers[CALL_ID_HEADER]
        first = resp.read1(65536)
        assert first.startswith(b"data: "), first
        states = outbox_states(db)
        undelivered_at_term = states.get("pending", 0) + states.get("inflight", 0)
        sent_at = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        # Stops accepting: new connections are refused while the stream still runs.
        wait_for(lambda: _refused(proc.port), timeout=5)
        refused_after = time.monotonic() - sent_at
        rest = b""
        while chunk := resp.read1(65536):
            rest += chunk
        stream_took = time.monotonic() - sent_at
        resp.close()
        assert refused_after < stream_took - 0.5, (refused_after, stream_took)
        assert rest.count(b"data: ") >= 10, rest   # most of the stream came after SIGTERM
        assert rest.endswith(b"data: [DONE]\n\n"), rest[-200:]
        assert proc.stop(timeout=20) == 0, proc.stderr
        took = time.monotonic() - sent_at
    assert undelivered_at_term > 0, "nothing left to drain at SIGTERM: a weaker test"
    assert took < 2 + 5 + 2, took   # the stream, drain_timeout_s, slack
    # Drained before exit: no restart needed.
    assert_exactly_once(lago, [*ids, stream_id])
    assert outbox_states(db) == {"delivered": 21}


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_sigterm_with_lago_down_keeps_pending_for_the_next_start(
        tmp_path: Path, lago: FakeLago) -> None:
    cfg = mock_config(tmp_path, general={"drain_timeout_s": 1})
    env = cli_env(lago_env(lago))
    db = tmp_path / "outbox.db"
    lago.stop()
    with run_cli(tmp_path, cfg, env) as proc:
        ok = ok_call_ids(asyncio.run(load(proc.base_url, 50, concurrency=8)))
        assert len(ok) == 50
        started = time.monotonic()
        assert proc.stop(timeout=20) == 0, proc.stderr
        assert time.monotonic() - started < 1 + 4
    assert outbox_states(db) == {"pending": 50}
    status = outbox_cli(db, "status", "--sink", "lago")
    assert status.returncode == 0, status.stderr
    counts = status_counts(status.stdout)
    assert (counts["pending"], counts["delivered"], counts["dead"]) == ("50", "0", "0")
    assert "unreachable" in counts["last error"], status.stdout
    lago.start()
    with run_cli(tmp_path, cfg, env):
        wait_delivered(lago, ok, timeout=20)
        wait_for(lambda: outbox_states(db) == {"delivered": 50}, timeout=10)
    assert_exactly_once(lago, ok)


@pytest.mark.parametrize("refusal", [401, 403])
def test_refused_key_pauses_delivery_until_fixed(tmp_path: Path, lago: FakeLago,
                                                 refusal: int) -> None:
    """401 (wrong key) or 403 (a key that may not write): delivery pauses, readiness
    says degraded, nothing is dropped; restarted with a good key, all is delivered."""
    cfg = mock_config(tmp_path, general={"drain_timeout_s": 1})
    good = lago_env(lago)
    if refusal == 401:
        env = cli_env({**good, "LAGO_API_KEY": "lago-wrong-key"})
    else:
        env = cli_env(good)
        lago.forbidden = True
    db = tmp_path / "outbox.db"
    with run_cli(tmp_path, cfg, env) as proc:
        ok = ok_call_ids(asyncio.run(load(proc.base_url, 60, concurrency=8)))
        assert len(ok) == 60   # the callers never notice
        wait_for(lambda: readiness(proc.base_url)["status"] == "degraded", timeout=10)
        body = readiness(proc.base_url)
        sink = body["sinks"]["lago"]  # type: ignore[index]
        assert sink["paused"] is True, body
        assert str(refusal) in sink["last_error"], body
        assert "lago-wrong-key" not in str(body)
        outbox = body["outbox"]
        # Spend is counted while Lago refuses us: on SQLite each call's outbox insert
        # wrote its ledger row, so the ledger sink has nothing left to deliver.
        assert ledger_calls(db) == 60
        ledger = body["sinks"]["ledger"]  # type: ignore[index]
        assert ledger["delivered"] == 0 and not ledger["degraded"], body
        assert outbox["dead"] == 0 and outbox["delivered"] == 0, body  # type: ignore[index]
        assert outbox["pending"] + outbox["inflight"] == 60, body  # type: ignore[index]
        assert proc.stop(timeout=20) == 0, proc.stderr
    assert lago.stored == []
    assert outbox_states(db) == {"pending": 60}
    # The operator fixes the key (or its permissions) and restarts.
    lago.forbidden = False
    with run_cli(tmp_path, cfg, cli_env(good)) as proc:
        wait_delivered(lago, ok, timeout=20)
        wait_for(lambda: outbox_states(db) == {"delivered": 60}, timeout=10)
        wait_for(lambda: readiness(proc.base_url)["status"] == "healthy", timeout=10)
    assert_exactly_once(lago, ok)


def test_one_invalid_event_is_dead_lettered_the_rest_delivered(
        tmp_path: Path, lago: FakeLago) -> None:
    """One event of a 100-event batch fails Lago's validation: it is dead with Lago's
    reason (``outbox dead``, ``outbox status``), the other 99 are delivered."""
    cfg = mock_config(tmp_path, general={"drain_timeout_s": 1})
    env = cli_env(lago_env(lago))
    db = tmp_path / "outbox.db"
    lago.stop()   # keep the 100 events in the outbox, to go out as one batch
    with run_cli(tmp_path, cfg, env) as proc:
        ok = ok_call_ids(asyncio.run(load(proc.base_url, 100, concurrency=8)))
        assert proc.stop(timeout=20) == 0, proc.stderr
    assert len(ok) == 100 and outbox_states(db) == {"pending": 100}
    bad = ok[37]
    lago.reject(bad)   # EXPRESSION_FAILURE, as a billable metric's failing expression
    lago.start()
    with run_cli(tmp_path, cfg, env):
        good = [c for c in ok if c != bad]
        wait_delivered(lago, good, timeout=20)
        wait_for(lambda: outbox_states(db) == {"delivered": 99, "dead": 1}, timeout=10)
    assert_exactly_once(lago, good)
    assert bad not in lago.events
    batches = [r.body["events"] for r in lago.requests_to("/api/v1/events/batch")]
    assert any(len(b) == 100 and bad in {e["transaction_id"] for e in b} for b in batches), \
        [len(b) for b in batches]

    dead = outbox_cli(db, "dead")
    assert dead.returncode == 0, dead.stderr
    lines = [line for line in dead.stdout.splitlines() if bad in line]
    assert len(lines) == 1, dead.stdout
    assert "lago" in lines[0] and EXPRESSION_FAILURE in lines[0], dead.stdout
    status = outbox_cli(db, "status", "--sink", "lago")
    counts = status_counts(status.stdout)
    assert (counts["delivered"], counts["dead"], counts["pending"]) == ("99", "1", "0"), \
        status.stdout
    assert EXPRESSION_FAILURE in counts["last error"], status.stdout


def test_lease_setting_is_read_and_checked() -> None:
    from tallygate.errors import ConfigError
    from tallygate.metering.delivery import default_lease_s

    assert default_lease_s({}) == 60.0
    assert default_lease_s({"TALLYGATE_OUTBOX_LEASE_S": " 2.5 "}) == 2.5
    for bad in ("soon", "0", "-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="TALLYGATE_OUTBOX_LEASE_S"):
            default_lease_s({"TALLYGATE_OUTBOX_LEASE_S": bad})
