"""A Messages API request as OpenAI chat params, for deployments that do not speak it.

Whatever has an OpenAI equivalent is translated. What has none is either dropped, and
named in the answer's ``x-tallygate-dropped-params`` header (``ChatTranslation.dropped``),
or refused with a 400 when dropping it would change what the answer means or what is
billed (server tools the provider cannot run, documents it cannot read, tool results it
was asked to clear).
The table is in README ("Anthropic SDK as a client").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import BadRequestError
from tallygate.providers.base import Deployment
from tallygate.providers.openai import is_reasoning_model
from tallygate.providers.registry import get_provider

# Top-level fields read here; any other is dropped and named.
_TRANSLATED = frozenset({"model", "messages", "max_tokens", "system", "metadata",
                         "stop_sequences", "stream", "temperature", "top_p", "top_k",
                         "tools", "tool_choice", "thinking", "service_tier", "output_config",
                         "output_format", "context_management", "mcp_servers", "container",
                         "cache_control"})
# Tool fields with no OpenAI equivalent that change nothing the answer means.
_TOOL_DROPPABLE = ("defer_loading", "input_examples", "allowed_callers", "eager_input_streaming")
# Context edits whose loss bills more input than the client asked for (tool results it
# wanted cleared are sent in full): refused. Clearing thinking is moot, thinking is dropped.
_BILLED_EDITS = ("clear_tool_uses",)
# Anthropic's effort -> OpenAI's reasoning_effort.
_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def bad(message: str, param: str) -> BadRequestError:
    return BadRequestError(message, param=param, code="invalid_request")


def blocks_of(content: object, where: str) -> list[dict[str, Any]]:
    """A content value as blocks (a string is one text block); 400 for anything else."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or a list of content blocks", where)
    for i, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise bad(f"{where}[{i}] must be a content block with a type", f"{where}[{i}]")
    return content


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text part as a string (every OpenAI-compatible server takes that)."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


class ChatTranslation:
    """One request's translation for one deployment; ``dropped`` names what was left out."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.reasoning = deployment.provider == "openai" and is_reasoning_model(deployment)
        # Bedrock turns cache_control breakpoints into cachePoints and reads top_k
        self.caches = get_provider(deployment.provider).reads_cache_control
        # top_k goes to the providers that read it (Bedrock, Cohere's k, Ollama's option);
        # an OpenAI-compatible server may refuse it.
        self.reads_top_k = self.caches or get_provider(deployment.provider).reads_top_k
        self.dropped: list[str] = []

    def drop(self, name: str) -> None:
        if name not in self.dropped:
            self.dropped.append(name)

    def refuse(self, what: str, where: str) -> BadRequestError:
        return bad(f"{where}: {what} is not supported by provider "
                   f"{self.deployment.provider!r} (model {self.deployment.model!r}); only "
                   "Anthropic deployments take it", where)

    # -- blocks ---------------------------------------------------------------------

    def _block_extras(self, block: Mapping[str, Any], path: str) -> None:
        if block.get("cache_control") and not self.caches:
            self.drop("cache_control")  # OpenAI-compatible servers cache by themselves
        if block.get("citations"):
            self.drop(f"{path}.citations")

    def _cached(self, part: dict[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
        """The part with the block's prompt-caching breakpoint, for a provider that reads it."""
        if self.caches and block.get("cache_control"):
            part["cache_control"] = block["cache_control"]
        return part

    def text_part(self, block: Mapping[str, Any], where: str, path: str) -> dict[str, Any]:
        text = block.get("text")
        if not isinstance(text, str):
            raise bad(f"{where}.text must be a string", where)
        self._block_extras(block, path)
        return self._cached({"type": "text", "text": text}, block)

    def image_part(self, block: Mapping[str, Any], where: str, path: str) -> dict[str, Any]:
        source = block.get("source")
        if not isinstance(source, dict):
            raise bad(f"{where}.source must be an object", where)
        kind = source.get("type")
        if kind == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise bad(f"{where}.source needs media_type and data strings", where)
            url = f"data:{media_type};base64,{data}"
        elif kind == "url" and isinstance(source.get("url"), str):
            url = source["url"]
        else:
            raise self.refuse(f"an image source of type {kind!r}", where)
        self._block_extras(block, path)
        return self._cached({"type": "image_url", "image_url": {"url": url}}, block)

    def document_parts(self, block: Mapping[str, Any], where: str,
                       path: str) -> list[dict[str, Any]]:
        """A document as the model can still read it: plain text as text, a base64 PDF
        as an OpenAI ``file`` part, content blocks as their text; other sources (a URL
        or an uploaded file the provider cannot fetch) are refused."""
        source = block.get("source")
        if not isinstance(source, dict):
            raise bad(f"{where}.source must be an object", where)
        kind = source.get("type")
        self._block_extras(block, path)
        if kind == "text" and isinstance(source.get("data"), str):
            return [{"type": "text", "text": source["data"]}]
        if (kind == "base64" and source.get("media_type") == "application/pdf"
                and isinstance(source.get("data"), str)):
            title = block.get("title")
            return [{"type": "file", "file": {
                "filename": title if isinstance(title, str) and title else "document.pdf",
                "file_data": f"data:application/pdf;base64,{source['data']}"}}]
        if kind == "content":
            parts: list[dict[str, Any]] = []
            for i, inner in enumerate(blocks_of(source.get("content"), f"{where}.source")):
                at = f"{where}.source.content[{i}]"
                if inner["type"] == "text":
                    parts.append(self.text_part(inner, at, path))
                elif inner["type"] == "image":
                    parts.append(self.image_part(inner, at, path))
                else:
                    raise self.refuse(f"a {inner['type']!r} block in a document", at)
            return parts
        raise self.refuse(f"a document source of type {kind!r}", where)

    def _parts(self, block: dict[str, Any], where: str, path: str) -> list[dict[str, Any]]:
        kind = block["type"]
        if kind == "text":
            return [self.text_part(block, where, path)]
        if kind == "image":
            return [self.image_part(block, where, path)]
        if kind == "document":
            return self.document_parts(block, where, path)
        raise self.refuse(f"content block type {kind!r}", where)

    def tool_result(self, block: Mapping[str, Any], where: str, path: str) -> dict[str, Any]:
        tool_use_id = block.get("tool_use_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise bad(f"{where}.tool_use_id is required", where)
        self._block_extras(block, path)
        if block.get("is_error"):
            self.drop(f"{path}.is_error")
        content = block.get("content")
        parts: list[dict[str, Any]] = []
        if content is not None:
            for i, inner in enumerate(blocks_of(content, f"{where}.content")):
                parts += self._parts(inner, f"{where}.content[{i}]", path)
        value: str | list[dict[str, Any]] = _content(parts) if parts else ""
        # a breakpoint on the result itself: on the tool message, where Bedrock reads it
        return self._cached({"role": "tool", "tool_call_id": tool_use_id, "content": value},
                            block)

    # -- turns ----------------------------------------------------------------------

    def user_messages(self, content: object, where: str) -> list[dict[str, Any]]:
        """One user turn: its tool results become ``tool`` messages (first, as OpenAI
        wants them right after the assistant's calls), the rest one user message."""
        if isinstance(content, str):
            return [{"role": "user", "content": content}]
        results: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        for i, block in enumerate(blocks_of(content, where)):
            at = f"{where}[{i}]"
            if block["type"] == "tool_result":
                results.append(self.tool_result(block, at, "messages.content"))
            else:
                parts += self._parts(block, at, "messages.content")
        if parts:
            results.append({"role": "user", "content": _content(parts)})
        return results

    def assistant_message(self, content: object, where: str) -> dict[str, Any] | None:
        if isinstance(content, str):
            return {"role": "assistant", "content": content}
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for i, block in enumerate(blocks_of(content, where)):
            at, kind = f"{where}[{i}]", block["type"]
            if kind == "text":
                if block.get("text"):
                    parts.append(self.text_part(block, at, "messages.content"))
            elif kind == "tool_use":
                name, call_id = block.get("name"), block.get("id")
                if not isinstance(name, str) or not isinstance(call_id, str):
                    raise bad(f"{at}: tool_use needs an id and a name", at)
                self._block_extras(block, "messages.content")
                calls.append({"id": call_id, "type": "function", "function": {
                    "name": name, "arguments": orjson.dumps(block.get("input") or {}).decode()}})
            elif kind in ("thinking", "redacted_thinking"):
                # Earlier reasoning, signed for Anthropic: no other model can read it.
                self.drop("messages.content.thinking")
            else:
                raise self.refuse(f"content block type {kind!r}", at)
        if not parts and not calls:
            return None
        message: dict[str, Any] = {"role": "assistant",
                                   "content": _content(parts) if parts else None}
        if calls:
            message["tool_calls"] = calls
        return message

    def system_message(self, system: object, where: str) -> dict[str, Any] | None:
        if isinstance(system, str):
            return {"role": "system", "content": system} if system else None
        parts = []
        for i, block in enumerate(blocks_of(system, where)):
            if block["type"] != "text":
                raise bad(f"{where}[{i}] must be a text block", f"{where}[{i}]")
            parts.append(self.text_part(block, f"{where}[{i}]", "system"))
        return {"role": "system", "content": _content(parts)} if parts else None

    def messages(self, data: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if data.get("system") is not None:
            system = self.system_message(data["system"], "system")
            if system is not None:
                out.append(system)
        for i, message in enumerate(data["messages"]):
            where = f"messages[{i}]"
            role, content = message.get("role"), message.get("content")
            turn: dict[str, Any] | None
            if role == "user":
                out.extend(self.user_messages(content, f"{where}.content"))
                continue
            if role == "assistant":
                turn = self.assistant_message(content, f"{where}.content")
            else:  # system (checked before): newer API versions allow system turns
                turn = self.system_message(content, f"{where}.content")
            if turn is not None:
                out.append(turn)
        return out

    # -- tools ----------------------------------------------------------------------

    def tools(self, tools: object) -> list[dict[str, Any]]:
        if not isinstance(tools, list):
            raise bad("tools must be a list", "tools")
        out = []
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise bad(f"{where} must be an object with a name", where)
            if tool.get("type") not in (None, "custom"):
                # A server tool (web search, code execution...) the provider cannot run,
                # or an Anthropic-defined tool whose schema only Anthropic knows.
                raise self.refuse(f"tool type {tool['type']!r}", where)
            schema = tool.get("input_schema")
            if schema is not None and not isinstance(schema, dict):
                raise bad(f"{where}.input_schema must be an object", where)
            function: dict[str, Any] = {
                "name": tool["name"],
                "parameters": schema or {"type": "object", "properties": {}}}
            if isinstance(tool.get("description"), str):
                function["description"] = tool["description"]
            if isinstance(tool.get("strict"), bool):
                function["strict"] = tool["strict"]
            for name in _TOOL_DROPPABLE:
                if name in tool:
                    self.drop(f"tools.{name}")
            entry: dict[str, Any] = {"type": "function", "function": function}
            if tool.get("cache_control"):
                if self.caches:
                    entry["cache_control"] = tool["cache_control"]
                else:
                    self.drop("cache_control")
            out.append(entry)
        return out

    @staticmethod
    def tool_choice(choice: object, params: dict[str, Any]) -> None:
        if not isinstance(choice, dict):
            raise bad("tool_choice must be an object with a type", "tool_choice")
        kind = choice.get("type")
        if kind in ("auto", "none"):
            params["tool_choice"] = kind
        elif kind == "any":
            params["tool_choice"] = "required"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise bad(f"tool_choice type {kind!r} is not supported (auto, any, tool, none)",
                      "tool_choice")
        if choice.get("disable_parallel_tool_use") is True and kind != "none":
            params["parallel_tool_calls"] = False

    # -- the rest of the request ----------------------------------------------------

    def _output(self, data: Mapping[str, Any], params: dict[str, Any]) -> None:
        """``output_config``: ``format`` (structured output) -> ``response_format``;
        ``effort`` -> ``reasoning_effort`` for a reasoning model, else dropped."""
        config = data.get("output_config")
        if config is not None and not isinstance(config, dict):
            raise bad("output_config must be an object", "output_config")
        config = config or {}
        fmt = config.get("format") or data.get("output_format")
        if fmt is not None:
            where = "output_config.format" if config.get("format") else "output_format"
            if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(
                    fmt.get("schema"), dict):
                raise bad(f"{where} must be {{'type': 'json_schema', 'schema': {{...}}}}",
                          where)
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": fmt["schema"], "strict": True}}
        effort = config.get("effort")
        if effort is not None:
            if self.reasoning and effort in _EFFORT:
                params["reasoning_effort"] = _EFFORT[effort]
            else:
                self.drop("output_config.effort")
        for name in config:
            if name not in ("format", "effort"):
                self.drop(f"output_config.{name}")

    def _refused_fields(self, data: Mapping[str, Any]) -> None:
        if data.get("mcp_servers"):
            raise self.refuse("mcp_servers", "mcp_servers")
        if data.get("container"):
            raise self.refuse("container", "container")
        edits = (data.get("context_management") or {}).get("edits") if isinstance(
            data.get("context_management"), dict) else None
        for i, edit in enumerate(edits or ()):
            kind = edit.get("type") if isinstance(edit, dict) else None
            if isinstance(kind, str) and kind.startswith(_BILLED_EDITS):
                raise self.refuse(f"context edit {kind!r} (the cleared tool results would "
                                  "be sent, and billed, in full)",
                                  f"context_management.edits[{i}]")

    def params(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The chat params (without ``user``, ``metadata`` and ``stream``, which the door
        sets) for a Messages body already checked by ``check_messages``."""
        self._refused_fields(data)
        params: dict[str, Any] = {"model": data["model"], "messages": self.messages(data)}
        # Reasoning models refuse max_tokens; they take max_completion_tokens.
        params["max_completion_tokens" if self.reasoning else "max_tokens"] = data["max_tokens"]
        for name in ("temperature", "top_p"):
            value = data.get(name)
            if value is None:
                continue
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise bad(f"{name} must be a number", name)
            if self.reasoning:
                self.drop(name)  # only the default is accepted
            else:
                params[name] = value
        top_k = data.get("top_k")
        if top_k is not None:
            if not self.reads_top_k:
                self.drop("top_k")
            elif not isinstance(top_k, int) or isinstance(top_k, bool):
                raise bad("top_k must be an integer", "top_k")
            else:
                params["top_k"] = top_k
        stop = data.get("stop_sequences")
        if stop is not None:
            if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
                raise bad("stop_sequences must be a list of strings", "stop_sequences")
            if stop:
                params["stop"] = stop
        if data.get("tools"):
            params["tools"] = self.tools(data["tools"])
            if data.get("tool_choice") is not None:
                self.tool_choice(data["tool_choice"], params)
        self._output(data, params)
        thinking = data.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
            self.drop("thinking")
        if data.get("service_tier") not in (None, "auto"):
            self.drop("service_tier")
        for name in ("context_management", "cache_control"):
            if data.get(name):
                self.drop(name)
        for name in data:
            if name not in _TRANSLATED:
                self.drop(name)
        return params
