"""A Lago stand-in for tests: a real aiohttp server that behaves like Lago's events API.

It follows the ground truth in ``shared/lago/CONTRACT.md`` (Lago's Rails server, not
only its OpenAPI spec): same routes, statuses and exact error bodies, all-or-nothing
batches with in-payload duplicates reported at the later index, validation before the
duplicate check, and the 6-key permit list. Every POST body it receives is also checked
against Lago's official JSON schema; violations land in ``schema_violations``.

The server always runs on its own thread and event loop, so sync tests (and sync
clients) can use it as plainly as async ones::

    with FakeLago(api_keys={"k"}) as lago:            # sync test
        requests.post(lago.url + "/api/v1/events", ...)
        lago.fail_with(500, times=2)
        lago.stop(); lago.start()                     # Lago down, then back on the same port

    async with FakeLago() as lago:                    # async test
        sink = LagoSink(LagoSettings(api_base=lago.url, api_key=TEST_API_KEY, ...))

Run it by hand: ``python -m tests.fakes.lago_server --port 3000 --api-key KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from jsonschema import Draft202012Validator

TEST_API_KEY = "lago-test-key"
DEFAULT_MAX_BATCH = 100  # LAGO_EVENTS_BATCH_MAX_LENGTH

# The permit list of EventsController#create_params / #batch_params.
PERMITTED_SCALARS = ("transaction_id", "external_subscription_id", "code", "timestamp",
                     "precise_total_amount_cents")

EXPRESSION_FAILURE = "expression_evaluation_failed: Variable: b not found"

# Exact bodies of lago-api's api_errors.rb / api_responses.rb.
BODY_400_EVENT = {"status": 400,
                  "error": "BadRequest: param is missing or the value is empty or invalid: event"}
BODY_401 = {"status": 401, "error": "Unauthorized"}
BODY_403 = {"status": 403, "error": "Forbidden", "code": "write_action_not_allowed_for_event"}
BODY_404_EVENT = {"status": 404, "error": "Not Found", "code": "event_not_found"}
BODY_429 = {"status": 429, "error": "Too Many Requests"}  # undocumented; a placeholder
HTTP_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
                504: "Gateway Timeout", 429: "Too Many Requests"}

# Ruby's BigDecimal(ts.to_s) accepts a plain decimal number, with optional spaces.
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_SPEC_DIR = REPO_ROOT.parent / "shared" / "lago"
VENDORED_SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

Store = Literal["postgres", "clickhouse"]
ErrorDetail = dict[str, list[str]] | str


def unprocessable(details: Any) -> dict[str, Any]:
    """The 422 envelope of every validation failure."""
    return {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
            "error_details": details}


# --- schemas ---------------------------------------------------------------------


def _oneof_as_anyof(node: Any) -> Any:
    """Lago's spec says oneOf[string, integer, number] for property values; every JSON
    integer matches two branches, so a strict validator rejects the spec's own example.
    Validating with anyOf semantics is what the spec means."""
    if isinstance(node, dict):
        return {("anyOf" if k == "oneOf" else k): _oneof_as_anyof(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_oneof_as_anyof(v) for v in node]
    return node


@dataclass(frozen=True)
class EventSchemas:
    single: Draft202012Validator
    batch: Draft202012Validator
    source: str  # "official" or "derived"

    @classmethod
    def load(cls, spec_dir: Path | None = None) -> EventSchemas:
        """Lago's official schemas when ``../shared/lago`` is there, else the vendored
        server-lenient DERIVED ones."""
        spec = spec_dir if spec_dir is not None else SHARED_SPEC_DIR
        if (spec / "jsonschema_EventInput.json").is_file():
            names = ("jsonschema_EventInput.json", "jsonschema_EventBatchInput.json")
            base, source = spec, "official"
        else:
            names = ("DERIVED_EventInput.server_lenient.json",
                     "DERIVED_EventBatchInput.server_lenient.json")
            base, source = VENDORED_SCHEMA_DIR, "derived"
        single, batch = (_oneof_as_anyof(json.loads((base / n).read_text())) for n in names)
        return cls(Draft202012Validator(single), Draft202012Validator(batch), source)

    def violations(self, validator: Draft202012Validator, body: Any, where: str) -> list[str]:
        return [f"{where}: {'/'.join(str(p) for p in err.absolute_path) or '<root>'}: "
                f"{err.message}" for err in validator.iter_errors(body)]


# --- stored events ---------------------------------------------------------------


@dataclass
class StoredEvent:
    """One event as Lago keeps it, plus what the client sent for it."""

    transaction_id: str
    external_subscription_id: str | None
    code: str | None
    timestamp: Decimal          # Unix seconds, exact
    properties: dict[str, Any]
    precise_total_amount_cents: str | None
    sent: dict[str, Any]        # the permitted keys as received
    lago_id: str | None
    created_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        """V1::EventSerializer's shape (create responses resolve nothing: nulls)."""
        return {
            "lago_id": self.lago_id,
            "transaction_id": self.transaction_id,
            "lago_customer_id": None,
            "code": self.code,
            "timestamp": iso8601_ms(self.timestamp),
            "precise_total_amount_cents": self.precise_total_amount_cents,
            "properties": self.properties,
            "lago_subscription_id": None,
            "external_subscription_id": self.external_subscription_id,
            "created_at": (None if self.created_at is None
                           else self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")),
        }


def iso8601_ms(seconds: Decimal) -> str:
    """Ruby's ``time.iso8601(3)``: milliseconds truncated, ``Z``."""
    whole = int(seconds // 1)
    millis = int((seconds - whole) * 1000)
    moment = datetime.fromtimestamp(whole, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def parse_timestamp(value: Any, received_at: Decimal) -> Decimal | None:
    """``BigDecimal(ts.to_s)``; None when Ruby would raise (-> invalid_format)."""
    if value is None or value is False:  # falsy in Ruby: the time of reception
        return received_at
    text = "true" if value is True else str(value)
    if not _NUMERIC.match(text):
        return None
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        return None


def _as_text(value: Any) -> str | None:
    """A scalar as Rails stores it in a string column."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def permit(raw: Any) -> dict[str, Any]:
    """Rails strong params: the 5 scalar keys (scalars only) and a free ``properties`` hash.
    Anything else, ``external_customer_id`` included, is dropped without a word."""
    if not isinstance(raw, dict):
        return {}
    kept = {k: raw[k] for k in PERMITTED_SCALARS
            if k in raw and (raw[k] is None or isinstance(raw[k], str | int | float | bool))}
    if "properties" in raw and (raw["properties"] is None or isinstance(raw["properties"], dict)):
        kept["properties"] = raw["properties"]
    return kept


# --- faults ----------------------------------------------------------------------


@dataclass
class Fault:
    status: int
    remaining: int | None           # None: until cleared
    body: Any
    headers: dict[str, str]
    skip: int = 0                   # requests to let through before it starts


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any                       # parsed JSON, or the raw text when it was not JSON
    at: float = field(default_factory=time.monotonic)


# --- the server ------------------------------------------------------------------


class FakeLago:
    """Lago's events API on 127.0.0.1, with knobs for the faults a real Lago can show.

    State (read it any time, from any thread): ``stored`` (every stored event, in
    order), ``events`` (the first stored event per transaction_id, in order, as GET
    would find it), ``requests`` (every request received), ``schema_violations``,
    ``subscriptions`` (``add_subscription()``; listed by ``GET /api/v1/subscriptions``).

    Knobs (set them while it runs): ``fail_with()``, ``slow``, ``drop_after_store``,
    ``reject()``, ``forbidden``, ``api_keys``, ``stop()``/``start()``, ``clear_faults()``.
    """

    def __init__(self, *, api_keys: Iterable[str] = (TEST_API_KEY,), port: int = 0,
                 store: Store = "postgres", max_batch: int = DEFAULT_MAX_BATCH,
                 spec_dir: Path | None = None) -> None:
        self.api_keys: set[str] = set(api_keys)
        self.store: Store = store
        self.max_batch = max_batch
        self.schemas = EventSchemas.load(spec_dir)
        # Knobs.
        self.slow = 0.0                 # seconds to wait before answering each request
        self.drop_after_store = 0       # next N successful writes: store, then hang up
        self.forbidden = False          # every write gets 403 write_action_not_allowed
        self.rejections: dict[str, ErrorDetail] = {}        # by transaction_id
        self.code_rejections: dict[str, ErrorDetail] = {}   # by code (a bad expression)
        self._faults: list[Fault] = []
        # State.
        self.stored: list[StoredEvent] = []
        self.subscriptions: list[dict[str, Any]] = []   # add_subscription()
        self.requests: list[RecordedRequest] = []
        self.schema_violations: list[str] = []
        self._lock = threading.RLock()
        # Lifecycle.
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FakeLago has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The api_base a client is given (``LAGO_API_BASE``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- state views ----------------------------------------------------------------

    @property
    def events(self) -> dict[str, StoredEvent]:
        with self._lock:
            first: dict[str, StoredEvent] = {}
            for ev in self.stored:
                first.setdefault(ev.transaction_id, ev)
            return first

    def count(self, transaction_id: str) -> int:
        """How many stored events carry this transaction_id (billed twice if > 1)."""
        with self._lock:
            return sum(1 for ev in self.stored if ev.transaction_id == transaction_id)

    def requests_to(self, path: str, method: str = "POST") -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and r.method == method]

    def reset(self) -> None:
        """Forget stored events, requests and violations, and clear every fault."""
        with self._lock:
            self.stored.clear()
            self.requests.clear()
            self.schema_violations.clear()
        self.clear_faults()

    # -- knobs ----------------------------------------------------------------------

    def fail_with(self, status: int, times: int | None = None, *, body: Any = None,
                  headers: dict[str, str] | None = None, reset_s: int = 1,
                  after: int = 0) -> None:
        """Answer ``times`` requests (all of them while ``times`` is None, until
        ``clear_faults()``) with ``status``, starting after ``after`` requests that go
        through. A 429 carries Lago Cloud's rate-limit headers, ``X-RateLimit-Reset``
        being ``reset_s``."""
        hdrs = dict(headers or {})
        if status == 429:
            hdrs = {"X-RateLimit-Limit": "500", "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset_s), **hdrs}
            default_body: Any = BODY_429
        else:
            default_body = {"status": status, "error": HTTP_REASONS.get(status, "Error")}
        with self._lock:
            self._faults.append(Fault(status, times, default_body if body is None else body,
                                      hdrs, skip=after))

    def reject(self, transaction_id: str | None = None, *, code: str | None = None,
               detail: ErrorDetail = EXPRESSION_FAILURE) -> None:
        """Make events of this transaction_id (or billable metric ``code``) fail
        validation with ``detail`` (e.g. ``{"timestamp": ["invalid_format"]}`` or an
        expression error string), as a metric's failing expression would."""
        with self._lock:
            if transaction_id is not None:
                self.rejections[transaction_id] = detail
            if code is not None:
                self.code_rejections[code] = detail

    def add_subscription(self, external_customer_id: str, external_id: str, *,
                         status: str = "active", plan_code: str = "llm_usage") -> dict[str, Any]:
        """A subscription as ``GET /api/v1/subscriptions`` lists it (SubscriptionObject's
        required fields; only ``external_id``, ``external_customer_id``, ``status`` and
        ``plan_code`` carry meaning here)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sub: dict[str, Any] = {
            "lago_id": str(uuid.uuid4()), "external_id": external_id,
            "lago_customer_id": str(uuid.uuid5(uuid.NAMESPACE_URL, external_customer_id)),
            "external_customer_id": external_customer_id, "billing_time": "calendar",
            "name": None, "plan_code": plan_code, "status": status, "created_at": now,
            "canceled_at": None, "started_at": now if status == "active" else None,
            "ending_at": None, "subscription_at": now,
            "terminated_at": now if status == "terminated" else None,
            "previous_plan_code": None, "next_plan_code": None, "downgrade_plan_date": None,
            "trial_ended_at": None, "current_billing_period_started_at": now,
            "current_billing_period_ending_at": None, "on_termination_credit_note": None,
            "on_termination_invoice": "generate"}
        with self._lock:
            self.subscriptions.append(sub)
        return sub

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.rejections.clear()
            self.code_rejections.clear()
            self.slow = 0.0
            self.drop_after_store = 0
            self.forbidden = False

    def _take_fault(self) -> Fault | None:
        with self._lock:
            while self._faults:
                fault = self._faults[0]
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                if fault.remaining is None:
                    return fault
                if fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.pop(0)
                    return fault
                self._faults.pop(0)
            return None

    def _take_drop(self) -> bool:
        with self._lock:
            if self.drop_after_store > 0:
                self.drop_after_store -= 1
                return True
            return False

    # -- lifecycle (sync: the server has its own thread and loop) --------------------

    def start(self) -> FakeLago:
        """Start serving (again, on the same port after ``stop()``)."""
        if self._loop is None:
            self._boot_thread()
        self._call(self._serve())
        return self

    def stop(self) -> None:
        """Stop serving and close open connections; the thread and state stay, so
        ``start()`` comes back on the same port (Lago down, then up)."""
        if self._loop is not None and self.running:
            self._call(self._unserve())

    def close(self) -> None:
        """Stop and end the server thread."""
        self.stop()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeLago:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> FakeLago:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    def _boot_thread(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # Closed here, on its own thread: the caller may be inside a running loop.
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-lago", daemon=True)
        self._thread.start()
        ready.wait(5)

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _serve(self) -> None:
        if self._runner is not None:
            return
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
        await site.start()
        if not self._port:
            self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def _unserve(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- HTTP -----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/api/v1/events", self._create)
        app.router.add_post("/api/v1/events/batch", self._batch)
        app.router.add_get("/api/v1/events", self._index)
        app.router.add_get("/api/v1/events/{transaction_id}", self._show)
        app.router.add_get("/api/v1/subscriptions", self._subscriptions)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """Log, delay, inject faults, authenticate: what happens before Rails routes."""
        text = await request.text()
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.path,
                                                 dict(request.headers), body))
        if self.slow:
            await asyncio.sleep(self.slow)
        fault = self._take_fault()
        if fault is not None:
            return web.json_response(fault.body, status=fault.status, headers=fault.headers)
        # Rails takes the second whitespace-separated token and never checks the scheme.
        words = request.headers.get("Authorization", "").split()
        if len(words) < 2 or words[1] not in self.api_keys:
            return web.json_response(BODY_401, status=401)
        if self.forbidden and request.method == "POST":
            return web.json_response(BODY_403, status=403)
        response: web.StreamResponse = await handler(request)
        return response

    @staticmethod
    async def _params(request: web.Request) -> Any:
        """The parsed body, as Rails sees it: only under a JSON content type
        (wrap_parameters false), and nothing at all when it is not valid JSON."""
        if request.content_type != "application/json":
            return None
        try:
            return json.loads(await request.text())
        except ValueError:
            return None

    def _check_schema(self, validator: Draft202012Validator, body: Any, where: str) -> None:
        found = self.schemas.violations(validator, body, where)
        if found:
            with self._lock:
                self.schema_violations.extend(found)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await self._params(request)
        if body is not None:
            self._check_schema(self.schemas.single, body, "POST /api/v1/events")
        raw = body.get("event") if isinstance(body, dict) else None
        if not raw or not isinstance(raw, dict):  # params.require(:event)
            return web.json_response(BODY_400_EVENT, status=400)
        params = permit(raw)
        received_at = Decimal(time.time_ns()) / Decimal(1_000_000_000)
        with self._lock:
            built = self._build(params, received_at)
            if isinstance(built, str | dict):
                return web.json_response(unprocessable(built), status=422)
            # The ClickHouse store never calls save!: no presence or duplicate check.
            if self.store == "postgres":
                missing = _missing_fields(built)
                if missing:
                    return web.json_response(unprocessable(missing), status=422)
                if self._duplicate(built, ()):
                    return web.json_response(
                        unprocessable({"transaction_id": ["value_already_exist"]}), status=422)
            self._keep([built])
        return self._answer(request, {"event": built.as_json()})

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        body = await self._params(request)
        if body is not None:
            self._check_schema(self.schemas.batch, body, "POST /api/v1/events/batch")
        # batch_params uses permit, not require: no parsed body simply means no events.
        items = body.get("events") if isinstance(body, dict) else None
        if not items or not isinstance(items, list):
            return web.json_response(unprocessable({"events": ["no_events"]}), status=422)
        if len(items) > self.max_batch:
            return web.json_response(unprocessable({"events": ["too_many_events"]}), status=422)
        received_at = Decimal(time.time_ns()) / Decimal(1_000_000_000)
        with self._lock:
            # Pass 1, validate_events: timestamp, expression, presence.
            errors: dict[str, Any] = {}
            built: list[StoredEvent] = []
            for index, item in enumerate(items):
                one = self._build(permit(item), received_at)
                if isinstance(one, str | dict):
                    errors[str(index)] = one
                    continue
                missing = _missing_fields(one)
                if missing:
                    errors[str(index)] = missing
                built.append(one)
            if errors:
                return web.json_response(unprocessable(errors), status=422)
            # Pass 2, the insert: duplicates (in the store or earlier in this payload).
            if self.store == "postgres":
                for index, one in enumerate(built):
                    if self._duplicate(one, built[:index]):
                        errors[str(index)] = {"transaction_id": ["value_already_exist"]}
                if errors:  # raise ActiveRecord::Rollback: nothing is stored
                    return web.json_response(unprocessable(errors), status=422)
            self._keep(built)
        return self._answer(request, {"events": [ev.as_json() for ev in built]})

    def _answer(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        # Stored, but the client never hears so: it must resend and get a 422.
        if self._take_drop() and request.transport is not None:
            request.transport.abort()
        return web.json_response(payload)

    async def _show(self, request: web.Request) -> web.StreamResponse:
        found = self.events.get(request.match_info["transaction_id"])
        if found is None:
            return web.json_response(BODY_404_EVENT, status=404)
        return web.json_response({"event": found.as_json()})

    async def _index(self, request: web.Request) -> web.StreamResponse:
        """A list with Lago's ``meta``; filters by external_subscription_id and code."""
        q = request.query
        try:
            page = max(int(q.get("page", "1")), 1)
            per_page = max(int(q.get("per_page", "100")), 1)
        except ValueError:
            page, per_page = 1, 100
        with self._lock:
            chosen = [ev for ev in self.stored
                      if q.get("external_subscription_id") in (None, ev.external_subscription_id)
                      and q.get("code") in (None, ev.code)]
        total_pages = max((len(chosen) + per_page - 1) // per_page, 1) if chosen else 0
        window = chosen[(page - 1) * per_page: page * per_page]
        meta = {"current_page": page,
                "next_page": page + 1 if page < total_pages else None,
                "prev_page": page - 1 if page > 1 else None,
                "total_pages": total_pages, "total_count": len(chosen)}
        return web.json_response({"events": [ev.as_json() for ev in window], "meta": meta})

    async def _subscriptions(self, request: web.Request) -> web.StreamResponse:
        """``findAllSubscriptions``: only ``active`` ones unless ``status[]`` says
        otherwise; filters ``external_customer_id`` and ``plan_code``; paginated."""
        q = request.query
        statuses = set(q.getall("status[]", [])) or {"active"}
        try:
            page = max(int(q.get("page", "1")), 1)
            per_page = max(int(q.get("per_page", "20")), 1)
        except ValueError:
            page, per_page = 1, 20
        with self._lock:
            chosen = [copy.deepcopy(s) for s in self.subscriptions
                      if s["status"] in statuses
                      and q.get("external_customer_id") in (None, s["external_customer_id"])
                      and q.get("plan_code") in (None, s["plan_code"])]
        total_pages = (len(chosen) + per_page - 1) // per_page
        window = chosen[(page - 1) * per_page: page * per_page]
        meta = {"current_page": page,
                "next_page": page + 1 if page < total_pages else None,
                "prev_page": page - 1 if page > 1 else None,
                "total_pages": total_pages, "total_count": len(chosen)}
        return web.json_response({"subscriptions": window, "meta": meta})

    # -- the service layer ----------------------------------------------------------

    def _build(self, params: dict[str, Any], received_at: Decimal) -> StoredEvent | ErrorDetail:
        """Events::CreateService up to save!: the event, or the error that stops it."""
        ts = parse_timestamp(params.get("timestamp"), received_at)
        if ts is None:
            return {"timestamp": ["invalid_format"]}
        tx = _as_text(params.get("transaction_id"))
        code = _as_text(params.get("code"))
        rejected = self.rejections.get(tx or "") or self.code_rejections.get(code or "")
        if rejected is not None:
            return copy.deepcopy(rejected)
        amount = params.get("precise_total_amount_cents")
        postgres = self.store == "postgres"
        return StoredEvent(
            transaction_id=tx or "", external_subscription_id=_as_text(
                params.get("external_subscription_id")),
            code=code, timestamp=ts, properties=dict(params.get("properties") or {}),
            precise_total_amount_cents=None if amount is None else str(amount),
            sent=params, lago_id=str(uuid.uuid4()) if postgres else None,
            created_at=datetime.now(UTC) if postgres else None)

    def _duplicate(self, event: StoredEvent, earlier: Iterable[StoredEvent]) -> bool:
        """The unique index (org, external_subscription_id, transaction_id); NULLs are
        distinct in Postgres, so an event without a subscription never collides."""
        if event.external_subscription_id is None:
            return False
        key = (event.external_subscription_id, event.transaction_id)

        def same(other: StoredEvent) -> bool:
            return (other.external_subscription_id, other.transaction_id) == key

        return any(same(o) for o in earlier) or any(same(o) for o in self.stored)

    def _keep(self, events: list[StoredEvent]) -> None:
        if self.store == "clickhouse":  # upsert on (transaction_id, timestamp)
            for ev in events:
                self.stored[:] = [o for o in self.stored
                                  if (o.transaction_id, o.timestamp)
                                  != (ev.transaction_id, ev.timestamp)]
        self.stored.extend(events)


def _missing_fields(event: StoredEvent) -> dict[str, list[str]]:
    """``validates :transaction_id, :code, presence: true`` (blank: value_is_mandatory)."""
    return {name: ["value_is_mandatory"]
            for name, value in (("transaction_id", event.transaction_id), ("code", event.code))
            if _blank(value)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Lago stand-in by hand.")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--api-key", action="append", default=None,
                        help=f"accepted API key (repeatable; default {TEST_API_KEY})")
    parser.add_argument("--store", choices=("postgres", "clickhouse"), default="postgres")
    args = parser.parse_args(argv)
    lago = FakeLago(api_keys=args.api_key or [TEST_API_KEY], port=args.port, store=args.store)
    with lago:
        print(f"Lago stand-in on {lago.url} ({lago.schemas.source} schemas); Ctrl-C to stop.")
        print(f"  LAGO_API_BASE={lago.url} LAGO_API_KEY=<your key> LAGO_API_EVENT_CODE=<code>")
        seen = 0
        try:
            while True:
                time.sleep(0.5)
                for ev in list(lago.stored)[seen:]:
                    print(json.dumps(ev.as_json()))
                seen = len(lago.stored)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
