"""Load-balancing strategies: the order in which a group's available deployments are
tried (the first that has room under its own rpm/tpm serves).

- ``simple-shuffle``: at random, weighted by ``weight`` (else ``rpm``, else ``tpm``).
- ``least-busy``: fewest calls in flight first.
- ``latency-based-routing``: fastest first (time to first token for streams, the whole
  call otherwise; the mean of the last ``max_latency_list_size`` samples younger than
  ``ttl``); a deployment with no sample yet is tried first, one within
  ``lowest_latency_buffer`` of the fastest is as good as it, and one call in twenty
  goes to a random deployment so a slow one that recovered is noticed.
- ``usage-based-routing-v2``: least used this minute (tokens, then requests) first.
- ``cost-based-routing``: cheapest first (price of a 1,000-in/1,000-out call); unknown
  prices last.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from tallygate.routing.groups import Target
from tallygate.routing.settings import LatencyArgs, Strategy
from tallygate.routing.stats import Stats

EXPLORE_RATE = 0.05

Order = Callable[[Sequence[Target], Stats, float, float], list[Target]]


def shuffle(cands: Sequence[Target], stats: Stats, mono: float, wall: float) -> list[Target]:
    if len(cands) == 1:
        return [cands[0]]
    weights = [t.weight for t in cands]
    if all(w == weights[0] for w in weights):
        out = list(cands)
        random.shuffle(out)
        return out
    # A weighted order: each next one drawn by weight among those left
    # (Efraimidis-Spirakis keys: u ** (1 / w), largest first).
    keyed = [((random.random() ** (1.0 / w)) if w > 0 else -1.0, i)
             for i, w in enumerate(weights)]
    keyed.sort(reverse=True)
    return [cands[i] for _, i in keyed]


def least_busy(cands: Sequence[Target], stats: Stats, mono: float,
               wall: float) -> list[Target]:
    return sorted(cands, key=lambda t: (stats[t.model_id].in_flight, random.random()))


def usage_based(cands: Sequence[Target], stats: Stats, mono: float,
                wall: float) -> list[Target]:
    def used(t: Target) -> tuple[float, float, float]:
        requests, tokens = stats[t.model_id].usage(wall)
        # Relative to the deployment's own limits where it has them.
        tpm, rpm = t.routing.tpm, t.routing.rpm
        return (tokens / tpm if tpm else float(tokens),
                requests / rpm if rpm else float(requests), random.random())
    return sorted(cands, key=used)


def cost_based(cands: Sequence[Target], stats: Stats, mono: float,
               wall: float) -> list[Target]:
    return sorted(cands, key=lambda t: (t.unit_cost is None, t.unit_cost or 0,
                                        random.random()))


def latency_based(args: LatencyArgs) -> Order:
    def order(cands: Sequence[Target], stats: Stats, mono: float,
              wall: float) -> list[Target]:
        if len(cands) > 1 and random.random() < EXPLORE_RATE:
            out = list(cands)
            random.shuffle(out)
            return out
        known: list[tuple[float, float, Target]] = []
        unknown: list[Target] = []
        for t in cands:
            latency = stats[t.model_id].latency(mono, args.ttl_s)
            if latency is None:
                unknown.append(t)
            else:
                known.append((latency, random.random(), t))
        random.shuffle(unknown)
        known.sort(key=lambda item: (item[0], item[1]))
        if known and args.lowest_latency_buffer > 0:
            bound = known[0][0] * (1 + args.lowest_latency_buffer)
            near = [item for item in known if item[0] <= bound]
            random.shuffle(near)
            known = near + [item for item in known if item[0] > bound]
        return unknown + [t for _, _, t in known]
    return order


def strategy(name: Strategy, latency: LatencyArgs) -> Order:
    if name == "least-busy":
        return least_busy
    if name == "latency-based-routing":
        return latency_based(latency)
    if name in ("usage-based-routing-v2", "usage-based-routing"):
        return usage_based
    if name == "cost-based-routing":
        return cost_based
    return shuffle
