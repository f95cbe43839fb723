"""The stored responses: shared by gateways on one PostgreSQL schema, kept across a
restart, expired after ``general_settings.responses_retention_period``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest

from tallygate.config import DEFAULT_RESPONSES_RETENTION_S, parse_config
from tallygate.doors.openai_responses import RESPONSE_STORE
from tallygate.errors import ConfigError
from tests.outbox_support import PG_DSN, drop_pg_schema, unique_pg_schema
from tests.proxy_harness import MASTER_KEY, RunningProxy, config_dict, proxy_settings, run_proxy

MOCK = {"model_name": "mocked", "litellm_params": {"model": "mock/echo",
                                                   "mock_response": "Stored answer."}}


def client_of(proxy: RunningProxy) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)


def stored_rows(proxy: RunningProxy) -> int:
    db = proxy.gateway.keys.db
    assert db is not None
    rows = proxy.call(db.fetch("SELECT count(*) AS n FROM stored_responses"))
    return int(rows[0]["n"])


@pytest.mark.postgres
def test_two_gateways_share_the_stored_responses(tmp_path: Path) -> None:
    schema = unique_pg_schema()
    url = f"{PG_DSN}?schema={schema}"
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        settings = [proxy_settings(tmp_path / name, config_dict(
            [MOCK], tmp_path / name, lago=False, general={"database_url": url}))
            for name in ("a", "b")]
        with run_proxy(settings[0]) as a, run_proxy(settings[1]) as b, \
                client_of(a) as ca, client_of(b) as cb:
            first = ca.responses.create(model="mocked", input="Remember 42.", user="u")
            assert cb.responses.retrieve(first.id).output_text == "Stored answer."
            follow = cb.responses.create(model="mocked", input="What number?", user="u",
                                         previous_response_id=first.id)
            assert follow.previous_response_id == first.id
            assert [i.content[0].text for i in  # type: ignore[union-attr]
                    ca.responses.input_items.list(follow.id).data] == ["What number?"]
            cb.responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                ca.responses.retrieve(first.id)
    finally:
        asyncio.run(drop_pg_schema(schema))


def test_kept_across_a_restart_and_expired_after_the_retention(tmp_path: Path) -> None:
    cfg = config_dict([MOCK], tmp_path, lago=False,
                      general={"responses_retention_period": "2s"})
    settings = proxy_settings(tmp_path, cfg)
    assert settings.responses_retention_s == 2
    with run_proxy(settings) as proxy, client_of(proxy) as client:
        kept = client.responses.create(model="mocked", input="hi", user="u")
        created = time.monotonic()
    with run_proxy(settings) as proxy, client_of(proxy) as client:  # the same database
        assert client.responses.retrieve(kept.id).id == kept.id
        assert stored_rows(proxy) == 1
        time.sleep(max(0.0, 2.2 - (time.monotonic() - created)))
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="mocked", input="more", user="u",
                                    previous_response_id=kept.id)
        assert proxy.app is not None
        assert proxy.call(proxy.app[RESPONSE_STORE].sweep()) == 1  # what the hourly sweep does
        assert stored_rows(proxy) == 0


@pytest.mark.parametrize(("value", "seconds"), [(None, DEFAULT_RESPONSES_RETENTION_S),
                                                ("12h", 43_200), ("30d", 2_592_000),
                                                (3600, 3600)])
def test_retention_setting(value: object, seconds: float) -> None:
    general = {} if value is None else {"responses_retention_period": value}
    settings = parse_config({"model_list": [MOCK], "general_settings": general}, {})
    assert settings.responses_retention_s == seconds


@pytest.mark.parametrize("value", ["soon", "0d", -5])
def test_bad_retention_is_refused(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [MOCK],
                      "general_settings": {"responses_retention_period": value}}, {})
    assert "responses_retention_period" in info.value.message
