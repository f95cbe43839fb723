"""Build sinks from their callback names and the environment (or config settings)."""

from __future__ import annotations

from collections.abc import Mapping

from tallygate.errors import ConfigError
from tallygate.sinks.base import Sink


def build_sink(name: str, environ: Mapping[str, str]) -> Sink:
    """The sink for ``name``; raises ConfigError naming any missing setting."""
    if name == "lago":
        from tallygate.sinks.lago import LagoSettings, LagoSink

        return LagoSink(LagoSettings.from_env(environ))
    if name == "jsonl":
        from tallygate.sinks.jsonl import JsonlSink

        return JsonlSink.from_env(environ)
    if name == "webhook":
        from tallygate.sinks.webhook import WebhookSink

        return WebhookSink.from_env(environ)
    raise ConfigError(f"unknown sink {name!r}")


def sink_accepts(sink_name: str, has_customer: bool) -> bool:
    """Lago bills a subscription: an event with no customer cannot go there."""
    return has_customer or sink_name != "lago"
