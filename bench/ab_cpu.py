"""A/B of two tallygate source trees on the chat hot path: alternating runs, CPU per call.

This machine's speed drifts by tens of percent within an hour, so one run of each version
says little. This runs the versions in turns (A, B, A, B, ...) against the same upstream
and Lago stand-ins as `make bench`, and prints for each run the req/s, wrk's p50 / p99,
the gateway's CPU per call (from /proc: its event loops' threads, and its other threads,
the SQLite writer's above all) and its peak RSS, then each version's mean req/s and CPU
per call.

    git worktree add /tmp/before <rev>
    .venv/bin/python bench/ab_cpu.py /tmp/before/src src [--pairs 4] [--conns 50]
        [--seconds 8] [--workers 1] [--key]

Each source tree is put first on the gateway's PYTHONPATH; the installed dependencies are
this checkout's. `--key` calls with a virtual key that has a budget and an rpm limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from run_bench import (
    CONFIG,
    GATEWAY_PORT,
    HOST,
    LAGO_ENV,
    LAGO_PORT,
    MASTER_KEY,
    PY,
    UPSTREAM_PORT,
    Service,
    generate_key,
    kb,
    port_free,
    proc_status,
    run_wrk,
    stand_ins,
    tree,
    wait_http_ok,
)

WARM_S = 2.0


@dataclass
class Run:
    label: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float] = field(default_factory=dict)  # "loop" / "threads": µs a call
    peak_rss_mb: float = 0.0


def thread_jiffies(pids: list[int]) -> dict[tuple[int, int], int]:
    """CPU jiffies (user + system) of every thread of ``pids``, by (pid, thread id)."""
    out: dict[tuple[int, int], int] = {}
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            fields = stat.rsplit(")", 1)[1].split()
            out[(pid, tid)] = int(fields[11]) + int(fields[12])
    return out


def measure(label: str, src: Path, args: argparse.Namespace, work: Path) -> Run:
    cfg = work / "config.yaml"
    db = Path(tempfile.mkdtemp(dir=work)) / "outbox.db"
    env = {**os.environ, **LAGO_ENV, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [PY, "-c", "import sys; from tallygate.cli import main; sys.exit(main())",
            "--config", str(cfg), "--host", HOST, "--port", str(GATEWAY_PORT),
            "--workers", str(args.workers), "--db", str(db), "--log-level", "WARNING"]
    gateway = Service(label, argv, env, work, db.parent / "gateway.log")
    gateway.start()
    assert gateway.proc is not None
    url = f"http://{HOST}:{GATEWAY_PORT}"
    try:
        if wait_http_ok(f"{url}/health/liveliness", 30.0, gateway.proc) is None:
            sys.exit(f"{label}: the gateway did not start (see {gateway.log_path})")
        key = generate_key(url) if args.key else MASTER_KEY
        run_wrk(url, args.conns, WARM_S, key=key)
        pids = tree(gateway.proc.pid)
        before = thread_jiffies(pids)
        result = run_wrk(url, args.conns, args.seconds, key=key)
        after = thread_jiffies(pids)
        hz = os.sysconf("SC_CLK_TCK")
        per_call: dict[str, float] = {}
        for (pid, tid), end in after.items():
            # A process's main thread runs its event loop; its other threads are the
            # SQLite writer and the executors (Python 3.11 does not name OS threads).
            role = "loop" if tid == pid else "threads"
            used = (end - before.get((pid, tid), 0)) / hz / result["requests"] * 1e6
            per_call[role] = per_call.get(role, 0.0) + used
        rss = [kb(proc_status(p).get("VmHWM")) or 0.0 for p in pids]
        return Run(label, result["rps"], result["p50_us"] / 1000, result["p99_us"] / 1000,
                   {k: v for k, v in per_call.items() if v >= 5}, max(rss, default=0.0))
    finally:
        gateway.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="source tree A (the folder holding tallygate/)")
    p.add_argument("b", type=Path, help="source tree B")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--key", action="store_true", help="call with a budgeted virtual key")
    args = p.parse_args()
    sources = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, src in sources.items():
        if not (src / "tallygate" / "__init__.py").exists():
            sys.exit(f"{label}: {src} holds no tallygate package")
    for port in (UPSTREAM_PORT, LAGO_PORT, GATEWAY_PORT):
        if not port_free(port, 1.0):
            sys.exit(f"port {port} on {HOST} is taken: stop what runs there first")
    with tempfile.TemporaryDirectory(prefix="tallygate-ab-") as tmp:
        work = Path(tmp)
        (work / "config.yaml").write_text(CONFIG)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("LAGO_")}
        helpers = stand_ins(base_env, work)
        runs: list[Run] = []
        try:
            for h in helpers:
                h.start()
            for health in (f"http://{HOST}:{UPSTREAM_PORT}/health",
                           f"http://{HOST}:{LAGO_PORT}/_stats"):
                if wait_http_ok(health, 15.0) is None:
                    sys.exit(f"helper at {health} did not start")
            for _ in range(args.pairs):
                for label, src in sources.items():
                    run = measure(label, src, args, work)
                    runs.append(run)
                    threads = "  ".join(f"{k} {v:.0f}" for k, v in sorted(run.cpu_us.items()))
                    print(f"{label}  {run.rps:8.0f} req/s  p50 {run.p50_ms:7.2f}  p99 "
                          f"{run.p99_ms:7.2f} ms  CPU µs a call: {threads}  "
                          f"peak RSS {run.peak_rss_mb:.0f} MB", flush=True)
        finally:
            for h in helpers:
                h.stop()
    for label, src in sources.items():
        mine = [r for r in runs if r.label == label]
        cpu = statistics.mean(sum(r.cpu_us.values()) for r in mine)
        print(f"{label} ({src}): mean {statistics.mean(r.rps for r in mine):.0f} req/s, "
              f"{cpu:.0f} µs of CPU a call, over {len(mine)} runs")


if __name__ == "__main__":
    main()
