"""Messages API request bodies checked against the shapes and ranges Anthropic allows.

Whatever the deployment (a body passed through to Anthropic as it came, or translated
for another provider), a body Anthropic's API refuses is a 400 naming the field before
admission: content blocks and their fields, ``system``, ``tools``, ``tool_choice``,
``stop_sequences``, the sampling ranges, and that what the gateway keeps (``metadata``)
can be stored.
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


def _string(block: Mapping[str, Any], name: str, where: str) -> None:
    if not isinstance(block.get(name), str):
        raise _bad(f"{where}.{name}: must be a string", f"{where}.{name}")


def _source(block: Mapping[str, Any], where: str) -> None:
    source = block.get("source")
    at = f"{where}.source"
    if not isinstance(source, dict):
        raise _bad(f"{at}: must be an object", at)
    kind = source.get("type")
    if kind == "base64":
        _string(source, "media_type", at)
        _string(source, "data", at)
    elif kind == "url":
        _string(source, "url", at)
    elif kind not in ("text", "content", "file"):
        raise _bad(f"{at}.type: must be 'base64', 'url', 'text', 'content' or 'file'", at)


def _block(block: object, where: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(f"{where}: must be a content block with a type", where)
    kind = block["type"]
    if kind == "text":
        _string(block, "text", where)
    elif kind in ("image", "document"):
        _source(block, where)
    elif kind == "tool_use":
        _string(block, "id", where)
        _string(block, "name", where)
        if not isinstance(block.get("input"), dict):
            raise _bad(f"{where}.input: must be an object", f"{where}.input")
    elif kind == "tool_result":
        _string(block, "tool_use_id", where)
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            _blocks(content, f"{where}.content")


def _blocks(content: object, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}: must be a string or a list of content blocks", where)
    for i, block in enumerate(content):
        _block(block, f"{where}[{i}]")


def _messages(messages: object) -> None:
    if not isinstance(messages, list):
        return  # named by the door's own check
    for i, message in enumerate(messages):
        if isinstance(message, dict):
            _blocks(message.get("content"), f"messages[{i}].content")


def _system(system: object) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise _bad("system: must be a string or a list of text blocks", "system")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"system[{i}]: must be a text block", f"system[{i}]")
        _string(block, "text", f"system[{i}]")


def _tools(tools: object) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools: must be a list", "tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _bad(f"{where}: must be an object with a name", where)
        schema = tool.get("input_schema")
        if tool.get("type") in (None, "custom") and not isinstance(schema, dict):
            raise _bad(f"{where}: input_schema must be an object", where)


def _tool_choice(choice: object) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool",
                                                                  "none"):
        raise _bad("tool_choice: must be an object whose type is auto, any, tool or none",
                   "tool_choice")
    if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
        raise _bad("tool_choice: a 'tool' choice needs the tool's name", "tool_choice")


def _stop(stop: object) -> None:
    if stop is not None and (not isinstance(stop, list)
                             or not all(isinstance(s, str) for s in stop)):
        raise _bad("stop_sequences: must be a list of strings", "stop_sequences")


def check_fields(data: Mapping[str, Any]) -> None:
    """Raise a 400 naming the first field of a Messages API body Anthropic refuses that
    the translation does not check itself."""
    _number(data, "temperature", 0, 1)
    _number(data, "top_p", 0, 1)
    top_k = data.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                              or top_k < 0):
        raise _bad("top_k: must be a non-negative integer", "top_k")
    _messages(data.get("messages"))
    _system(data.get("system"))
    _tools(data.get("tools"))
    _tool_choice(data.get("tool_choice"))
    _stop(data.get("stop_sequences"))
    if data.get("metadata") is not None:  # kept on the event: it must be storable
        check_storable(data["metadata"], "metadata")
