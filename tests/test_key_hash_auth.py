"""Class 9 of issue 13: the stored SHA-256 of a key (``token`` in /key/list) is not a
credential. Only the plain key, or the master key, authenticates, on every route."""

from __future__ import annotations

from pathlib import Path

from tests.proxy_harness import assert_openai_error, http, run_proxy
from tests.test_access_keys import chat, generate, settings


def test_the_stored_hash_authenticates_nowhere(tmp_path: Path) -> None:
    with run_proxy(settings(tmp_path)) as proxy:
        base = proxy.base_url
        made = generate(base, key_alias="hashed", customer_id="acme", max_budget=5)
        key, token = made["key"], made["token"]
        assert len(token) == 64 and token != key
        # The plain key reads its own info and calls models.
        assert http("GET", f"{base}/key/info", key=key).status == 200
        assert chat(base, key).status == 200
        # Its hash, presented as the bearer, is refused everywhere: no customer, budget
        # or spend comes back.
        info = http("GET", f"{base}/key/info", key=token)
        assert info.status == 401, info.text
        assert "acme" not in info.text and "max_budget" not in info.text
        info = http("GET", f"{base}/key/info?key={token}", key=token)
        assert info.status == 401, info.text
        assert "acme" not in info.text
        assert_openai_error(chat(base, token), 401)
        assert http("GET", base + "/v1/models", key=token).status == 401
        for path in ("/key/list", "/spend/logs", "/spend/keys"):
            assert http("GET", base + path, key=token).status in (401, 403), path
        messages = http("POST", base + "/v1/messages",
                        {"model": "m", "max_tokens": 5,
                         "messages": [{"role": "user", "content": "hi"}]},
                        headers={"x-api-key": token}, key=None)
        assert messages.status == 401, messages.text
        # The master key may still look a key up by its hash (as /key/list shows it).
        assert http("GET", f"{base}/key/info?key={token}").status == 200
