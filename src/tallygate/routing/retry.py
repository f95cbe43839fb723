"""How many times a failed call is retried in its model group, and how long it waits.

A retry picks a deployment again, preferring one that has not failed this call: that
one is tried at once. Waiting is for when the only choice left is a deployment that
just failed (and no fallback group can answer instead): capped exponential backoff
with jitter (0.5 s doubling to 8 s, each delay drawn between 75% and 100% of that),
never less than ``retry_after``, and the upstream's own ``Retry-After`` when it sent one
(up to 60 s; longer, and the group is given up for its fallbacks rather than held).
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from tallygate.routing.failures import Failure
from tallygate.routing.settings import ErrorKind

INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0


class RetryPolicy:
    def __init__(self, num_retries: int, per_kind: Mapping[ErrorKind, int],
                 retry_after_s: float) -> None:
        self.num_retries = num_retries
        self.per_kind = dict(per_kind)
        self.retry_after_s = retry_after_s

    def retries(self, failure: Failure, requested: int | None) -> int:
        """Retries this failure allows in its group: ``retry_policy`` for its kind when
        set (it may allow kinds that are not retried by default), else the request's
        ``num_retries`` or the router's, and none for the kinds never retried."""
        if failure.kind in self.per_kind:
            return self.per_kind[failure.kind]
        if not failure.retryable:
            return 0
        return self.num_retries if requested is None else requested

    def delay(self, retries_done: int, failure: Failure) -> float | None:
        """Seconds to wait before trying the same deployment again; None: do not."""
        if failure.retry_after_s is not None:
            if failure.retry_after_s > MAX_RETRY_AFTER_S:
                return None
            return max(failure.retry_after_s, self.retry_after_s)
        backoff = min(INITIAL_DELAY_S * pow(2.0, retries_done), MAX_DELAY_S)
        return max(backoff * (1 - 0.25 * random.random()), self.retry_after_s)
