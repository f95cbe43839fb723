"""Token usage in disjoint buckets.

Providers disagree on what "input tokens" means: OpenAI counts cached and audio tokens
inside ``prompt_tokens``, Anthropic counts cache reads and writes outside
``input_tokens``. ``Usage`` stores each token exactly once so that pricing and billing
never count a token twice or miss one, and each bucket is priced at its own rate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

UsageSource = Literal["provider", "estimated"]

# The integer buckets, each counted once; ``requests`` holds the per-request items.
TOKEN_BUCKETS: tuple[str, ...] = (
    "input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "audio_input_tokens", "citation_tokens", "output_tokens", "reasoning_tokens",
    "audio_output_tokens", "image_input_tokens")

RequestCounts = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Usage:
    """Disjoint usage buckets of one call.

    Input: ``input_tokens`` (uncached text/image input), ``cache_read_tokens``,
    ``cache_write_tokens`` (cache writes kept 5 minutes, or of unstated lifetime),
    ``cache_write_1h_tokens`` (writes kept one hour, priced higher),
    ``audio_input_tokens`` (uncached audio), ``citation_tokens`` (search results a
    model read, which Perplexity's deep research bills at their own rate) and
    ``image_input_tokens`` (image input of token-priced image models, OpenAI's
    ``input_tokens_details.image_tokens``). Output:
    ``output_tokens`` (text, reasoning included) and ``audio_output_tokens``.
    ``reasoning_tokens`` is a part of ``output_tokens`` (not added to it), priced at the
    output rate unless the model has a reasoning rate of its own. ``requests`` counts items a
    provider bills per request, by genai-prices' usage names (``("web_searches", 2)``),
    sorted by name; calls billed in other units count them there too (``images``,
    ``audio_seconds``, ``input_characters``, ``rerank_searches``).
    """

    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    source: UsageSource = "provider"
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    requests: RequestCounts = ()
    citation_tokens: int = 0
    image_input_tokens: int = 0

    def __post_init__(self) -> None:
        for name in TOKEN_BUCKETS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Usage.{name} must be a non-negative int, got {value!r}")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("Usage.reasoning_tokens is a part of output_tokens, "
                             "it cannot exceed it")
        for item in self.requests:
            if (not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], int) or item[1] <= 0):
                raise ValueError(f"Usage.requests holds (name, positive count) pairs, "
                                 f"got {item!r}")
        if list(self.requests) != sorted(self.requests):
            object.__setattr__(self, "requests", tuple(sorted(self.requests)))

    @property
    def cache_write_all_tokens(self) -> int:
        """Every cache write, whatever its lifetime."""
        return self.cache_write_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """All input tokens, cached or not, text, audio or citations (OpenAI's
        ``prompt_tokens``, plus the citation tokens a few providers count apart)."""
        return (self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
                + self.cache_write_1h_tokens + self.audio_input_tokens + self.citation_tokens
                + self.image_input_tokens)

    @property
    def completion_tokens(self) -> int:
        """All output tokens, text and audio (OpenAI's ``completion_tokens``)."""
        return self.output_tokens + self.audio_output_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def request_count(self, name: str) -> int:
        return next((n for key, n in self.requests if key == name), 0)

    @classmethod
    def from_openai(cls, raw: Mapping[str, object] | None) -> Usage | None:
        """Read an OpenAI ``usage`` object, whose ``prompt_tokens`` include cached and
        audio tokens and whose ``completion_tokens`` include audio and reasoning."""
        if not raw:
            return None
        # The two totals must be counts; anything else is no usage at all (the call is
        # then estimated and flagged, never billed as zero).
        prompt = _count(raw.get("prompt_tokens"))
        output = _count(raw.get("completion_tokens"))
        if output is None and prompt is not None:
            total = _count(raw.get("total_tokens"))
            output = total - prompt if total is not None and total >= prompt else None
        if prompt is None or output is None:
            return None
        p_details = raw.get("prompt_tokens_details")
        c_details = raw.get("completion_tokens_details")
        p = p_details if isinstance(p_details, dict) else {}
        c = c_details if isinstance(c_details, dict) else {}
        cached = min(_int(p.get("cached_tokens")), prompt)
        # OpenAI-compatible servers that report cache writes (e.g. some routers) put them
        # inside prompt_tokens too.
        written = min(_int(p.get("cache_write_tokens") or p.get("cache_creation_tokens")),
                      prompt - cached)
        # Cached audio is a cache read already: only the uncached audio is its own bucket.
        audio_in = min(_int(p.get("audio_tokens")), prompt - cached - written)
        audio_out = min(_int(c.get("audio_tokens")), output)
        text_out = output - audio_out
        return cls(
            input_tokens=prompt - cached - written - audio_in,
            cache_read_tokens=cached,
            cache_write_tokens=written,
            audio_input_tokens=audio_in,
            output_tokens=text_out,
            audio_output_tokens=audio_out,
            reasoning_tokens=min(_int(c.get("reasoning_tokens")), text_out),
        )

    @classmethod
    def from_anthropic(cls, raw: Mapping[str, object] | None) -> Usage | None:
        """Read an Anthropic ``usage`` object, whose cache counts are outside input_tokens.

        ``cache_creation`` splits the writes by lifetime when present; a total that
        exceeds the split (older answers) counts the rest as 5-minute writes.
        """
        if not raw:
            return None
        uncached, output = _count(raw.get("input_tokens")), _count(raw.get("output_tokens"))
        if uncached is None or output is None:
            return None  # not a usage: estimated and flagged, never billed as zero
        written = _int(raw.get("cache_creation_input_tokens"))
        split = raw.get("cache_creation")
        w5m = w1h = 0
        if isinstance(split, dict):
            w5m = _int(split.get("ephemeral_5m_input_tokens"))
            w1h = _int(split.get("ephemeral_1h_input_tokens"))
        if w5m + w1h < written:
            w5m = written - w1h
        tools = raw.get("server_tool_use")
        searches = _int(tools.get("web_search_requests")) if isinstance(tools, dict) else 0
        return cls(
            input_tokens=uncached,
            cache_read_tokens=_int(raw.get("cache_read_input_tokens")),
            cache_write_tokens=w5m,
            cache_write_1h_tokens=w1h,
            output_tokens=output,
            requests=request_counts({"web_searches": searches}),
        )

    def to_openai(self) -> dict[str, object]:
        """The OpenAI ``usage`` object for this usage (cached tokens inside prompt_tokens)."""
        p_details: dict[str, object] = {"cached_tokens": self.cache_read_tokens}
        if self.cache_write_all_tokens:
            p_details["cache_write_tokens"] = self.cache_write_all_tokens
        if self.audio_input_tokens:
            p_details["audio_tokens"] = self.audio_input_tokens
        c_details: dict[str, object] = {"reasoning_tokens": self.reasoning_tokens}
        if self.audio_output_tokens:
            c_details["audio_tokens"] = self.audio_output_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": p_details,
            "completion_tokens_details": c_details,
        }


def request_counts(counts: Mapping[str, int] | Iterable[tuple[str, int]]) -> RequestCounts:
    """``Usage.requests`` from a mapping or pairs: zero counts left out, sorted by name."""
    items = counts.items() if isinstance(counts, Mapping) else counts
    merged: dict[str, int] = {}
    for name, n in items:
        if n > 0:
            merged[name] = merged.get(name, 0) + n
    return tuple(sorted(merged.items()))


def _int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float):
        return max(int(value), 0)
    return 0


def _count(value: object) -> int | None:
    """A token count as providers send it (an integer, or an integral float), else None:
    a string, a negative, a fraction or a boolean is not a count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None
