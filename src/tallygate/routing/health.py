"""Health checks: a tiny real call to every deployment, on demand or in the background.

``GET /health`` answers in LiteLLM's shape (``healthy_endpoints``,
``unhealthy_endpoints`` and their counts). With
``general_settings.background_health_checks`` the checks run every
``health_check_interval`` seconds (300) and ``/health`` answers the latest round without
calling anyone. A wildcard deployment is checked with its ``model_info.health_check_model``,
and skipped without one. Health checks are billed to nobody: they make no usage event.
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
from tallygate.routing.groups import Group, Target
from tallygate.routing.router import Router

log = logging.getLogger("tallygate.routing")

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_INTERVAL_S = 300.0

Probe = Callable[[Deployment, bool], Awaitable[None]]  # (deployment, embedding?)


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
                 details: bool = True) -> None:
        self.router = router
        self.probe = probe
        self.interval_s = interval_s     # None: no background checks
        self.details = details
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

    async def _one(self, group: Group, target: Target, callee: Target) -> dict[str, Any]:
        d = callee.deployment
        timeout = target.routing.health_check_timeout or min(d.timeout or DEFAULT_TIMEOUT_S,
                                                              DEFAULT_TIMEOUT_S)
        entry: dict[str, Any] = {"model": f"{d.provider}/{d.model}", "model_name": group.name}
        if self.details:
            entry.update({"model_id": target.model_id, "api_base": safe_base(d.api_base)})
        error: str | None = None
        try:
            await asyncio.wait_for(self.probe(replace(d, timeout=timeout),
                                              target.routing.mode == "embedding"),
                                   timeout + 1)
        except TimeoutError:
            error = f"no answer within {timeout}s"
        except TallygateError as exc:
            error = exc.message
        except Exception as exc:
            error = f"health check failed: {type(exc).__name__}"
        st = self.router.stats[target.model_id]
        st.healthy, st.health_error = error is None, error
        if error is not None and self.details:
            entry["error"] = error
        entry["healthy"] = error is None
        return entry

    async def check(self, model: str | None = None) -> dict[str, Any]:
        """Check every deployment (or those of one model group) now."""
        checks = self._checks(model)
        results = await asyncio.gather(*(self._one(g, t, c) for g, t, c in checks))
        healthy: list[dict[str, Any]] = []
        unhealthy: list[dict[str, Any]] = []
        for r in results:
            (healthy if r.pop("healthy") else unhealthy).append(r)
        return {"healthy_endpoints": healthy, "unhealthy_endpoints": unhealthy,
                "healthy_count": len(healthy), "unhealthy_count": len(unhealthy)}

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
                self.latest = await self.check()
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
