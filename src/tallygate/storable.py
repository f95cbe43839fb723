"""Caller values the gateway keeps must be storable, or the call is refused up front.

What a caller sends and the gateway keeps on the usage event or in the ledger (``user``,
``metadata``, admin records) goes to both outboxes: SQLite and PostgreSQL, whose
``jsonb`` and ``text`` refuse the NUL character (U+0000), and through the event encoder,
which stops at a nesting depth. Such a value would fail the outbox write after the
upstream answered (the provider paid, nothing billed), so it is a 400 naming the field
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.errors import BadRequestError

# Deepest nesting kept (the event itself adds a few levels; the encoder stops at 254).
MAX_DEPTH = 32


# The admitted params the usage event or the ledger keeps, on every door.
KEPT_PARAMS = ("user", "safety_identifier", "metadata")


def check_kept(params: Mapping[str, Any]) -> None:
    """Raise a 400 for the first kept param (``KEPT_PARAMS``) that cannot be stored."""
    for name in KEPT_PARAMS:
        value = params.get(name)
        if value is not None:
            check_storable(value, name)


def check_storable(value: Any, param: str) -> None:
    """Raise a 400 naming the first part of ``value`` no outbox can store."""
    _check(value, param, param, 0)


def _check(value: Any, where: str, top: str, depth: int) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise _bad(f"'{where}' contains a NUL character (U+0000), which cannot be "
                       "stored; remove it", where)
        return
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        raise _bad(f"'{top}' is nested too deep (more than {MAX_DEPTH} levels) to be "
                   "stored", top)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise _bad(f"a key of '{where}' contains a NUL character (U+0000), which "
                           "cannot be stored; remove it", where)
            _check(item, f"{where}.{key}", top, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]", top, depth + 1)


def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="unstorable_value")
