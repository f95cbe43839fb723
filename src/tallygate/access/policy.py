"""VirtualKeyPolicy: the master key, virtual keys, attribution, limits and budgets.

Per call: ``authenticate`` (a cached key lookup), ``admit`` (model access, who pays,
rate limits in memory or one Redis script, one atomic budget reservation when a budget
applies), then ``settle`` (one transaction: reservation -> real cost, ledger row, written
by the outbox's ``ledger`` sink for billed calls) or ``release``. Without a master key
and without virtual keys the proxy is open, as before; the master key may call and
administer.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from aiohttp import web

from tallygate.access import budgets
from tallygate.access.budgets import Scope, from_micros, to_micros
from tallygate.access.db import Database, SQLiteDatabase, database_for, wall_ms
from tallygate.access.keys import AccessStore, KeyRecord, TeamRecord, hash_key, iso
from tallygate.access.lago_api import LagoReader, lago_base
from tallygate.access.ratelimit import Decision, Limit, LocalLimiter, RedisLimiter
from tallygate.access.settlement import settlement_data, settlement_of, with_ledger_row
from tallygate.access.shared_limits import SharedCounters, SharedLimiter
from tallygate.access.worst_case import worst_case_cost
from tallygate.attribution import end_user_of, resolve_customer
from tallygate.config import ProxySettings
from tallygate.engine import CallContext
from tallygate.errors import (
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    PermissionDeniedError,
    RateLimitError,
)
from tallygate.estimate import estimate_prompt_tokens, estimate_text_tokens
from tallygate.event import FailureEvent, UsageEvent, format_decimal
from tallygate.metering.group_commit import GroupCall
from tallygate.metering.rowcodec import encode_event
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment
from tallygate.proxy.auth import presented_key

log = logging.getLogger("tallygate.access")

ALL_MODELS = ("all-proxy-models", "*")
_MAX_PENDING_HEADERS = 10_000
# Tells the client a call has no payer and is held for `tallygate outbox assign`.
BILLING_STATE_HEADER = "x-tallygate-billing-state"


@dataclass(frozen=True, slots=True)
class Caller:
    kind: Literal["master", "key", "anonymous"]
    key: KeyRecord | None = None
    team: TeamRecord | None = None

    @property
    def is_master(self) -> bool:
        return self.kind == "master"


MASTER = Caller("master")
ANONYMOUS = Caller("anonymous")


@dataclass(slots=True)
class _Call:
    key: KeyRecord | None
    team_id: str | None
    customer_id: str | None
    scopes: list[Scope]
    reserved: list[Scope]
    token_limits: list[Limit] = field(default_factory=list)
    token_estimate: int = 0
    amount: int = 0  # micro-USD reserved on each budget in ``reserved``


def _usd(micros: int | None) -> str:
    return format_decimal(from_micros(micros) or Decimal(0))


def _models_allow(models: tuple[str, ...], model: str) -> bool:
    return not models or model in models or any(m in ALL_MODELS for m in models)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(v for v in value if isinstance(v, str))
    return ""


class VirtualKeyPolicy:
    def __init__(self, settings: ProxySettings, prices: PriceBook) -> None:
        self.settings = settings
        self.access = settings.access
        self.prices = prices
        self.master_key = settings.master_key
        self.db: Database | None = None
        self.store: AccessStore | None = None
        self.limiter: LocalLimiter | RedisLimiter | SharedLimiter = LocalLimiter()
        self.lago: LagoReader | None = None
        self._calls: dict[str, _Call] = {}
        self._headers: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._cap_micros = to_micros(self.access.max_reservation_usd)
        # Set by the gateway: delivers the outbox's ledger rows due now.
        self.settlements_flusher: Callable[[], Awaitable[None]] | None = None
        # Reservations of one loop turn share a transaction (each still all-or-none).
        self._reserver: GroupCall[budgets.Reservation, budgets.Exceeded | None] = GroupCall(
            self._reserve_batch)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, database_url: str) -> None:
        self.db = database_for(database_url)
        await self.db.open()
        self.store = AccessStore(self.db, self.access.key_cache_ttl_s)
        shared = self.settings.extra.get("shared_limits")
        if self.access.redis_url:
            self.limiter = RedisLimiter(self.access.redis_url)
        elif isinstance(shared, SharedCounters):
            # Forked workers of one gateway: one count for all of them.
            self.limiter = SharedLimiter(shared)
        environ = self.settings.extra.get("environ") or {}
        base = lago_base(environ)
        if self.access.resolve_subscription_from_lago and base is not None:
            self.lago = LagoReader(*base)
        swept = await budgets.sweep_stale(self.db, int(self.access.stale_reservation_s * 1000))
        if swept:
            log.warning("gave back %d budget reservation(s) left by a stopped gateway", swept)

    async def stop(self) -> None:
        await self.limiter.close()
        if self.lago is not None:
            await self.lago.close()
        if self.db is not None:
            await self.db.close()
            self.db = None

    # -- who is calling ------------------------------------------------------------------

    def is_master(self, key: str | None) -> bool:
        return (self.master_key is not None and key is not None
                and hmac.compare_digest(key.encode(), self.master_key.encode()))

    async def authenticate(self, request: web.Request) -> Caller:
        key = presented_key(request)
        if key is None:
            if self.master_key is None:
                return ANONYMOUS
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'",
                                      code="missing_api_key")
        if self.is_master(key):
            return MASTER
        assert self.store is not None, "gateway not started"
        record = await self.store.key(hash_key(key))
        if record is None:
            if self.master_key is None:
                return ANONYMOUS  # an open proxy ignores keys it does not know
            raise AuthenticationError("invalid API key")
        if record.blocked:
            raise AuthenticationError("this API key is blocked", code="key_blocked")
        if record.expired(wall_ms()):
            raise AuthenticationError(f"this API key expired at {iso(record.expires_at_ms)}",
                                      code="key_expired")
        team = await self.store.team(record.team_id) if record.team_id else None
        if team is not None and team.blocked:
            raise AuthenticationError("this API key's team is blocked", code="team_blocked")
        return Caller("key", record, team)

    def visible_models(self, identity: Any, names: Sequence[str]) -> list[str]:
        caller: Caller = identity
        return [name for name in names
                if (caller.key is None or _models_allow(caller.key.models, name))
                and (caller.team is None or _models_allow(caller.team.models, name))]

    # -- admission -----------------------------------------------------------------------

    def check_model(self, identity: Any, model: str) -> None:
        caller: Caller = identity
        if caller.key is not None and not _models_allow(caller.key.models, model):
            raise PermissionDeniedError(f"this key may not call the model {model!r}",
                                        code="model_not_allowed", param="model")
        if caller.team is not None and not _models_allow(caller.team.models, model):
            raise PermissionDeniedError(f"this key's team may not call the model {model!r}",
                                        code="model_not_allowed", param="model")

    async def admit(self, identity: Any, data: Mapping[str, Any], model: str, call_id: str,
                    deployments: Sequence[Deployment]) -> CallContext:
        """Admit the call: model access, who pays, key and team limits, one budget
        reservation priced at the dearest of ``deployments`` (the router then picks
        which of them serves)."""
        caller: Caller = identity
        assert self.store is not None and self.db is not None, "gateway not started"
        key, team = caller.key, caller.team
        self.check_model(caller, model)
        user, user_field = end_user_of(data)
        metadata = MappingProxyType(dict(data.get("metadata") or {}))
        customer = self._payer(caller, user, user_field, metadata)
        unpaid_held = False
        if customer is None:
            if self.access.unattributed == "reject":
                raise BadRequestError(
                    f"no customer to bill for this call (LAGO_API_CHARGE_BY="
                    f"{self.settings.charge_by})", code="unattributed", param=user_field)
            if self.access.unattributed == "default_customer":
                customer = self.access.default_customer
            else:
                unpaid_held = True
        customer_rec = await self.store.customer(customer) if customer else None
        if customer_rec is not None and customer_rec.blocked:
            raise PermissionDeniedError(f"customer {customer!r} is blocked",
                                        code="customer_blocked")
        billed_to = customer
        if customer_rec is not None and customer_rec.external_subscription_id:
            billed_to = customer_rec.external_subscription_id
        elif customer and self.lago is not None:
            billed_to = await self.lago.subscription_for(customer) or customer

        # Rate limits: in memory (or one Redis call); nothing is reserved yet.
        token_estimate = self._token_estimate(data)
        limits, headers = await self._rate_limit(key, team, token_estimate)

        # Budgets: one atomic reservation over every budget that has a maximum.
        scopes: list[Scope] = []
        reserved: list[Scope] = []
        for scope, ident, budget in (
                ("key", key.token if key else None, key.budget if key else None),
                ("team", team.team_id if team else None, team.budget if team else None),
                ("customer", customer if customer_rec else None,
                 customer_rec.budget if customer_rec else None)):
            if ident is None or budget is None:
                continue
            scopes.append((scope, ident))
            if budget.limited:
                reserved.append((scope, ident))
        amount = 0
        if reserved:
            caps = [b.max_micros for b in (key.budget if key else None,
                                           team.budget if team else None,
                                           customer_rec.budget if customer_rec else None)
                    if b is not None and b.max_micros is not None]
            amount = self._worst_case_micros(data, deployments, caps)
            exceeded = await self._reserver.call((call_id, reserved, amount))
            if exceeded is not None:
                token_limits = [lim for lim in limits if lim.kind == "tokens"]
                await self.limiter.adjust(token_limits, -token_estimate)
                raise self._over_budget(exceeded, key, team)
        self._calls[call_id] = _Call(key, team.team_id if team else (key.team_id if key
                                     else None), customer, scopes, reserved,
                                     [lim for lim in limits if lim.kind == "tokens"],
                                     token_estimate, amount)
        if unpaid_held:
            headers = {**headers, BILLING_STATE_HEADER: "held"}
        if headers:
            self._headers[call_id] = headers
            while len(self._headers) > _MAX_PENDING_HEADERS:
                self._headers.popitem(last=False)
        return CallContext(
            model=model, customer=billed_to, call_id=call_id, end_user=user,
            user_id=key.user_id if key else None,
            team_id=key.team_id if key else None,
            key_id=(key.key_alias or key.token[:16]) if key else None,
            metadata=metadata)

    async def cover(self, call_id: str, data: Mapping[str, Any],
                    deployments: Sequence[Deployment]) -> None:
        """A fallback moves the call to ``deployments``: when the dearest of them costs
        more than the call's reservation, grow it (one reservation per call, never a
        second one); 429 when the budget cannot take the difference."""
        call = self._calls.get(call_id)
        if call is None or not call.reserved or self.db is None:
            return
        worst = self._worst_case_micros(data, deployments)
        if worst <= call.amount:
            return
        exceeded = await budgets.grow(self.db, call_id, call.reserved, worst - call.amount)
        if exceeded is not None:
            raise self._over_budget(exceeded, call.key, None)
        call.amount = worst

    def _over_budget(self, exceeded: budgets.Exceeded, key: KeyRecord | None,
                     team: TeamRecord | None) -> BudgetExceededError:
        what = self._budget_label(exceeded.scope, exceeded.id, key, team)
        spent = _usd(exceeded.spend_micros)
        held = (f" with ${_usd(exceeded.reserved_micros)} held by calls in flight"
                if exceeded.reserved_micros else "")
        return BudgetExceededError(f"budget exceeded for {what}: spent ${spent} of "
                                   f"${_usd(exceeded.max_micros)}{held}")

    def _payer(self, caller: Caller, user: str | None, user_field: str,
               metadata: Mapping[str, Any]) -> str | None:
        key = caller.key
        if key is None:
            # The master key (or an open proxy): the body names the payer, as before.
            return resolve_customer(self.settings.charge_by, end_user=user, metadata=metadata)
        if key.customer_id:
            # A key bound to a customer bills that customer, whatever the body says.
            mode = self.access.user_field
            if user is not None and (mode == "master_only"
                                     or (mode == "must_match" and user != key.customer_id)):
                raise PermissionDeniedError(
                    f"this key bills a fixed customer; the request's '{user_field}' may "
                    "not name another payer" if mode == "must_match" else
                    f"only the master key may set '{user_field}' on this gateway",
                    code="user_not_allowed", param=user_field)
            return key.customer_id
        return resolve_customer(self.settings.charge_by, end_user=user, metadata=None,
                                user_id=key.user_id, team_id=key.team_id)

    @staticmethod
    def _label(limit: Limit, key: KeyRecord | None) -> str:
        if limit.scope == "key" and key is not None:
            return repr(key.key_alias) if key.key_alias else key.key_name
        return repr(limit.ident)

    @staticmethod
    def _budget_label(scope: str, ident: str, key: KeyRecord | None,
                      team: TeamRecord | None) -> str:
        if scope == "key" and key is not None:
            return f"key {key.key_alias!r}" if key.key_alias else f"key {key.key_name}"
        if scope == "team":
            return f"team {ident!r}"
        return f"customer {ident!r}"

    async def _rate_limit(self, key: KeyRecord | None, team: TeamRecord | None,
                          tokens: int) -> tuple[list[Limit], dict[str, str]]:
        """Check and count the key's and team's limits; returns the limits counted and
        the x-ratelimit-* headers; raises 429 when one is reached. (A deployment's own
        rpm/tpm is the router's: it picks a deployment with room.)"""
        common = self._limits(key, team, tokens)
        if not common:
            return [], {}
        decision = await self.limiter.acquire(common)
        if not decision.ok:
            self._refuse(decision, key)
        return common, decision.headers

    def _refuse(self, decision: Decision, key: KeyRecord | None) -> NoReturn:
        failed = decision.failed
        assert failed is not None
        raise RateLimitError(
            f"rate limit reached for {failed.scope} {self._label(failed, key)}: "
            f"{failed.limit} {failed.kind} per minute; retry in {decision.retry_after_s}s",
            headers=decision.headers)

    @staticmethod
    def _limits(key: KeyRecord | None, team: TeamRecord | None, tokens: int) -> list[Limit]:
        out: list[Limit] = []
        for scope, ident, rpm, tpm in (
                ("key", key.token if key else "", key.rpm_limit if key else None,
                 key.tpm_limit if key else None),
                ("team", team.team_id if team else "", team.rpm_limit if team else None,
                 team.tpm_limit if team else None)):
            if rpm is not None:
                out.append(Limit(scope, ident, "requests", rpm, 1))
            if tpm is not None:
                out.append(Limit(scope, ident, "tokens", tpm, tokens))
        return out

    @staticmethod
    def _max_output(data: Mapping[str, Any]) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def _prompt_tokens(self, data: Mapping[str, Any]) -> int:
        if "messages" in data:
            return estimate_prompt_tokens(data.get("messages") or ())
        return estimate_text_tokens(_text_of(data.get("input")))

    def _token_estimate(self, data: Mapping[str, Any]) -> int:
        return self._prompt_tokens(data) + (self._max_output(data) or 0)

    def _worst_case_micros(self, data: Mapping[str, Any], deployments: Sequence[Deployment],
                           budget_caps: Sequence[int] = ()) -> int:
        """What the call reserves: its worst case at the dearest of ``deployments``
        (``tallygate.access.worst_case``), or ``max_reservation_usd`` when a price is
        unknown; never more than the largest budget it is held against (holding all of
        a budget keeps every other call out of it while this one runs, which is what
        bounds the overrun to one call)."""
        if "messages" not in data and ("input" not in data or "voice" in data):
            # Images, audio, rerank: no token bound to price; reserve the cap.
            return self._cap_micros
        cost = worst_case_cost(data, deployments, self.prices)
        amount = self._cap_micros if cost is None else to_micros(cost)
        return min(amount, max(budget_caps)) if budget_caps else amount

    # -- after the call ------------------------------------------------------------------

    def settlement_for(self, event: UsageEvent) -> dict[str, Any] | None:
        """What the outbox must carry to settle this billed call (its ledger row and
        budgets; see ``tallygate.access.settlement``); None for a held call, whose
        ledger row ``settle`` writes before the answer."""
        if self.db is None or not event.customer:
            return None
        call = self._calls.get(event.call_id)
        if call is not None and call.reserved and event.cost is not None and to_micros(
                event.cost) > call.amount:
            # It cost more than it reserved: ``settle`` writes it before the answer, so
            # the next calls see that spend at once (the ledger sink would be later).
            return None
        data = self._settlement_data(event, call)
        # Only SQLite's outbox insert reads the written-out row (``SQLITE_SETTLE``);
        # PostgreSQL's ledger sink makes it from the event.
        return with_ledger_row(event, data) if isinstance(self.db, SQLiteDatabase) else data

    @staticmethod
    def _settlement_data(event: UsageEvent, call: _Call | None) -> dict[str, Any]:
        key = call.key if call else None
        return settlement_data(
            key_token=key.token if key else None, key_alias=key.key_alias if key else None,
            team_id=call.team_id if call else event.team_id,
            customer_id=call.customer_id if call else event.customer,
            scopes=call.scopes if call else (), reserved=call.reserved if call else ())

    async def settle(self, event: UsageEvent) -> None:
        """The call is answered. A billed call whose event carries its settlement is
        settled through the outbox, durable with the event (by its insert on SQLite, by
        its ledger sink on PostgreSQL, the reservation holding until then); any other
        call is settled here, before the answer."""
        call = self._calls.pop(event.call_id, None)
        if self.db is None:
            return
        if event.settlement is None:
            data = self._settlement_data(event, call)
            if not event.customer:
                # A held call: its ledger row (with the whole event) is the one durable
                # copy that Lago can get later (`tallygate outbox assign`), so it is
                # written before the answer, and a failure fails the call, as a failed
                # outbox write does.
                data["event"] = encode_event(event).decode()
            await budgets.settle_many(self.db, [settlement_of(event, data)], urgent=True)
        if call is not None and call.token_limits:
            try:
                await self.limiter.adjust(call.token_limits,
                                          event.usage.total_tokens - call.token_estimate)
            except Exception:
                log.exception("could not adjust the token limits of call %s", event.call_id)

    async def flush_settlements(self) -> None:
        """Wait until the settlements of calls answered so far are written (spend
        reads): the gateway's ledger sink delivers what is due now."""
        if self.settlements_flusher is not None:
            await self.settlements_flusher()

    async def _reserve_batch(self, items: Sequence[budgets.Reservation]
                             ) -> list[budgets.Exceeded | Exception | None]:
        assert self.db is not None
        return await budgets.reserve_many(self.db, items)

    async def release(self, failure: FailureEvent) -> None:
        await self._give_back(failure.call_id)

    async def abandon(self, call_id: str) -> None:
        if call_id in self._calls:
            log.warning("call %s ended without being billed or released; its reservation "
                        "is given back", call_id)
            await self._give_back(call_id)

    async def _give_back(self, call_id: str) -> None:
        call = self._calls.pop(call_id, None)
        self._headers.pop(call_id, None)
        if call is None or self.db is None:
            return
        try:
            if call.reserved:
                await budgets.settle(self.db, call_id, call.reserved, call.reserved, 0, None,
                                     urgent=True)
            if call.token_limits:
                await self.limiter.adjust(call.token_limits, -call.token_estimate)
        except Exception:
            log.exception("could not release the reservation of call %s", call_id)

    def response_headers(self, call_id: str) -> Mapping[str, str]:
        return self._headers.pop(call_id, None) or {}
