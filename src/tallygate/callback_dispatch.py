"""Callbacks: names of sinks (``"lago"``, ``"jsonl"``, ``"webhook"``), callables, or
logger objects, all receiving one typed, frozen event.

Named sinks are durable: their events go through the outbox and the delivery worker.
Callables and loggers are called in-process after the event is safe. A failing
callback never breaks the call and is never silent: it is logged with the call id.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tallygate.errors import ConfigError
from tallygate.event import FailureEvent, UsageEvent

log = logging.getLogger("tallygate.callbacks")

SINK_NAMES = ("lago", "jsonl", "webhook")


class CustomLogger:
    """Subclass and override what you need; the async methods default to the sync ones."""

    def log_success_event(self, event: UsageEvent) -> None:
        return None

    def log_failure_event(self, event: FailureEvent) -> None:
        return None

    async def async_log_success_event(self, event: UsageEvent) -> None:
        self.log_success_event(event)

    async def async_log_failure_event(self, event: FailureEvent) -> None:
        self.log_failure_event(event)


Callback = str | Callable[[Any], Any] | CustomLogger


@dataclass(frozen=True, slots=True)
class ResolvedCallbacks:
    sinks: tuple[str, ...]
    on_success: tuple[Callable[[UsageEvent], Any], ...]
    on_failure: tuple[Callable[[FailureEvent], Any], ...]


def _check_name(name: str) -> str:
    if name not in SINK_NAMES:
        raise ConfigError(f"unknown callback {name!r}; known names: {', '.join(SINK_NAMES)}")
    return name


def resolve(callbacks: Iterable[Callback], success: Iterable[Callback],
            failure: Iterable[Callback]) -> ResolvedCallbacks:
    """Split the three user lists into sink names and in-process listeners.

    ``callbacks`` hear both successes and failures; names only matter for successes
    (a failed call bills nothing).
    """
    sinks: list[str] = []
    ok: list[Callable[[UsageEvent], Any]] = []
    bad: list[Callable[[FailureEvent], Any]] = []
    for cb, hears_success, hears_failure in (
            *((c, True, True) for c in callbacks),
            *((c, True, False) for c in success),
            *((c, False, True) for c in failure)):
        if isinstance(cb, str):
            if hears_success and _check_name(cb) not in sinks:
                sinks.append(cb)
            continue
        if isinstance(cb, CustomLogger):
            if hears_success:
                ok.append(cb.async_log_success_event)
            if hears_failure:
                bad.append(cb.async_log_failure_event)
            continue
        if callable(cb):
            if hears_success:
                ok.append(cb)
            if hears_failure:
                bad.append(cb)
            continue
        raise ConfigError(f"a callback must be a name, a callable or a CustomLogger, "
                          f"got {type(cb).__name__}")
    return ResolvedCallbacks(tuple(sinks), tuple(ok), tuple(bad))


async def notify(listeners: Sequence[Callable[[Any], Any]],
                 event: UsageEvent | FailureEvent) -> None:
    """Call each listener; log (never raise) what fails, with the call id."""
    for listener in listeners:
        try:
            result = listener(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("callback %r failed for call %s",
                          getattr(listener, "__qualname__", listener), event.call_id)
