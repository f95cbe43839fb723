"""Credential scrubbing: no key the gateway holds or is shown leaves in a message or a log.

Two nets, applied together by ``scrub``:

- the exact credentials this process holds (upstream API keys, the Lago key, the master
  key, a webhook secret, database passwords), registered once with ``register`` when the
  gateway or SDK learns them;
- shapes that are credentials whoever holds them: the value after ``Bearer`` / ``Basic``,
  after a header or parameter named like a key (``x-api-key: ...``, ``api_key=...``), and
  tokens shaped like provider keys (``sk-...``, ``sk-ant-...``, ``sk-tg-...`` virtual
  keys, ``AKIA...``, ``AIza...``).

Every error message passes through here (``TallygateError`` scrubs its message, so every
provider's upstream error does, new providers included), and so does every record of the
loggers that can quote a request (``tallygate.log_safety``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

REDACTED = "[redacted]"
_MIN_SECRET_CHARS = 6  # shorter "secrets" would redact ordinary words

# A credential's value; not an already redacted one, nor a placeholder like "<key>".
_VALUE = r"(?!\[redacted\])(?!<)[^\s\"',;)}\]]+"
# (pattern, replacement): the name of what was redacted stays, its value goes.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+)" + _VALUE), r"\1\2" + REDACTED),
    (re.compile(r"(?i)\b(x-api-key|x-goog-api-key|api[-_]?key|authorization|access[-_]?token"
                r"|secret|password)([\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic)\s)" + _VALUE),
     r"\1\2" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{12,}|\bAKIA[0-9A-Z]{16}\b|\bAIza[0-9A-Za-z_\-]{30,}"),
     REDACTED),
)

_lock = threading.Lock()
_known: frozenset[str] = frozenset()
_known_re: re.Pattern[str] | None = None


def register(values: Iterable[str | None]) -> None:
    """Remember credentials this process holds, so that ``scrub`` removes them."""
    global _known, _known_re
    new = {v.strip() for v in values if isinstance(v, str) and len(v.strip()) >= _MIN_SECRET_CHARS}
    with _lock:
        if new <= _known:
            return
        _known = _known | new
        # Longest first: a secret that contains another is removed whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _known_re = re.compile("|".join(re.escape(v) for v in alternatives))


def scrub(text: str) -> str:
    """``text`` without any credential: the known ones, and anything shaped like one."""
    known = _known_re
    if known is not None:
        text = known.sub(REDACTED, text)
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


def database_password(url: str | None) -> str | None:
    """The password of a ``scheme://user:password@host`` URL, to register it."""
    if not url or "://" not in url or "@" not in url:
        return None
    creds = url.split("://", 1)[1].rsplit("@", 1)[0]
    _, sep, password = creds.partition(":")
    return password if sep else None
