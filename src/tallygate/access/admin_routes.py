"""Admin and spend routes, in LiteLLM's names so that existing scripts keep working.

Keys: POST /key/generate, GET /key/info, POST /key/update, POST /key/delete,
GET /key/list. Teams: POST /team/new, GET /team/info. Customers: POST /customer/new,
GET /customer/info. Spend: GET /spend/logs, /spend/keys, /spend/customers.
Every route needs the master key (401 without a key, 403 with any other), except that
a virtual key may read its own ``/key/info``. The plain key appears in exactly one
response: the one from ``/key/generate``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from tallygate.access import ledger
from tallygate.access.keys import AccessStore, hash_key, token_of
from tallygate.access.policy import VirtualKeyPolicy
from tallygate.errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    TallygateError,
)
from tallygate.event import new_call_id
from tallygate.proxy.auth import presented_key
from tallygate.proxy.validation import close_after, read_in_time
from tallygate.storable import check_storable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID_HEADER = "x-request-id"  # on every answer of the gateway, as the proxy's


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")


def _error(exc: TallygateError) -> web.Response:
    return web.Response(body=orjson.dumps(exc.to_body()), status=exc.status_code,
                        headers=exc.headers, content_type="application/json")


async def _body(request: web.Request, timeout_s: float) -> dict[str, Any]:
    raw = await read_in_time(request, timeout_s)
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequestError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("the body must be a JSON object")
    for name, value in data.items():  # stored in the access tables: must be storable
        check_storable(name, "body")
        check_storable(value, name)
    return data


def _date_ms(value: str | None, name: str, *, end: bool = False) -> int | None:
    """``2024-05-01`` (a whole day; as an end date, inclusive) or an ISO 8601 time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequestError(f"{name} must be a date (YYYY-MM-DD) or ISO 8601 time",
                              param=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ms = int(moment.timestamp() * 1000)
    if end and len(value) == 10:
        ms += 86_400_000
    return ms


class AdminRoutes:
    def __init__(self, policy: VirtualKeyPolicy) -> None:
        self.policy = policy

    @property
    def store(self) -> AccessStore:
        assert self.policy.store is not None, "gateway not started"
        return self.policy.store

    def _master(self, request: web.Request) -> None:
        key = presented_key(request)
        if key is None:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer "
                                      "<master key>'", code="missing_api_key")
        if self.policy.master_key is None:
            raise PermissionDeniedError("admin routes need general_settings.master_key")
        if not self.policy.is_master(key):
            raise PermissionDeniedError("this route needs the master key")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await _body(request, self.policy.settings.body_read_timeout_s)

    def route(self, fn: Handler, *, admin: bool = True) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                if admin:
                    self._master(request)
                for name, value in request.query.items():  # they reach the access tables
                    check_storable(value, name)
                answer = await fn(request)
            except TallygateError as exc:
                answer = close_after(_error(exc), exc)
            answer.headers[REQUEST_ID_HEADER] = new_call_id()
            return answer
        return handler

    # -- keys ------------------------------------------------------------------------

    async def key_generate(self, request: web.Request) -> web.StreamResponse:
        plain, record = await self.store.create_key(await self._body(request))
        return _json({"key": plain, **record.as_json()})

    async def _token(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise BadRequestError("key is required", param="key")
        return token_of(value)

    async def key_info(self, request: web.Request) -> web.StreamResponse:
        asked = request.query.get("key")
        presented = presented_key(request)
        if not self.policy.is_master(presented):
            # A virtual key may read itself (and nothing else).
            if presented is None:
                self._master(request)
            assert presented is not None
            # Always hashed: the stored hash (what /key/list shows) is not a credential.
            own = hash_key(presented)
            if await self.store.key(own, cached=False) is None:
                raise AuthenticationError("invalid API key")
            if asked is not None and token_of(asked) != own:
                raise PermissionDeniedError("a key may only read its own /key/info")
            asked = presented
        await self.policy.flush_settlements()  # its spend includes this gateway's calls
        record = await self.store.key(await self._token(asked), cached=False)
        if record is None:
            raise NotFoundError("no such key", code="key_not_found", param="key")
        return _json({"key": record.token, "info": record.as_json()})

    async def key_update(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        record = await self.store.update_key(await self._token(body.get("key")),
                                             {k: v for k, v in body.items() if k != "key"})
        return _json({"key": record.token, **record.as_json()})

    async def key_delete(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        keys = body.get("keys") or []
        aliases = body.get("key_aliases") or []
        if not isinstance(keys, list) or not isinstance(aliases, list) or not (keys or aliases):
            raise BadRequestError("send {\"keys\": [...]} or {\"key_aliases\": [...]}",
                                  param="keys")
        tokens = {token_of(str(k)): str(k) for k in keys}
        for alias in aliases:
            token = await self.store.token_for_alias(str(alias))
            if token is not None:
                tokens[token] = str(alias)
        deleted = await self.store.delete_keys(list(tokens))
        if not deleted:
            raise NotFoundError("none of these keys exist", code="key_not_found", param="keys")
        # The hashes of the deleted keys: a plain key is never echoed back.
        return _json({"deleted_keys": deleted})

    async def key_list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            page = max(int(q.get("page", "1")), 1)
            size = min(max(int(q.get("size", "100")), 1), 1000)
        except ValueError:
            raise BadRequestError("page and size must be integers") from None
        records, total = await self.store.list_keys(
            user_id=q.get("user_id"), team_id=q.get("team_id"), key_alias=q.get("key_alias"),
            customer_id=q.get("customer_id"), page=page, size=size)
        full = q.get("return_full_object", "false").lower() == "true"
        return _json({"keys": [r.as_json() if full else r.token for r in records],
                      "total_count": total, "current_page": page,
                      "total_pages": math.ceil(total / size) if total else 0})

    # -- teams and customers ---------------------------------------------------------

    async def team_new(self, request: web.Request) -> web.StreamResponse:
        return _json((await self.store.create_team(await self._body(request))).as_json())

    async def team_info(self, request: web.Request) -> web.StreamResponse:
        team_id = request.query.get("team_id")
        if not team_id:
            raise BadRequestError("team_id is required", param="team_id")
        await self.policy.flush_settlements()  # its spend includes this gateway's calls
        team = await self.store.team(team_id, cached=False)
        if team is None:
            raise NotFoundError(f"no team {team_id!r}", code="team_not_found")
        keys, _ = await self.store.list_keys(team_id=team_id, size=1000)
        return _json({"team_id": team_id, "team_info": team.as_json(),
                      "keys": [k.as_json() for k in keys]})

    async def customer_new(self, request: web.Request) -> web.StreamResponse:
        return _json((await self.store.create_customer(await self._body(request))).as_json())

    async def customer_info(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        customer_id = q.get("customer_id") or q.get("end_user_id") or q.get("user_id")
        if not customer_id:
            raise BadRequestError("customer_id (or end_user_id) is required",
                                  param="customer_id")
        await self.policy.flush_settlements()
        customer = await self.store.customer(customer_id, cached=False)
        if customer is None:
            raise NotFoundError(f"no customer {customer_id!r}", code="customer_not_found")
        return _json(customer.as_json())

    # -- spend -----------------------------------------------------------------------

    def _filters(self, request: web.Request) -> tuple[int | None, int | None, dict[str, Any]]:
        q = request.query
        since = _date_ms(q.get("start_date"), "start_date")
        until = _date_ms(q.get("end_date"), "end_date", end=True)
        api_key = q.get("api_key")
        filters = {
            "key_token": token_of(api_key) if api_key else None,
            "key_alias": q.get("key_alias"), "user_id": q.get("user_id"),
            "team_id": q.get("team_id"),
            "customer_id": q.get("customer_id") or q.get("end_user_id"),
            "model": q.get("model"), "status": q.get("status"),
        }
        return since, until, filters

    async def spend_logs(self, request: web.Request) -> web.StreamResponse:
        since, until, filters = self._filters(request)
        try:
            limit = min(max(int(request.query.get("limit", "1000")), 1), 100_000)
        except ValueError:
            raise BadRequestError("limit must be an integer", param="limit") from None
        assert self.policy.db is not None
        await self.policy.flush_settlements()  # read this gateway's own writes
        found = await ledger.rows(self.policy.db, since_ms=since, until_ms=until,
                                  filters=filters)
        total = ledger.Totals()
        for row in found:
            total.add(row)
        return _json({"logs": [ledger.row_json(r) for r in found[-limit:]],
                      "total": ledger.totals_json(total)})

    async def _spend_by(self, request: web.Request, by: str, name: str) -> web.StreamResponse:
        since, until, filters = self._filters(request)
        assert self.policy.db is not None
        await self.policy.flush_settlements()
        groups, total = await ledger.grouped(self.policy.db, by, since_ms=since,
                                             until_ms=until, filters=filters)
        items = [{name: g.label, **g.extra, **ledger.totals_json(g)} for g in groups]
        return _json({"data": items, "total": ledger.totals_json(total)})

    async def spend_keys(self, request: web.Request) -> web.StreamResponse:
        return await self._spend_by(request, "key", "token")

    async def spend_customers(self, request: web.Request) -> web.StreamResponse:
        return await self._spend_by(request, "customer", "customer_id")


def add_admin_routes(app: web.Application, policy: VirtualKeyPolicy) -> None:
    """Register the admin and spend routes (before any catch-all route)."""
    a = AdminRoutes(policy)
    r = app.router
    r.add_post("/key/generate", a.route(a.key_generate))
    r.add_get("/key/info", a.route(a.key_info, admin=False))
    r.add_post("/key/update", a.route(a.key_update))
    r.add_post("/key/delete", a.route(a.key_delete))
    r.add_get("/key/list", a.route(a.key_list))
    r.add_post("/team/new", a.route(a.team_new))
    r.add_get("/team/info", a.route(a.team_info))
    r.add_post("/customer/new", a.route(a.customer_new))
    r.add_get("/customer/info", a.route(a.customer_info))
    r.add_get("/spend/logs", a.route(a.spend_logs))
    r.add_get("/spend/keys", a.route(a.spend_keys))
    r.add_get("/spend/customers", a.route(a.spend_customers))
