"""The router's own cost per call: ``Router.run`` around an attempt that does nothing,
against awaiting that attempt directly (target: at most 20 microseconds a call).

    .venv/bin/python bench/router_bench.py            # prints a table and ROUTERJSON {...}
    .venv/bin/python bench/router_bench.py --write BENCHMARKS.md   # and its section there

Cases: a group with one deployment (the hot path: it must cost nothing measurable), two
deployments with simple-shuffle, latency-based and least-busy, a deployment with an
rpm limit (the in-process limiter), and one retry after a failed attempt (the failure
path, for scale: two attempts against one). No network, no HTTP framework: only the
router's work is timed, in CPU time of the thread, best of five rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tallygate.errors import UpstreamError
from tallygate.providers.base import Deployment
from tallygate.routing import Attempt, Router
from tallygate.routing.settings import DeploymentRouting, RouterSettings

N = 50_000
ROUNDS = 5
TARGET_US = 20.0
MARK_START, MARK_END = "<!-- router_bench:start -->", "<!-- router_bench:end -->"


def _router(count: int, strategy: str = "simple-shuffle", rpm: int | None = None,
            cooldowns: bool = True) -> Router:
    models = {"g": tuple(Deployment("openai", f"m{i}", f"http://10.0.0.{i}/v1")
                         for i in range(count))}
    routing = {"g": tuple(DeploymentRouting(f"d{i}", rpm=rpm) for i in range(count))}
    settings = RouterSettings(strategy=strategy, deployments=routing,  # type: ignore[arg-type]
                              disable_cooldowns=not cooldowns)
    return Router(models, settings)


async def _nothing(attempt: Attempt) -> int:
    return 1


def _failing_once() -> Callable[[Attempt], Awaitable[int]]:
    state = {"n": 0}

    async def call(attempt: Attempt) -> int:
        state["n"] += 1
        if state["n"] % 2:
            raise UpstreamError("boom")
        return 1
    return call


async def _time(fn: Callable[[], Awaitable[Any]], n: int) -> float:
    # CPU time of this thread: other processes on a shared machine do not count.
    for _ in range(1000):
        await fn()
    started = time.thread_time()
    for _ in range(n):
        await fn()
    return (time.thread_time() - started) / n * 1e6


async def _case(router: Router, call: Callable[[Attempt], Awaitable[int]],
                n: int) -> float:
    plan = router.resolve("g")

    async def routed() -> Any:
        return await router.run(plan, call)

    async def direct() -> Any:
        return await _nothing(None)  # type: ignore[arg-type]

    samples = []
    for _ in range(ROUNDS):
        samples.append(await _time(routed, n) - await _time(direct, n))
    return min(samples)  # the least disturbed round


async def measure() -> dict[str, float]:
    cases: list[tuple[str, Router, Callable[[Attempt], Awaitable[int]], int]] = [
        ("one deployment", _router(1), _nothing, N),
        ("two, simple-shuffle", _router(2), _nothing, N),
        ("two, latency-based-routing", _router(2, "latency-based-routing"), _nothing, N),
        ("two, least-busy", _router(2, "least-busy"), _nothing, N),
        ("two, rpm limit (in-process)", _router(2, rpm=10**9), _nothing, N // 2),
        ("two, one retry (failure path)", _router(2, cooldowns=False), _failing_once(),
         N // 5),
    ]
    results = {}
    print(f"{'case':34} overhead per call")
    for name, router, call, n in cases:
        us = await _case(router, call, n)
        results[name] = round(us, 2)
        print(f"{name:34} {us:8.2f} us")
    print("ROUTERJSON " + json.dumps(results))
    return results


def write_section(path: Path, results: dict[str, float]) -> None:
    """The figures as their own section of BENCHMARKS.md (replaced on each run)."""
    lines = [MARK_START, "## The router's cost per call (`bench/router_bench.py`)", "",
             "`Router.run` around an attempt that does nothing, minus awaiting the attempt "
             "directly: CPU time of the thread, best of five rounds (issue 12's target: "
             f"at most {TARGET_US:.0f} µs a call; the failure path is two attempts, for "
             f"scale). Taken {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| case | µs per call | target |", "|---|---:|---|"]
    for name, us in results.items():
        verdict = "for scale" if "failure" in name else (
            "met" if us <= TARGET_US else "**missed**")
        lines.append(f"| {name} | {us:.2f} | {verdict} |")
    lines.append(MARK_END)
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines)
    pattern = re.compile(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()
    results = asyncio.run(measure())
    if args.write is not None:
        write_section(args.write, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
