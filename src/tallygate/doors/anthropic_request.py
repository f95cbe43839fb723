"""Messages API request bodies checked against the ranges and shapes Anthropic allows.

The door's translation (``anthropic_messages.to_chat_params``) checks what it reads to
translate; this adds what it would otherwise let through to a provider that refuses it
or to an estimator that cannot read it: the sampling ranges, ``tool_use`` input as an
object, and that whatever the gateway keeps (``metadata``) can be stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.errors import BadRequestError
from tallygate.storable import check_storable


def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_request")


def _number(data: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{name}: must be a number between {low:g} and {high:g}", name)


def _tool_uses(messages: object) -> None:
    if not isinstance(messages, list):
        return  # the translation names it
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "tool_use" and not isinstance(
                    block.get("input"), dict):
                where = f"messages[{i}].content[{j}].input"
                raise _bad(f"{where}: must be an object", where)


def check_messages(data: Mapping[str, Any]) -> None:
    """Raise a 400 naming the first field of a Messages API body Anthropic refuses that
    the translation does not check itself."""
    _number(data, "temperature", 0, 1)
    _number(data, "top_p", 0, 1)
    top_k = data.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                              or top_k < 0):
        raise _bad("top_k: must be a non-negative integer", "top_k")
    _tool_uses(data.get("messages"))
    if data.get("metadata") is not None:  # kept on the event: it must be storable
        check_storable(data["metadata"], "metadata")
