"""Token usage in disjoint buckets.

Providers disagree on what "input tokens" means: OpenAI counts cached tokens inside
``prompt_tokens``, Anthropic counts cache reads and writes outside ``input_tokens``.
``Usage`` stores each token exactly once so that pricing and billing never count a
token twice or miss one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

UsageSource = Literal["provider", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Disjoint token buckets of one call.

    ``input_tokens`` are the uncached input tokens only; ``cache_read_tokens`` and
    ``cache_write_tokens`` are the cached ones. ``reasoning_tokens`` is a part of
    ``output_tokens`` (not added to it), kept for reporting.
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "provider"

    def __post_init__(self) -> None:
        for name in ("input_tokens", "cache_read_tokens", "cache_write_tokens",
                     "output_tokens", "reasoning_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("Usage.reasoning_tokens is a part of output_tokens, "
                             "it cannot exceed it")

    @property
    def prompt_tokens(self) -> int:
        """All input tokens, cached or not (OpenAI's ``prompt_tokens``)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def completion_tokens(self) -> int:
        return self.output_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    @classmethod
    def from_openai(cls, raw: dict[str, object] | None) -> Usage | None:
        """Read an OpenAI ``usage`` object, whose ``prompt_tokens`` include cached ones."""
        if not raw:
            return None
        prompt = _int(raw.get("prompt_tokens"))
        output = _int(raw.get("completion_tokens"))
        p_details = raw.get("prompt_tokens_details")
        c_details = raw.get("completion_tokens_details")
        cached = _int(p_details.get("cached_tokens")) if isinstance(p_details, dict) else 0
        # OpenAI-compatible servers that report cache writes (e.g. some routers) put them
        # inside prompt_tokens too.
        written = 0
        if isinstance(p_details, dict):
            written = _int(p_details.get("cache_write_tokens")
                           or p_details.get("cache_creation_tokens"))
        reasoning = (_int(c_details.get("reasoning_tokens"))
                     if isinstance(c_details, dict) else 0)
        cached = min(cached, prompt)
        written = min(written, prompt - cached)
        return cls(
            input_tokens=prompt - cached - written,
            cache_read_tokens=cached,
            cache_write_tokens=written,
            output_tokens=output,
            reasoning_tokens=min(reasoning, output),
        )

    @classmethod
    def from_anthropic(cls, raw: dict[str, object] | None) -> Usage | None:
        """Read an Anthropic ``usage`` object, whose cache counts are outside input_tokens."""
        if not raw:
            return None
        return cls(
            input_tokens=_int(raw.get("input_tokens")),
            cache_read_tokens=_int(raw.get("cache_read_input_tokens")),
            cache_write_tokens=_int(raw.get("cache_creation_input_tokens")),
            output_tokens=_int(raw.get("output_tokens")),
        )

    def to_openai(self) -> dict[str, object]:
        """The OpenAI ``usage`` object for this usage (cached tokens inside prompt_tokens)."""
        out: dict[str, object] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }
        if self.cache_write_tokens:
            out["prompt_tokens_details"] = {
                "cached_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_tokens,
            }
        return out


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float):
        return max(int(value), 0)
    return 0
