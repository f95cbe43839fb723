"""The benchmark run behind BENCHMARKS.md: every figure, every target, one run.

Targets, one after the other on the same port, never two at once: direct to the upstream
stand-in, the aiohttp floor proxy (1 and 2 processes), tallygate (1 and 2 workers, Lago
callback, SQLite outbox) and LiteLLM's proxy (1 and 2 workers, Lago callback) from its
own venv. Load comes from wrk (bench/wrk_chat.lua), streams' first chunk from an aiohttp
client; billing is checked by comparing the calls the upstream answered with the events
the Lago stand-in received. Then the SDKs (import time, per-call overhead) and the outbox.

    .venv/bin/python bench/run_bench.py [--quick] [--out bench/results/NAME]

Writes results.json into the output folder; bench/report.py turns it into BENCHMARKS.md
and bench/plot.py into bench/latency.png (bench/run.sh does all three).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
LITELLM_VENV = BENCH / ".venv-litellm"
HOST = "127.0.0.1"
UPSTREAM_PORT, LAGO_PORT, GATEWAY_PORT = 18000, 18300, 18400
MASTER_KEY = "sk-bench"
LAGO_KEY = "lago-bench-key"
UPSTREAM_KEY = "sk-upstream-bench"
STREAM_CHUNKS = 20
LAG_CONCURRENCY = (1, 50)  # where the event-loop lag is sampled (a pass of its own)

CONFIG = f"""\
# The one config both gateways run (LiteLLM's shape). Written by bench/run_bench.py.
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://{HOST}:{UPSTREAM_PORT}/v1
      api_key: {UPSTREAM_KEY}
litellm_settings:
  callbacks: ["lago"]
general_settings:
  master_key: {MASTER_KEY}
"""

LAGO_ENV = {
    "LAGO_API_BASE": f"http://{HOST}:{LAGO_PORT}",
    "LAGO_API_KEY": LAGO_KEY,
    "LAGO_API_EVENT_CODE": "llm_usage",
    "LAGO_API_CHARGE_BY": "end_user_id",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def http_json(url: str, method: str = "GET", timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_http_ok(url: str, deadline_s: float, proc: subprocess.Popen[bytes] | None = None,
                 ) -> float | None:
    """Poll url until 200; seconds from now, or None when it never came."""
    start = time.perf_counter()
    while time.perf_counter() - start < deadline_s:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.005)
    return None


def port_free(port: int, deadline_s: float = 15.0) -> bool:
    import socket
    start = time.time()
    while time.time() - start < deadline_s:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) != 0:
                return True
        time.sleep(0.1)
    return False


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo.extend(int(k) for k in kids)
    return out


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def kb(value: str | None) -> float | None:
    return int(value.split()[0]) / 1024 if value else None


def busy_jiffies() -> int:
    """CPU time the whole machine spent busy (all cores), in clock ticks."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return user + nice + system + irq + softirq + steal


def pid_jiffies(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def own_jiffies(pids: list[int]) -> int:
    """This process and its reaped children (wrk) plus the given live processes."""
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK")
    return int((t.user + t.system + t.children_user + t.children_system) * hz) + pid_jiffies(
        pids)


def wait_quiet(max_wait_s: float, limit_cores: float = 0.15) -> dict[str, float]:
    """Wait (up to max_wait_s) until the machine is idle: other sessions' test runs on
    the same 2 cores would skew every figure. Returns what was seen."""
    start = time.time()
    hz = os.sysconf("SC_CLK_TCK")
    while True:
        b0 = busy_jiffies()
        time.sleep(1.0)
        load = (busy_jiffies() - b0) / hz
        if load <= limit_cores or time.time() - start > max_wait_s:
            return {"idle_load_cores": round(load, 3), "waited_s": round(time.time() - start, 1)}
        log(f"machine busy ({load:.2f} cores used by other processes): waiting")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
    except OSError:
        return ""


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> None:
        self.started_at = time.perf_counter()
        logf = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(5)
        # Workers of a multi-process server may outlive their parent for a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def stand_ins(env: dict[str, str], folder: Path) -> list[Service]:
    """The upstream and Lago stand-ins every target is measured against (not started)."""
    return [
        Service("upstream", [PY, str(BENCH / "upstream.py"), "--host", HOST, "--port",
                             str(UPSTREAM_PORT), "--chunks", str(STREAM_CHUNKS)],
                env, folder, folder / "upstream.log"),
        Service("lago", [PY, str(BENCH / "lago_counter.py"), "--host", HOST, "--port",
                         str(LAGO_PORT), "--api-key", LAGO_KEY],
                env, folder, folder / "lago.log"),
    ]


@dataclass
class Target:
    name: str          # e.g. "tallygate-2w"
    family: str        # direct | floor | tallygate | litellm
    workers: int
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Call with a virtual key that has a budget and an rpm limit (the hot path customers
    # pay for) instead of the master key.
    virtual_key: bool = False

    @property
    def url(self) -> str:
        port = UPSTREAM_PORT if self.family == "direct" else GATEWAY_PORT
        return f"http://{HOST}:{port}"


def run_wrk(url: str, conns: int, seconds: float, stream: bool = False,
            key: str = MASTER_KEY) -> dict[str, Any]:
    env = {**os.environ, "BENCH_STREAM": "1" if stream else "0", "BENCH_KEY": key}
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(BENCH / "wrk_chat.lua"), f"{url}/v1/chat/completions"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r"WRKJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r: dict[str, Any] = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["ok"] = r["requests"] - r["status_errors"]
    r["conns"] = conns
    return r


async def _ttfc(url: str, n: int, key: str = MASTER_KEY) -> dict[str, Any]:
    import aiohttp
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello."}],
            "user": "cust-bench", "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    firsts: list[float] = []
    totals: list[float] = []
    ok = 0
    async with aiohttp.ClientSession() as s:
        for i in range(n + 20):
            start = time.perf_counter()
            async with s.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
                first = await r.content.readany()
                t_first = time.perf_counter() - start
                rest = await r.read()
                t_total = time.perf_counter() - start
                good = r.status == 200 and b"[DONE]" in first + rest
            if i >= 20:  # the first 20 warm the connection and the gateway
                firsts.append(t_first)
                totals.append(t_total)
                ok += good
            elif good:
                ok += 1
    return {"n": n, "ok": ok, "p50_us": pct(firsts, 50) * 1e6, "p99_us": pct(firsts, 99) * 1e6,
            "total_p50_us": pct(totals, 50) * 1e6}


def pct(samples: list[float], p: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


KEY_BUDGET_USD = 1_000_000   # a budget every call reserves against, never reached here
KEY_RPM = 100_000_000         # an rpm limit every call counts against, never reached here


def loop_lag(url: str, reset: bool = False, sampling: str | None = None
             ) -> dict[str, Any] | None:
    """The gateway's sampled event-loop lag (TALLYGATE_LOOP_LAG_SAMPLE_MS is set for
    the tallygate targets); with --workers N it is the answering worker's. ``sampling``
    "on" / "off" starts or stops the gateway's probes (of that worker)."""
    query = "&".join(q for q in ("reset=1" if reset else "",
                                 f"sampling={sampling}" if sampling else "") if q)
    req = urllib.request.Request(f"{url}/debug/loop-lag{'?' + query if query else ''}",
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except OSError as exc:
        log(f"loop lag not read from {url}: {exc}")
        return None


def generate_key(url: str) -> str:
    """A virtual key with a budget and an rpm limit, made through the admin API."""
    body = json.dumps({"key_alias": "bench", "max_budget": KEY_BUDGET_USD,
                       "budget_duration": "30d", "rpm_limit": KEY_RPM}).encode()
    req = urllib.request.Request(f"{url}/key/generate", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {MASTER_KEY}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(json.loads(resp.read())["key"])


def measure_target(t: Target, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {"name": t.name, "family": t.family, "workers": t.workers}
    d = args.duration
    res["quiet"] = wait_quiet(args.quiet_wait)
    http_json(f"http://{HOST}:{LAGO_PORT}/_reset", "POST")
    http_json(f"http://{HOST}:{UPSTREAM_PORT}/_reset", "POST")
    svc: Service | None = None
    if t.argv:
        if not port_free(GATEWAY_PORT):
            raise RuntimeError(f"port {GATEWAY_PORT} is still taken")
        tdir = run_dir / t.name
        tdir.mkdir(parents=True, exist_ok=True)
        svc = Service(t.name, t.argv, t.env, tdir, tdir / "server.log")
        svc.start()
        startup = wait_http_ok(f"{t.url}/health/liveliness", 180.0, svc.proc)
        if startup is None:
            svc.stop()
            res["error"] = f"no 200 on /health/liveliness; see {tdir / 'server.log'}"
            log(f"{t.name}: {res['error']}")
            return res
        res["startup_s"] = startup
        log(f"{t.name}: first 200 after {startup * 1000:.0f} ms")
    key = MASTER_KEY
    if t.virtual_key:
        key = generate_key(t.url)
        res["virtual_key"] = {"max_budget_usd": KEY_BUDGET_USD, "rpm_limit": KEY_RPM}
    hz = os.sysconf("SC_CLK_TCK")
    ours = [*args.helper_pids, *(tree(svc.proc.pid) if svc and svc.proc else [])]
    busy0, own0, wall0 = busy_jiffies(), own_jiffies(ours), time.time()
    try:
        ok_client = 0
        warm = run_wrk(t.url, 50, min(2, d), key=key)
        ok_client += warm["ok"]
        res["load"] = {}
        # One worker's loop is sampled (with two, a request reaches either worker).
        sampled = t.family == "tallygate" and t.workers == 1
        for c in args.concurrency:
            # The speed figures are taken with the lag probes off (a probe a millisecond
            # costs throughput of its own); the lag is a second pass, probes on.
            if sampled:
                loop_lag(t.url, sampling="off")
            r = run_wrk(t.url, c, d, key=key)
            if sampled and c in LAG_CONCURRENCY:
                loop_lag(t.url, reset=True, sampling="on")  # a window of its own
                lagged = run_wrk(t.url, c, d, key=key)
                ok_client += lagged["ok"]
                r["loop_lag"] = loop_lag(t.url, reset=True)
                r["loop_lag_pass"] = {k: lagged[k] for k in ("rps", "p50_us", "p99_us")}
            ok_client += r["ok"]
            res["load"][str(c)] = r
            lag = r.get("loop_lag") or {}
            log(f"{t.name}: c={c:<3} {r['rps']:9.0f} req/s  p50 {r['p50_us'] / 1000:7.2f} ms  "
                f"p99 {r['p99_us'] / 1000:7.2f} ms  non-2xx {r['status_errors']}  "
                f"errors {r['read_errors'] + r['connect_errors'] + r['timeouts']}"
                + (f"  loop lag p99 {lag.get('p99_ms')} ms max {lag.get('max_ms')} ms"
                   if lag else ""))
        s = run_wrk(t.url, 100, d, stream=True, key=key)
        ok_client += s["ok"]
        res["streams"] = s
        log(f"{t.name}: 100 streams {s['rps']:9.0f} streams/s  p50 {s['p50_us'] / 1000:.2f} ms")
        tt = asyncio.run(_ttfc(t.url, args.ttfc_n, key))
        ok_client += tt["ok"]
        res["ttfc"] = tt
        log(f"{t.name}: time to first chunk p50 {tt['p50_us'] / 1000:.2f} ms "
            f"p99 {tt['p99_us'] / 1000:.2f} ms")
        res["client_ok"] = ok_client
        if svc is not None and svc.proc is not None:
            procs = tree(svc.proc.pid)
            mem = [{"pid": p, "cmd": cmdline(p), "hwm_mb": kb(proc_status(p).get("VmHWM")),
                    "rss_mb": kb(proc_status(p).get("VmRSS"))} for p in procs]
            res["processes"] = mem
            workers = mem if t.workers == 1 else [m for m in mem if m["pid"] != svc.proc.pid]
            peaks = [m["hwm_mb"] for m in workers if m["hwm_mb"] is not None]
            res["peak_rss_mb"] = max(peaks) if peaks else None
        ours = [*args.helper_pids, *(tree(svc.proc.pid) if svc and svc.proc else [])]
        foreign = (busy_jiffies() - busy0) - (own_jiffies(ours) - own0)
        res["other_load_cores"] = round(max(foreign, 0) / hz / (time.time() - wall0), 3)
        log(f"{t.name}: other processes used {res['other_load_cores']:.2f} cores meanwhile")
        # Billing: every call the upstream answered must reach Lago, once.
        up = http_json(f"http://{HOST}:{UPSTREAM_PORT}/_stats")
        answered = up["chat"] + up["stream"]
        if t.family in ("tallygate", "litellm"):
            lago, last, still = {}, -1, time.time()
            deadline = time.time() + args.billing_wait
            while time.time() < deadline:
                lago = http_json(f"http://{HOST}:{LAGO_PORT}/_stats")
                if lago["unique"] >= answered:
                    break
                if lago["unique"] != last:
                    last, still = lago["unique"], time.time()
                elif time.time() - still > 10:
                    break  # no progress for 10 s
                time.sleep(0.25)
            res["billing"] = {"upstream_answered": answered, "client_ok": ok_client,
                              "lago_events": lago.get("events"),
                              "lago_unique": lago.get("unique"),
                              "lago_requests": lago.get("requests")}
            log(f"{t.name}: billed {lago.get('unique')} of {answered} answered calls "
                f"({lago.get('events')} events in {lago.get('requests')} POSTs)")
        res["upstream_answered"] = answered
    finally:
        if svc is not None:
            svc.stop()
    return res


def sdk_figures(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pys = {"tallygate": (str(ROOT / ".venv/bin/python"), "tallygate")}
    if (LITELLM_VENV / "bin/python").exists():
        pys["litellm"] = (str(LITELLM_VENV / "bin/python"), "litellm")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    for name, (py, module) in pys.items():
        code = ("import time; t=time.perf_counter(); import " + module
                + "; print(time.perf_counter()-t)")
        times = []
        for _ in range(args.import_runs):
            r = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env,
                               cwd="/tmp", timeout=120)
            times.append(float(r.stdout.strip().splitlines()[-1]))
        calls = subprocess.run([py, str(BENCH / "sdk_bench.py"), "--sdk", name,
                                "--base", f"http://{HOST}:{UPSTREAM_PORT}/v1",
                                "--n", str(args.sdk_calls)],
                               capture_output=True, text=True, env=env, cwd="/tmp", timeout=600)
        m = re.search(r"SDKJSON (\{.*\})", calls.stdout)
        out[name] = {"import_s_median": statistics.median(times), "import_s_all": times,
                     "calls": json.loads(m.group(1)) if m else {"error": calls.stderr[-2000:]}}
        log(f"sdk {name}: import {statistics.median(times) * 1000:.0f} ms; "
            f"calls {out[name]['calls']}")
    return out


def outbox_figures(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    r = subprocess.run([str(ROOT / ".venv/bin/python"), str(BENCH / "outbox_bench.py"),
                        "--n", str(args.outbox_n)], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    out["outbox_bench_stdout"] = r.stdout
    if r.returncode:
        out["outbox_bench_error"] = r.stderr[-2000:]
    for line in r.stdout.splitlines():
        m = re.match(r"(\w+)\s+enqueue \(([^)]*)\):\s+p50=\s*(\d+)us\s+p99=\s*(\d+)us", line)
        if m:
            out.setdefault("enqueue", []).append({"backend": m.group(1), "mode": m.group(2),
                                                  "p50_us": int(m.group(3)),
                                                  "p99_us": int(m.group(4))})
        m = re.match(r"(\w+)\s+delivery: ([\d,]+) events/s", line)
        if m:
            out.setdefault("delivery_in_process", {})[m.group(1)] = int(
                m.group(2).replace(",", ""))
    r = subprocess.run([str(ROOT / ".venv/bin/python"), str(BENCH / "outbox_lago.py"),
                        "--n", str(args.outbox_n), "--lago", f"http://{HOST}:{LAGO_PORT}",
                        "--lago-key", LAGO_KEY], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    m = re.search(r"OUTBOXJSON (\{.*\})", r.stdout)
    out["delivery_to_lago"] = json.loads(m.group(1)) if m else {"error": r.stderr[-2000:]}
    log(f"outbox: {out.get('enqueue')} {out.get('delivery_in_process')} "
        f"{out['delivery_to_lago']}")
    return out


def versions() -> dict[str, str]:
    v: dict[str, str] = {"python": platform.python_version()}
    for label, py, pkgs in (
            ("tallygate-venv", ROOT / ".venv/bin/python",
             ["tallygate", "aiohttp", "uvloop", "orjson"]),
            ("litellm-venv", LITELLM_VENV / "bin/python",
             ["litellm", "fastapi", "uvicorn", "uvloop", "httpx"])):
        if not py.exists():
            continue
        code = ("import importlib.metadata as m, sys\n"
                "for p in sys.argv[1:]:\n"
                "    try: print(p, m.version(p))\n"
                "    except Exception: print(p, '-')")
        r = subprocess.run([str(py), "-c", code, *pkgs], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            name, ver = line.split(" ", 1)
            v[f"{name} ({label})"] = ver
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    v["wrk"] = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "?"
    try:
        r = subprocess.run(["psql", "-h", HOST, "-U", "postgres", "-d", "test", "-tAc",
                            "show server_version"], capture_output=True, text=True, timeout=10)
        v["postgresql"] = r.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        v["postgresql"] = "?"
    return v


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "os": platform.platform()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="result folder (default bench/results/<time>)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 100])
    p.add_argument("--ttfc-n", type=int, default=300)
    p.add_argument("--billing-wait", type=float, default=60.0)
    p.add_argument("--sdk-calls", type=int, default=500)
    p.add_argument("--import-runs", type=int, default=5)
    p.add_argument("--outbox-n", type=int, default=3000)
    p.add_argument("--only", nargs="*", help="target names to run (default: all)")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="seconds to wait for other processes to go idle before each target")
    p.add_argument("--skip-sdk", action="store_true")
    p.add_argument("--skip-outbox", action="store_true")
    p.add_argument("--quick", action="store_true", help="short runs, for trying the harness")
    args = p.parse_args()
    if args.quick:
        args.duration, args.ttfc_n, args.sdk_calls, args.import_runs = 2.0, 50, 100, 2
        args.outbox_n = 500
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk (bench/run.sh does it)")
    if 50 not in args.concurrency or 1 not in args.concurrency:
        sys.exit("--concurrency must include 1 and 50 (the headline figures)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.out) if args.out else BENCH / "results" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = run_dir / "config.yaml"
    cfg.write_text(CONFIG)

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LAGO_", "LITELLM"))}
    gw_env = {**base_env, **LAGO_ENV, "PYTHONUNBUFFERED": "1"}
    # The one-worker tallygate targets sample their event loop's lag (issue 15: no
    # stalls), in passes of their own.
    tg_env = {**gw_env, "TALLYGATE_LOOP_LAG_SAMPLE_MS": "1"}
    lt_env = {**gw_env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
              "LITELLM_TELEMETRY": "False", "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True"}
    tallygate_bin = str(ROOT / ".venv/bin/tallygate")
    litellm_bin = str(LITELLM_VENV / "bin/litellm")
    targets = [Target("direct", "direct", 1)]
    for n in (1, 2):
        targets.append(Target(f"floor-{n}w", "floor", n, [
            PY, str(BENCH / "floor_proxy.py"), "--host", HOST, "--port", str(GATEWAY_PORT),
            "--upstream", f"http://{HOST}:{UPSTREAM_PORT}", "--workers", str(n)], base_env))
    for n in (1, 2):
        targets.append(Target(f"tallygate-{n}w", "tallygate", n, [
            tallygate_bin, "--config", str(cfg), "--host", HOST, "--port", str(GATEWAY_PORT),
            "--workers", str(n), "--db", str(run_dir / f"tallygate-{n}w" / "outbox.db"),
            "--log-level", "WARNING"], tg_env if n == 1 else gw_env))
    targets.append(Target("tallygate-1w-key", "tallygate", 1, [
        tallygate_bin, "--config", str(cfg), "--host", HOST, "--port", str(GATEWAY_PORT),
        "--workers", "1", "--db", str(run_dir / "tallygate-1w-key" / "outbox.db"),
        "--log-level", "WARNING"], tg_env, virtual_key=True))
    if Path(litellm_bin).exists():
        for n in (1, 2):
            targets.append(Target(f"litellm-{n}w", "litellm", n, [
                litellm_bin, "--config", str(cfg), "--host", HOST, "--port",
                str(GATEWAY_PORT), "--num_workers", str(n)], lt_env))
    else:
        log(f"LiteLLM is not installed in {LITELLM_VENV}: its rows stay empty")
    if args.only:
        targets = [t for t in targets if t.name in args.only]

    for port in (UPSTREAM_PORT, LAGO_PORT, GATEWAY_PORT):
        if not port_free(port, 1.0):
            sys.exit(f"port {port} on {HOST} is taken: stop what runs there first")
    helpers = stand_ins(base_env, run_dir)
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                               "machine": machine(), "versions": versions(),
                               "settings": {k: v for k, v in vars(args).items()},
                               "stream_chunks": STREAM_CHUNKS, "config": CONFIG,
                               "targets": {}}
    t0 = time.time()
    try:
        for h in helpers:
            h.start()
        for url in (f"http://{HOST}:{UPSTREAM_PORT}/health", f"http://{HOST}:{LAGO_PORT}/_stats"):
            if wait_http_ok(url, 15.0) is None:
                sys.exit(f"helper at {url} did not start")
        args.helper_pids = [h.proc.pid for h in helpers if h.proc is not None]
        for t in targets:
            log(f"--- {t.name}")
            results["targets"][t.name] = measure_target(t, run_dir, args)
            (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        if not args.skip_sdk:
            results["sdk"] = sdk_figures(args)
        if not args.skip_outbox:
            results["outbox"] = outbox_figures(args)
    finally:
        for h in helpers:
            h.stop(5)
    results["elapsed_s"] = time.time() - t0
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    latest = BENCH / "results" / "latest.json"
    latest.parent.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(results, indent=2))
    log(f"done in {results['elapsed_s']:.0f} s: {run_dir / 'results.json'}")


if __name__ == "__main__":
    main()
