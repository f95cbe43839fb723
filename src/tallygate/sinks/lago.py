"""LagoSink: usage events into Lago's events API, never lost and never billed twice.

Lago deduplicates on (external_subscription_id, transaction_id); an event's
``call_id`` and ``timestamp`` are fixed when it is made, so every resend is the same
event and a 422 ``value_already_exist`` means "already delivered".

A batch (``POST /api/v1/events/batch``) is all-or-nothing: when Lago answers 422
with per-index errors, *nothing* of the batch was stored. The sink then settles the
named indices (duplicates: delivered; anything else: dead, with Lago's reason) and
resends the rest at once, a bounded number of rounds, within the same ``send``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import aiohttp
import orjson

from tallygate.attribution import ChargeBy, parse_charge_by
from tallygate.errors import ConfigError
from tallygate.event import UsageEvent, format_decimal
from tallygate.sinks.base import BatchResult

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/events"
BATCH_PATH = "/api/v1/events/batch"
LAGO_MAX_BATCH = 100            # Lago's default LAGO_EVENTS_BATCH_MAX_LENGTH
REQUIRED_ENV = ("LAGO_API_BASE", "LAGO_API_KEY", "LAGO_API_EVENT_CODE")
# Each 422 round settles at least one event; Lago needs two at most (validation, then
# duplicates), so a few rounds are plenty.
MAX_ROUNDS = 4
USER_AGENT = "tallygate-lago-sink"
ModelProperty = Literal["deployment", "group"]
MODEL_PROPERTIES: tuple[ModelProperty, ...] = ("deployment", "group")


@dataclass(frozen=True, slots=True)
class LagoSettings:
    """Where and how to send events. ``api_key`` never appears in repr or errors."""

    api_base: str
    api_key: str = field(repr=False)
    event_code: str
    charge_by: ChargeBy = "end_user_id"
    batch_size: int = LAGO_MAX_BATCH
    single_event_mode: bool = False   # for old Lago installs without /events/batch
    timeout_s: float = 10.0
    # precise_total_amount_cents is in the plan's currency and only read by Lago's
    # dynamic charge model; our costs are USD, so sending it is a choice, not a default.
    send_amount: bool = False
    # What ``properties.model`` holds: "deployment" (the deployment's model without its
    # provider prefix, as LiteLLM's Lago integration sends it) or "group" (the model
    # group the client asked for). ``model_group`` always holds the group.
    model_property: ModelProperty = "deployment"

    def __post_init__(self) -> None:
        base = self.api_base.strip().rstrip("/")
        # LiteLLM's LAGO_API_BASE is the host; accept a base that already ends in /api/v1.
        base = base.removesuffix("/api/v1")
        if not base.startswith(("http://", "https://")):
            raise ConfigError("LAGO_API_BASE must start with http:// or https://")
        object.__setattr__(self, "api_base", base)
        if self.batch_size < 1:
            raise ConfigError("the Lago batch size must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("the Lago timeout must be positive")
        parse_charge_by(self.charge_by)
        if self.model_property not in MODEL_PROPERTIES:
            raise ConfigError(f"TALLYGATE_LAGO_MODEL must be one of "
                              f"{', '.join(MODEL_PROPERTIES)}, got {self.model_property!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LagoSettings:
        """Read LiteLLM's variables (``LAGO_API_BASE``, ``LAGO_API_KEY``,
        ``LAGO_API_EVENT_CODE``, ``LAGO_API_CHARGE_BY``) and tallygate's optional
        ``TALLYGATE_LAGO_BATCH_SIZE``, ``TALLYGATE_LAGO_SINGLE_EVENT``,
        ``TALLYGATE_LAGO_TIMEOUT_S``, ``TALLYGATE_LAGO_SEND_AMOUNT``,
        ``TALLYGATE_LAGO_MODEL`` (``deployment`` | ``group``).
        A ConfigError names every missing variable."""
        env = os.environ if environ is None else environ
        missing = [name for name in REQUIRED_ENV if not (env.get(name) or "").strip()]
        if missing:
            raise ConfigError("the Lago sink needs " + ", ".join(missing) + " (not set)")
        return cls(
            api_base=env["LAGO_API_BASE"],
            api_key=env["LAGO_API_KEY"].strip(),
            event_code=env["LAGO_API_EVENT_CODE"].strip(),
            charge_by=parse_charge_by(env.get("LAGO_API_CHARGE_BY")),
            batch_size=_env_int(env, "TALLYGATE_LAGO_BATCH_SIZE", LAGO_MAX_BATCH),
            single_event_mode=_env_bool(env, "TALLYGATE_LAGO_SINGLE_EVENT"),
            timeout_s=_env_float(env, "TALLYGATE_LAGO_TIMEOUT_S", 10.0),
            send_amount=_env_bool(env, "TALLYGATE_LAGO_SEND_AMOUNT"),
            model_property=(env.get("TALLYGATE_LAGO_MODEL") or "deployment"  # type: ignore[arg-type]
                            ).strip().lower(),
        )


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


# --- the event body ----------------------------------------------------------------


def lago_event_body(event: UsageEvent, code: str, *, send_amount: bool = False,
                    model_property: ModelProperty = "deployment") -> dict[str, Any]:
    """One Lago event for one call. Property values are strings and integers only (the
    schema allows string|integer|number; a bool or a null would not pass).

    Token properties:

    * ``input_tokens`` / ``prompt_tokens``: ALL input tokens, cached or not, as
      LiteLLM's Lago integration counts them, so existing billable metrics keep
      their meaning. ``output_tokens`` / ``completion_tokens``: output tokens,
      reasoning included. ``total_tokens`` = prompt + completion.
    * Disjoint buckets that add up to ``input_tokens``: ``uncached_input_tokens``,
      ``cached_input_tokens`` (cache reads), ``cache_creation_input_tokens`` (cache
      writes, of which ``cache_creation_1h_input_tokens`` were kept one hour),
      ``audio_input_tokens`` and ``citation_tokens``; ``reasoning_tokens`` and
      ``audio_output_tokens`` are parts of ``output_tokens``; ``image_input_tokens``
      (image models' image input) is a part of ``input_tokens``. Items billed per
      request, and the units of calls not billed in tokens, are counted by name
      (``web_searches``; ``images``, ``audio_seconds``, ``input_characters``,
      ``rerank_searches``). The optional ones are sent only when nonzero.
      ``provider_reported_cost``: what the provider says the call cost, when it says
      (OpenRouter, Perplexity, xAI), beside ``response_cost``.

    ``model`` is the deployment's model without its provider prefix (config
    ``model: openai/my-fake-model`` sends ``"my-fake-model"``), as LiteLLM's integration
    sends it, so billable metrics grouped or filtered by ``model`` keep matching;
    ``model_group`` is the name the client asked for. ``model_property="group"`` puts the
    group in ``model`` instead.

    Money: ``response_cost`` is the Decimal price in USD written from its own digits
    (``"0.00012345"``, never a float), and ``precise_total_amount_cents`` is the same
    amount in cents for Lago's dynamic charge model. When the price is unknown both are
    omitted, never sent as zero, and ``unknown_price`` is ``"true"`` (it is ``"false"``
    on every priced event, so a billable-metric filter on ``unknown_price`` can split
    priced and unpriced calls). ``usage_source`` is ``"estimated"`` when tallygate
    counted the tokens itself.
    """
    if not event.customer:
        raise ValueError(f"event {event.call_id} has no customer to bill")
    u = event.usage
    props: dict[str, str | int] = {
        "model": event.provider_model if model_property == "deployment" else event.model,
        "model_group": event.model,
        "provider": event.provider,
        "provider_model": event.provider_model,
        "kind": event.kind,
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "uncached_input_tokens": u.input_tokens,
        "cached_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_all_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "usage_source": u.source,
        "unknown_price": "true" if event.cost is None else "false",
        "latency_ms": max(event.latency_ms, 0),
    }
    for name, value in (("cache_creation_1h_input_tokens", u.cache_write_1h_tokens),
                        ("audio_input_tokens", u.audio_input_tokens),
                        ("citation_tokens", u.citation_tokens),
                        ("audio_output_tokens", u.audio_output_tokens),
                        ("image_input_tokens", u.image_input_tokens), *u.requests):
        if value:
            props[name] = value
    if event.cost is not None:
        props["response_cost"] = format_decimal(event.cost)
    elif event.unpriced:
        props["unpriced_buckets"] = ",".join(event.unpriced)
    if event.provider_cost is not None:
        # The provider's own figure, beside ours: a reader can compare, never sums both.
        props["provider_reported_cost"] = format_decimal(event.provider_cost)
    optional = {"price_source": event.price_source, "end_user": event.end_user,
                "user_id": event.user_id, "team_id": event.team_id, "key_id": event.key_id}
    props.update({k: v for k, v in optional.items() if v})
    if event.flags:
        props["flags"] = ",".join(sorted(event.flags))
    body: dict[str, Any] = {
        "transaction_id": event.call_id,
        "external_subscription_id": event.customer,
        # Dropped by current Lago (events link to customers through the subscription);
        # read by installs older than mid-2024.
        "external_customer_id": event.customer,
        "code": code,
        "timestamp": event.timestamp,
        "properties": props,
    }
    if send_amount and event.cost is not None:
        body["precise_total_amount_cents"] = format_decimal(event.cost * Decimal(100))
    return body


# --- replies -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int | None              # None: no answer at all
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class _Stop:
    """Why delivery stops for now: every event not yet settled is retried."""

    error: str
    retry_after: float | None = None
    paused: bool = False


def _is_duplicate(detail: Any) -> bool:
    """Lago's "already have it": ``{"transaction_id": ["value_already_exist"]}``."""
    return (isinstance(detail, dict) and set(detail) == {"transaction_id"}
            and detail["transaction_id"] == ["value_already_exist"])


def _reason(detail: Any) -> str:
    return "lago rejected the event: " + orjson.dumps(detail).decode()


def _seconds(value: str | None, now: float) -> float | None:
    """A wait from X-RateLimit-Reset or Retry-After: seconds, an epoch time or a date."""
    if not value:
        return None
    try:
        n = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - now, 0.0)
    return max(n - now if n > 1_000_000_000 else n, 0.0)


def _error_details(reply: _Reply) -> Any:
    return reply.body.get("error_details") if isinstance(reply.body, dict) else None


# --- the sink ----------------------------------------------------------------------


class LagoSink:
    """The Sink for Lago. One pooled aiohttp session, made on the first send."""

    name = "lago"

    def __init__(self, settings: LagoSettings) -> None:
        self.settings = settings
        self.max_batch = settings.batch_size
        self._batch_limit = settings.batch_size   # shrinks if Lago's limit is lower
        self._single = settings.single_event_mode
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"LagoSink({self.settings!r})"

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def send(self, events: Sequence[UsageEvent]) -> BatchResult:
        result = BatchResult()
        queue: deque[UsageEvent] = deque()
        seen: set[str] = set()
        for ev in events:
            if ev.call_id in seen:  # one call id, one event: report it once
                continue
            seen.add(ev.call_id)
            if not ev.customer:
                result.dead[ev.call_id] = ("no customer to bill (LAGO_API_CHARGE_BY="
                                           f"{self.settings.charge_by} resolved nothing)")
            else:
                queue.append(ev)
        while queue:
            size = 1 if self._single else min(self._batch_limit, len(queue))
            chunk = [queue.popleft() for _ in range(size)]
            if self._single:
                stop, requeue = await self._send_one(chunk[0], result)
            else:
                stop, requeue = await self._send_batch(chunk, result)
            queue.extendleft(reversed(requeue))
            if stop is not None:
                result.retry.extend(ev.call_id for ev in queue)
                result.error = stop.error
                result.retry_after = stop.retry_after
                result.paused = stop.paused
                log.warning("lago: %d event(s) to retry: %s", len(queue), stop.error)
                break
        for call_id, why in result.dead.items():
            log.error("lago: event %s dead: %s", call_id, why)
        return result

    async def _send_batch(self, chunk: list[UsageEvent], result: BatchResult,
                          ) -> tuple[_Stop | None, list[UsageEvent]]:
        """Deliver one batch; returns (why to stop, events to send again)."""
        code, amount = self.settings.event_code, self.settings.send_amount
        as_model = self.settings.model_property
        remaining = chunk
        for _ in range(MAX_ROUNDS):
            # A batch's bodies and JSON take a while for 100 events: off the loop.
            data = await asyncio.to_thread(_batch_json, remaining, code, amount, as_model)
            reply = await self._post(BATCH_PATH, data)
            if reply.status == 200:
                result.delivered.extend(e.call_id for e in remaining)
                return None, []
            details = _error_details(reply)
            if reply.status == 404:
                # An old Lago without /events/batch: go on one event at a time.
                log.warning("lago: no batch endpoint (404); sending events one by one")
                self._single = True
                return None, remaining
            too_many = (reply.status == 413
                        or (reply.status == 422 and details == {"events": ["too_many_events"]}))
            if too_many and len(remaining) > 1:
                self._batch_limit = max(len(remaining) // 2, 1)
                log.warning("lago: batch too large; now at most %d", self._batch_limit)
                return None, remaining
            if reply.status == 422 and _is_per_index(details, len(remaining)):
                remaining = self._settle(remaining, details, result)
                if not remaining:
                    return None, []
                continue
            return self._failure(reply), remaining
        return _Stop(f"lago still rejected part of the batch after {MAX_ROUNDS} rounds"), \
            remaining

    def _settle(self, remaining: list[UsageEvent], details: dict[str, Any],
                result: BatchResult) -> list[UsageEvent]:
        """Apply per-index errors; nothing of the batch was stored, so the rest go again."""
        rest: list[UsageEvent] = []
        for index, ev in enumerate(remaining):
            detail = details.get(str(index))
            if detail is None:
                rest.append(ev)
            elif _is_duplicate(detail):
                result.delivered.append(ev.call_id)
            else:
                result.dead[ev.call_id] = _reason(detail)
        return rest

    async def _send_one(self, event: UsageEvent, result: BatchResult,
                        ) -> tuple[_Stop | None, list[UsageEvent]]:
        reply = await self._post(EVENTS_PATH,
                                 {"event": lago_event_body(
                                     event, self.settings.event_code,
                                     send_amount=self.settings.send_amount,
                                     model_property=self.settings.model_property)})
        details = _error_details(reply)
        if reply.status == 200 or (reply.status == 422 and _is_duplicate(details)):
            result.delivered.append(event.call_id)
        elif reply.status == 422 and details:
            result.dead[event.call_id] = _reason(details)
        else:
            return self._failure(reply), [event]
        return None, []

    def _failure(self, reply: _Reply) -> _Stop:
        status = reply.status
        if status is None:
            return _Stop(reply.error or "lago unreachable")
        if status == 401:
            return _Stop("lago refused the API key (401); check LAGO_API_KEY", paused=True)
        if status == 403:
            return _Stop("the Lago API key may not write events (403); check its permissions",
                         paused=True)
        if status == 404:
            return _Stop("no Lago events API at LAGO_API_BASE (404)", paused=True)
        now = time.time()
        wait = (_seconds(reply.headers.get("X-RateLimit-Reset"), now)
                if status == 429 else None)
        if wait is None:
            wait = _seconds(reply.headers.get("Retry-After"), now)
        if status == 429:
            return _Stop("lago rate limit (429)", retry_after=wait)
        return _Stop(f"lago answered {status}: {self._excerpt(reply.body)}", retry_after=wait)

    def _excerpt(self, body: Any) -> str:
        text = body if isinstance(body, str) else orjson.dumps(body).decode()
        return self._redact(text[:300])

    def _redact(self, text: str) -> str:
        return text.replace(self.settings.api_key, "***") if self.settings.api_key else text

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
                headers={"Authorization": f"Bearer {self.settings.api_key}",
                         "User-Agent": USER_AGENT, "Accept": "application/json"},
            )
        return self._session

    async def _post(self, path: str, payload: dict[str, Any] | bytes) -> _Reply:
        """One POST; never raises for I/O, and no error text carries the key."""
        url = self.settings.api_base + path
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        try:
            async with self._client().post(
                url, data=data,
                headers={"Content-Type": "application/json"},
            ) as resp:
                raw = await resp.read()
                headers = {k: v for k, v in resp.headers.items()
                           if k.lower() in ("retry-after", "x-ratelimit-reset")}
                body: Any
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                return _Reply(resp.status, body, _canonical(headers))
        except TimeoutError:
            return _Reply(None, error=f"lago timed out after {self.settings.timeout_s:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return _Reply(None, error=self._redact(f"lago unreachable: "
                                                  f"{type(exc).__name__}: {exc}"))


def _batch_json(events: Sequence[UsageEvent], code: str, amount: bool,
                model_property: ModelProperty) -> bytes:
    return orjson.dumps({"events": [
        lago_event_body(e, code, send_amount=amount, model_property=model_property)
        for e in events]})


def _canonical(headers: Mapping[str, str]) -> dict[str, str]:
    names = {"retry-after": "Retry-After", "x-ratelimit-reset": "X-RateLimit-Reset"}
    return {names[k.lower()]: v for k, v in headers.items()}


def _is_per_index(details: Any, count: int) -> bool:
    """Per-event errors: every key a 0-based index of the batch we sent."""
    return (isinstance(details, dict) and bool(details)
            and all(k.isdigit() and int(k) < count for k in details))
