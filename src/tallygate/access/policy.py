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
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal, NoReturn

from aiohttp import web

from tallygate.access import budgets
from tallygate.access.budgets import Scope, from_micros, to_micros
from tallygate.access.db import Database, database_for, wall_ms
from tallygate.access.keys import AccessStore, KeyRecord, TeamRecord, hash_key, iso
from tallygate.access.lago_api import LagoReader, lago_base
from tallygate.access.ratelimit import Decision, Limit, LocalLimiter, RedisLimiter
from tallygate.access.settlement import settlement_data, settlement_of
from tallygate.access.shared_limits import SharedCounters, SharedLimiter
from tallygate.attribution import end_user_of, resolve_customer
from tallygate.config import ProxySettings
from tallygate.engine import CallContext, priced_model
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
from tallygate.usage import Usage

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
                    deployments: Sequence[Deployment]) -> tuple[CallContext, Deployment]:
        """Admit the call and pick the deployment of ``model`` that serves it: one
        with room under its own rpm/tpm (at random among them), 429 when none has."""
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
        index, limits, headers = await self._rate_limit(key, team, model, len(deployments),
                                                        token_estimate)

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
        if reserved:
            amount = self._worst_case_micros(data, model)
            exceeded = await self._reserver.call((call_id, reserved, amount))
            if exceeded is not None:
                token_limits = [lim for lim in limits if lim.kind == "tokens"]
                await self.limiter.adjust(token_limits, -token_estimate)
                what = self._budget_label(exceeded.scope, exceeded.id, key, team)
                spent = _usd(exceeded.spend_micros)
                held = (f" with ${_usd(exceeded.reserved_micros)} held by calls in flight"
                        if exceeded.reserved_micros else "")
                raise BudgetExceededError(
                    f"budget exceeded for {what}: spent ${spent} of "
                    f"${_usd(exceeded.max_micros)}{held}")
        self._calls[call_id] = _Call(key, team.team_id if team else (key.team_id if key
                                     else None), customer, scopes, reserved,
                                     [lim for lim in limits if lim.kind == "tokens"],
                                     token_estimate)
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
            metadata=metadata), deployments[index]

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

    async def _rate_limit(self, key: KeyRecord | None, team: TeamRecord | None, model: str,
                          count: int, tokens: int) -> tuple[int, list[Limit], dict[str, str]]:
        """Check and count the call's limits; returns the chosen deployment's index in
        its group, the limits counted and the x-ratelimit-* headers. Raises 429 when a
        key or team limit is reached, or every deployment is at its own limit."""
        common = self._limits(key, team, tokens)
        per_deployment = self.access.deployment_limits.get(model)
        if not per_deployment or len(per_deployment) != count:
            index = 0 if count == 1 else random.randrange(count)
            if not common:
                return index, [], {}
            decision = await self.limiter.acquire(common)
            if not decision.ok:
                self._refuse(decision, key)
            return index, common, decision.headers
        order = list(range(count))
        random.shuffle(order)
        refused: Decision | None = None
        for index in order:
            limits = common + self._deployment_limits(model, index, per_deployment[index],
                                                      tokens)
            if not limits:
                return index, [], {}
            decision = await self.limiter.acquire(limits)
            if decision.ok:
                return index, limits, decision.headers
            assert decision.failed is not None
            if decision.failed.scope != "deployment":
                self._refuse(decision, key)  # no other deployment helps
            if refused is None or decision.retry_after_s < refused.retry_after_s:
                refused = decision
        assert refused is not None
        self._refuse(refused, key, model if count > 1 else None)

    def _refuse(self, decision: Decision, key: KeyRecord | None,
                every_of: str | None = None) -> NoReturn:
        failed = decision.failed
        assert failed is not None
        what = (f"every deployment of model {every_of!r}" if every_of is not None
                else f"{failed.scope} {self._label(failed, key)}")
        each = " each" if every_of is not None else ""
        raise RateLimitError(
            f"rate limit reached for {what}: {failed.limit} {failed.kind} per minute{each}; "
            f"retry in {decision.retry_after_s}s", headers=decision.headers)

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
    def _deployment_limits(model: str, index: int, limits: tuple[int | None, int | None],
                           tokens: int) -> list[Limit]:
        """The deployment's own rpm/tpm (``litellm_params``); counted under
        ``<model group>#<position in the group>``, the same on every gateway."""
        rpm, tpm = limits
        ident = f"{model}#{index}"
        out: list[Limit] = []
        if rpm is not None:
            out.append(Limit("deployment", ident, "requests", rpm, 1))
        if tpm is not None:
            out.append(Limit("deployment", ident, "tokens", tpm, tokens))
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

    def _worst_case_micros(self, data: Mapping[str, Any], model: str) -> int:
        """The most this call can cost: the prompt estimate plus ``max_tokens`` of
        output at the dearest deployment; without a bound, ``max_reservation_usd``."""
        is_chat = "messages" in data
        if not is_chat and ("input" not in data or "voice" in data):
            # Images, audio, rerank: no token bound to price; reserve the cap.
            return self._cap_micros
        max_out = self._max_output(data) if is_chat else 0
        if max_out is None:
            return self._cap_micros
        usage = Usage(input_tokens=self._prompt_tokens(data), output_tokens=max_out)
        worst = Decimal(0)
        for deployment in self.settings.models.get(model, ()):
            # The model a call is priced as (Azure: base_model; none known: the cap).
            priced = priced_model(deployment, None) or deployment.model
            price = self.prices.price(deployment.provider, priced, usage, deployment.price)
            if price.cost is None:
                return self._cap_micros
            worst = max(worst, price.cost)
        return to_micros(worst)

    # -- after the call ------------------------------------------------------------------

    def settlement_for(self, event: UsageEvent) -> dict[str, Any] | None:
        """What the outbox must carry to settle this billed call (its ledger row and
        budgets; see ``tallygate.access.settlement``); None for a held call, whose
        ledger row ``settle`` writes before the answer."""
        if self.db is None or not event.customer:
            return None
        return self._settlement_data(event, self._calls.get(event.call_id))

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
        settled by the outbox's ledger sink (durable with the event; its reservation
        holds until then); any other call is settled here, before the answer."""
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
            await budgets.settle_many(self.db, [settlement_of(event, data)])
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
                             ) -> list[budgets.Exceeded | None]:
        assert self.db is not None
        return await budgets.reserve_many(self.db, items)

    async def release(self, failure: FailureEvent) -> None:
        call = self._calls.pop(failure.call_id, None)
        self._headers.pop(failure.call_id, None)
        if call is None or self.db is None:
            return
        try:
            if call.reserved:
                await budgets.settle(self.db, failure.call_id, call.reserved, call.reserved,
                                     0, None)
            if call.token_limits:
                await self.limiter.adjust(call.token_limits, -call.token_estimate)
        except Exception:
            log.exception("could not release the reservation of call %s", failure.call_id)

    def response_headers(self, call_id: str) -> Mapping[str, str]:
        return self._headers.pop(call_id, None) or {}
