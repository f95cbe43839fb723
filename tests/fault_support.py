"""Shared pieces of the fault tests (tests/test_faults_*.py): load, checks, the outbox CLI.

Each fault test sends real calls through a real proxy (in-process or the CLI) to a mock
model, breaks something (Lago, the proxy process, the network), and then holds the
proxy to its promise: every call that got a 200 is in Lago exactly once, matched by
the ``x-tallygate-call-id`` header the client saw against Lago's transaction ids.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.lago_server import FakeLago
from tests.proxy_harness import CALL_ID_HEADER, CLI, MASTER_KEY, cli_env, config_dict

MODEL = "fault-mock"
MESSAGES = [{"role": "user", "content": "count to three"}]


def mock_config(tmp_path: Path, *, general: Mapping[str, Any] | None = None,
                lago: bool = True) -> dict[str, Any]:
    """A config with one in-process mock model (no upstream hop) and the Lago sink."""
    entry = {"model_name": MODEL, "litellm_params": {"model": f"mock/{MODEL}"}}
    return config_dict([entry], tmp_path, lago=lago, general=general)


@dataclass(frozen=True)
class Outcome:
    """What the client saw of one call: status None means no HTTP answer at all."""

    status: int | None
    call_id: str | None
    latency_s: float
    error: str | None = None


def chat_body(i: int, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "user": f"cust-{i % 7}"}
    if stream:
        body["stream"] = True
    return body


async def one_call(session: aiohttp.ClientSession, base_url: str, i: int,
                   key: str = MASTER_KEY) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(base_url + "/v1/chat/completions", json=chat_body(i),
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            await resp.read()
            return Outcome(resp.status, resp.headers.get(CALL_ID_HEADER),
                           time.perf_counter() - started)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Outcome(None, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")


async def load(base_url: str | list[str], calls: int, concurrency: int = 32, *,
               timeout_s: float = 30.0, pause_s: float = 0.0,
               outcomes: list[Outcome] | None = None, key: str = MASTER_KEY
               ) -> list[Outcome]:
    """``calls`` chat calls, ``concurrency`` at a time, spread over ``base_url``(s).

    ``pause_s`` spaces each worker's calls out, to stretch a load over a fault window;
    pass ``outcomes`` to watch the load progress while it runs.
    """
    urls = [base_url] if isinstance(base_url, str) else base_url
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(calls):
        queue.put_nowait(i)
    if outcomes is None:
        outcomes = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes.append(await one_call(session, urls[i % len(urls)], i, key))
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def ok_call_ids(outcomes: Iterable[Outcome]) -> list[str]:
    """The call ids of the calls that got a 200 (each must carry one)."""
    ids = []
    for o in outcomes:
        if o.status == 200:
            assert o.call_id, "a 200 without an x-tallygate-call-id header"
            ids.append(o.call_id)
    assert len(set(ids)) == len(ids), "the proxy handed out a call id twice"
    return ids


def delivered(lago: FakeLago, call_ids: Iterable[str]) -> bool:
    events = lago.events
    return all(cid in events for cid in call_ids)


async def until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check()`` on this loop until it is true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


async def await_delivered(lago: FakeLago, call_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not delivered(lago, call_ids):
        if time.monotonic() > deadline:
            missing = [c for c in call_ids if c not in lago.events]
            raise AssertionError(f"{len(missing)} of {len(call_ids)} calls not in Lago "
                                 f"after {timeout}s, e.g. {missing[:3]}")
        await asyncio.sleep(0.05)


def wait_delivered(lago: FakeLago, call_ids: list[str], timeout: float) -> None:
    asyncio.run(await_delivered(lago, call_ids, timeout))


def assert_exactly_once(lago: FakeLago, call_ids: Iterable[str], *,
                        nothing_else: bool = True) -> None:
    """Every call id is stored once; with ``nothing_else``, Lago holds no other event."""
    ids = list(call_ids)
    counts = Counter(ev.transaction_id for ev in list(lago.stored))
    twice = {tid: n for tid, n in counts.items() if n > 1}
    assert not twice, f"billed more than once: {twice}"
    missing = [c for c in ids if counts[c] != 1]
    assert not missing, f"{len(missing)} calls not in Lago, e.g. {missing[:3]}"
    if nothing_else:
        extra = set(counts) - set(ids)
        assert not extra, f"Lago holds {len(extra)} events of no 200 call: {sorted(extra)[:3]}"


def outbox_cli(db: str | Path, *args: str, timeout: float = 20.0
               ) -> subprocess.CompletedProcess[str]:
    """``tallygate outbox <args> --db <db>``, the operator's command, as a subprocess."""
    return subprocess.run([str(CLI), "outbox", *args, "--db", str(db)], env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def status_counts(text: str) -> dict[str, str]:
    """``outbox status`` output -> {"pending": "0", "dead": "1", ...}."""
    out = {}
    for line in text.splitlines():
        if ":" in line and line.startswith("  "):
            key, value = line.strip().split(":", 1)
            out[key.strip()] = value.strip()
    return out
