"""Access policy: who may call, who pays, and what the call may spend.

The proxy asks its policy to ``admit`` each model call before anything is sent upstream;
the policy returns the call's context (customer, key, user, team) or raises an
OpenAI-shaped error (401, 403, 429). Every admitted call is later ``settle``d with its
UsageEvent, or ``release``d when it failed, so that reservations (budgets, token
limits) are never left hanging. The default policy is the master key alone.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from aiohttp import web

from tallygate.attribution import ChargeBy, resolve_customer
from tallygate.engine import CallContext
from tallygate.event import FailureEvent, UsageEvent
from tallygate.providers.base import Deployment
from tallygate.proxy.auth import check_master_key


class AccessPolicy(Protocol):
    async def authenticate(self, request: web.Request) -> Any:
        """Who is calling (an identity the policy understands); raise 401 to refuse.
        Runs before the body is read, so a stranger learns nothing about the body."""
        ...

    async def admit(self, identity: Any, data: Mapping[str, Any], model: str, call_id: str,
                    deployments: Sequence[Deployment]) -> tuple[CallContext, Deployment]:
        """May this identity make this call? Reserve what it may spend and pick the
        deployment of the model group that serves it; raise to refuse."""
        ...

    async def settle(self, event: UsageEvent) -> None:
        """The call succeeded: turn its reservation into real spend."""
        ...

    async def release(self, failure: FailureEvent) -> None:
        """The call failed: give its reservation back."""
        ...

    def response_headers(self, call_id: str) -> Mapping[str, str]:
        """Headers for the call's response (e.g. ``x-ratelimit-*``)."""
        ...


class MasterKeyPolicy:
    """Only the master key (when set) may call; the body's ``user`` says who pays."""

    def __init__(self, master_key: str | None, charge_by: ChargeBy) -> None:
        self.master_key = master_key
        self.charge_by = charge_by

    async def authenticate(self, request: web.Request) -> None:
        check_master_key(request, self.master_key)

    async def admit(self, identity: Any, data: Mapping[str, Any], model: str, call_id: str,
                    deployments: Sequence[Deployment]) -> tuple[CallContext, Deployment]:
        user = data.get("user")
        metadata = MappingProxyType(dict(data.get("metadata") or {}))
        customer = resolve_customer(self.charge_by, end_user=user, metadata=metadata)
        return CallContext(model=model, customer=customer, call_id=call_id, end_user=user,
                           metadata=metadata), random.choice(deployments)

    async def settle(self, event: UsageEvent) -> None:
        return None

    async def release(self, failure: FailureEvent) -> None:
        return None

    def response_headers(self, call_id: str) -> Mapping[str, str]:
        return {}
