"""Reading from Lago: a customer's subscription (cached) and the events it holds.

Only reads: the Lago sink is the one writer. The API key goes in the Authorization
header and nowhere else (never in a log line or an error message).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

log = logging.getLogger("tallygate.access")


def lago_base(environ: Mapping[str, str]) -> tuple[str, str] | None:
    base, key = environ.get("LAGO_API_BASE"), environ.get("LAGO_API_KEY")
    if not base or not key:
        return None
    return base.strip().rstrip("/").removesuffix("/api/v1"), key


class LagoReader:
    def __init__(self, base: str, api_key: str, *, ttl_s: float = 300.0,
                 timeout_s: float = 5.0) -> None:
        self.base = base
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._ttl_s = ttl_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._subs: dict[str, tuple[float, str | None]] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_json(self, path: str, params: Mapping[str, str]) -> Any:
        async with self._http().get(self.base + path, params=params,
                                    headers=self._headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"Lago answered {resp.status} to GET {path}")
            return await resp.json(content_type=None)

    async def subscription_for(self, customer: str) -> str | None:
        """The external_id of the customer's active subscription, or None (cached; a
        failed lookup is retried after 30 s, the call bills the customer id meanwhile)."""
        hit = self._subs.get(customer)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        try:
            body = await self.get_json("/api/v1/subscriptions",
                                       {"external_customer_id": customer})
            subs = [s for s in body.get("subscriptions") or []
                    if isinstance(s, dict) and s.get("external_id")]
            active = [s for s in subs if s.get("status") in (None, "active")]
            chosen = active or subs
            value = str(chosen[0]["external_id"]) if chosen else None
            self._subs[customer] = (time.monotonic() + self._ttl_s, value)
            return value
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError) as exc:
            log.warning("cannot read the Lago subscription of a customer: %s",
                        type(exc).__name__)
            self._subs[customer] = (time.monotonic() + 30.0, None)
            return None

    async def events(self, timestamp_from_iso: str | None = None,
                     per_page: int = 100) -> dict[str, dict[str, Any]]:
        """Every event Lago lists (from ``timestamp_from``), by transaction_id."""
        out: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            params = {"page": str(page), "per_page": str(per_page)}
            if timestamp_from_iso:
                params["timestamp_from"] = timestamp_from_iso
            body = await self.get_json("/api/v1/events", params)
            for ev in body.get("events") or []:
                out[str(ev.get("transaction_id"))] = ev
            next_page = (body.get("meta") or {}).get("next_page")
            if not next_page:
                return out
            page = int(next_page)
