"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright):
calls made through the proxy with the official openai SDK appear with their exact cost,
a key created on the page works, a dead letter is retried after the Lago stand-in is
fixed, a held call is assigned, a virtual key sees only its own spend, and forged
actions are refused. One proxy and one browser for the whole module."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from tallygate.access.budgets import from_micros, to_micros
from tests.browser_support import browser, screenshot
from tests.fakes.lago_server import FakeLago
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.server_base import run_in_thread
from tests.proxy_harness import (
    CALL_ID_HEADER,
    COST_HEADER,
    EVENT_CODE,
    MASTER_KEY,
    UPSTREAM_KEY,
    RunningProxy,
    config_dict,
    http,
    lago_env,
    openai_entry,
    proxy_settings,
    run_proxy,
    wait_for,
)

__all__ = ["browser"]  # the module's browser fixture

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def lago() -> Iterator[FakeLago]:
    with FakeLago() as fake:
        yield fake


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with run_in_thread(FakeOpenAI()) as fake:
        fake.require_api_key = UPSTREAM_KEY
        yield fake


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, lago: FakeLago,
          upstream: FakeOpenAI) -> Iterator[RunningProxy]:
    tmp_path = tmp_path_factory.mktemp("ui")
    cfg = config_dict([openai_entry("gpt-4o-mini", upstream.base_url),
                       openai_entry("mystery", upstream.base_url, model="tg-no-such-model")],
                      tmp_path)
    cfg["access_settings"] = {"unattributed": "hold"}
    with run_proxy(proxy_settings(tmp_path, cfg, lago_env(lago))) as running:
        yield running


@pytest.fixture(scope="module")
def admin(browser: Any, proxy: RunningProxy) -> Iterator[Any]:
    """A page signed in with the master key (one session for the module)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    try:
        yield sign_in(context, proxy, MASTER_KEY)
    finally:
        context.close()


def sign_in(context: Any, proxy: RunningProxy, key: str) -> Any:
    page = context.new_page()
    page.goto(proxy.base_url + "/ui")
    assert page.title().startswith("Sign in")
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(proxy.base_url + "/ui")
    return page


def client(proxy: RunningProxy, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=key, max_retries=0)


def sdk_call(proxy: RunningProxy, key: str = MASTER_KEY, **extra: Any) -> tuple[str, str]:
    """(call id, cost header) of one chat call through the proxy with the openai SDK."""
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, **extra)  # type: ignore[arg-type]
    raw.parse()
    return raw.headers[CALL_ID_HEADER], raw.headers[COST_HEADER]


def table_rows(page: Any, name: str) -> list[list[str]]:
    return [[c.strip() for c in row] for row in page.eval_on_selector_all(
        f"table[data-table={name}] tbody tr",
        "rows => rows.map(r => [...r.cells].map(c => c.textContent))")]


def row_of(page: Any, table: str, text: str) -> list[str]:
    for row in table_rows(page, table):
        if text in row:
            return row
    raise AssertionError(f"no row with {text!r} in table {table}: {table_rows(page, table)}")


def row_of_containing(page: Any, table: str, text: str) -> str:
    for row in table_rows(page, table):
        if any(text in cell for cell in row):
            return " ".join(row)
    raise AssertionError(f"nothing with {text!r} in table {table}: {table_rows(page, table)}")


def generate(proxy: RunningProxy, **spec: Any) -> str:
    reply = http("POST", proxy.base_url + "/key/generate", spec)
    assert reply.status == 200, reply.body
    return str(reply.json()["key"])


def test_unauthenticated_ui_is_only_the_login_page(browser: Any, proxy: RunningProxy) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        for path in ("/ui", "/ui/keys", "/ui/billing", "/ui/customers/acme", "/ui?csv=keys"):
            page.goto(proxy.base_url + path)
            assert page.title().startswith("Sign in"), path
            assert page.locator("table").count() == 0
        page.fill("input[name=key]", "sk-not-a-key-at-all-000000")
        page.click("button[type=submit]")
        assert "not valid" in page.inner_text("[role=alert]")
        screenshot(page, "login")
    finally:
        context.close()


def test_calls_appear_with_their_exact_cost(admin: Any, proxy: RunningProxy,
                                            upstream: FakeOpenAI) -> None:
    upstream.prompt_tokens, upstream.completion_tokens = 1234, 567
    made = [sdk_call(proxy, user="acme") for _ in range(2)]
    upstream.prompt_tokens, upstream.completion_tokens = 40, 7
    made.append(sdk_call(proxy, user="globex"))
    unpriced = client(proxy).chat.completions.with_raw_response.create(
        model="mystery", messages=MESSAGES, user="globex")  # type: ignore[arg-type]
    assert COST_HEADER not in unpriced.headers          # no price known: none invented
    mystery = unpriced.headers[CALL_ID_HEADER]
    admin.goto(proxy.base_url + "/ui")
    assert admin.inner_text("[data-card='unknown price'] b") == "1"
    risk = row_of(admin, "billing_risks", mystery)
    assert risk[10] == "unknown" and "unknown_price" in risk[12]
    assert row_of(admin, "recent_calls", mystery)[10] == "unknown"
    for call_id, cost in made:
        row = row_of(admin, "recent_calls", call_id)
        assert row[10] == cost            # the ledger's exact Decimal text, not a float
    total = sum((Decimal(c) for _, c in made), Decimal(0))
    spend = admin.inner_text("[data-card='spend (USD)'] b")
    assert Decimal(spend) == total
    acme = row_of(admin, "by_customer", "acme")
    assert acme[1] == "2" and Decimal(acme[6]) == Decimal(made[0][1]) + Decimal(made[1][1])
    # every chart is also a table, and every table is CSV
    admin.click("text=Spend per day as a table")
    assert table_rows(admin, "over_time")[-1][0]
    csv = admin.request.get(proxy.base_url + "/ui?csv=recent_calls").text()
    assert made[0][0] in csv and made[0][1] in csv
    screenshot(admin, "overview")
    admin.goto(proxy.base_url + "/ui/customers")
    customers = row_of(admin, "customers", "acme")
    assert customers[5] == "2" and Decimal(customers[6]) == Decimal(acme[6])
    screenshot(admin, "customers")
    admin.click("table[data-table=customers] a:text-is('acme')")
    admin.wait_for_url("**/ui/customers/acme")
    row = row_of(admin, "customer_calls", made[0][0])
    assert row[6:10] == ["1234", "0", "0", "567"] and row[10] == made[0][1]
    assert "lago:" in row[13]
    screenshot(admin, "customer")


def test_create_a_key_and_use_it(admin: Any, proxy: RunningProxy) -> None:
    admin.goto(proxy.base_url + "/ui/keys")
    admin.fill("form.create input[name=key_alias]", "made-in-ui")
    admin.fill("form.create input[name=customer_id]", "initech")
    admin.fill("form.create input[name=max_budget]", "5")
    admin.fill("form.create input[name=rpm_limit]", "60")
    admin.click("form.create button")
    plain = admin.inner_text("#new-key").strip()
    assert plain.startswith("sk-tg-")
    admin.click("button[data-copy=new-key]")
    assert admin.evaluate("navigator.clipboard.readText()") == plain
    screenshot(admin, "new-key")
    call_id, cost = sdk_call(proxy, plain)
    admin.goto(proxy.base_url + "/ui/keys")
    row = row_of(admin, "keys", "made-in-ui")
    assert "customer: initech" in row[2] and row[4] == "60" and row[6]
    # its budget counts the call (budgets keep whole micro-USD, rounded up)
    assert Decimal(row[3].split()[0]) == from_micros(to_micros(Decimal(cost)))
    assert plain not in admin.content()                   # shown once, never again
    screenshot(admin, "keys")
    # update its limits, block it (refused), then delete it
    row_form = admin.locator("tr", has_text="made-in-ui")
    row_form.locator("input[name=rpm_limit]").fill("7")
    row_form.locator("button", has_text="Save").click()
    assert "key updated" in admin.inner_text("[role=status]")
    assert row_of(admin, "keys", "made-in-ui")[4] == "7"
    admin.locator("tr", has_text="made-in-ui").locator("button", has_text="Block").click()
    with pytest.raises(openai.AuthenticationError):
        sdk_call(proxy, plain)
    admin.locator("tr", has_text="made-in-ui").locator("button", has_text="Delete").click()
    assert "1 key deleted" in admin.inner_text("[role=status]")
    assert all("made-in-ui" not in r for r in table_rows(admin, "keys"))
    assert call_id


def test_retry_a_dead_letter_after_fixing_lago(admin: Any, proxy: RunningProxy,
                                              lago: FakeLago) -> None:
    lago.reject(code=EVENT_CODE)      # the billable metric's expression fails: dead
    call_id, _ = sdk_call(proxy, user="umbrella")
    wait_for(lambda: proxy.outbox_stats().dead >= 1)
    admin.goto(proxy.base_url + "/ui/billing")
    dead = row_of(admin, "dead_letters", call_id)
    assert "422" in dead[5] or "expression" in dead[5], dead
    screenshot(admin, "billing")
    lago.code_rejections.pop(EVENT_CODE)          # fixed
    admin.locator("tr", has_text=call_id).locator("button", has_text="Retry").click()
    assert "1 dead letter(s) made pending again" in admin.inner_text("[role=status]")
    wait_for(lambda: lago.count(call_id) == 1)

    def delivered() -> bool:
        admin.goto(proxy.base_url + "/ui/customers/umbrella")
        return "lago: delivered" in row_of(admin, "customer_calls", call_id)[13]

    wait_for(delivered)
    admin.goto(proxy.base_url + "/ui/billing")
    assert all(call_id not in r for r in table_rows(admin, "dead_letters"))


def test_assign_a_held_call(admin: Any, proxy: RunningProxy, lago: FakeLago) -> None:
    nobody = generate(proxy, key_alias="no-payer")
    call_id, cost = sdk_call(proxy, nobody)            # no customer anywhere: held
    admin.goto(proxy.base_url + "/ui/billing")
    admin.fill("input[name=reconcile]", "1h")
    admin.click("button:text-is('Reconcile')")
    assert "held unattributed" in row_of_containing(admin, "reconcile", call_id)
    row = admin.locator("tr", has_text=call_id)
    assert row_of(admin, "held_calls", call_id)[4] == cost
    row.locator("input[name=customer]").fill("hooli")
    row.locator("input[name=subscription]").fill("sub_hooli")
    row.locator("button", has_text="Assign").click()
    assert "billed to hooli" in admin.inner_text("[role=status]")
    assert all(call_id not in r for r in table_rows(admin, "held_calls"))
    stored = wait_for(lambda: lago.events.get(call_id))
    assert stored.external_subscription_id == "sub_hooli"
    admin.goto(proxy.base_url + "/ui/customers/hooli")
    assert row_of(admin, "customer_calls", call_id)[10] == cost
    wait_for(lambda: proxy.outbox_stats().pending == 0)
    admin.goto(proxy.base_url + "/ui/billing?reconcile=1h")   # as `tallygate reconcile`
    assert all(call_id not in r[0] for r in table_rows(admin, "reconcile"))
    assert "call(s) in the ledger" in admin.inner_text("main")


def test_virtual_key_sees_only_its_own_spend(browser: Any, proxy: RunningProxy) -> None:
    mine = generate(proxy, key_alias="self-viewer", customer_id="soylent")
    theirs = generate(proxy, key_alias="someone-else", customer_id="tyrell")
    own = [sdk_call(proxy, mine) for _ in range(2)]
    other, _ = sdk_call(proxy, theirs)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = sign_in(context, proxy, mine)
        assert page.title().startswith("Your spend")
        shown = {r[0] for r in table_rows(page, "recent_calls")}
        assert shown == {c for c, _ in own}
        assert other not in page.content() and "tyrell" not in page.content()
        assert mine not in page.content()                 # the key never in a page
        total = sum((Decimal(c) for _, c in own), Decimal(0))
        assert Decimal(page.inner_text("[data-card='spend (USD)'] b")) == total
        screenshot(page, "virtual-key")
        for path in ("/ui/keys", "/ui/billing", "/ui/customers", "/ui/models", "/ui/calls",
                     "/ui/calls?csv=calls"):
            response = page.goto(proxy.base_url + path)
            assert response is not None and response.status == 403, path
        refused = page.request.post(proxy.base_url + "/ui/keys/delete",
                                    form={"token": "x", "csrf": "x"})
        assert refused.status == 403
    finally:
        context.close()


def test_forged_actions_are_refused(admin: Any, proxy: RunningProxy) -> None:
    key = generate(proxy, key_alias="keep-me")
    admin.goto(proxy.base_url + "/ui/keys")
    token = admin.locator("tr", has_text="keep-me").locator(
        "input[name=token]").first.get_attribute("value")
    # The session cookie goes along, but the form token is wrong or missing: refused.
    for csrf in ("0" * 64, None):
        fields = {"token": token} if csrf is None else {"token": token, "csrf": csrf}
        with admin.expect_navigation():
            admin.evaluate("""fields => { const f = document.createElement('form');
                f.method = 'post'; f.action = '/ui/keys/delete';
                for (const [k, v] of Object.entries(fields)) { const i =
                    document.createElement('input'); i.name = k; i.value = v; f.append(i); }
                document.body.append(f); f.submit(); }""", fields)
        assert "refused" in admin.inner_text("main")
    # A post from another origin with this session's own token: refused too.
    admin.goto(proxy.base_url + "/ui/keys")
    good = admin.locator("input[name=csrf]").first.get_attribute("value")
    cross = admin.request.post(proxy.base_url + "/ui/keys/delete",
                               form={"token": token, "csrf": good},
                               headers={"Origin": "http://evil.example"})
    assert cross.status == 403
    assert client(proxy, key).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES).choices  # type: ignore[arg-type]


def test_models_page_names_prices_and_their_source(admin: Any, proxy: RunningProxy) -> None:
    admin.goto(proxy.base_url + "/ui/models")
    row = row_of(admin, "deployments", "gpt-4o-mini")
    assert row[2] == "openai" and row[5].startswith("genai-prices ")
    assert Decimal(row[6]) > 0 and Decimal(row[7]) > 0
    # The router's view: its id, in rotation (not cooling down), no failure yet.
    assert row[9] and row[10] == "in rotation" and row[11] == "0"
    screenshot(admin, "models")


def test_no_key_in_any_page_or_log(admin: Any, proxy: RunningProxy,
                                   caplog: pytest.LogCaptureFixture) -> None:
    for path in ("/ui", "/ui/keys", "/ui/billing", "/ui/customers", "/ui/models",
                 "/ui/calls"):
        admin.goto(proxy.base_url + path)
        html = admin.content()
        assert MASTER_KEY not in html and UPSTREAM_KEY not in html, path
    assert MASTER_KEY not in caplog.text
