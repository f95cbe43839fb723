"""What the router has seen of each deployment: calls in flight, latency, usage this
minute, and counts for the metrics. One process's view (strategies read it; limits that
must hold across gateways are the rate limiter's)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class DeploymentStats:
    in_flight: int = 0
    # (monotonic time, seconds): time to first token for streams, the whole call else
    latencies: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=10))
    minute: int = -1
    requests: int = 0            # this minute
    tokens: int = 0              # this minute
    successes: int = 0           # since start
    failures: dict[str, int] = field(default_factory=dict)  # by kind, since start
    healthy: bool | None = None  # the last health check, None: never checked
    health_error: str | None = None
    _median: float | None = None  # of the samples in ``latencies``; None: to compute

    def observe_latency(self, seconds: float, now: float) -> None:
        self.latencies.append((now, seconds))
        self._median = None

    def latency(self, now: float, ttl_s: float) -> float | None:
        """The median of the samples younger than ``ttl_s`` (one slow outlier, a cold
        connection say, does not bury a fast deployment); None when there are none."""
        samples = self.latencies
        while samples and now - samples[0][0] > ttl_s:
            samples.popleft()
            self._median = None
        if not samples:
            return None
        if self._median is None:
            ordered = sorted(seconds for _, seconds in samples)
            mid = len(ordered) // 2
            self._median = (ordered[mid] if len(ordered) % 2
                            else (ordered[mid - 1] + ordered[mid]) / 2)
        return self._median

    def count_use(self, requests: int, tokens: int, now: float) -> None:
        m = int(now // 60)
        if m != self.minute:
            self.minute, self.requests, self.tokens = m, 0, 0
        self.requests += requests
        self.tokens = max(self.tokens + tokens, 0)

    def usage(self, now: float) -> tuple[int, int]:
        """(requests, tokens) this minute."""
        return (self.requests, self.tokens) if self.minute == int(now // 60) else (0, 0)


class Stats:
    def __init__(self, max_samples: int = 10) -> None:
        self._by_id: dict[str, DeploymentStats] = {}
        self._max_samples = max_samples

    def __getitem__(self, model_id: str) -> DeploymentStats:
        stats = self._by_id.get(model_id)
        if stats is None:
            stats = self._by_id[model_id] = DeploymentStats(
                latencies=deque(maxlen=self._max_samples))
        return stats

    def items(self) -> list[tuple[str, DeploymentStats]]:
        return list(self._by_id.items())
