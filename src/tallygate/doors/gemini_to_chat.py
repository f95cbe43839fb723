"""A Gemini ``generateContent`` request as OpenAI chat params (the Gemini door, translated).

The other direction of ``providers.gemini_request``: ``systemInstruction`` to a system
message, ``user`` / ``model`` turns to user / assistant messages, ``functionCall`` parts
to tool calls and ``functionResponse`` parts to tool messages (ids paired by name when
the client sends none), ``functionDeclarations`` to function tools (Gemini's Schema to
JSON Schema), ``toolConfig`` to ``tool_choice``, ``generationConfig`` to the sampling
params. Google's JSON takes each field in camelCase or snake_case alike, so both are
read. What has no OpenAI counterpart is left out and named in ``dropped``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from tallygate.errors import BadRequestError

# Gemini Schema type -> JSON Schema type.
_TYPES = {"STRING": "string", "NUMBER": "number", "INTEGER": "integer",
          "BOOLEAN": "boolean", "ARRAY": "array", "OBJECT": "object", "NULL": "null"}
_SCHEMA_KEPT = ("title", "description", "required", "default", "minItems", "maxItems",
                "minLength", "maxLength", "pattern", "minimum", "maximum", "minProperties",
                "maxProperties", "format")
_TOOL_MODES = {"AUTO": "auto", "NONE": "none", "ANY": "required", "VALIDATED": "required"}
_CONFIG_NAMES = {"temperature": "temperature", "topP": "top_p", "seed": "seed",
                 "presencePenalty": "presence_penalty",
                 "frequencyPenalty": "frequency_penalty"}
# generationConfig fields with no chat counterpart: left out, and said so.
_CONFIG_DROPPED = ("topK", "thinkingConfig", "responseModalities", "mediaResolution",
                   "speechConfig", "responseLogprobs", "logprobs", "audioTimestamp",
                   "enableEnhancedCivicAnswers", "imageConfig")


def bad(message: str, where: str) -> BadRequestError:
    return BadRequestError(message, param=where)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def fields(obj: object, where: str) -> dict[str, Any]:
    """An object's fields under their camelCase names."""
    if not isinstance(obj, Mapping):
        raise bad(f"{where} must be an object", where)
    return {camel(str(k)): v for k, v in obj.items()}


def json_schema(schema: object, where: str) -> dict[str, Any]:
    """A Gemini Schema (OpenAPI subset, upper-case types) as JSON Schema."""
    s = fields(schema, where)
    out: dict[str, Any] = {k: s[k] for k in _SCHEMA_KEPT if k in s}
    kind = s.get("type")
    if kind is not None:
        name = _TYPES.get(str(kind).upper())
        if name is None:
            raise bad(f"{where}.type: {kind!r} is not a Gemini schema type", f"{where}.type")
        out["type"] = [name, "null"] if s.get("nullable") is True else name
    if "enum" in s:
        out["enum"] = list(s["enum"])
    if isinstance(s.get("properties"), Mapping):
        out["properties"] = {name: json_schema(sub, f"{where}.properties.{name}")
                             for name, sub in s["properties"].items()}
    if "items" in s:
        out["items"] = json_schema(s["items"], f"{where}.items")
    if isinstance(s.get("anyOf"), list):
        out["anyOf"] = [json_schema(sub, f"{where}.anyOf[{i}]")
                        for i, sub in enumerate(s["anyOf"])]
    return out


class GeminiTranslation:
    """One Gemini request as chat params; ``dropped`` names what was left out."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self._pending: dict[str, list[str]] = {}  # function name -> unanswered call ids
        self._ids = 0

    def drop(self, name: str) -> None:
        if name not in self.dropped:
            self.dropped.append(name)

    def _call_id(self, name: str, given: object) -> str:
        if isinstance(given, str) and given:
            call_id = given
        else:
            self._ids += 1
            call_id = f"call_gemini_{self._ids}"
        self._pending.setdefault(name, []).append(call_id)
        return call_id

    def _answer_id(self, name: str, given: object, where: str) -> str:
        pending = self._pending.get(name) or []
        if isinstance(given, str) and given:
            if given in pending:
                pending.remove(given)
            return given
        if not pending:
            raise bad(f"{where}: functionResponse {name!r} answers no earlier functionCall",
                      where)
        return pending.pop(0)

    # -- parts -----------------------------------------------------------------------

    def _media(self, data: Mapping[str, Any], where: str) -> dict[str, Any]:
        mime = str(data.get("mimeType") or data.get("mime_type") or "")
        if "data" in data:
            payload = data.get("data")
            if not isinstance(payload, str) or not mime:
                raise bad(f"{where} needs base64 data and a mimeType", where)
            url = f"data:{mime};base64,{payload}"
            if mime.startswith("audio/"):
                return {"type": "input_audio",
                        "input_audio": {"data": payload, "format": mime.split("/", 1)[1]}}
            if mime.startswith("image/"):
                return {"type": "image_url", "image_url": {"url": url}}
            return {"type": "file", "file": {"file_data": url}}
        uri = data.get("fileUri") or data.get("file_uri")
        if not isinstance(uri, str) or not uri:
            raise bad(f"{where} needs a fileUri", where)
        if mime.startswith("image/") or not mime:
            return {"type": "image_url", "image_url": {"url": uri}}
        return {"type": "file", "file": {"file_id": uri, "format": mime}}

    def _user_turn(self, parts: list[Any], where: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        content: list[dict[str, Any]] = []
        for j, raw in enumerate(parts):
            at = f"{where}.parts[{j}]"
            part = fields(raw, at)
            if isinstance(part.get("text"), str):
                content.append({"type": "text", "text": part["text"]})
            elif "inlineData" in part or "fileData" in part:
                media = part.get("inlineData") or part.get("fileData")
                content.append(self._media(fields(media, at), at))
            elif "functionResponse" in part:
                fr = fields(part["functionResponse"], f"{at}.functionResponse")
                name = str(fr.get("name") or "")
                messages.append({"role": "tool",
                                 "tool_call_id": self._answer_id(name, fr.get("id"), at),
                                 "content": orjson.dumps(fr.get("response") or {}).decode()})
            else:
                self.drop(f"{where}.parts[{j}]")
        if content:
            messages.append({"role": "user", "content": content})
        return messages

    def _model_turn(self, parts: list[Any], where: str) -> dict[str, Any] | None:
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, raw in enumerate(parts):
            at = f"{where}.parts[{j}]"
            part = fields(raw, at)
            if part.get("thought") is True:
                continue  # the model's own thoughts: not sent back to another model
            if "thoughtSignature" in part:
                self.drop("thoughtSignature")
            if isinstance(part.get("text"), str):
                text.append(part["text"])
            elif "functionCall" in part:
                fc = fields(part["functionCall"], f"{at}.functionCall")
                name = fc.get("name")
                if not isinstance(name, str) or not name:
                    raise bad(f"{at}.functionCall needs a name", f"{at}.functionCall.name")
                calls.append({"id": self._call_id(name, fc.get("id")), "type": "function",
                              "function": {"name": name,
                                           "arguments": orjson.dumps(fc.get("args") or {})
                                           .decode()}})
            else:
                self.drop(f"{where}.parts[{j}]")
        if not text and not calls:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = calls
        return message

    def messages(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        system = body.get("systemInstruction")
        if system is not None:
            if isinstance(system, str):
                text = system
            else:
                sys_parts = fields(system, "systemInstruction").get("parts") or []
                text = "\n".join(str(fields(p, "systemInstruction.parts").get("text") or "")
                                 for p in sys_parts)
            if text:
                out.append({"role": "system", "content": text})
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise bad("contents: contents is not specified", "contents")
        for i, raw in enumerate(contents):
            where = f"contents[{i}]"
            content = fields(raw, where)
            parts = content.get("parts")
            if not isinstance(parts, list) or not parts:
                raise bad(f"{where}.parts must not be empty", f"{where}.parts")
            role = content.get("role") or "user"
            if role in ("user", "function"):
                out.extend(self._user_turn(parts, where))
            elif role == "model":
                message = self._model_turn(parts, where)
                if message is not None:
                    out.append(message)
            else:
                raise bad(f"{where}.role: please use a valid role: user, model",
                          f"{where}.role")
        return out

    # -- tools and config ------------------------------------------------------------

    def tools(self, tools: object) -> list[dict[str, Any]]:
        if not isinstance(tools, list):
            raise bad("tools must be a list", "tools")
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(tools):
            tool = fields(raw, f"tools[{i}]")
            for name in tool:
                if name != "functionDeclarations":
                    self.drop(f"tools[{i}].{name}")  # Google's own tools (search...)
            for j, raw_decl in enumerate(tool.get("functionDeclarations") or ()):
                where = f"tools[{i}].functionDeclarations[{j}]"
                decl = fields(raw_decl, where)
                if not isinstance(decl.get("name"), str) or not decl["name"]:
                    raise bad(f"{where}.name is required", f"{where}.name")
                fn: dict[str, Any] = {"name": decl["name"]}
                if decl.get("description"):
                    fn["description"] = str(decl["description"])
                if decl.get("parametersJsonSchema") is not None:
                    fn["parameters"] = decl["parametersJsonSchema"]
                elif decl.get("parameters") is not None:
                    fn["parameters"] = json_schema(decl["parameters"], f"{where}.parameters")
                out.append({"type": "function", "function": fn})
        return out

    @staticmethod
    def tool_choice(config: object) -> str | dict[str, Any] | None:
        calling = fields(config, "toolConfig").get("functionCallingConfig")
        if calling is None:
            return None
        c = fields(calling, "toolConfig.functionCallingConfig")
        mode = str(c.get("mode") or "AUTO").upper()
        names = c.get("allowedFunctionNames")
        if mode in ("ANY", "VALIDATED") and isinstance(names, list) and len(names) == 1:
            return {"type": "function", "function": {"name": str(names[0])}}
        if mode not in _TOOL_MODES and mode != "MODE_UNSPECIFIED":
            raise bad(f"toolConfig.functionCallingConfig.mode {mode!r} is not a mode",
                      "toolConfig.functionCallingConfig.mode")
        return _TOOL_MODES.get(mode, "auto")

    def config(self, raw: object, params: dict[str, Any]) -> None:
        config = fields(raw, "generationConfig")
        if config.get("maxOutputTokens") is not None:
            params["max_tokens"] = config["maxOutputTokens"]
        for name, chat_name in _CONFIG_NAMES.items():
            if config.get(name) is not None:
                params[chat_name] = config[name]
        stop = config.get("stopSequences")
        if stop:
            params["stop"] = list(stop)
        if config.get("candidateCount") is not None:
            params["n"] = config["candidateCount"]
        mime = config.get("responseMimeType")
        schema = config.get("responseJsonSchema")
        if schema is None and config.get("responseSchema") is not None:
            schema = json_schema(config["responseSchema"], "generationConfig.responseSchema")
        if schema is not None:
            params["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "response", "schema": schema}}
        elif mime == "application/json":
            params["response_format"] = {"type": "json_object"}
        for name in _CONFIG_DROPPED:
            if name in config:
                self.drop(f"generationConfig.{name}")

    def params(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Chat params (no ``model``: the door's model group sets it)."""
        body = fields(data, "body")
        params: dict[str, Any] = {"messages": self.messages(body)}
        if body.get("tools"):
            tools = self.tools(body["tools"])
            if tools:
                params["tools"] = tools
                if body.get("toolConfig") is not None:
                    choice = self.tool_choice(body["toolConfig"])
                    if choice is not None:
                        params["tool_choice"] = choice
        if body.get("generationConfig") is not None:
            self.config(body["generationConfig"], params)
        for name in ("safetySettings", "cachedContent"):
            if name in body:
                self.drop(name)
        return params
