"""How the proxy logs: text lines, or with ``litellm_settings.json_logs: true`` one JSON
object per line (LiteLLM's meaning), for log collectors that parse them."""

from __future__ import annotations

import logging
import time

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object a record: timestamp, level, logger name, message (and the
    traceback, when there is one), newlines escaped inside the one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "name": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["stacktrace"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["stacktrace"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
