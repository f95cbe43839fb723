"""Log safety: no log line carries a credential, however malformed the request was.

aiohttp logs an HTTP request it cannot parse (a control byte in a header, a broken
Content-Length) at ERROR with a traceback whose message quotes the offending header
line, which may be ``Authorization: Bearer <key>``. ``install`` puts a filter on the
loggers that can quote a request: a parse error becomes one WARNING line naming what
was wrong (no traceback, no header bytes), and every other record is scrubbed of
credentials (``tallygate.scrub``).
"""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

from tallygate.scrub import scrub

# Loggers that format requests, headers or exceptions from the network.
_LOGGERS = ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.client",
            "aiohttp.internal", "asyncio")


class CredentialFilter(logging.Filter):
    """Rewrites each record so that it cannot carry a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            # What was wrong, not the bytes: the first line of aiohttp's message only.
            reason = (exc.message or type(exc).__name__).splitlines()[0].rstrip(": ")
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s with 400: %s"
            record.args = (peer, scrub(reason))
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
            return True
        message = record.getMessage()
        record.msg, record.args = scrub(message), None
        if record.exc_info:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = CredentialFilter()


def install(handlers: bool = False) -> None:
    """Filter the network-facing loggers (idempotent); with ``handlers``, also every
    handler of the root logger, so that any logger's record is scrubbed on output."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    if handlers:
        for handler in logging.getLogger().handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
