"""Dashboard sessions: expiry in a real browser, the cookie's attributes (Secure behind
TLS), forged and tampered cookies refused, and one session and one set of numbers
across two gateways on one PostgreSQL schema (no process memory involved)."""

from __future__ import annotations

import asyncio
import http.client as httpclient
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from tests.browser_support import browser, screenshot
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema
from tests.proxy_harness import (
    CALL_ID_HEADER,
    COST_HEADER,
    MASTER_KEY,
    RunningProxy,
    config_dict,
    http,
    proxy_settings,
    run_proxy,
)
from tests.test_access_keys import mock_entry

__all__ = ["browser"]

TTL_S = 2


def raw(base: str, method: str, path: str, *, form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None) -> httpclient.HTTPResponse:
    """One request, redirects not followed (the login's Set-Cookie is on its 303)."""
    parts = urlsplit(base)
    conn = httpclient.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    body = urlencode(form).encode() if form is not None else None
    h = dict(headers or {})
    if body is not None:
        h["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=h)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def login_cookie(base: str, key: str = MASTER_KEY,
                 headers: dict[str, str] | None = None) -> tuple[str, str]:
    """(the cookie's name=value, the whole Set-Cookie header)."""
    response = raw(base, "POST", "/ui/login", form={"key": key}, headers=headers)
    assert response.status == 303, response.status
    header = response.getheader("Set-Cookie") or ""
    return header.split(";", 1)[0], header


def page_text(base: str, path: str, cookie: str) -> tuple[int, str]:
    reply = http("GET", base + path, key=None, headers={"Cookie": cookie})
    return reply.status, reply.text


@pytest.fixture(scope="module")
def short_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    tmp_path = tmp_path_factory.mktemp("ui-session")
    cfg = config_dict([mock_entry()], tmp_path, lago=False)
    env = {"TALLYGATE_UI_SESSION_TTL": str(TTL_S)}
    with run_proxy(proxy_settings(tmp_path, cfg, env)) as proxy:
        yield proxy


def test_session_expires_in_the_browser(browser: Any, short_proxy: RunningProxy) -> None:
    base = short_proxy.base_url
    key = http("POST", base + "/key/generate", {"key_alias": "survivor"}).json()["key"]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(base + "/ui/keys")
        page.fill("input[name=key]", MASTER_KEY)
        page.click("button[type=submit]")
        page.goto(base + "/ui/keys")
        assert page.title().startswith("Keys and teams")
        time.sleep(TTL_S + 0.5)
        # The page is still open with its form; the session behind it has ended.
        page.locator("tr", has_text="survivor").locator("button", has_text="Delete").click()
        assert "session has ended" in page.inner_text("[role=alert]")
        screenshot(page, "session-expired")
        page.goto(base + "/ui/keys")
        assert page.title().startswith("Sign in")
    finally:
        context.close()
    assert http("GET", base + "/key/info", key=key).status == 200   # not deleted


def test_cookie_attributes_and_tampering(short_proxy: RunningProxy) -> None:
    base = short_proxy.base_url
    cookie, header = login_cookie(base)
    attrs = {a.strip().split("=")[0].lower() for a in header.split(";")[1:]}
    assert {"httponly", "path", "max-age"} <= attrs and "samesite=strict" in header.lower()
    assert "secure" not in attrs                                    # plain HTTP here
    _, behind_tls = login_cookie(base, headers={"X-Forwarded-Proto": "https"})
    assert "secure" in {a.strip().lower() for a in behind_tls.split(";")}
    assert MASTER_KEY not in header
    status, text = page_text(base, "/ui/keys", cookie)
    assert status == 200 and "Keys and teams" in text
    name, value = cookie.split("=", 1)
    payload, signature = value.split(".")
    forged = f"{name}={payload}.{signature[:-2]}AA"
    status, text = page_text(base, "/ui/keys", forged)
    assert "Sign in" in text and "Keys and teams" not in text
    # an action with a good cookie but no form token: refused
    refused = raw(base, "POST", "/ui/keys/delete", form={"token": "0" * 64},
                  headers={"Cookie": cookie})
    assert refused.status == 403


@pytest.mark.postgres
def test_two_gateways_on_one_postgres_share_sessions_and_numbers(tmp_path: Path) -> None:
    schema = unique_pg_schema()
    url = f"{PG_DSN}?schema={schema}"
    env = {"TALLYGATE_UI_SECRET": "one-secret-for-the-deployment"}
    try:
        cfg_a = config_dict([mock_entry()], tmp_path / "a", lago=False,
                            general={"database_url": url})
        cfg_b = config_dict([mock_entry()], tmp_path / "b", lago=False,
                            general={"database_url": url, "master_key": "sk-other-master"})
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with run_proxy(proxy_settings(tmp_path / "a", cfg_a, env)) as a, \
                run_proxy(proxy_settings(tmp_path / "b", cfg_b, env)) as b:
            reply = http("POST", a.base_url + "/v1/chat/completions",
                         {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                          "user": "wonka"})
            assert reply.status == 200
            call_id, cost = reply.headers[CALL_ID_HEADER.lower()], \
                reply.headers[COST_HEADER.lower()]
            cookie, _ = login_cookie(a.base_url)        # signed in on gateway A
            a.call(a.gateway.keys.flush_settlements())
            status, text = page_text(b.base_url, "/ui", cookie)   # read on gateway B
            assert status == 200 and call_id in text and cost in text
            status, text = page_text(b.base_url, "/ui/customers/wonka", cookie)
            assert call_id in text
    finally:
        # The module's sync Playwright owns this thread's loop: drop from another thread.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, drop_pg_schema(schema)).result()
