"""Health checks: a tiny real call to every deployment, on demand or in the background.

``GET /health`` answers in LiteLLM's shape (``healthy_endpoints``,
``unhealthy_endpoints`` and their counts). With
``general_settings.background_health_checks`` the checks run every
``health_check_interval`` seconds (300) and ``/health`` answers the latest round without
calling anyone. A wildcard deployment is checked with its ``model_info.health_check_model``,
and skipped without one. Health checks are billed to nobody: they make no usage event.

With ``general_settings.enable_health_check_routing`` as well, each background round's
verdict steers routing, as in LiteLLM: a deployment that failed the latest round gets
no calls (unless every deployment of its group failed) until a round passes it or the
verdict is older than ``health_check_staleness_threshold``. When
``router_settings.allowed_fails_policy`` is set, a failed check instead counts toward the
deployment's cooldown like a failed call, by the policy's thresholds.
``health_check_ignore_transient_errors`` keeps 429s and timeouts out of both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tallygate.errors import ModelNotFoundError, TallygateError
from tallygate.providers.base import Deployment
from tallygate.routing.failures import Failure, classify
from tallygate.routing.groups import Group, Target
from tallygate.routing.router import Router
from tallygate.routing.settings import HealthRouting

log = logging.getLogger("tallygate.routing")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_INTERVAL_S = 300.0

Probe = Callable[[Deployment, bool], Awaitable[None]]  # (deployment, embedding?)
_TRANSIENT = frozenset({"rate_limit", "timeout"})     # 429 and 408 (or no answer in time)


def safe_base(api_base: str | None) -> str | None:
    """An api_base fit to show: no credentials, no query string."""
    if not api_base:
        return None
    try:
        parts = urlsplit(api_base)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return None
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class HealthChecker:
    def __init__(self, router: Router, probe: Probe, *, interval_s: float | None = None,
                 details: bool = True, routing: HealthRouting | None = None) -> None:
        self.router = router
        self.probe = probe
        self.interval_s = interval_s     # None: no background checks
        self.details = details
        self.routing = routing if interval_s is not None else None
        self.latest: dict[str, Any] | None = None
        self.checked_at: float | None = None
        self.rounds = 0
        self._task: asyncio.Task[None] | None = None

    def _checks(self, model: str | None) -> list[tuple[Group, Target, Target]]:
        """(group, target, what to call) for each deployment to check."""
        out: list[tuple[Group, Target, Target]] = []
        for group, target in self.router.deployments():
            if model is not None and group.name != model:
                continue
            callee = target
            if group.wildcard:
                name = target.routing.health_check_model
                if name is None:
                    continue
                try:
                    plan = self.router.resolve(name)
                except ModelNotFoundError:
                    continue
                found = [t for t in plan.targets if t.model_id == target.model_id]
                if not found:
                    continue
                callee = found[0]
            out.append((group, target, callee))
        return out

    async def _one(self, group: Group, target: Target, callee: Target
                   ) -> tuple[dict[str, Any], BaseException | None]:
        d = callee.deployment
        timeout = target.routing.health_check_timeout or min(d.timeout or DEFAULT_TIMEOUT_S,
                                                              DEFAULT_TIMEOUT_S)
        entry: dict[str, Any] = {"model": f"{d.provider}/{d.model}", "model_name": group.name}
        if self.details:
            entry.update({"model_id": target.model_id, "api_base": safe_base(d.api_base)})
        error: str | None = None
        failed: BaseException | None = None
        try:
            await asyncio.wait_for(self.probe(replace(d, timeout=timeout),
                                              target.routing.mode == "embedding"),
                                   timeout + 1)
        except TimeoutError as exc:
            error, failed = f"no answer within {timeout}s", exc
        except TallygateError as exc:
            error, failed = exc.message, exc
        except Exception as exc:
            error, failed = f"health check failed: {type(exc).__name__}", exc
        st = self.router.stats[target.model_id]
        st.healthy, st.health_error = error is None, error
        if error is not None and self.details:
            entry["error"] = error
        entry["healthy"] = error is None
        return entry, failed

    async def check(self, model: str | None = None) -> dict[str, Any]:
        """Check every deployment (or those of one model group) now."""
        return (await self._round(model))[0]

    async def _round(self, model: str | None = None) -> tuple[
            dict[str, Any], list[tuple[Group, Target, BaseException | None]]]:
        checks = self._checks(model)
        results = await asyncio.gather(*(self._one(g, t, c) for g, t, c in checks))
        healthy: list[dict[str, Any]] = []
        unhealthy: list[dict[str, Any]] = []
        for entry, _ in results:
            (healthy if entry.pop("healthy") else unhealthy).append(entry)
        outcomes = [(g, t, failed) for (g, t, _), (_, failed) in
                    zip(checks, results, strict=True)]
        return ({"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                 "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)},
                outcomes)

    async def _steer(self, outcomes: list[tuple[Group, Target, BaseException | None]],
                     at: float) -> None:
        """Health-check routing: the round's verdict for the router."""
        routing = self.routing
        assert routing is not None
        unhealthy: list[str] = []
        for group, target, failed in outcomes:
            if failed is None:
                continue
            failure = _failure(failed)
            if routing.ignore_transient and failure.kind in _TRANSIENT:
                continue  # an overloaded deployment is not a broken one
            if routing.by_policy:
                await self.router.count_failure(group, target, failure)
            else:
                unhealthy.append(target.model_id)
        if not routing.by_policy:
            self.router.health_checked(unhealthy, at, routing.stale_s)
        log.debug("health_check_routing_state_updated healthy=%d unhealthy=%d",
                  len(outcomes) - len(unhealthy), len(unhealthy))

    async def answer(self, model: str | None = None) -> dict[str, Any]:
        """What ``GET /health`` shows: the latest background round when checks run in
        the background (and it covers the question), else a check now."""
        if self.interval_s is not None and model is None and self.latest is not None:
            return self.latest
        return await self.check(model)

    async def _loop(self) -> None:
        assert self.interval_s is not None
        while True:
            try:
                started = time.time()
                self.latest, outcomes = await self._round()
                if self.routing is not None:
                    await self._steer(outcomes, started)
                self.checked_at = time.time()
                self.rounds += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background health check failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self.interval_s is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _failure(exc: BaseException) -> Failure:
    """What a failed health check says of its deployment (no answer in time: a timeout;
    an error that is no upstream's: the deployment's, as a 5xx would be)."""
    failure = classify(exc)
    if failure is not None:
        return failure
    if isinstance(exc, TimeoutError):
        return Failure("timeout", 408, None, True)
    return Failure("server", 500, None, True)
