"""The router: which deployment answers a call, and what happens when it fails.

``Router.run(plan, call)`` picks a deployment of the model group (cooled-down ones left
out, the strategy's order, each deployment's own rpm/tpm), runs ``call(attempt)`` for
it, and on an upstream failure raised before the answer's first byte retries in the
group or falls back to other groups. It needs no HTTP framework: ``call`` is any
coroutine that makes one attempt, so the proxy's doors and the SDK share it.

An attempt is *committed* once its answer starts reaching the client
(``Attempt.commit()``): after that a failure is the stream's to report in-band, never a
retry. ``CURRENT_ATTEMPT`` lets code running inside an attempt (the SSE writer, the
recorder) find it without being passed it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Generic, Protocol, TypeVar

from tallygate.access.ratelimit import Decision, Limit, LocalLimiter
from tallygate.errors import (
    BadRequestError,
    ModelNotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    TallygateError,
)
from tallygate.event import Routing
from tallygate.providers.base import Deployment
from tallygate.providers.registry import provider_names, split_model
from tallygate.routing.cooldowns import Cooldowns
from tallygate.routing.failures import Failure, classify
from tallygate.routing.fallbacks import fallback_chain
from tallygate.routing.groups import Group, Target, build_groups, by_id_groups
from tallygate.routing.options import NO_OPTIONS, RouteOptions
from tallygate.routing.retry import RetryPolicy
from tallygate.routing.settings import Fallback, FallbackTo, RouterSettings, fallback_name
from tallygate.routing.stats import Stats
from tallygate.routing.strategies import balancer
from tallygate.routing.wildcards import PatternSet, concrete_model, implied_provider

log = logging.getLogger("tallygate.routing")

T = TypeVar("T")
MAX_RATE_LIMIT_COOLDOWN_S = 3600.0
_WILDCARD_PLANS = 1024
_INF = float("inf")


class Limiter(Protocol):
    """Counts each deployment's rpm/tpm (``tallygate.access.ratelimit``'s limiters: in
    the process, shared by worker processes, or in Redis)."""

    async def acquire(self, limits: Sequence[Limit]) -> Decision: ...

    async def adjust(self, limits: Sequence[Limit], delta: int) -> None: ...


class Attempt:
    """One try of a call on one deployment."""

    __slots__ = ("broke", "committed_at", "deployment", "headers", "params", "tag",
                 "target", "used_tokens")

    def __init__(self, target: Target, deployment: Deployment, tag: Routing,
                 headers: Mapping[str, str],
                 params: Mapping[str, Any] | None = None) -> None:
        self.target = target
        self.deployment = deployment     # what to call (timeouts already applied)
        self.tag = tag                   # the event's routing for this attempt
        self.headers = headers           # the answer's x-litellm-* / x-ratelimit-* headers
        # A fallback's own request params, which replace the client's in its call.
        self.params = params
        self.committed_at: float | None = None
        self.used_tokens: int | None = None
        self.broke: BaseException | None = None

    def commit(self) -> None:
        """The answer is about to reach the client: from now on, no retry."""
        if self.committed_at is None:
            self.committed_at = time.perf_counter()

    def settled(self, total_tokens: int) -> None:
        """The attempt's call was billed with this many tokens."""
        self.used_tokens = total_tokens

    def broke_midstream(self, exc: BaseException) -> None:
        """The upstream failed after the answer began (reported in-band): it still
        counts against the deployment."""
        self.broke = exc


CURRENT_ATTEMPT: ContextVar[Attempt | None] = ContextVar("tallygate_attempt", default=None)


@dataclass(frozen=True, slots=True)
class Plan:
    """A model name resolved to its group (through an alias, an id or a wildcard)."""

    name: str                          # what the client asked for
    group: Group
    targets: tuple[Target, ...]        # concrete deployments (a wildcard's made concrete)

    @property
    def deployments(self) -> tuple[Deployment, ...]:
        return tuple(t.deployment for t in self.targets)


class _GroupFailed(Exception):
    def __init__(self, error: BaseException, kind: str, attempts: int) -> None:
        super().__init__(kind)
        self.error = error
        self.kind = kind
        self.attempts = attempts


class _Unavailable(Exception):
    def __init__(self, error: TallygateError, kind: str) -> None:
        super().__init__(kind)
        self.error = error
        self.kind = kind


class _Need:
    """The call's token estimates, each computed once and only when asked for."""

    __slots__ = ("_prompt", "_prompt_fn", "_total", "_total_fn")

    def __init__(self, total: Callable[[], int], prompt: Callable[[], int]) -> None:
        self._total_fn, self._prompt_fn = total, prompt
        self._total: int | None = None
        self._prompt: int | None = None

    def total(self) -> int:
        if self._total is None:
            self._total = self._total_fn()
        return self._total

    def prompt(self) -> int:
        if self._prompt is None:
            self._prompt = self._prompt_fn()
        return self._prompt


# (the fallback group's deployments, the fallback's own params or None) -> None
Cover = Callable[[Sequence[Deployment], Mapping[str, Any] | None], Awaitable[None]]
# a fallback's own params -> its call's (tokens, prompt_tokens) estimates
Reestimate = Callable[[Mapping[str, Any]], tuple[Callable[[], int], Callable[[], int]]]


class Counter(Generic[T]):
    def __init__(self) -> None:
        self.values: dict[T, int] = {}

    def inc(self, key: T) -> None:
        self.values[key] = self.values.get(key, 0) + 1


class Router:
    def __init__(self, models: Mapping[str, Sequence[Deployment]], settings: RouterSettings,
                 *, unit_cost: Callable[[Deployment], Decimal | None] = lambda d: None,
                 context_window: Callable[[Deployment], int | None] = lambda d: None,
                 limiter: Limiter | None = None,
                 cooldowns: Cooldowns | None = None) -> None:
        self.settings = settings
        self.groups = build_groups(models, settings, unit_cost=unit_cost,
                                   context_window=context_window)
        self._by_id = by_id_groups(self.groups)
        self._patterns = PatternSet([(n, g) for n, g in self.groups.items() if g.wildcard])
        self._providers = frozenset(provider_names())
        self.stats = Stats(settings.latency.max_latency_list_size)
        self._balancer = balancer(settings.strategy, settings.latency, self.stats)
        self._count_usage = settings.strategy.startswith("usage-based")
        self.retry = RetryPolicy(settings.num_retries, settings.retry_policy,
                                 settings.retry_after_s)
        if cooldowns is None:
            if settings.redis_url:
                from tallygate.routing.shared import RedisCooldowns

                cooldowns = RedisCooldowns(settings.redis_url)
            else:
                cooldowns = Cooldowns()
        self.cooldowns = cooldowns
        self.limiter: Limiter = limiter or LocalLimiter()
        self._wild: dict[str, Plan] = {}
        self._plans: dict[str, Plan] = {
            name: Plan(name, g, g.targets) for name, g in self.groups.items() if not g.wildcard}
        for model_id, g in self._by_id.items():
            self._plans.setdefault(model_id, Plan(model_id, g, g.targets))
        for alias in settings.aliases:
            self._plans[alias] = self._resolve_new(alias)
        # Whether a configured fallback carries request params of its own.
        self.param_fallbacks = any(
            isinstance(item, FallbackTo)
            for table in (settings.fallbacks, settings.context_window_fallbacks,
                          settings.content_policy_fallbacks)
            for chain in table.values() for item in chain)
        self.retries = Counter[str]()
        self.fallbacks = Counter[tuple[str, str]]()
        # Health-check-driven routing (general_settings.enable_health_check_routing): the
        # deployments the latest background round found unhealthy, until it goes stale.
        self._unhealthy: frozenset[str] = frozenset()
        self._unhealthy_until = 0.0
        self._all_unhealthy_warned = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.cooldowns.start([t.model_id for _, t in self.deployments()])

    async def close(self) -> None:
        await self.cooldowns.close()

    # -- names ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The model names a client can list: groups and visible aliases (wildcard
        patterns and deployment ids answer calls but are not models to list)."""
        out = [n for n, g in self.groups.items() if not g.wildcard]
        out += [a for a in self.settings.aliases if a not in self.settings.hidden_aliases]
        return out

    def deployments(self) -> Iterable[tuple[Group, Target]]:
        for group in self.groups.values():
            for target in group.targets:
                yield group, target

    def resolves(self, name: str) -> bool:
        try:
            self.resolve(name)
        except ModelNotFoundError:
            return False
        return True

    def resolve(self, name: str) -> Plan:
        """The plan for a model name; ModelNotFoundError (404) when nothing serves it."""
        plan = self._plans.get(name)
        if plan is not None:
            return plan
        plan = self._wild.get(name)
        if plan is not None:
            return plan
        return self._resolve_new(name)

    def _resolve_new(self, name: str) -> Plan:
        target = self.settings.aliases.get(name)
        if target is not None:
            return replace(self.resolve(target), name=name)
        found = self._patterns.match(name, self._providers)
        if found is None:
            raise ModelNotFoundError(f"the model {name!r} does not exist on this gateway; "
                                     "GET /v1/models lists the models", param="model")
        pattern, match, _ = found
        group = pattern.value
        plan = Plan(name, group, tuple(self._concrete(t, pattern.text, match)
                                       for t in group.targets))
        if len(self._wild) >= _WILDCARD_PLANS:
            self._wild.pop(next(iter(self._wild)))
        self._wild[name] = plan
        return plan

    def _concrete(self, t: Target, pattern: str, match: object) -> Target:
        import re

        assert isinstance(match, re.Match)
        template = t.template or f"{t.deployment.provider}/{t.deployment.model}"
        name = concrete_model(pattern, match, template)
        if template == "*" and t.deployment.api_base:
            # One endpoint serves every name: keep its provider, send the name as it is.
            return t.concrete(t.deployment.provider, name)
        provider, model = split_model(name)
        if template == "*" and provider == "openai" and not name.startswith("openai/"):
            implied = implied_provider(name)
            if implied in self._providers:
                provider = implied
        return t.concrete(provider, model)

    # -- the call ------------------------------------------------------------------------

    async def run(self, plan: Plan, call: Callable[[Attempt], Awaitable[T]], *,
                  options: RouteOptions = NO_OPTIONS, stream: bool = False,
                  tokens: Callable[[], int] = lambda: 0,
                  prompt_tokens: Callable[[], int] = lambda: 0,
                  cover: Cover | None = None,
                  with_params: Reestimate | None = None) -> T:
        """Run ``call`` on a deployment of ``plan``, retrying and falling back as the
        settings say. ``tokens()`` estimates the call's tokens, input and output (read
        only when a deployment has a tpm), ``prompt_tokens()`` its input (read only by
        the context-window check); ``cover(deployments, params)`` runs before a
        fallback group is tried (the proxy grows the budget reservation there when it
        costs more). ``with_params`` says that ``call`` applies a fallback's own
        params (``Attempt.params``) and gives that call's (tokens, prompt_tokens);
        without it a fallback carrying params is passed over, with a warning."""
        need = _Need(tokens, prompt_tokens)
        fallback_need = need
        fallback_params: Mapping[str, Any] | None = None
        attempts, fallbacks = 0, 0
        current = plan
        chain: tuple[Fallback, ...] | None = None
        position = 0
        primary: _GroupFailed | None = None
        tried: set[str] | None = None

        def fallback_left(kind: str) -> bool:
            if options.disable_fallbacks:
                return False
            if chain is None:
                return bool(fallback_chain(self.settings, plan.group.name, plan.name, kind,
                                           options.fallbacks)[:self.settings.max_fallbacks])
            return position < len(chain)

        while True:
            try:
                return await self._run_group(current, call, options, stream, fallback_need,
                                             attempts, fallbacks, fallback_left,
                                             fallback_params)
            except _GroupFailed as failed:
                attempts = failed.attempts
                if primary is None:
                    primary = failed
                if options.disable_fallbacks:
                    raise primary.error from None
                if chain is None:
                    chain = fallback_chain(self.settings, plan.group.name, plan.name,
                                           failed.kind, options.fallbacks)
                    chain = chain[:self.settings.max_fallbacks]
                    tried = {plan.group.name}
                assert tried is not None
                nxt: Plan | None = None
                params: Mapping[str, Any] | None = None
                while nxt is None and position < len(chain):
                    item = chain[position]
                    position += 1
                    name = fallback_name(item)
                    params = item.params if isinstance(item, FallbackTo) else None
                    if params is not None and with_params is None:
                        log.warning("fallback %r of model %r carries request params that "
                                    "this route cannot apply: passed over", name, plan.name)
                        continue
                    try:
                        candidate = self.resolve(name)
                    except ModelNotFoundError:
                        log.warning("fallback %r of model %r names no model group", name,
                                    plan.name)
                        continue
                    # The same group with other params is another call: it may be tried.
                    if candidate.group.name not in tried or params is not None:
                        nxt = candidate
                if nxt is None:
                    raise primary.error from None
                tried.add(nxt.group.name)
                fallbacks += 1
                self.fallbacks.inc((plan.group.name, nxt.group.name))
                log.info("model %r falls back to %r after %s", plan.name, nxt.group.name,
                         failed.kind)
                fallback_params = params
                if params is not None and with_params is not None:
                    fallback_need = _Need(*with_params(params))
                else:
                    fallback_need = need
                if cover is not None:
                    await cover(nxt.deployments, params)
                current = nxt

    async def _run_group(self, plan: Plan, call: Callable[[Attempt], Awaitable[T]],
                         options: RouteOptions, stream: bool, need: _Need,
                         attempts: int, fallbacks: int,
                         fallback_left: Callable[[str], bool],
                         params: Mapping[str, Any] | None) -> T:
        group = plan.group
        failed_ids: set[str] | None = None
        same: dict[str, int] | None = None
        pinned: Target | None = None
        retries_done = 0
        in_group = 0
        last: tuple[BaseException, str] | None = None
        while True:
            try:
                target, limit_headers, tok = await self._pick(plan, failed_ids, pinned, need)
            except _Unavailable as none:
                if last is not None:
                    raise _GroupFailed(last[0], last[1], attempts) from None
                raise _GroupFailed(none.error, none.kind, attempts) from None
            pinned = None
            attempts += 1
            in_group += 1
            deployment = target.stream_deployment if stream else target.deployment
            if options.timeout is not None:
                deployment = replace(deployment, timeout=options.timeout)
            headers = target.headers(in_group - 1, fallbacks)
            if limit_headers:
                headers = {**headers, **limit_headers}
            attempt = Attempt(target, deployment, target.tag(attempts, fallbacks), headers,
                              params)
            try:
                return await self._attempt(group, attempt, call, tok)
            except BaseException as exc:
                if attempt.committed_at is not None or not isinstance(exc, Exception):
                    raise
                failure = classify(exc)
                if failure is None:
                    raise
                last = (exc, failure.kind)
                # The deployment's own max_retries: the same deployment again, as the
                # provider's SDK would, before the router picks anew.
                done = same.get(target.model_id, 0) if same else 0
                if failure.retryable and done < target.routing.max_retries:
                    delay = self.retry.delay(done, failure)
                    if delay is not None and not self._cooling(group, target):
                        if same is None:
                            same = {}
                        same[target.model_id] = done + 1
                        await asyncio.sleep(delay)
                        pinned = target
                        continue
                if retries_done >= self.retry.retries(failure, options.num_retries):
                    raise _GroupFailed(exc, failure.kind, attempts) from None
                retries_done += 1
                self.retries.inc(group.name)
                if failed_ids is None:
                    failed_ids = set()
                failed_ids.add(target.model_id)
                if not self._others_left(plan, failed_ids):
                    # Every deployment failed this call already: wait and try again,
                    # unless a fallback group can answer now.
                    delay = self.retry.delay(retries_done - 1, failure)
                    if delay is None or fallback_left(failure.kind):
                        raise _GroupFailed(exc, failure.kind, attempts) from None
                    await asyncio.sleep(delay)
                    failed_ids.clear()

    async def _attempt(self, group: Group, attempt: Attempt,
                       call: Callable[[Attempt], Awaitable[T]], tok: int) -> T:
        target = attempt.target
        st = self.stats[target.model_id]
        st.in_flight += 1
        reset = CURRENT_ATTEMPT.set(attempt)
        started = time.perf_counter()
        try:
            result = await call(attempt)
        except BaseException as exc:
            st.in_flight -= 1
            CURRENT_ATTEMPT.reset(reset)
            failure = classify(exc) if attempt.committed_at is None else None
            if failure is not None:
                if failure.kind == "timeout":  # latency-based routing learns from it
                    st.observe_latency(time.perf_counter() - started, time.monotonic())
                await self._failed(group, target, failure)
            if target.limits_tpm is not None and tok:
                await self._adjust(target, -tok)
            raise
        st.in_flight -= 1
        CURRENT_ATTEMPT.reset(reset)
        end = time.perf_counter()
        st.successes += 1
        st.observe_latency((attempt.committed_at or end) - started, time.monotonic())
        if attempt.broke is not None:
            broke = classify(attempt.broke)
            if broke is not None:
                await self._failed(group, target, broke)
        if self._count_usage and attempt.used_tokens is not None:
            st.count_use(0, attempt.used_tokens - tok, time.time())
        used = attempt.used_tokens
        if target.limits_tpm is not None and used is not None and used != tok:
            await self._adjust(target, used - tok)
        return result

    async def _adjust(self, target: Target, delta: int) -> None:
        assert target.limits_tpm is not None
        try:
            await self.limiter.adjust([target.limits_tpm], delta)
        except Exception:
            log.exception("could not correct the token count of deployment %s",
                          target.model_id)

    # -- choosing ------------------------------------------------------------------------

    def _cooling(self, group: Group, target: Target) -> bool:
        return group.cools and self.cooldowns.cooling(target.model_id, time.time())

    def _others_left(self, plan: Plan, failed_ids: set[str]) -> bool:
        now = time.time()
        cools = plan.group.cools
        return any(t.model_id not in failed_ids
                   and not (cools and self.cooldowns.cooling(t.model_id, now))
                   for t in plan.targets)

    async def _pick(self, plan: Plan, failed_ids: set[str] | None, pinned: Target | None,
                    need: _Need) -> tuple[Target, Mapping[str, str] | None, int]:
        group = plan.group
        targets = plan.targets
        now = time.time()
        cands: Sequence[Target]
        if pinned is not None:
            cands = (pinned,)
        elif group.cools and self.cooldowns.any():
            cooling = self.cooldowns.cooling
            cands = [t for t in targets if not cooling(t.model_id, now)]
            if not cands:
                raise self._all_cooling(group, targets, now)
        else:
            cands = targets
        if self._unhealthy and len(cands) > 1:
            cands = self._healthy(group, cands, now)
        if failed_ids and len(cands) > 1:
            fresh = [t for t in cands if t.model_id not in failed_ids]
            if fresh:
                cands = fresh
        if self.settings.pre_call_checks and group.windows:
            prompt = need.prompt()
            fits = [t for t in cands
                    if not t.routing.context_window or prompt <= t.routing.context_window]
            if not fits:
                largest = max(t.routing.context_window or 0 for t in cands)
                raise _Unavailable(BadRequestError(
                    f"the prompt (about {prompt} tokens) is over the context window of every "
                    f"deployment of model {group.name!r} (at most {largest} tokens)",
                    param="messages", code="context_length_exceeded"), "context_window")
            cands = fits
        if not group.any_limits:
            if len(cands) == 1:
                target = cands[0]
            elif group.ordered:
                target = self._by_order(cands, now)[0]
            else:
                target = self._balancer.pick(cands, group.even, time.monotonic(), now)
            if self._count_usage:
                self.stats[target.model_id].count_use(1, 0, now)
            return target, None, 0
        if len(cands) == 1:
            ordered: Sequence[Target] = cands
        elif group.ordered:
            ordered = self._by_order(cands, now)
        else:
            ordered = self._balancer.order(cands, time.monotonic(), now)
        return await self._within_limits(group, ordered, need, now)

    def _healthy(self, group: Group, cands: Sequence[Target], now: float
                 ) -> Sequence[Target]:
        """``cands`` without those the latest health check found unhealthy; all of them
        when none is left (LiteLLM's safety net: the calls still go somewhere)."""
        if now >= self._unhealthy_until:
            self._unhealthy = frozenset()  # stale: routing forgets it, as LiteLLM does
            return cands
        unhealthy = self._unhealthy
        kept = [t for t in cands if t.model_id not in unhealthy]
        if kept:
            return kept
        if now - self._all_unhealthy_warned > 60:
            self._all_unhealthy_warned = now
            log.warning("every deployment of model %r failed its last health check; "
                        "routing to them anyway", group.name)
        return cands

    def health_checked(self, unhealthy: Iterable[str], at: float, stale_s: float) -> None:
        """A background health round's verdict (deployment ids that failed it), heeded
        by routing until ``stale_s`` after ``at``."""
        self._unhealthy = frozenset(unhealthy)
        self._unhealthy_until = at + stale_s

    def unhealthy(self, now: float) -> frozenset[str]:
        """The deployments health-check routing keeps out of rotation now."""
        return self._unhealthy if now < self._unhealthy_until else frozenset()

    def _by_order(self, cands: Sequence[Target], now: float) -> list[Target]:
        levels: dict[float, list[Target]] = {}
        for t in cands:
            order = t.routing.order
            levels.setdefault(_INF if order is None else float(order), []).append(t)
        out: list[Target] = []
        mono = time.monotonic()
        for level in sorted(levels):
            out += self._balancer.order(levels[level], mono, now)
        return out

    async def _within_limits(self, group: Group, ordered: Sequence[Target], need: _Need,
                             now: float) -> tuple[Target, Mapping[str, str] | None, int]:
        tok = need.total() if any(t.limits_tpm is not None for t in ordered) else 0
        refused: tuple[Decision, Target] | None = None
        for target in ordered:
            if not target.has_limits:
                if self._count_usage:
                    self.stats[target.model_id].count_use(1, tok, now)
                return target, None, 0
            decision = await self.limiter.acquire(target.limits(tok))
            if decision.ok:
                if self._count_usage:
                    self.stats[target.model_id].count_use(1, tok, now)
                return target, decision.headers, tok
            if refused is None or decision.retry_after_s < refused[0].retry_after_s:
                refused = (decision, target)
        assert refused is not None
        decision, target = refused
        failed = decision.failed
        assert failed is not None
        what = (f"every deployment of model {group.name!r}" if len(ordered) > 1
                else f"deployment {target.model_id} of model {group.name!r}")
        each = " each" if len(ordered) > 1 else ""
        raise _Unavailable(RateLimitError(
            f"rate limit reached for {what}: {failed.limit} {failed.kind} per minute{each}; "
            f"retry in {decision.retry_after_s}s", headers=decision.headers), "unavailable")

    def _all_cooling(self, group: Group, targets: Sequence[Target], now: float
                     ) -> _Unavailable:
        states = [self.cooldowns.state(t.model_id, now) for t in targets]
        wait = max(1, int(min((s.until - now for s in states if s is not None),
                              default=1.0) + 0.999))
        limited = all(s is not None and s.reason == "rate_limit" for s in states)
        what = ("rate limited by the provider" if limited
                else "cooling down after failures")
        message = (f"no deployment of model {group.name!r} can take the call: every one is "
                   f"{what}; retry in {wait}s")
        headers = {"Retry-After": str(wait)}
        error: TallygateError = (RateLimitError(message, code="no_deployments_available",
                                                headers=headers) if limited
                                 else ServiceUnavailableError(message, headers=headers))
        return _Unavailable(error, "unavailable")

    # -- failures ------------------------------------------------------------------------

    async def _failed(self, group: Group, target: Target, failure: Failure) -> None:
        st = self.stats[target.model_id]
        st.failures[failure.kind] = st.failures.get(failure.kind, 0) + 1
        await self.count_failure(group, target, failure)

    async def count_failure(self, group: Group, target: Target, failure: Failure) -> None:
        """Count a failure toward the deployment's cooldown (a call's, or with
        ``allowed_fails_policy`` and health-check routing, a health check's)."""
        if not failure.blames_deployment or not group.cools:
            return
        if group.wildcard and failure.kind == "not_found":
            return  # the client's model name, not the deployment
        s = self.settings
        policy = s.allowed_fails_policy.get(failure.kind)
        allowed = policy if policy is not None else s.allowed_fails
        at_once: float | None = None
        if failure.kind == "rate_limit" and (failure.retry_after_s or 0) >= 1:
            at_once = min(failure.retry_after_s or 0, MAX_RATE_LIMIT_COOLDOWN_S)
        elif failure.kind in ("auth", "not_found") and policy is None:
            at_once = s.cooldown_s  # a refused key or a missing model stays so for a while
        try:
            seconds = await self.cooldowns.failed(target.model_id, failure.kind, allowed,
                                                  s.cooldown_s, at_once)
        except Exception:
            log.exception("could not count a failure of deployment %s", target.model_id)
            return
        if seconds:
            log.warning("deployment %s of model %r (%s) cooling down for %.1fs after %s",
                        target.model_id, group.name, target.host or target.deployment.provider,
                        seconds, failure.kind)

    # -- state for health, readiness and metrics -------------------------------------------

    def snapshot(self) -> list[dict[str, object]]:
        """Each deployment's state: cooling down, failures, latency, calls in flight."""
        now, mono = time.time(), time.monotonic()
        out: list[dict[str, object]] = []
        for group, t in self.deployments():
            st = self.stats[t.model_id]
            state = self.cooldowns.state(t.model_id, now) if group.cools else None
            latency = st.latency(mono, self.settings.latency.ttl_s)
            out.append({
                "model_group": group.name, "model_id": t.model_id,
                "provider": t.deployment.provider, "model": t.deployment.model,
                "api_base": t.host,
                "cooling_down": state is not None,
                "cooldown_remaining_s": round(state.until - now, 3) if state else 0,
                "cooldown_reason": state.reason if state else None,
                "failures_this_minute": self.cooldowns.failures(t.model_id, now),
                "failures": dict(st.failures), "successes": st.successes,
                "in_flight": st.in_flight,
                "latency_ms": round(latency * 1000, 3) if latency is not None else None,
                "healthy": st.healthy,
                "out_of_rotation_unhealthy": t.model_id in self.unhealthy(now),
            })
        return out
