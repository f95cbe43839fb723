"""Capped exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the capped exponential) spreads the retries of
many workers that failed together, so they do not come back at Lago in lockstep.
"""

from __future__ import annotations

import random


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The largest delay after the ``attempt``-th failed try (1-based): base * 2^(n-1), capped."""
    exponent = min(max(attempt, 1) - 1, 62)  # past 2^62 the cap has long won
    return min(cap_s, base_s * float(1 << exponent))


def full_jitter(attempt: int, base_s: float, cap_s: float,
                rng: random.Random | None = None) -> float:
    """A delay drawn uniformly from [0, backoff_ceiling(attempt)]."""
    draw = (rng or random).uniform(0.0, 1.0)
    return draw * backoff_ceiling(attempt, base_s, cap_s)
