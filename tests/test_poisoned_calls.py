"""Class 2 of issue 13: one bad event never fails another tenant's call.

A value a caller controls that an outbox cannot store (a NUL character, which PostgreSQL's
jsonb and text refuse; nesting deeper than the event encoder goes) is a 400 naming the
field before the upstream is called. And a grouped write never lets one item fail the
others: the rest are written one by one and only the bad item fails (both outboxes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tallygate.metering.group_commit import GroupCall
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.outbox_support import PG_DSN, drop_pg_schema, make_event, unique_pg_schema
from tests.proxy_harness import (  # noqa: F401  (fixtures)
    CALL_ID_HEADER,
    MASTER_KEY,
    billed,
    config_dict,
    lago_env,
    lago_fixture,
    openai_entry,
    openai_upstream_fixture,
    proxy_settings,
    run_proxy,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


# (door, body fields, the param the 400 names)
POISONS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("chat", {"metadata": {"note": "a\x00b"}}, "metadata.note"),
    ("chat", {"metadata": {"k\x00": "v"}}, "metadata"),
    ("chat", {"user": "cust\x00omer"}, "user"),
    ("chat", {"metadata": _deep(300)}, "metadata"),
    ("messages", {"metadata": {"user_id": "u\x00"}}, "metadata.user_id"),
    ("messages", {"metadata": {"tag": ["x", "\x00"]}}, "metadata.tag[1]"),
    ("responses", {"safety_identifier": "a\x00"}, "safety_identifier"),
    ("completions", {"user": "x\x00"}, "user"),
    ("chat", {"safety_identifier": "\x00"}, "safety_identifier"),
)
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages",
         "responses": "/v1/responses", "completions": "/v1/completions"}
BODIES: dict[str, dict[str, Any]] = {
    "chat": {"model": "gpt", "messages": MESSAGES, "user": "poison"},
    "messages": {"model": "gpt", "max_tokens": 5, "messages": MESSAGES},
    "responses": {"model": "gpt", "input": "hi"},
    "completions": {"model": "gpt", "prompt": "hi"},
}


@pytest.fixture(name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    schema = unique_pg_schema()
    yield f"{PG_DSN}?schema={schema}"
    asyncio.run(drop_pg_schema(schema))


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]
                ) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, json=body,
                            headers={"Authorization": f"Bearer {MASTER_KEY}"}) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def _burst(base: str, ordinary: int) -> tuple[list[Any], list[Any]]:
    async with aiohttp.ClientSession() as s:
        good = [_post(s, base + "/v1/chat/completions",
                      {"model": "gpt", "messages": MESSAGES, "user": f"tenant-{i}",
                       "metadata": {"i": i}}) for i in range(ordinary)]
        bad = [_post(s, base + PATHS[door], {**BODIES[door], **fields})
               for door, fields, _ in POISONS]
        results = await asyncio.gather(*good, *bad)
    return list(results[:ordinary]), list(results[ordinary:])


@pytest.mark.postgres
def test_poisoned_calls_fail_alone_on_postgres(tmp_path: Path, lago: FakeLago,
                                               upstream: FakeOpenAI, pg_url: str) -> None:
    cfg = config_dict([openai_entry("gpt", upstream.base_url)], tmp_path,
                      general={"database_url": pg_url})
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as proxy:
        good, bad = asyncio.run(_burst(proxy.base_url, 40))
        assert [r[0] for r in good] == [200] * 40, [r for r in good if r[0] != 200][:3]
        for (status, _, body), (door, _, param) in zip(bad, POISONS, strict=True):
            assert status == 400, body
            if door != "messages":
                assert body["error"]["param"] == param, body
                assert "NUL" in body["error"]["message"] or "deep" in body["error"]["message"]
            else:
                assert body["type"] == "error", body
                assert body["error"]["type"] == "invalid_request_error"
                assert param in body["error"]["message"], body
        assert len(upstream.requests) == 40  # a poisoned call never reaches the upstream
        for i, (_, headers, _) in enumerate(good):
            billed(lago, headers[CALL_ID_HEADER], f"tenant-{i}")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_an_unstorable_event_fails_only_itself(tmp_path: Path, backend: str,
                                               pg_url: str) -> None:
    cfg = config_dict([openai_entry("gpt", "http://127.0.0.1:9/v1")], tmp_path, lago=False)
    if backend == "postgres":
        cfg["general_settings"]["database_url"] = pg_url
    good = [make_event() for _ in range(40)]
    # Past the request checks (a bug, a new field): what the outbox cannot take.
    bad = [make_event(), make_event(), make_event(), make_event()]
    bad = [_with_metadata(bad[0], {"x": "\x00"}), _with_metadata(bad[1], _deep(300)),
           _with_metadata(bad[2], {"\x00": 1}), _with_metadata(bad[3], _deep(260))]
    with run_proxy(proxy_settings(tmp_path, cfg)) as proxy:
        gw = proxy.gateway

        async def record_all() -> list[BaseException | None]:
            return await asyncio.gather(*(gw.record(e) for e in [*good[:20], *bad, *good[20:]]),
                                        return_exceptions=True)

        results = proxy.call(record_all())
        assert gw.outbox is not None  # the usage sink (jsonl) beside the ledger sink
        stats = proxy.call(gw.outbox.stats(sink="jsonl"))
    outcome = dict(zip([e.call_id for e in [*good[:20], *bad, *good[20:]]], results,
                       strict=True))
    assert all(outcome[e.call_id] is None for e in good), [r for r in results if r][:2]
    if backend == "postgres":
        assert all(isinstance(outcome[e.call_id], Exception) for e in bad)
    else:  # SQLite stores a NUL; only what cannot be encoded fails
        assert isinstance(outcome[bad[1].call_id], Exception)
        assert isinstance(outcome[bad[3].call_id], Exception)
    stored = len(good) + sum(outcome[e.call_id] is None for e in bad)
    assert stats.pending + stats.inflight + stats.delivered == stored


def _with_metadata(event: Any, metadata: Any) -> Any:
    from dataclasses import replace

    return replace(event, metadata=metadata)


def test_a_group_call_fails_only_the_bad_item() -> None:
    runs: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        runs.append(list(items))
        if 13 in items:
            raise ValueError("13 cannot be written")
        return [i * 2 for i in items]

    async def main() -> list[Any]:
        group: GroupCall[int, int] = GroupCall(run)
        return await asyncio.gather(*(group.call(i) for i in range(10, 17)),
                                    return_exceptions=True)

    results = asyncio.run(main())
    assert results[:3] == [20, 22, 24] and results[4:] == [28, 30, 32]
    assert isinstance(results[3], ValueError)
    assert runs[0] == list(range(10, 17))  # one batch first, then each alone
    assert sorted(map(tuple, runs[1:])) == [(i,) for i in range(10, 17)]
