"""Prometheus text metrics with no dependency: counters, gauges and one histogram kind.

Labels never carry a key or a customer's secret; model names and status codes only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from decimal import Decimal

from tallygate.event import format_decimal

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float | Decimal]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._hist: dict[Labels, list[int]] = {}
        self._hist_sum: dict[Labels, float] = {}
        self._gauges: dict[str, Callable[[], list[tuple[Labels, float]]]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, labels: Labels = (), value: float | Decimal = 1) -> None:
        series = self._counters.setdefault(name, {})
        # Cost counters stay Decimal (exact); token and request counters stay numbers.
        series[labels] = series.get(labels, 0) + value  # type: ignore[operator]

    def observe_latency(self, labels: Labels, seconds: float) -> None:
        counts = self._hist.get(labels)
        if counts is None:
            counts = self._hist[labels] = [0] * (len(LATENCY_BUCKETS) + 1)
            self._hist_sum[labels] = 0.0
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._hist_sum[labels] += seconds

    def gauge(self, name: str, read: Callable[[], list[tuple[Labels, float]]]) -> None:
        self._gauges[name] = read

    def render(self) -> str:
        lines: list[str] = []
        for name, series in sorted(self._counters.items()):
            self._head(lines, name, "counter")
            for labels, value in series.items():
                text = format_decimal(value) if isinstance(value, Decimal) else value
                lines.append(f"{name}{_fmt_labels(labels)} {text}")
        name = "tallygate_request_duration_seconds"
        if self._hist:
            self._head(lines, name, "histogram")
        for labels, counts in self._hist.items():
            running = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"{name}_bucket{_fmt_labels((*labels, ('le', le)))} {running}")
            lines.append(f"{name}_sum{_fmt_labels(labels)} {self._hist_sum[labels]}")
            lines.append(f"{name}_count{_fmt_labels(labels)} {running}")
        for name, read in sorted(self._gauges.items()):
            self._head(lines, name, "gauge")
            for labels, value in read():
                lines.append(f"{name}{_fmt_labels(labels)} {value}")
        return "\n".join(lines) + "\n"

    def _head(self, lines: list[str], name: str, default_kind: str) -> None:
        kind, text = self._help.get(name, (default_kind, ""))
        if text:
            lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
