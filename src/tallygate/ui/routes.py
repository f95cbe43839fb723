"""The dashboard's routes under /ui: login, the pages, their CSV tables and actions.

Unauthenticated, every /ui page answers with the login form. A POST needs this
session's CSRF token (and, when the browser names one, our own Origin). Pages are
sent with Cache-Control: no-store and a Content-Security-Policy that allows nothing
from elsewhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlencode

from aiohttp import web

from tallygate.access.db import wall_ms
from tallygate.access.keys import hash_key
from tallygate.access.policy import VirtualKeyPolicy
from tallygate.errors import TallygateError
from tallygate.proxy.gateway import Gateway
from tallygate.ui import admin_pages, calls, pages, queries
from tallygate.ui.html import Html, esc, page
from tallygate.ui.session import Session, Sessions, clear_cookie, same_origin, set_cookie
from tallygate.ui.view import Page, View

log = logging.getLogger("tallygate.ui")

HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
           "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "script-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'"}

PageFn = Callable[[View], Awaitable[Page]]
CsvStream = Callable[[View, Mapping[str, str]], Awaitable[web.StreamResponse]]


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html",
                        charset="utf-8", headers=HEADERS)


def _login_page(message: str = "", status: int = 200) -> web.Response:
    note = f'<p class="flash error" role="alert">{esc(message)}</p>' if message else ""
    body = Html(f"""{note}<section><form method="post" action="/ui/login">
<p>Sign in with the master key, or with a virtual key to see its own spend.</p>
<input type="password" name="key" autocomplete="current-password" size="48"
 placeholder="sk-..." autofocus> <button type="submit">Sign in</button></form></section>""")
    return _html(page("Sign in", body, path="/ui/login", who=None, csrf=None), status)


class UiRoutes:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        environ = gw.settings.extra.get("environ") or os.environ
        self.sessions = Sessions(gw.settings.master_key, environ)

    @property
    def policy(self) -> VirtualKeyPolicy:
        return self.gw.keys

    async def _session(self, request: web.Request) -> Session | None:
        session = self.sessions.read(request)
        if session is None or session.is_master:
            return session
        # A key session ends when its key is blocked, expired or deleted.
        assert self.policy.store is not None and session.token is not None
        record = await self.policy.store.key(session.token)
        if record is None or record.blocked or record.expired(wall_ms()):
            return None
        return session

    def _who(self, session: Session) -> str:
        return "master key" if session.is_master else "virtual key"

    # -- login -------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            return _login_page("refused: this form was posted from another site", 403)
        data = await request.post()
        key = str(data.get("key", "")).strip()
        role: str | None = None
        token = None
        if self.policy.is_master(key):
            role = "master"
        elif key and self.policy.store is not None:
            record = await self.policy.store.key(hash_key(key), cached=False)
            if record is not None and not record.blocked and not record.expired(wall_ms()):
                role, token = "key", record.token
        if role is None:
            log.info("dashboard sign-in refused from %s", request.remote)
            return _login_page("that key is not valid here", 401)
        value, _ = self.sessions.issue("master" if role == "master" else "key", token)
        response = web.HTTPSeeOther("/ui", headers=HEADERS)
        set_cookie(response, request, value, self.sessions.ttl_s)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = await self._session(request)
        if session is not None:
            refused = await self._refuse_post(request, session)
            if refused is not None:
                return refused
        response = web.HTTPSeeOther("/ui", headers=HEADERS)
        clear_cookie(response, request)
        return response

    # -- pages ---------------------------------------------------------------------------

    def get(self, fn: PageFn, *, master: bool = True, stream: CsvStream | None = None
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``stream``: writes the page's big table itself when its CSV is asked for."""
        async def handler(request: web.Request) -> web.StreamResponse:
            session = await self._session(request)
            if session is None:
                return _login_page()
            if master and not session.is_master:
                return _html(page("Not for this key", Html(
                    "<p>A virtual key sees its own spend only.</p>"), path=request.path,
                    who=self._who(session), csrf=self.sessions.csrf_token(session)), 403)
            view = View(request, self.gw, session, self.sessions.csrf_token(session))
            # Spend pages read the ledger: this gateway's due settlements first.
            await self.policy.flush_settlements()
            if stream is not None and view.arg("csv") == calls.CSV_NAME:
                return await stream(view, HEADERS)
            result = await fn(view)
            return self._render(view, result)
        return handler

    def _render(self, view: View, result: Page) -> web.StreamResponse:
        wanted = view.arg("csv")
        if wanted:
            table = result.tables.get(wanted)
            if table is None:
                return _html(f"no table {esc(wanted)} on this page", 404)
            return web.Response(text=table.csv(), content_type="text/csv", charset="utf-8",
                                headers={**HEADERS, "Content-Disposition":
                                         f'attachment; filename="{table.name}.csv"'})
        return _html(page(result.title, result.body, path=view.request.path,
                          who=self._who(view.session), csrf=view.csrf))

    async def customer(self, view: View) -> Page:
        return await pages.customer(view, view.request.match_info["customer_id"])

    # -- actions -------------------------------------------------------------------------

    async def _refuse_post(self, request: web.Request, session: Session
                           ) -> web.StreamResponse | None:
        data = await request.post()
        if not same_origin(request) or not self.sessions.csrf_ok(
                session, str(data.get("csrf", "")) or None):
            log.warning("dashboard action %s refused: bad or missing CSRF token", request.path)
            return _html(page("Refused", Html(
                "<p>This action was refused: its form token is missing or not this "
                "session's (CSRF). Reload the page and try again.</p>"), path=request.path,
                who=self._who(session), csrf=self.sessions.csrf_token(session)), 403)
        return None

    def post(self, fn: Callable[[View, dict[str, str]], Awaitable[web.StreamResponse]]
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            session = await self._session(request)
            if session is None:
                return _login_page("your session has ended: sign in again", 401)
            if not session.is_master:
                return _html("a virtual key cannot change anything here", 403)
            refused = await self._refuse_post(request, session)
            if refused is not None:
                return refused
            data = {k: str(v) for k, v in (await request.post()).items()}
            view = View(request, self.gw, session, self.sessions.csrf_token(session))
            try:
                return await fn(view, data)
            except (TallygateError, ValueError) as exc:
                message = exc.message if isinstance(exc, TallygateError) else str(exc)
                return _back(request, error=message)
        return handler

    async def create_key(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.policy.store is not None
        plain, record = await self.policy.store.create_key(admin_pages.key_spec(data))
        return self._render(view, admin_pages.created_page(view, plain, record.key_alias))

    async def update_key(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.policy.store is not None
        spec = admin_pages.key_spec(data)
        for name in ("rpm_limit", "tpm_limit", "max_budget"):
            spec.setdefault(name, None)   # an emptied field removes the limit
        await self.policy.store.update_key(data["token"], spec)
        return _back(view.request, done="key updated")

    async def block_key(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.policy.store is not None
        blocked = data.get("blocked") == "1"
        await self.policy.store.update_key(data["token"], {"blocked": blocked})
        return _back(view.request, done="key blocked" if blocked else "key unblocked")

    async def delete_key(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.policy.store is not None
        deleted = await self.policy.store.delete_keys([data["token"]])
        return _back(view.request, done=f"{len(deleted)} key deleted")

    async def retry(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.gw.outbox is not None
        count = await self.gw.outbox.retry_dead([int(data["id"])])
        if self.gw.worker is not None:
            self.gw.worker.notify()
        return _back(view.request, done=f"{count} dead letter(s) made pending again")

    async def assign(self, view: View, data: dict[str, str]) -> web.StreamResponse:
        assert self.gw.outbox is not None
        customer = data.get("customer", "").strip()
        if not customer:
            raise ValueError("name the customer that pays")
        ok, lines = await queries.assign_held(view.db, self.gw.outbox, [data["call_id"]],
                                              customer, data.get("subscription", "").strip())
        if self.gw.worker is not None:
            self.gw.worker.notify()
        message = lines[0] if lines else ""
        return _back(view.request, done=message) if ok else _back(view.request,
                                                                  error="; ".join(lines))


def _back(request: web.Request, *, done: str = "", error: str = "") -> web.StreamResponse:
    """Post/redirect/get to the page the form was on, with the outcome."""
    target = request.path.rsplit("/", 1)[0]
    query = urlencode({"error": error} if error else {"done": done})
    return web.HTTPSeeOther(f"{target}?{query}", headers=HEADERS)


def add_ui_routes(app: web.Application, gw: Gateway) -> None:
    ui = UiRoutes(gw)
    r = app.router
    r.add_post("/ui/login", ui.login)
    r.add_post("/ui/logout", ui.logout)
    r.add_get("/ui", ui.get(pages.overview, master=False))
    r.add_get("/ui/", ui.get(pages.overview, master=False))
    r.add_get("/ui/login", ui.get(pages.overview, master=False))
    r.add_get("/ui/customers", ui.get(pages.customers))
    r.add_get("/ui/customers/{customer_id}", ui.get(ui.customer))
    r.add_get("/ui/calls", ui.get(calls.page, stream=calls.stream_csv))
    r.add_get("/ui/keys", ui.get(admin_pages.keys))
    r.add_get("/ui/billing", ui.get(admin_pages.billing))
    r.add_get("/ui/models", ui.get(admin_pages.models))
    r.add_post("/ui/keys/create", ui.post(ui.create_key))
    r.add_post("/ui/keys/update", ui.post(ui.update_key))
    r.add_post("/ui/keys/block", ui.post(ui.block_key))
    r.add_post("/ui/keys/delete", ui.post(ui.delete_key))
    r.add_post("/ui/billing/retry", ui.post(ui.retry))
    r.add_post("/ui/billing/assign", ui.post(ui.assign))
