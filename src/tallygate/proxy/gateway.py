"""The proxy's running state: settings, the outbox, the delivery worker, the sinks and
the metrics, with start and stop. Handlers reach everything through one Gateway."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tallygate.access.db import SQLiteDatabase
from tallygate.access.ledger_sink import LedgerSink
from tallygate.access.ratelimit import RedisLimiter
from tallygate.access.settlement import LEDGER_SINK
from tallygate.config import ProxySettings
from tallygate.event import FailureEvent, UsageEvent
from tallygate.metering.delivery import DeliveryWorker
from tallygate.metering.group_commit import GroupCommitter
from tallygate.metering.outbox import Outbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox
from tallygate.pricing import PriceBook
from tallygate.providers.base import Deployment
from tallygate.proxy import loop_lag
from tallygate.proxy.access import AccessPolicy
from tallygate.proxy.metrics import CustomerLabels, Labels, Metrics
from tallygate.proxy.metrics_share import MetricsShare
from tallygate.routing import CURRENT_ATTEMPT, Router
from tallygate.routing.cooldowns import Cooldowns
from tallygate.routing.health import HealthChecker
from tallygate.routing.worker_cooldowns import CooldownTable, WorkerCooldowns
from tallygate.sinks.base import Sink
from tallygate.sinks.factory import build_sink, sink_accepts
from tallygate.usage import Usage

log = logging.getLogger("tallygate.proxy")

LAGO_ENV = ("LAGO_API_BASE", "LAGO_API_KEY", "LAGO_API_EVENT_CODE")


def effective_sinks(settings: ProxySettings, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The configured callbacks; with none, Lago when LAGO_* are all set, else the local
    JSONL usage log, so that usage always lands somewhere visible."""
    if settings.sinks:
        return settings.sinks
    if all(environ.get(name) for name in LAGO_ENV):
        return ("lago",)
    return ("jsonl",)


class Gateway:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.prices = PriceBook()
        self.metrics = Metrics()
        self.sinks: list[Sink] = []
        self.outbox: Outbox | None = None
        self._writer: GroupCommitter[tuple[UsageEvent, tuple[str, ...]]] | None = None
        self.worker: DeliveryWorker | None = None
        self.ledger_sink: LedgerSink | None = None
        interval = loop_lag.interval_from_env(settings.extra.get("environ") or os.environ)
        self.loop_lag = loop_lag.LoopLagSampler(interval) if interval else None
        self.started_at = time.time()
        self._queue_gauge_cache: list[tuple[Labels, float]] = []
        self._queue_age_cache: list[tuple[Labels, float]] = []
        environ = settings.extra.get("environ") or os.environ
        # The local usage log sits beside the outbox, next to the config by default.
        jsonl_path = (settings.extra.get("jsonl_path") or environ.get("TALLYGATE_JSONL_PATH")
                      or settings.default_jsonl_path())
        environ = {**environ, "TALLYGATE_JSONL_PATH": str(jsonl_path)}
        _register_credentials(settings, environ)
        # Build sinks now: a missing LAGO_* variable stops the start, naming it.
        self.sinks = [build_sink(name, environ)
                      for name in effective_sinks(settings, environ)]
        self._sink_names = tuple(s.name for s in self.sinks)
        # Virtual keys, budgets and limits (tallygate.access); with no keys created it
        # behaves as a master-key gateway: the master key (if set) calls, the body's user
        # pays.
        from tallygate.access.policy import VirtualKeyPolicy

        self.keys = VirtualKeyPolicy(settings, self.prices)
        self.access: AccessPolicy = self.keys
        # Which deployment answers (tallygate.routing): retries, fallbacks, cooldowns.
        r = settings.router
        self.router = Router(
            settings.models, r,
            unit_cost=self._unit_cost if r.strategy == "cost-based-routing" else _unknown,
            context_window=self._context_window if r.pre_call_checks else _unknown,
            cooldowns=_worker_cooldowns(settings))
        self._router_limiter: RedisLimiter | None = None
        self.health = HealthChecker(self.router, _probe,
                                    interval_s=settings.health_check_interval_s,
                                    details=settings.health_check_details,
                                    routing=settings.health_routing)
        self.customer_labels = CustomerLabels(settings.metrics_customer_labels)
        share_dir = settings.extra.get("metrics_dir")
        self.metrics_share = MetricsShare(share_dir, self.metrics) if share_dir else None
        self._describe_metrics()

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("tallygate_requests_total", "counter", "Requests by route, model and status.")
        m.describe("tallygate_tokens_total", "counter", "Billed tokens by model and bucket.")
        m.describe("tallygate_cost_usd_total", "counter", "Billed cost in USD by model.")
        m.describe("tallygate_unknown_price_total", "counter", "Calls with no known price.")
        m.describe("tallygate_outbox_enqueued_total", "counter", "Events written to the outbox.")
        m.describe("tallygate_unattributed_total", "counter", "Calls with no customer.")
        m.describe("tallygate_upstream_errors_total", "counter",
                   "Failed upstream calls by provider and status (billed nothing).")
        m.describe("tallygate_call_duration_seconds", "histogram",
                   "Billed calls' duration by model group and the deployment that answered.")
        m.describe("tallygate_time_to_first_token_seconds", "histogram",
                   "Streams' time to the first chunk by model group and deployment.")
        m.describe("tallygate_delivery_lag_seconds", "histogram",
                   "From a call's end to its event's delivery, by sink.")
        m.describe("tallygate_outbox_oldest_pending_age_seconds", "gauge",
                   "Age of the oldest undelivered outbox row.")
        self._register_router_gauges()

    def _unit_cost(self, d: Deployment) -> Any:
        # cost-based-routing's yardstick: a call of 1,000 tokens in and 1,000 out.
        usage = Usage(input_tokens=1000, output_tokens=1000)
        return self.prices.price(d.provider, _priced(d), usage, d.price).cost

    def _context_window(self, d: Deployment) -> int | None:
        return self.prices.context_window(d.provider, _priced(d))

    def _register_router_gauges(self) -> None:
        m, router = self.metrics, self.router
        m.describe("tallygate_deployment_cooling_down", "gauge",
                   "1 while a deployment is out of rotation (cooldown).")
        m.describe("tallygate_deployment_failures_this_minute", "gauge",
                   "Failures counted toward a deployment's cooldown this minute.")
        m.describe("tallygate_deployment_in_flight", "gauge", "Calls in flight per deployment.")
        m.describe("tallygate_deployment_latency_seconds", "gauge",
                   "Recent median latency per deployment (time to first token for streams).")
        m.describe("tallygate_deployment_healthy", "gauge",
                   "The last health check of a deployment: 1 healthy, 0 not.")
        m.describe("tallygate_deployment_attempts_total", "counter",
                   "Upstream attempts per deployment by outcome (success or error kind).")
        m.describe("tallygate_router_retries_total", "counter", "Retries within a model group.")
        m.describe("tallygate_router_fallbacks_total", "counter",
                   "Calls that fell back from one model group to another.")

        cache: list[Any] = [0.0, []]

        def snapshot() -> list[dict[str, object]]:
            # One reading serves every gauge of a render (they are read one by one).
            now = time.monotonic()
            if now - cache[0] > 0.2:
                cache[0], cache[1] = now, router.snapshot()
            rows: list[dict[str, object]] = cache[1]
            return rows

        def per_deployment(key: str) -> Any:
            def read() -> list[tuple[Labels, float]]:
                out: list[tuple[Labels, float]] = []
                for d in snapshot():
                    value = d[key]
                    if value is None:
                        continue
                    if key == "latency_ms":
                        value = float(value) / 1000  # type: ignore[arg-type]
                    labels = (("model_group", str(d["model_group"])),
                              ("model_id", str(d["model_id"])))
                    out.append((labels, float(value)))  # type: ignore[arg-type]
                return out
            return read

        def attempts() -> list[tuple[Labels, float]]:
            out: list[tuple[Labels, float]] = []
            for group, target in router.deployments():
                st = router.stats[target.model_id]
                base = (("model_group", group.name), ("model_id", target.model_id))
                out.append(((*base, ("outcome", "success")), float(st.successes)))
                for kind, n in sorted(st.failures.items()):
                    out.append(((*base, ("outcome", kind)), float(n)))
            return out

        # With --workers N the workers share cooldowns and failure counts (the
        # parent's table, or Redis): the max of their readings is the gateway's.
        m.gauge("tallygate_deployment_cooling_down", per_deployment("cooling_down"), "max")
        m.gauge("tallygate_deployment_failures_this_minute",
                per_deployment("failures_this_minute"), "max")
        m.gauge("tallygate_deployment_in_flight", per_deployment("in_flight"), "sum")
        m.gauge("tallygate_deployment_latency_seconds", per_deployment("latency_ms"), "max")
        m.gauge("tallygate_deployment_healthy", per_deployment("healthy"), "max")
        m.gauge("tallygate_deployment_attempts_total", attempts, "sum")
        m.gauge("tallygate_router_retries_total", lambda: [
            ((("model_group", g),), float(n)) for g, n in router.retries.values.items()],
            "sum")
        m.gauge("tallygate_router_fallbacks_total", lambda: [
            ((("model_group", a), ("fallback", b)), float(n))
            for (a, b), n in router.fallbacks.values.items()], "sum")

    async def start(self) -> None:
        from tallygate.metering.factory import open_outbox

        self.prices.warm()
        if self.loop_lag is not None:
            self.loop_lag.start()
        url = self.settings.database_url or self.settings.default_database_path()
        self.outbox = await open_outbox(url)
        forked = int(self.settings.extra.get("workers") or 1) > 1
        if isinstance(self.outbox, SQLiteOutbox) and forked:
            self.outbox.insert_on_caller = False  # forked workers: the writer thread
        self._writer = GroupCommitter(self._write_outbox)
        await self.keys.start(url)
        if isinstance(self.keys.db, SQLiteDatabase) and forked:
            self.keys.db.write_on_caller = False  # the same for reservations
        # Deployments' rpm/tpm count where keys' do (in the process, shared by worker
        # processes, or in Redis), unless router_settings names a Redis of its own.
        own = self.settings.router.redis_url
        if own and own != self.settings.access.redis_url:
            self._router_limiter = RedisLimiter(own)
            self.router.limiter = self._router_limiter
        else:
            self.router.limiter = self.keys.limiter
        await self.router.start()
        self.health.start()
        assert self.keys.db is not None
        # The spend ledger is a sink of the outbox: a billed call's settlement is as
        # durable as its usage event (see tallygate.access.settlement).
        self.ledger_sink = LedgerSink(self.keys.db)
        if isinstance(self.outbox, SQLiteOutbox):
            await self.ledger_sink.settle_in_sqlite_inserts()
        self.worker = DeliveryWorker(self.outbox, [*self.sinks, self.ledger_sink],
                                     batch_size=self.settings.outbox_batch_size,
                                     on_delivered=self._observe_delivery)
        self.worker.start()
        worker = self.worker

        async def flush_ledger() -> None:
            await worker.flush_sink(LEDGER_SINK)

        self.keys.settlements_flusher = flush_ledger
        if self.metrics_share is not None:
            self.metrics_share.start()
        self._register_delivery_gauges(self.worker)
        log.info("tallygate gateway ready: %d model groups, sinks: %s, outbox: %s",
                 len(self.settings.models), ", ".join(self._sink_names), _safe_url(url))

    def _register_delivery_gauges(self, worker: DeliveryWorker) -> None:
        def delivery() -> list[tuple[Labels, float]]:
            out: list[tuple[Labels, float]] = []
            for name, c in worker.sink_counters().items():
                for outcome, value in (("delivered", c.delivered), ("retried", c.retried),
                                       ("dead", c.dead), ("batches", c.batches)):
                    out.append(((("sink", name), ("outcome", outcome)), float(value)))
            return out

        def paused() -> list[tuple[Labels, float]]:
            return [((("sink", name),), 1.0 if c.paused else 0.0)
                    for name, c in worker.sink_counters().items()]

        # Each worker delivers its own share: its counts add up; any paused one shows.
        self.metrics.gauge("tallygate_delivery_events", delivery, merge="sum")
        self.metrics.gauge("tallygate_delivery_paused", paused, merge="max")
        # The outbox is shared: the serving worker's reading is everyone's.
        self.metrics.gauge("tallygate_outbox_rows", lambda: self._queue_gauge_cache)
        self.metrics.gauge("tallygate_outbox_oldest_pending_age_seconds",
                           lambda: self._queue_age_cache)

    def _observe_delivery(self, sink: str, events: Sequence[UsageEvent]) -> None:
        now = time.time()
        for event in events:
            self.metrics.observe("tallygate_delivery_lag_seconds", (("sink", sink),),
                                 max(now - event.finished_at_ms / 1000, 0.0))

    async def render_metrics(self) -> str:
        """/metrics for the whole gateway: every worker's counts when there are several."""
        await self.refresh_queue_gauges()
        if self.metrics_share is not None:
            return self.metrics_share.render()
        return self.metrics.render()

    async def refresh_queue_gauges(self) -> None:
        """Read queue depth and age from the outbox (before /metrics renders)."""
        assert self.outbox is not None
        stats = await self.outbox.stats()
        self._queue_gauge_cache = [
            ((("state", "pending"),), float(stats.pending)),
            ((("state", "inflight"),), float(stats.inflight)),
            ((("state", "dead"),), float(stats.dead)),
            ((("state", "oldest_pending_age_seconds"),), float(stats.oldest_pending_age_s or 0)),
        ]
        self._queue_age_cache = [((), float(stats.oldest_pending_age_s or 0))]

    async def stop(self) -> None:
        from tallygate import transport

        if self.loop_lag is not None:
            self.loop_lag.stop()
        if self._writer is not None:
            await self._writer.wait_idle()
        if self.metrics_share is not None:
            await self.metrics_share.stop()
        if self.worker is not None:
            await self.worker.stop(self.settings.drain_timeout_s)
            self.worker = None
        for sink in self.sinks:
            await sink.aclose()
        await self.health.stop()
        await self.router.close()
        if self._router_limiter is not None:
            await self._router_limiter.close()
        await self.keys.stop()
        if self.outbox is not None:
            await self.outbox.close()
            self.outbox = None
        await transport.close_session()

    # -- the Recorder the engine writes to ------------------------------------------
    async def record(self, event: UsageEvent) -> None:
        attempt = CURRENT_ATTEMPT.get()
        if attempt is not None:  # the router corrects the deployment's tpm count with it
            attempt.settled(event.usage.total_tokens)
        sinks = [n for n in self._sink_names if sink_accepts(n, event.customer is not None)]
        settlement = self.keys.settlement_for(event) if self.access is self.keys else None
        if settlement is not None:
            # The settlement rides in the same outbox insert as the event.
            event = replace(event, settlement=settlement)
            sinks.append(LEDGER_SINK)
        if event.customer is None:
            self.metrics.inc("tallygate_unattributed_total", (("model", event.model),))
            log.warning("call %s is unattributed: no customer to bill; held, not sent to "
                        "Lago (`tallygate outbox held` lists it, `assign` bills it)",
                        event.call_id)
        if sinks:
            assert self._writer is not None, "gateway not started"
            await self._writer.submit((event, tuple(sinks)))
            self.metrics.inc("tallygate_outbox_enqueued_total", (),
                             len(sinks) - (settlement is not None))
        self._count(event)
        await self.access.settle(event)

    async def _write_outbox(self, items: Sequence[tuple[UsageEvent, tuple[str, ...]]]) -> None:
        """One outbox write for every call that finished in this turn of the loop."""
        assert self.outbox is not None
        by_sinks: dict[tuple[str, ...], list[UsageEvent]] = {}
        for event, sinks in items:
            by_sinks.setdefault(sinks, []).append(event)
        for sinks, events in by_sinks.items():
            await self.outbox.enqueue_many(events, sinks)
        assert self.worker is not None
        self.worker.notify()

    async def record_failure(self, failure: FailureEvent) -> None:
        """One failed upstream attempt: counted, billed nothing. The call's reservation
        is not given back here: the router may retry or fall back; the call frame
        releases it once when the call fails as a whole."""
        self.metrics.inc("tallygate_upstream_errors_total",
                         (("provider", failure.provider or "none"),
                          ("status", str(failure.status_code))))

    def _count(self, event: UsageEvent) -> None:
        m, u = self.metrics, event.usage
        model: Labels = (("model", event.model),)
        deployment = (*model, ("deployment", f"{event.provider}/{event.provider_model}"))
        m.observe("tallygate_call_duration_seconds", deployment, max(event.latency_ms, 0) / 1000)
        if event.first_chunk_ms is not None:
            m.observe("tallygate_time_to_first_token_seconds", deployment,
                      max(event.first_chunk_ms, 0) / 1000)
        customer = self.customer_labels.label(event.customer)
        if customer is not None:
            model = (*model, ("customer", customer))
        for bucket, value in (("input", u.input_tokens), ("cache_read", u.cache_read_tokens),
                              ("cache_write", u.cache_write_tokens),
                              ("cache_write_1h", u.cache_write_1h_tokens),
                              ("audio_input", u.audio_input_tokens),
                              ("image_input", u.image_input_tokens),
                              ("citation", u.citation_tokens),
                              ("output", u.output_tokens),
                              ("audio_output", u.audio_output_tokens)):
            if value:
                m.inc("tallygate_tokens_total", (*model, ("bucket", bucket)), value)
        if event.cost is None:
            m.inc("tallygate_unknown_price_total", model)
        else:
            m.inc("tallygate_cost_usd_total", model, event.cost)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready unless the outbox cannot be read; delivery trouble shows as degraded."""
        assert self.outbox is not None and self.worker is not None
        try:
            stats = await self.outbox.stats()
        except Exception as exc:
            return False, {"status": "unavailable", "outbox": {"error": type(exc).__name__}}
        status = await self.worker.status()
        sinks = {
            name: {"paused": s.paused, "degraded": s.degraded,
                   "delivered": s.counters.delivered, "retried": s.counters.retried,
                   "dead": s.counters.dead, "last_error": s.counters.last_error}
            for name, s in status.sinks.items()}
        return True, {
            "status": "degraded" if status.degraded else "healthy",
            "outbox": {"pending": stats.pending, "inflight": stats.inflight,
                       "delivered": stats.delivered, "dead": stats.dead,
                       "oldest_pending_age_s": stats.oldest_pending_age_s,
                       "last_error": stats.last_error},
            "sinks": sinks,
            "router": {"deployments": self.router.snapshot(),
                       "background_health_checks": self.health.interval_s is not None,
                       "health_check_routing": self.health.routing is not None,
                       "health_checked_at": self.health.checked_at},
        }

    def model_names(self) -> Sequence[str]:
        return self.router.names()


def _unknown(d: Deployment) -> None:
    return None


def _worker_cooldowns(settings: ProxySettings) -> Cooldowns | None:
    """Forked workers without Redis: cooldowns in the table their parent made. Redis,
    when router_settings names one, shares them wider (the router's own default)."""
    table = settings.extra.get("shared_cooldowns")
    if settings.router.redis_url or not isinstance(table, CooldownTable):
        return None
    return WorkerCooldowns(table)


def _priced(d: Deployment) -> str:
    from tallygate.engine import priced_model

    return priced_model(d, None) or d.model


async def _probe(deployment: Deployment, embedding: bool) -> None:
    from tallygate import engine

    await engine.probe(deployment, embedding=embedding)


def _register_credentials(settings: ProxySettings, environ: Mapping[str, str]) -> None:
    """Every credential this gateway holds, for ``scrub`` to remove from what it passes
    on (upstream error messages, log lines)."""
    from tallygate import scrub
    from tallygate.providers.registry import get_provider, provider_names

    env_names = {get_provider(name).api_key_env for name in provider_names()}
    env_names |= {"LAGO_API_KEY", "TALLYGATE_WEBHOOK_SECRET"}
    scrub.register([settings.master_key,
                    *(d.api_key for group in settings.models.values() for d in group),
                    *(environ.get(name) for name in env_names if name),
                    scrub.database_password(settings.database_url),
                    scrub.database_password(settings.access.redis_url)])


def _safe_url(url: str) -> str:
    """A database URL without its password, fit for a log line."""
    if "://" not in url or "@" not in url:
        return url if "://" in url else str(Path(url))
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
