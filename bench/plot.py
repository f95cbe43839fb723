"""bench/latency.png from a results.json: latency against concurrency, both gateways.

    bench/.venv-plot/bin/python bench/plot.py bench/results/latest.json bench/latency.png
"""

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {"direct": ("#444444", "direct to upstream"),
         "floor": ("#999999", "floor (bare aiohttp)"),
         "tallygate": ("#1f77b4", "tallygate"), "litellm": ("#d62728", "LiteLLM proxy"),
         "tallygate-key": ("#2ca02c", "tallygate, virtual key (budget + rpm)")}


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as fh:
        res = json.load(fh)
    targets = res["targets"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, workers in zip(axes, (1, 2), strict=True):
        for t in targets.values():
            if "load" not in t or (t["family"] != "direct" and t["workers"] != workers):
                continue
            color, label = STYLE["tallygate-key" if "virtual_key" in t else t["family"]]
            cs = sorted(int(c) for c in t["load"])
            p50 = [t["load"][str(c)]["p50_us"] / 1000 for c in cs]
            p99 = [t["load"][str(c)]["p99_us"] / 1000 for c in cs]
            ax.plot(cs, p50, "o-", color=color, label=f"{label} p50")
            ax.plot(cs, p99, "--", color=color, alpha=0.6, label=f"{label} p99")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent connections (wrk, keep-alive)")
        ax.set_title(f"{workers} worker{'s' if workers > 1 else ''} per gateway")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency per chat completion (ms, log)")
    # One legend for both panels: every series that appears in either.
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    axes[1].legend(list(seen.values()), list(seen), fontsize=7, loc="upper left")
    m = res["machine"]
    fig.suptitle(f"Non-streaming chat completion latency vs concurrency "
                 f"({m['cores']} cores, fast local upstream, Lago billing on)", fontsize=11)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
