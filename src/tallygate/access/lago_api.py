"""Reading from Lago: a customer's subscription (cached) and the events it holds.

Only reads: the Lago sink is the one writer. The API key goes in the Authorization
header and nowhere else (never in a log line or an error message).
"""

from __future__ import annotations

import asyncio
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


FOUND_TTL_S = 300.0    # a subscription Lago named
NONE_TTL_S = 60.0      # Lago has no active subscription for the customer
RETRY_S = 30.0         # Lago could not be asked: ask again after this


class LagoReader:
    def __init__(self, base: str, api_key: str, *, ttl_s: float = FOUND_TTL_S,
                 none_ttl_s: float = NONE_TTL_S, timeout_s: float = 2.0) -> None:
        self.base = base
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._ttl_s = ttl_s
        self._none_ttl_s = none_ttl_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # customer -> (fresh until, subscription or None)
        self._subs: dict[str, tuple[float, str | None]] = {}
        self._asking: dict[str, asyncio.Future[str | None]] = {}

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
        """The external_id of the customer's active subscription, or None.

        Cached (``ttl_s`` when found, ``none_ttl_s`` when Lago has none); concurrent
        calls for one customer share one request. When Lago cannot be asked, the last
        answer it gave is kept (if any) and it is asked again after ``RETRY_S``."""
        hit = self._subs.get(customer)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        asking = self._asking.get(customer)
        if asking is not None:
            return await asyncio.shield(asking)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._asking[customer] = future
        try:
            value = await self._lookup(customer, hit[1] if hit is not None else None)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning
            raise
        finally:
            self._asking.pop(customer, None)

    async def _lookup(self, customer: str, stale: str | None) -> str | None:
        try:
            body = await self.get_json("/api/v1/subscriptions",
                                       {"external_customer_id": customer})
            # Lago lists only active subscriptions unless asked for others.
            subs = [s for s in body.get("subscriptions") or []
                    if isinstance(s, dict) and s.get("external_id")
                    and s.get("status") in (None, "active")]
            value = str(subs[0]["external_id"]) if subs else None
            ttl = self._ttl_s if value is not None else self._none_ttl_s
            self._subs[customer] = (time.monotonic() + ttl, value)
            return value
        except (aiohttp.ClientError, RuntimeError, TimeoutError, ValueError,
                AttributeError) as exc:
            log.warning("cannot read the Lago subscription of a customer (%s); %s",
                        type(exc).__name__, "keeping the last answer" if stale
                        else "billing the customer id")
            self._subs[customer] = (time.monotonic() + RETRY_S, stale)
            return stale

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
