"""The ``webhook`` sink: POST JSON batches of events to a URL, signed with HMAC-SHA256.

Receivers check ``X-Tallygate-Signature: sha256=<hex>``, the HMAC of
``"<X-Tallygate-Timestamp>." + body`` under the shared secret, and dedupe on each event's
``call_id`` (delivery is at-least-once: a resend after a lost answer repeats a batch).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

import aiohttp
import orjson

from tallygate.errors import ConfigError
from tallygate.event import UsageEvent
from tallygate.sinks.base import BatchResult

SIGNATURE_HEADER = "X-Tallygate-Signature"
TIMESTAMP_HEADER = "X-Tallygate-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, secret: str | None, *, max_batch: int = 100,
                 timeout_s: float = 10.0) -> None:
        self.url = url
        self._secret = secret
        self.max_batch = max_batch
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WebhookSink:
        url = environ.get("TALLYGATE_WEBHOOK_URL")
        if not url:
            raise ConfigError("the webhook callback needs TALLYGATE_WEBHOOK_URL "
                              "(and TALLYGATE_WEBHOOK_SECRET to sign batches)")
        return cls(url, environ.get("TALLYGATE_WEBHOOK_SECRET"))

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        body = orjson.dumps({"events": [e.to_dict() for e in events]})
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, ts, body)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return BatchResult.all_retry(events, f"webhook unreachable: {type(exc).__name__}")
        if 200 <= status < 300:
            return BatchResult(delivered=[e.call_id for e in events])
        if status in (401, 403):
            return BatchResult.all_retry(events, f"webhook refused the credentials ({status})",
                                         paused=True)
        if status == 429 or status == 408 or status >= 500:
            return BatchResult.all_retry(events, f"webhook answered {status}", retry_after)
        reason = f"webhook rejected the batch with {status}"
        return BatchResult(dead={e.call_id: reason for e in events})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
