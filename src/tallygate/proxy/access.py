"""Access policy: who may call, who pays, and what the call may spend.

The proxy asks its policy to ``admit`` each model call before anything is sent upstream;
the policy returns the call's context (customer, key, user, team) or raises an
OpenAI-shaped error (401, 403, 429). Every admitted call is later ``settle``d with its
UsageEvent, or ``release``d when it failed, so that reservations (budgets, token
limits) are never left hanging. The gateway's policy is
``tallygate.access.policy.VirtualKeyPolicy`` (the master key and virtual keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from tallygate.engine import CallContext
from tallygate.event import FailureEvent, UsageEvent
from tallygate.providers.base import Deployment


class AccessPolicy(Protocol):
    async def authenticate(self, request: web.Request) -> Any:
        """Who is calling (an identity the policy understands); raise 401 to refuse.
        Runs before the body is read, so a stranger learns nothing about the body."""
        ...

    def check_model(self, identity: Any, model: str) -> None:
        """Raise 403 when this identity may not use ``model`` (for calls that are not
        admitted, such as token counting)."""
        ...

    async def admit(self, identity: Any, data: Mapping[str, Any], model: str, call_id: str,
                    deployments: Sequence[Deployment]) -> CallContext:
        """May this identity make this call? Reserve what it may spend on the dearest of
        the ``deployments`` that may serve it (the router picks one); raise to refuse."""
        ...

    async def cover(self, call_id: str, data: Mapping[str, Any],
                    deployments: Sequence[Deployment]) -> None:
        """A fallback moves the call to other deployments: keep its one reservation
        enough for the dearest of them (grow it), or raise 429 when the budget cannot."""
        ...

    async def settle(self, event: UsageEvent) -> None:
        """The call succeeded: turn its reservation into real spend."""
        ...

    async def release(self, failure: FailureEvent) -> None:
        """The call failed (every attempt of it): give its reservation back. Safe to call
        for a call already settled or released."""
        ...

    async def abandon(self, call_id: str) -> None:
        """The call's handling is over: if it was neither settled nor released (a bug, a
        failed outbox write), give its reservation back. A no-op otherwise."""
        ...

    def visible_models(self, identity: Any, names: Sequence[str]) -> list[str]:
        """The model groups of ``names`` this identity may call (``GET /v1/models``)."""
        ...

    def response_headers(self, call_id: str) -> Mapping[str, str]:
        """Headers for the call's response (e.g. ``x-ratelimit-*``)."""
        ...
