"""JSON Schema (what OpenAI callers write) to the OpenAPI subset Gemini's Schema accepts.

Gemini's function ``parameters`` and ``responseSchema`` take an OpenAPI 3.0 Schema
subset, not full JSON Schema. What maps is translated: ``$ref`` into ``$defs`` is
inlined, a ``null`` in ``type`` or ``anyOf`` becomes ``nullable``, ``const`` a one-value
``enum``. Annotations that constrain nothing (``$schema``, ``examples``, ``format``...)
are dropped. Everything else Gemini would refuse is refused here with a 400 naming the
field, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.errors import BadRequestError

# Keywords Gemini's Schema has under the same name and meaning.
_KEPT = frozenset({
    "title", "description", "nullable", "required", "default", "example",
    "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
    "minProperties", "maxProperties", "propertyOrdering"})
# Annotations: no effect on what validates, so nothing is lost by leaving them out.
_DROPPED = frozenset({
    "$schema", "$id", "$comment", "$defs", "definitions", "examples", "deprecated",
    "readOnly", "writeOnly", "format", "strict", "contentEncoding", "contentMediaType"})
_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER",
          "boolean": "BOOLEAN", "array": "ARRAY", "object": "OBJECT"}
_NULL = {"type": "null"}


def _bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="unsupported_schema")


def gemini_schema(schema: object, where: str) -> dict[str, Any]:
    """``schema`` as a Gemini Schema; ``where`` names it in errors
    (``tools[0].function.parameters``)."""
    if not isinstance(schema, Mapping):
        raise _bad(f"{where} must be a JSON schema object", where)
    defs: dict[str, Any] = {}
    for key in ("definitions", "$defs"):
        found = schema.get(key)
        if isinstance(found, Mapping):
            defs.update({f"#/{key}/{name}": value for name, value in found.items()})
    return _convert(schema, where, defs, ())


def _convert(node: object, where: str, defs: Mapping[str, Any],
             refs: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise _bad(f"{where} must be a JSON schema object", where)
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or ref not in defs:
            raise _bad(f"{where}.$ref: {ref!r} does not name a schema in the root's $defs",
                       f"{where}.$ref")
        if ref in refs:
            raise _bad(f"{where}.$ref: {ref!r} is recursive; Gemini schemas cannot refer "
                       "to themselves", f"{where}.$ref")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**defs[ref], **siblings}, where, defs, (*refs, ref))
    out: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{where}.{key}"
        if key in _DROPPED:
            continue
        if key in _KEPT:
            out[key] = value
        elif key == "type":
            _set_type(out, value, path)
        elif key == "enum":
            out["enum"] = _enum(value, path)
        elif key == "const":
            out["enum"] = _enum([value], path)
        elif key == "properties":
            if not isinstance(value, Mapping):
                raise _bad(f"{path} must be an object", path)
            out["properties"] = {str(name): _convert(sub, f"{path}.{name}", defs, refs)
                                 for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, path, defs, refs)
        elif key == "anyOf":
            _any_of(out, value, path, defs, refs)
        elif key == "additionalProperties":
            if isinstance(value, bool):
                continue  # Gemini's objects have the properties listed, no others
            raise _bad(f"{path}: schemas for additional properties (maps) are not in "
                       "the JSON-schema subset Gemini accepts", path)
        else:
            raise _bad(f"{path}: {key!r} is not in the JSON-schema subset Gemini accepts",
                       path)
    return out


def _set_type(out: dict[str, Any], value: object, path: str) -> None:
    raw = value if isinstance(value, list) else [value]
    names = [n for n in raw if isinstance(n, str)]
    if not names or len(names) < len(raw):
        raise _bad(f"{path} must be a type name or a list of them", path)
    kinds = [n for n in names if n != "null"]
    for name in kinds:
        if name not in _TYPES:
            raise _bad(f"{path}: unknown type {name!r}", path)
    if len(kinds) < len(names):
        out["nullable"] = True
    if not kinds:
        raise _bad(f"{path}: a schema of type null alone is not accepted by Gemini", path)
    if len(kinds) == 1:
        out["type"] = _TYPES[kinds[0]]
    else:
        out["anyOf"] = [{"type": _TYPES[k]} for k in kinds]


def _enum(value: object, path: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _bad(f"{path} must be a non-empty list", path)
    if not all(isinstance(v, str) for v in value):
        raise _bad(f"{path}: Gemini enums hold strings only", path)
    return list(value)


def _any_of(out: dict[str, Any], value: object, path: str, defs: Mapping[str, Any],
            refs: tuple[str, ...]) -> None:
    if not isinstance(value, list) or not value:
        raise _bad(f"{path} must be a non-empty list of schemas", path)
    options = [v for v in value if v != _NULL]
    if len(options) < len(value):
        out["nullable"] = True
    if not options:
        raise _bad(f"{path}: a schema of type null alone is not accepted by Gemini", path)
    converted = [_convert(v, f"{path}[{i}]", defs, refs) for i, v in enumerate(options)]
    if len(converted) == 1:
        out.update({k: v for k, v in converted[0].items() if k not in out})
    else:
        out["anyOf"] = converted


def function_parameters(schema: object, where: str) -> dict[str, Any] | None:
    """A function's ``parameters``; None for a function without arguments (Gemini
    refuses an OBJECT schema with no properties)."""
    if schema is None:
        return None
    converted = gemini_schema(schema, where)
    if converted.get("type") == "OBJECT" and not converted.get("properties"):
        return None
    return converted
