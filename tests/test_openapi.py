"""Issue 13, proof: an OpenAPI description of tallygate's own routes is kept in the
repository (src/tallygate/proxy/openapi.json), served at GET /openapi.json, lists every
route the app serves, and schemathesis, run against the live proxy from it, finds no
server error and no answer outside the description (status, content type, schema)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tallygate.proxy.app import create_app
from tests.proxy_harness import MASTER_KEY, RunningProxy, http, run_proxy
from tests.test_access_keys import settings as proxy_config

SPEC: dict[str, Any] = orjson.loads(files("tallygate.proxy").joinpath("openapi.json")
                                    .read_bytes())


def test_the_description_is_served_and_lists_every_route(tmp_path: Path) -> None:
    with run_proxy(proxy_config(tmp_path)) as proxy:
        served = http("GET", proxy.base_url + "/openapi.json", key=None)
    assert served.status == 200 and served.json() == SPEC
    app = create_app(proxy_config(tmp_path / "routes"))
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes()
              if r.resource is not None and r.method not in ("*", "HEAD")}
    described = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    assert routes == described


@pytest.fixture(scope="module", name="proxy")
def proxy_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with run_proxy(proxy_config(tmp_path_factory.mktemp("openapi"))) as proxy:
        yield proxy


@pytest.fixture(scope="module", name="api_schema")
def api_schema_fixture(proxy: RunningProxy) -> Any:
    doc = copy.deepcopy(http("GET", proxy.base_url + "/openapi.json", key=None).json())
    # Calls reach the upstream (the mock model "m") rather than stopping at a 404.
    for name in ("ChatCompletionRequest", "EmbeddingsRequest", "MessagesRequest",
                 "CompletionRequest", "ResponsesRequest"):
        doc["components"]["schemas"][name]["properties"]["model"] = {"enum": ["m"]}
    for path in ("/v1/messages/count_tokens", "/messages/count_tokens"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        body["schema"]["properties"]["model"] = {"enum": ["m"]}
    schema = schemathesis.openapi.from_dict(doc)
    schema.config.update(base_url=proxy.base_url)
    return schema


OPERATIONS = [(path, method) for path, ops in SPEC["paths"].items() for method in ops]
AUTH = {"Authorization": f"Bearer {MASTER_KEY}", "x-goog-api-key": MASTER_KEY}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_the_proxy_answers_as_described(api_schema: Any, path: str, method: str) -> None:
    operation = api_schema[path][method.upper()]

    @settings(max_examples=5, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    run()
