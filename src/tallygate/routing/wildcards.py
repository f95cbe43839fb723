"""Wildcard model groups: ``model_name: "anthropic/*"``, ``"claude-*"``, ``"*"``.

A client whose model ids change with every release (Claude Code asks for a new
``claude-...`` id each month) reaches a wildcard group without a config edit, and the
concrete model it asked for is the one sent upstream and priced.

As in LiteLLM, each ``*`` of ``model_name`` matches any text and the most specific
pattern (the longest) wins; a name is also tried with the provider its name implies
(``claude-opus-4-1`` as ``anthropic/claude-opus-4-1``). The deployment's
``model`` gets the matched text in place of its ``*``. One difference: when the pattern's
fixed part is part of the model id (``claude-*`` -> ``anthropic/*``), the whole
requested id is sent (``anthropic/claude-opus-4-1``), not just the text after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Bare model ids whose provider their name says (LiteLLM infers the same ones).
_IMPLIED_PROVIDER: tuple[tuple[str, str], ...] = (
    ("claude", "anthropic"), ("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"),
    ("o3", "openai"), ("o4", "openai"), ("text-embedding-", "openai"),
    ("gemini", "gemini"), ("mistral", "mistral"), ("command", "cohere"),
)


def is_pattern(name: str) -> bool:
    return "*" in name


def implied_provider(model: str) -> str | None:
    for prefix, provider in _IMPLIED_PROVIDER:
        if model.startswith(prefix):
            return provider
    return None


@dataclass(frozen=True, slots=True)
class Pattern(Generic[T]):
    text: str
    regex: re.Pattern[str]
    value: T

    @classmethod
    def of(cls, text: str, value: T) -> Pattern[T]:
        regex = re.compile(re.escape(text).replace(r"\*", "(.*)"), re.DOTALL)
        return cls(text, regex, value)


class PatternSet(Generic[T]):
    """Wildcard names, most specific first."""

    def __init__(self, items: Iterable[tuple[str, T]]) -> None:
        patterns = [Pattern.of(text, value) for text, value in items]
        # Longer patterns are more specific; among equals, more wildcards first (LiteLLM).
        patterns.sort(key=lambda p: (len(p.text), p.text.count("*")), reverse=True)
        self.patterns: Sequence[Pattern[T]] = tuple(patterns)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def match(self, name: str, known_providers: Iterable[str] = ()
              ) -> tuple[Pattern[T], re.Match[str], str] | None:
        """The most specific pattern ``name`` matches, as it is or with the provider its
        name implies in front (``claude-x`` as ``anthropic/claude-x``: so that
        ``anthropic/*`` wins over a catch-all ``*``); its match and the name matched."""
        names = [name]
        provider = implied_provider(name)
        if provider is not None and "/" not in name and provider in set(known_providers):
            names.append(f"{provider}/{name}")
        for p in self.patterns:
            for candidate in names:
                m = p.regex.fullmatch(candidate)
                if m is not None:
                    return p, m, candidate
        return None


def concrete_model(pattern: str, match: re.Match[str], target: str) -> str:
    """The deployment's ``provider/model`` for a name that matched ``pattern``, where the
    deployment's configured model is ``target`` (``anthropic/*``, ``openai/gpt-4o``...)."""
    if "*" not in target:
        return target
    requested = match.string
    segments = match.groups()
    if target == "*":
        return requested  # the router reads the provider off the name
    head = target.split("/", 1)[0]
    if target.count("*") == 1 and target.endswith("/*") and len(segments) == 1:
        fixed = pattern.split("*", 1)[0]
        # anthropic/* -> anthropic/*: the text after the prefix is the model id; for
        # claude-* or * the fixed part (if any) belongs to the id: send all of it.
        name = segments[0] if fixed.endswith("/") else requested
        if name.startswith(head + "/"):
            name = name[len(head) + 1:]
        return f"{head}/{name}"
    if len(segments) > target.count("*"):
        return requested
    out = target
    for segment in segments:
        out = out.replace("*", segment, 1)
    return out
