"""Prometheus text metrics with no dependency: counters, gauges and histograms.

One ``Metrics`` per worker process counts in plain dicts (nothing shared on the hot
path). With several workers, each one's ``snapshot()`` is merged into what any of them
renders (``proxy/metrics_share.py``): counters and histograms are summed, so they only
grow whichever worker answers a scrape; gauges merge as their meaning says (a sum of
per-worker counts, the max of per-worker flags, or the serving worker's own reading of
state every worker shares, such as the outbox depth).

Labels never carry a key or a secret: model names, deployments, statuses, and customer
ids only where the gateway is told to (bounded, see ``CustomerLabels``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from tallygate.event import format_decimal

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_DURATION = "tallygate_request_duration_seconds"

Labels = tuple[tuple[str, str], ...]
GaugeMerge = Literal["sum", "max", "own"]
Snapshot = dict[str, Any]


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
        # histogram name -> labels -> (bucket counts, sum)
        self._hists: dict[str, dict[Labels, tuple[list[int], list[float]]]] = {}
        self._gauges: dict[str, tuple[Callable[[], list[tuple[Labels, float]]],
                                      GaugeMerge]] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, labels: Labels = (), value: float | Decimal = 1) -> None:
        series = self._counters.setdefault(name, {})
        # Cost counters stay Decimal (exact); token and request counters stay numbers.
        series[labels] = series.get(labels, 0) + value  # type: ignore[operator]

    def observe(self, name: str, labels: Labels, seconds: float) -> None:
        series = self._hists.setdefault(name, {})
        item = series.get(labels)
        if item is None:
            item = series[labels] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        item[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        item[1][0] += seconds

    def observe_latency(self, labels: Labels, seconds: float) -> None:
        self.observe(REQUEST_DURATION, labels, seconds)

    def gauge(self, name: str, read: Callable[[], list[tuple[Labels, float]]],
              merge: GaugeMerge = "own") -> None:
        """``merge``: how workers' readings combine — "sum" (per-worker counts), "max"
        (per-worker flags), "own" (every worker reads the same shared state)."""
        self._gauges[name] = (read, merge)

    # -- several workers -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """This worker's counts as JSON-safe data (Decimals as strings)."""
        counters = {name: [[list(map(list, labels)), _num_out(v)] for labels, v in s.items()]
                    for name, s in self._counters.items()}
        hists = {name: [[list(map(list, labels)), counts, total[0]]
                        for labels, (counts, total) in s.items()]
                 for name, s in self._hists.items()}
        gauges = {name: [[list(map(list, labels)), value] for labels, value in read()]
                  for name, (read, merge) in self._gauges.items() if merge != "own"}
        return {"counters": counters, "hists": hists, "gauges": gauges}

    def render(self, others: Sequence[Snapshot] = ()) -> str:
        """The exposition text: this worker's counts plus the other workers' snapshots."""
        counters = {name: dict(s) for name, s in self._counters.items()}
        hists = {name: {labels: (list(c), t[0]) for labels, (c, t) in s.items()}
                 for name, s in self._hists.items()}
        gauges: dict[str, dict[Labels, float]] = {
            name: dict(read()) for name, (read, _) in self._gauges.items()}
        for snap in others:
            _merge_counters(counters, snap.get("counters") or {})
            _merge_hists(hists, snap.get("hists") or {})
            for name, rows in (snap.get("gauges") or {}).items():
                spec = self._gauges.get(name)
                if spec is None or spec[1] == "own":
                    continue
                series = gauges.setdefault(name, {})
                for labels, value in _rows(rows):
                    old = series.get(labels)
                    if old is None:
                        series[labels] = float(value)
                    elif spec[1] == "sum":
                        series[labels] = old + float(value)
                    else:
                        series[labels] = max(old, float(value))
        lines: list[str] = []
        for name, cseries in sorted(counters.items()):
            self._head(lines, name, "counter")
            for labels, value in cseries.items():
                text = format_decimal(value) if isinstance(value, Decimal) else value
                lines.append(f"{name}{_fmt_labels(labels)} {text}")
        for name, hseries in sorted(hists.items()):
            self._head(lines, name, "histogram")
            for labels, (counts, total) in hseries.items():
                running = 0
                for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f"{name}_bucket{_fmt_labels((*labels, ('le', le)))} {running}")
                lines.append(f"{name}_sum{_fmt_labels(labels)} {total}")
                lines.append(f"{name}_count{_fmt_labels(labels)} {running}")
        for name, gseries in sorted(gauges.items()):
            self._head(lines, name, "gauge")
            for labels, gvalue in gseries.items():
                lines.append(f"{name}{_fmt_labels(labels)} {gvalue}")
        return "\n".join(lines) + "\n"

    def _head(self, lines: list[str], name: str, default_kind: str) -> None:
        kind, text = self._help.get(name, (default_kind, ""))
        if text:
            lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")


class CustomerLabels:
    """Bounded label values for customers: the first ``limit`` customers seen get their
    own series, later ones share ``"other"`` (Prometheus must not grow without end)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def label(self, customer: str | None) -> str | None:
        """The value to use, or None when customer labels are off (limit 0)."""
        if self.limit <= 0:
            return None
        if customer is None:
            return "none"
        if customer in self._seen:
            return customer
        if len(self._seen) < self.limit:
            self._seen.add(customer)
            return customer
        return "other"


def _num_out(value: float | Decimal) -> float | str:
    return format_decimal(value) if isinstance(value, Decimal) else value


def _rows(rows: Iterable[Any]) -> Iterable[tuple[Labels, Any]]:
    for row in rows:
        labels = tuple((str(k), str(v)) for k, v in row[0])
        yield labels, row[1] if len(row) == 2 else row[1:]


def _merge_counters(into: dict[str, dict[Labels, float | Decimal]],
                    snap: Mapping[str, Any]) -> None:
    for name, rows in snap.items():
        series = into.setdefault(name, {})
        for labels, raw in _rows(rows):
            value: float | Decimal = Decimal(raw) if isinstance(raw, str) else raw
            old = series.get(labels)
            if old is None:
                series[labels] = value
            elif isinstance(old, Decimal) or isinstance(value, Decimal):
                series[labels] = Decimal(str(old)) + Decimal(str(value))
            else:
                series[labels] = old + value


def _merge_hists(into: dict[str, dict[Labels, tuple[list[int], float]]],
                 snap: Mapping[str, Any]) -> None:
    for name, rows in snap.items():
        series = into.setdefault(name, {})
        for labels, (counts, total) in _rows(rows):
            old = series.get(labels)
            if old is None:
                series[labels] = (list(counts), float(total))
            else:
                series[labels] = ([a + b for a, b in zip(old[0], counts, strict=True)],
                                  old[1] + float(total))
