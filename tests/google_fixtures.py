"""Fixtures of the Google stand-ins that several test modules use (import them):
the service account's RSA key (made once a module, it is slow) and a Vertex AI
stand-in that checks tokens signed with it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.server_base import run_in_thread
from tests.fakes.vertex_server import FakeVertex, make_rsa_key


@pytest.fixture(scope="module", name="rsa_key")
def rsa_key_fixture() -> tuple[str, str]:
    return make_rsa_key()


@pytest.fixture(name="vertex")
def vertex_fixture(rsa_key: tuple[str, str]) -> Iterator[FakeVertex]:
    with run_in_thread(FakeVertex(rsa_key)) as fake:
        yield fake
