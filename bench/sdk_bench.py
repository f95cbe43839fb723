"""Per-call overhead of the SDK's sync ``completion()`` against the bench upstream.

Runs inside the venv of the SDK it measures (stdlib only besides the SDK):

    .venv/bin/python bench/sdk_bench.py --sdk tallygate --base http://127.0.0.1:18000/v1
    bench/.venv-litellm/bin/python bench/sdk_bench.py --sdk litellm --base ...

The baseline is the same POST with ``http.client`` on one keep-alive connection; the
overhead is SDK minus baseline. No callbacks are set: this is the cost of the call
itself (LiteLLM's Lago logger only bills proxy calls: outside the proxy it finds no
customer). Prints ``SDKJSON {...}`` with times in microseconds.
"""

import argparse
import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

MESSAGES = [{"role": "user", "content": "Say hello."}]


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1e6


def timed(fn: Any, n: int, warm: int = 30) -> list[float]:
    for _ in range(warm):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sdk", choices=("tallygate", "litellm"), required=True)
    p.add_argument("--base", required=True, help="upstream base URL ending in /v1")
    p.add_argument("--n", type=int, default=500)
    a = p.parse_args()

    u = urlsplit(a.base)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    body = json.dumps({"model": "gpt-4o-mini", "messages": MESSAGES, "user": "cust-bench"})

    def raw() -> None:
        conn.request("POST", u.path + "/chat/completions", body=body, headers={
            "Content-Type": "application/json", "Authorization": "Bearer sk-upstream-bench"})
        resp = conn.getresponse()
        json.loads(resp.read())

    if a.sdk == "tallygate":
        import tallygate as sdk
    else:
        import litellm as sdk

    def call() -> None:
        r = sdk.completion(model="openai/gpt-4o-mini", messages=MESSAGES, api_base=a.base,
                           api_key="sk-upstream-bench", user="cust-bench")
        assert r.choices[0].message.content

    base = timed(raw, a.n)
    sdk_t = timed(call, a.n)
    out = {"n": a.n, "raw_p50_us": pct(base, 50), "raw_p99_us": pct(base, 99),
           "sdk_p50_us": pct(sdk_t, 50), "sdk_p99_us": pct(sdk_t, 99)}
    out["overhead_p50_us"] = out["sdk_p50_us"] - out["raw_p50_us"]
    out["overhead_p99_us"] = out["sdk_p99_us"] - out["raw_p99_us"]
    print("SDKJSON " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
