"""Load-balancing strategies: which of a group's available deployments serves a call.

``pick`` chooses one (the hot path: no deployment has a limit to check); ``order``
ranks them all, for when the first may be at its own rpm/tpm and the next is tried.

- ``simple-shuffle``: at random, weighted by ``weight`` (else ``rpm``, else ``tpm``).
- ``least-busy``: fewest calls in flight first.
- ``latency-based-routing``: fastest first (time to first token for streams, the whole
  call otherwise; the median of the last ``max_latency_list_size`` samples younger than
  ``ttl``); a deployment with no sample yet is tried first, one within
  ``lowest_latency_buffer`` of the fastest is as good as it, and one call in twenty
  goes to a random deployment so a slow one that recovered is noticed.
- ``usage-based-routing-v2``: least used this minute (tokens, then requests, each
  relative to the deployment's own tpm/rpm) first.
- ``cost-based-routing``: cheapest first (price of a 1,000-in/1,000-out call); unknown
  prices last.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tallygate.routing.groups import Target
from tallygate.routing.settings import LatencyArgs, Strategy
from tallygate.routing.stats import Stats

EXPLORE_RATE = 0.05


class Balancer:
    """simple-shuffle, and the base of the others."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def pick(self, cands: Sequence[Target], even: bool, mono: float, wall: float) -> Target:
        if even:
            return cands[int(random.random() * len(cands))]
        return random.choices(cands, weights=[t.weight for t in cands])[0]

    def order(self, cands: Sequence[Target], mono: float, wall: float) -> list[Target]:
        # Each next one drawn by weight among those left (Efraimidis-Spirakis keys).
        keyed = [((random.random() ** (1.0 / t.weight)) if t.weight > 0 else -1.0, i)
                 for i, t in enumerate(cands)]
        keyed.sort(reverse=True)
        return [cands[i] for _, i in keyed]


class _Ranked(Balancer):
    """A strategy that ranks by a key; ties are broken at random."""

    def key(self, t: Target, mono: float, wall: float) -> tuple[float, ...]:
        raise NotImplementedError

    def pick(self, cands: Sequence[Target], even: bool, mono: float, wall: float) -> Target:
        return self.order(cands, mono, wall)[0]

    def order(self, cands: Sequence[Target], mono: float, wall: float) -> list[Target]:
        return sorted(cands, key=lambda t: (*self.key(t, mono, wall), random.random()))


class LeastBusy(_Ranked):
    def key(self, t: Target, mono: float, wall: float) -> tuple[float, ...]:
        return (self.stats[t.model_id].in_flight,)


class UsageBased(_Ranked):
    def key(self, t: Target, mono: float, wall: float) -> tuple[float, ...]:
        requests, tokens = self.stats[t.model_id].usage(wall)
        tpm, rpm = t.routing.tpm, t.routing.rpm
        return (tokens / tpm if tpm else float(tokens),
                requests / rpm if rpm else float(requests))


class CostBased(_Ranked):
    def key(self, t: Target, mono: float, wall: float) -> tuple[float, ...]:
        return (t.unit_cost is None, float(t.unit_cost or 0))


class LatencyBased(Balancer):
    def __init__(self, stats: Stats, args: LatencyArgs) -> None:
        super().__init__(stats)
        self.args = args

    def pick(self, cands: Sequence[Target], even: bool, mono: float, wall: float) -> Target:
        return self.order(cands, mono, wall)[0]

    def order(self, cands: Sequence[Target], mono: float, wall: float) -> list[Target]:
        if random.random() < EXPLORE_RATE:
            out = list(cands)
            random.shuffle(out)
            return out
        ttl = self.args.ttl_s
        known: list[tuple[float, float, Target]] = []
        unknown: list[Target] = []
        for t in cands:
            latency = self.stats[t.model_id].latency(mono, ttl)
            if latency is None:
                unknown.append(t)
            else:
                known.append((latency, random.random(), t))
        if len(unknown) > 1:
            random.shuffle(unknown)
        known.sort(key=lambda item: (item[0], item[1]))
        buffer = self.args.lowest_latency_buffer
        if len(known) > 1 and buffer > 0:
            bound = known[0][0] * (1 + buffer)
            near = [item for item in known if item[0] <= bound]
            random.shuffle(near)
            known = near + [item for item in known if item[0] > bound]
        return unknown + [t for _, _, t in known]


def balancer(name: Strategy, latency: LatencyArgs, stats: Stats) -> Balancer:
    if name == "least-busy":
        return LeastBusy(stats)
    if name == "latency-based-routing":
        return LatencyBased(stats, latency)
    if name in ("usage-based-routing-v2", "usage-based-routing"):
        return UsageBased(stats)
    if name == "cost-based-routing":
        return CostBased(stats)
    return Balancer(stats)
