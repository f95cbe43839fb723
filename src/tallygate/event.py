"""The one record a finished call leaves behind: a frozen UsageEvent.

Its ``call_id`` and ``finished_at_ms`` are fixed when the event is made. They become
Lago's ``transaction_id`` and ``timestamp`` and never change across resends, which is
what makes a resend safe: Lago deduplicates on them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

from tallygate.usage import TOKEN_BUCKETS, Usage

CallKind = Literal["chat", "embedding", "completion", "image", "transcription",
                   "speech", "rerank", "moderation"]

# Flags an event can carry; each says something a billing reader must know.
FLAG_UNKNOWN_PRICE = "unknown_price"
FLAG_ESTIMATED_USAGE = "estimated_usage"
FLAG_CLIENT_DISCONNECTED = "client_disconnected"
FLAG_UNATTRIBUTED = "unattributed"
FLAG_STREAM = "stream"
# The upstream cut the answer short (a stream that broke or ended without its end marker):
# billed for what was produced, the client told in-band.
FLAG_INCOMPLETE = "incomplete"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def new_call_id() -> str:
    """A call id: unique, URL-safe, usable as Lago's transaction_id."""
    return "tg-" + os.urandom(16).hex()  # 128 random bits, a third of uuid4()'s cost


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Routing:
    """Which deployment answered a routed call, and how the router got there."""

    group: str                 # the model group whose deployment answered
    model_id: str              # that deployment's id (model_info.id, or a stable one)
    api_base: str | None       # the host it was reached at (no path, no credentials)
    attempts: int = 1          # upstream attempts the call took, the answering one included
    fallbacks: int = 0         # fallbacks taken to other model groups

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "model_id": self.model_id, "api_base": self.api_base,
                "attempts": self.attempts, "fallbacks": self.fallbacks}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Routing | None:
        if not data:
            return None
        return cls(str(data["group"]), str(data["model_id"]), data.get("api_base"),
                   int(data.get("attempts") or 1), int(data.get("fallbacks") or 0))


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """What one successful call used and cost, and who pays for it."""

    call_id: str
    started_at_ms: int
    finished_at_ms: int
    model: str                 # the name the caller asked for (a model group in the proxy)
    provider: str              # e.g. "openai", "anthropic", "mock"
    provider_model: str        # the model the provider was asked for
    usage: Usage
    cost: Decimal | None       # None means the price is unknown, never a silent zero
    customer: str | None       # who is billed; None when nobody could be resolved
    kind: CallKind = "chat"
    end_user: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    key_id: str | None = None
    price_source: str | None = None
    flags: frozenset[str] = frozenset()
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: with ``cost`` None: the usage buckets no price was found for
    unpriced: tuple[str, ...] = ()
    #: streams: milliseconds from the call's start to its first chunk
    first_chunk_ms: int | None = None
    #: what the provider itself says the call cost (OpenRouter's ``usage.cost``,
    #: Perplexity's ``usage.cost.total_cost``), beside ``cost``, tallygate's own price
    provider_cost: Decimal | None = None
    #: the deployment that answered, when the call was routed (the proxy)
    routing: Routing | None = None
    #: what the gateway's spend ledger and budgets must record for this call (see
    #: ``tallygate.access.settlement``); stored with the outbox row, never sent to a sink
    settlement: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def timestamp(self) -> str:
        """Lago's timestamp: Unix seconds with milliseconds, as a numeric string."""
        seconds, millis = divmod(self.finished_at_ms, 1000)
        return f"{seconds}.{millis:03d}"

    @property
    def latency_ms(self) -> int:
        return self.finished_at_ms - self.started_at_ms

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; money as a decimal string, never a float."""
        u = self.usage
        return {
            "call_id": self.call_id,
            "started_at_ms": self.started_at_ms,
            "finished_at_ms": self.finished_at_ms,
            "model": self.model,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "kind": self.kind,
            "usage": {
                **{name: getattr(u, name) for name in TOKEN_BUCKETS},
                "requests": dict(u.requests),
                "source": u.source,
            },
            "cost": None if self.cost is None else format_decimal(self.cost),
            "customer": self.customer,
            "end_user": self.end_user,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "key_id": self.key_id,
            "price_source": self.price_source,
            "flags": sorted(self.flags),
            "metadata": dict(self.metadata),
            "unpriced": list(self.unpriced),
            "first_chunk_ms": self.first_chunk_ms,
            "provider_cost": (None if self.provider_cost is None
                              else format_decimal(self.provider_cost)),
            "routing": self.routing.to_dict() if self.routing is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any],
                  settlement: Mapping[str, Any] | None = None) -> UsageEvent:
        u = data["usage"]
        cost = data.get("cost")
        provider_cost = data.get("provider_cost")
        return cls(
            call_id=data["call_id"],
            started_at_ms=int(data["started_at_ms"]),
            finished_at_ms=int(data["finished_at_ms"]),
            model=data["model"],
            provider=data["provider"],
            provider_model=data["provider_model"],
            kind=data.get("kind", "chat"),
            # Buckets added later are absent from older rows: zero.
            usage=Usage(
                **{name: int(u.get(name) or 0) for name in TOKEN_BUCKETS},
                requests=tuple((str(k), int(v)) for k, v in (u.get("requests") or {}).items()),
                source=u["source"],
            ),
            cost=None if cost is None else Decimal(cost),
            customer=data.get("customer"),
            end_user=data.get("end_user"),
            user_id=data.get("user_id"),
            team_id=data.get("team_id"),
            key_id=data.get("key_id"),
            price_source=data.get("price_source"),
            flags=frozenset(data.get("flags") or ()),
            metadata=MappingProxyType(dict(data.get("metadata") or {})),
            unpriced=tuple(data.get("unpriced") or ()),
            first_chunk_ms=data.get("first_chunk_ms"),
            provider_cost=None if provider_cost is None else Decimal(provider_cost),
            routing=Routing.from_dict(data.get("routing")),
            settlement=settlement,
        )


@dataclass(frozen=True, slots=True)
class FailureEvent:
    """A call that failed: it bills nothing, but failure callbacks hear of it."""

    call_id: str
    started_at_ms: int
    finished_at_ms: int
    model: str
    provider: str | None
    customer: str | None
    status_code: int
    error_type: str
    message: str
    end_user: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: the deployment this failed attempt went to, when the call was routed
    routing: Routing | None = None


def format_decimal(value: Decimal) -> str:
    """The Decimal's own digits in plain notation (no exponent, no float round trip)."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
