"""Pick the Outbox backend from a database URL or a file path."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tallygate.errors import ConfigError
from tallygate.metering.outbox import Outbox
from tallygate.metering.postgres_outbox import PostgresOutbox
from tallygate.metering.sqlite_outbox import SQLiteOutbox

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_PREFIX = "sqlite:///"


def outbox_for(url_or_path: str | Path) -> SQLiteOutbox | PostgresOutbox:
    """The unopened outbox that ``url_or_path`` names.

    ``postgresql://...`` or ``postgres://...`` is PostgreSQL; a ``schema=name`` query
    parameter picks the schema of its tables (default ``tallygate``). A plain path or a
    ``sqlite:///`` URL is a SQLite file, with SQLAlchemy's convention: three slashes
    then a relative path (``sqlite:///tallygate.db``), four for an absolute one
    (``sqlite:////var/lib/tallygate/outbox.db``).
    """
    text = str(url_or_path)
    if text.startswith(_POSTGRES_SCHEMES):
        return _postgres(text)
    if text.startswith(_SQLITE_PREFIX):
        text = text[len(_SQLITE_PREFIX):]
    elif "://" in text:
        raise ConfigError(f"unsupported outbox URL scheme in {text.split('://', 1)[0]!r}; "
                          "use postgresql://, sqlite:/// or a file path")
    if not text or text == ":memory:":
        # Every thread has its own connection, so an in-memory database cannot work.
        raise ConfigError(f"the outbox needs a file path, got {str(url_or_path)!r}")
    return SQLiteOutbox(text)


def _postgres(url: str) -> PostgresOutbox:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    dsn = urlunsplit(parts._replace(query=rest))
    return PostgresOutbox(dsn, schema=schemas[-1]) if schemas else PostgresOutbox(dsn)


async def open_outbox(url_or_path: str | Path) -> Outbox:
    """The outbox that ``url_or_path`` names, connected and migrated."""
    outbox = outbox_for(url_or_path)
    await outbox.open()
    return outbox
