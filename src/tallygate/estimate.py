"""Token estimates for when a provider reports none (a stream cut short, the mock).

About four characters a token is the usual rule of thumb for English text with GPT and
Claude tokenizers; an estimate is always flagged ``usage_source: estimated``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and framing tokens each chat message adds


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def estimate_prompt_tokens(messages: Iterable[Any]) -> int:
    total = 3  # the reply's priming tokens
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + estimate_text_tokens(_content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                fn = call.get("function") or {}
                text = str(fn.get("name", "")) + str(fn.get("arguments", ""))
                total += estimate_text_tokens(text)
    return total
