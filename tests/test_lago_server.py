"""The Lago stand-in honours Lago's contract (shared/lago/CONTRACT.md §6)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from tests.fakes.lago_server import (
    SHARED_SPEC_DIR,
    TEST_API_KEY,
    EventSchemas,
    FakeLago,
    _oneof_as_anyof,
)

FIXTURES: dict[str, Any] = (
    json.loads((SHARED_SPEC_DIR / "fixtures.json").read_text())
    if (SHARED_SPEC_DIR / "fixtures.json").is_file() else {})

UNPROCESSABLE = {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors"}


def expected_body(name: str, inline: dict[str, Any]) -> dict[str, Any]:
    """The body from fixtures.json when the shared folder is there; it must agree with
    the inline copy that keeps this test meaningful without it."""
    if name in FIXTURES:
        assert FIXTURES[name]["body"] == inline
        return dict(FIXTURES[name]["body"])
    return inline


def call(lago: FakeLago, method: str, path: str, body: Any = None, *,
         key: str | None = TEST_API_KEY, auth: str | None = None,
         content_type: str | None = "application/json",
         ) -> tuple[int, dict[str, str], Any]:
    headers: dict[str, str] = {}
    if content_type:
        headers["Content-Type"] = content_type
    if auth is not None:
        headers["Authorization"] = auth
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(lago.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), json.loads(err.read())


def event(tx: str = "txn_0001", **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"transaction_id": tx, "external_subscription_id": "sub_123",
                            "code": "api_calls", "timestamp": "1714564800.123",
                            "properties": {"tokens": "1200"}}
    base.update(over)
    return base


@pytest.fixture
def lago() -> Iterator[FakeLago]:
    with FakeLago() as server:
        yield server


# --- auth ------------------------------------------------------------------------


def test_auth_takes_the_second_token_and_answers_401_exactly(lago: FakeLago) -> None:
    body_401 = expected_body("err_401", {"status": 401, "error": "Unauthorized"})
    assert call(lago, "POST", "/api/v1/events", {"event": event()}, key=None)[::2] == \
        (401, body_401)
    assert call(lago, "POST", "/api/v1/events", {"event": event()}, key="nope")[::2] == \
        (401, body_401)
    assert call(lago, "GET", "/api/v1/events/x", auth="Bearer")[::2] == (401, body_401)
    # The scheme word is never checked.
    status, _, _ = call(lago, "POST", "/api/v1/events", {"event": event()},
                        auth=f"Token {TEST_API_KEY}")
    assert status == 200
    assert lago.stored[0].transaction_id == "txn_0001"


def test_forbidden_key_gets_403(lago: FakeLago) -> None:
    lago.forbidden = True
    body = expected_body("err_403_permission", {"status": 403, "error": "Forbidden",
                                                "code": "write_action_not_allowed_for_event"})
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[::2] == (403, body)
    assert call(lago, "POST", "/api/v1/events/batch", {"events": [event()]})[::2] == (403, body)
    assert lago.stored == []


def test_api_keys_can_change_while_running(lago: FakeLago) -> None:
    lago.api_keys = {"rotated"}
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[0] == 401
    assert call(lago, "POST", "/api/v1/events", {"event": event()}, key="rotated")[0] == 200


# --- POST /api/v1/events -----------------------------------------------------------


def test_create_answers_200_with_the_serialized_event(lago: FakeLago) -> None:
    req = FIXTURES.get("create_request", {"event": event()})
    status, _, body = call(lago, "POST", "/api/v1/events", req)
    assert status == 200
    want = expected_body("create_200", {"event": {
        "lago_id": "1a901a90-1a90-1a90-1a90-1a901a901a90", "transaction_id": "txn_0001",
        "lago_customer_id": None, "code": "api_calls", "timestamp": "2024-05-01T12:00:00.123Z",
        "precise_total_amount_cents": None, "properties": {"tokens": "1200"},
        "lago_subscription_id": None, "external_subscription_id": "sub_123",
        "created_at": "2024-05-01T12:00:01Z"}})["event"]
    got = body["event"]
    assert list(got) == list(want)  # same keys, same order
    assert {k: v for k, v in got.items() if k not in ("lago_id", "created_at")} == \
        {k: v for k, v in want.items() if k not in ("lago_id", "created_at")}
    assert len(got["lago_id"]) == 36
    assert got["created_at"].endswith("Z") and len(got["created_at"]) == 20
    assert lago.schema_violations == []
    official = SHARED_SPEC_DIR / "jsonschema_EventCreated.json"
    if official.is_file():
        schema = _oneof_as_anyof(json.loads(official.read_text()))
        assert list(Draft202012Validator(schema).iter_errors(body)) == []


def test_missing_or_empty_root_or_no_json_content_type_is_400(lago: FakeLago) -> None:
    want = expected_body("err_400_missing_root", {
        "status": 400,
        "error": "BadRequest: param is missing or the value is empty or invalid: event"})
    assert call(lago, "POST", "/api/v1/events", {"events": [event()]})[::2] == (400, want)
    assert call(lago, "POST", "/api/v1/events", {"event": {}})[::2] == (400, want)
    assert call(lago, "POST", "/api/v1/events", {"event": event()},
                content_type="text/plain")[::2] == (400, want)
    assert call(lago, "POST", "/api/v1/events", {"event": event()},
                content_type=None)[::2] == (400, want)
    assert lago.stored == []


def test_only_the_six_permitted_keys_are_kept(lago: FakeLago) -> None:
    sent = event(external_customer_id="cus_1", lago_id="forged", foo=1,
                 precise_total_amount_cents="12.5")
    status, _, body = call(lago, "POST", "/api/v1/events", {"event": sent})
    assert status == 200
    assert set(lago.stored[0].sent) == {"transaction_id", "external_subscription_id", "code",
                                        "timestamp", "properties",
                                        "precise_total_amount_cents"}
    assert body["event"]["precise_total_amount_cents"] == "12.5"
    assert body["event"]["lago_id"] != "forged"


@pytest.mark.parametrize("bad", ["2024-05-01T12:00:00Z", "", "abc", True])
def test_non_numeric_timestamp_is_422_invalid_format(lago: FakeLago, bad: Any) -> None:
    want = expected_body("err_422_bad_timestamp",
                         {**UNPROCESSABLE, "error_details": {"timestamp": ["invalid_format"]}})
    assert call(lago, "POST", "/api/v1/events", {"event": event(timestamp=bad)})[::2] == \
        (422, want)
    assert lago.stored == []


@pytest.mark.parametrize(("sent", "iso"), [
    (1714564800, "2024-05-01T12:00:00.000Z"),
    (1714564800.123, "2024-05-01T12:00:00.123Z"),
    ("1714564800.1239", "2024-05-01T12:00:00.123Z"),   # truncated, like iso8601(3)
    (" 1714564800.5 ", "2024-05-01T12:00:00.500Z"),
])
def test_numeric_timestamps_keep_milliseconds(lago: FakeLago, sent: Any, iso: str) -> None:
    status, _, body = call(lago, "POST", "/api/v1/events", {"event": event(timestamp=sent)})
    assert status == 200
    assert body["event"]["timestamp"] == iso


def test_python_client_shape_with_nulls_is_accepted_and_dated_now(lago: FakeLago) -> None:
    req = FIXTURES.get("create_request_python_client_shape", {"event": event(
        timestamp=None, precise_total_amount_cents=None, properties=None)})
    status, _, body = call(lago, "POST", "/api/v1/events", req)
    assert status == 200
    assert body["event"]["timestamp"][:4] >= "2025"
    assert body["event"]["properties"] == {}
    # The official schema does not allow a null timestamp: the stand-in says so.
    if lago.schemas.source == "official":
        assert any("timestamp" in v for v in lago.schema_violations)


@pytest.mark.parametrize("field", ["code", "transaction_id"])
def test_missing_code_or_transaction_id_is_value_is_mandatory(lago: FakeLago,
                                                              field: str) -> None:
    sent = event()
    del sent[field]
    status, _, body = call(lago, "POST", "/api/v1/events", {"event": sent})
    assert status == 422
    assert body == {**UNPROCESSABLE, "error_details": {field: ["value_is_mandatory"]}}
    if field == "code":
        assert body == expected_body("err_422_missing_code", body)


def test_duplicate_per_subscription_is_422_value_already_exist(lago: FakeLago) -> None:
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[0] == 200
    want = expected_body("err_422_duplicate_single", {
        **UNPROCESSABLE, "error_details": {"transaction_id": ["value_already_exist"]}})
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[::2] == (422, want)
    # Unique per external_subscription_id: another subscription may reuse the id.
    assert call(lago, "POST", "/api/v1/events",
                {"event": event(external_subscription_id="sub_999")})[0] == 200
    assert lago.count("txn_0001") == 2


def test_unknown_code_is_still_accepted(lago: FakeLago) -> None:
    assert call(lago, "POST", "/api/v1/events", {"event": event(code="no_such_metric")})[0] \
        == 200


def test_rejection_hook_gives_expression_error_string(lago: FakeLago) -> None:
    lago.reject(code="api_calls")
    want = expected_body("err_422_expression_single", {
        **UNPROCESSABLE, "error_details": "expression_evaluation_failed: Variable: b not found"})
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[::2] == (422, want)


# --- POST /api/v1/events/batch -----------------------------------------------------


def test_batch_200_lists_events_in_order(lago: FakeLago) -> None:
    req = {"events": [event("a", timestamp=1714564800, properties={"tokens": 5}),
                      event("b")]}
    status, _, body = call(lago, "POST", "/api/v1/events/batch", req)
    assert status == 200
    assert set(body) == {"events"}
    assert [e["transaction_id"] for e in body["events"]] == ["a", "b"]
    assert body["events"][0]["timestamp"] == "2024-05-01T12:00:00.000Z"
    assert body["events"][0]["properties"] == {"tokens": 5}
    if "batch_200" in FIXTURES:
        assert list(body["events"][0]) == list(FIXTURES["batch_200"]["body"]["events"][0])
    assert [e.transaction_id for e in lago.stored] == ["a", "b"]
    assert lago.schema_violations == []  # integer property values are fine (anyOf)


def test_batch_without_events_or_with_too_many(lago: FakeLago) -> None:
    no_events = expected_body("err_422_batch_no_events",
                              {**UNPROCESSABLE, "error_details": {"events": ["no_events"]}})
    too_many = expected_body("err_422_batch_too_many",
                             {**UNPROCESSABLE, "error_details": {"events": ["too_many_events"]}})
    assert call(lago, "POST", "/api/v1/events/batch", {"events": []})[::2] == (422, no_events)
    assert call(lago, "POST", "/api/v1/events/batch", {})[::2] == (422, no_events)
    # batch_params uses permit, not require: an unparsed body is just "no events".
    assert call(lago, "POST", "/api/v1/events/batch", {"events": [event()]},
                content_type="text/plain")[::2] == (422, no_events)
    many = {"events": [event(f"t{i}") for i in range(101)]}
    assert call(lago, "POST", "/api/v1/events/batch", many)[::2] == (422, too_many)
    exactly = {"events": [event(f"t{i}") for i in range(100)]}
    assert call(lago, "POST", "/api/v1/events/batch", exactly)[0] == 200
    assert len(lago.stored) == 100


def test_batch_is_all_or_nothing_and_validates_before_duplicates(lago: FakeLago) -> None:
    assert call(lago, "POST", "/api/v1/events", {"event": event("old")})[0] == 200
    req = {"events": [event("old"), event("bad", timestamp="yesterday"), event("new")]}
    status, _, body = call(lago, "POST", "/api/v1/events/batch", req)
    # Validation errors first; the duplicate check never ran.
    assert (status, body["error_details"]) == \
        (422, {"1": {"timestamp": ["invalid_format"]}})
    req = {"events": [event("old"), event("new")]}
    status, _, body = call(lago, "POST", "/api/v1/events/batch", req)
    assert (status, body) == (422, {**UNPROCESSABLE, "error_details": {
        "0": {"transaction_id": ["value_already_exist"]}}})
    assert [e.transaction_id for e in lago.stored] == ["old"]  # "new" was rolled back


def test_batch_in_payload_duplicate_is_reported_at_the_later_index(lago: FakeLago) -> None:
    req = {"events": [event("x"), event("y"), event("x")]}
    status, _, body = call(lago, "POST", "/api/v1/events/batch", req)
    assert (status, body["error_details"]) == \
        (422, {"2": {"transaction_id": ["value_already_exist"]}})
    assert lago.stored == []


def test_batch_per_index_errors_match_the_fixture_shape(lago: FakeLago) -> None:
    lago.reject("r1", detail={"timestamp": ["invalid_format"]})
    lago.reject("r2")
    req = {"events": [event("ok"), event("r1"), event("r2"), event("m", code="")]}
    status, _, body = call(lago, "POST", "/api/v1/events/batch", req)
    assert status == 422
    assert body == {**UNPROCESSABLE, "error_details": {
        "1": {"timestamp": ["invalid_format"]},
        "2": "expression_evaluation_failed: Variable: b not found",
        "3": {"code": ["value_is_mandatory"]}}}
    assert lago.stored == []


# --- GET ---------------------------------------------------------------------------


def test_get_event_200_and_404(lago: FakeLago) -> None:
    call(lago, "POST", "/api/v1/events", {"event": event("id/with space")})
    status, _, body = call(lago, "GET", "/api/v1/events/id%2Fwith%20space")
    assert status == 200 and body["event"]["transaction_id"] == "id/with space"
    want = expected_body("err_404_get_event",
                         {"status": 404, "error": "Not Found", "code": "event_not_found"})
    assert call(lago, "GET", "/api/v1/events/missing")[::2] == (404, want)


def test_list_filters_and_paginates(lago: FakeLago) -> None:
    events = [event(f"t{i}", external_subscription_id=f"sub_{i % 2}") for i in range(5)]
    call(lago, "POST", "/api/v1/events/batch", {"events": events})
    status, _, body = call(lago, "GET", "/api/v1/events?external_subscription_id=sub_0"
                           "&per_page=2&page=1")
    assert status == 200
    assert [e["transaction_id"] for e in body["events"]] == ["t0", "t2"]
    assert body["meta"] == {"current_page": 1, "next_page": 2, "prev_page": None,
                            "total_pages": 2, "total_count": 3}
    _, _, body = call(lago, "GET", "/api/v1/events?code=nothing")
    assert body == {"events": [], "meta": {"current_page": 1, "next_page": None,
                                           "prev_page": None, "total_pages": 0,
                                           "total_count": 0}}


# --- faults ------------------------------------------------------------------------


def test_fail_with_a_window_of_500s(lago: FakeLago) -> None:
    lago.fail_with(500, times=2)
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[0] == 500
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[0] == 500
    assert call(lago, "POST", "/api/v1/events", {"event": event()})[0] == 200
    lago.fail_with(503)
    for _ in range(3):
        assert call(lago, "POST", "/api/v1/events", {"event": event("z")})[0] == 503
    lago.clear_faults()
    assert call(lago, "POST", "/api/v1/events", {"event": event("z")})[0] == 200
    assert len(lago.requests_to("/api/v1/events")) == 7


def test_429_carries_rate_limit_headers(lago: FakeLago) -> None:
    lago.fail_with(429, times=1, reset_s=3)
    status, headers, body = call(lago, "POST", "/api/v1/events/batch", {"events": [event()]})
    assert status == 429
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"],
            headers["X-RateLimit-Reset"]) == ("500", "0", "3")
    assert body == {"status": 429, "error": "Too Many Requests"}


def test_drop_after_store_stores_then_hangs_up(lago: FakeLago) -> None:
    lago.drop_after_store = 1
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        call(lago, "POST", "/api/v1/events/batch", {"events": [event()]})
    assert lago.count("txn_0001") == 1
    status, _, body = call(lago, "POST", "/api/v1/events/batch", {"events": [event()]})
    assert (status, body["error_details"]) == \
        (422, {"0": {"transaction_id": ["value_already_exist"]}})


def test_stop_and_start_on_the_same_port(lago: FakeLago) -> None:
    port = lago.port
    call(lago, "POST", "/api/v1/events", {"event": event()})
    lago.stop()
    with pytest.raises(ConnectionRefusedError), \
            socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    lago.start()
    assert lago.port == port
    assert call(lago, "GET", "/api/v1/events/txn_0001")[0] == 200  # state survives


def test_clickhouse_store_upserts_on_transaction_id_and_timestamp() -> None:
    with FakeLago(store="clickhouse") as lago:
        for _ in range(2):
            status, _, body = call(lago, "POST", "/api/v1/events", {"event": event()})
            assert status == 200
            assert body["event"]["lago_id"] is None and body["event"]["created_at"] is None
        assert lago.count("txn_0001") == 1
        call(lago, "POST", "/api/v1/events", {"event": event(timestamp="1714564801")})
        assert lago.count("txn_0001") == 2  # another timestamp is another event


# --- schemas -----------------------------------------------------------------------


def test_official_schema_violations_are_recorded(lago: FakeLago) -> None:
    if lago.schemas.source != "official":
        pytest.skip("shared/lago is not there")
    call(lago, "POST", "/api/v1/events", {"event": event("f", timestamp=1714564800.5)})
    sent = event("m")
    del sent["external_subscription_id"]
    call(lago, "POST", "/api/v1/events", {"event": sent})
    assert len(lago.schema_violations) == 2
    assert "timestamp" in lago.schema_violations[0]
    assert "external_subscription_id" in lago.schema_violations[1]


def test_falls_back_to_vendored_derived_schemas(tmp_path: Path) -> None:
    schemas = EventSchemas.load(tmp_path)
    assert schemas.source == "derived"
    ok = {"event": event(timestamp=None, properties={"n": 1, "b": True})}
    assert schemas.violations(schemas.single, ok, "x") == []
    assert schemas.violations(schemas.batch, {"events": []}, "x") != []


# --- async use ---------------------------------------------------------------------


async def test_async_context_manager_and_knobs() -> None:
    async with FakeLago(api_keys={"k"}) as lago, aiohttp.ClientSession() as http:
        headers = {"Authorization": "Bearer k"}
        async with http.post(lago.url + "/api/v1/events/batch", json={"events": [event()]},
                             headers=headers) as resp:
            assert resp.status == 200
        await lago.astop()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(lago.url + "/api/v1/events/txn_0001", headers=headers):
                pass
        await lago.astart()
        async with http.get(lago.url + "/api/v1/events/txn_0001", headers=headers) as resp:
            assert resp.status == 200
