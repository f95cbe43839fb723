"""Group commit: one batch is written at a time, and what arrives meanwhile is the next
batch, so under load a commit carries many calls while a lone call never waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tallygate.metering.group_commit import GroupCall


async def test_calls_that_arrive_during_a_write_are_the_next_batch() -> None:
    batches: list[list[int]] = []
    in_flight = 0
    most_in_flight = 0
    release = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        batches.append(list(items))
        if len(batches) == 1:
            await release.wait()          # the first write is slow
        in_flight -= 1
        return [i * 10 for i in items]

    group: GroupCall[int, int] = GroupCall(run)
    first = asyncio.ensure_future(group.call(1))
    await asyncio.sleep(0.01)
    assert batches == [[1]]               # a lone call is written at once
    later = [asyncio.ensure_future(group.call(i)) for i in (2, 3, 4)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert batches == [[1]]               # they wait for the write under way
    release.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert batches == [[1], [2, 3, 4]]    # one commit for all three
    assert most_in_flight == 1
    await group.wait_idle()
    assert batches == [[1], [2, 3, 4]]    # nothing more was written


async def test_a_failed_batch_does_not_stall_the_next_one() -> None:
    batches: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        if 1 in items:
            raise ValueError("bad item")
        return list(items)

    group: GroupCall[int, int] = GroupCall(run)
    first = asyncio.ensure_future(group.call(1))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(group.call(2))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] == 2
    assert batches == [[1], [2]]
