"""Which model groups a failed call falls back to, in order.

A prompt over the context window goes to ``context_window_fallbacks``, a content-policy
refusal to ``content_policy_fallbacks``; every other failure a fallback can help (429,
5xx, timeouts, refused connections, a deployment refusing its key or missing the model,
every deployment cooling down or at its limit) goes to the request's own
``fallbacks``, else the group's entry in ``fallbacks``, else a ``"*"`` entry, else
``default_fallbacks``. A request's own fault (any other 400 or 422) falls back nowhere.
A fallback may carry request params of its own (``FallbackTo``): its call uses them.
"""

from __future__ import annotations

from tallygate.routing.settings import Fallback, RouterSettings

# Failure kinds and what they fall back by; absent: no fallback.
_GENERIC = frozenset({"rate_limit", "server", "timeout", "auth", "not_found",
                      "unavailable"})


def fallback_chain(settings: RouterSettings, group: str, requested_name: str, kind: str,
                   from_request: tuple[Fallback, ...] | None) -> tuple[Fallback, ...]:
    names = (group, requested_name)
    if kind == "context_window":
        table = settings.context_window_fallbacks
        return next((table[n] for n in names if n in table), ())
    if kind == "content_policy":
        table = settings.content_policy_fallbacks
        return next((table[n] for n in names if n in table), ())
    if kind not in _GENERIC:
        return ()
    if from_request is not None:
        return from_request
    table = settings.fallbacks
    for n in (*names, "*"):
        if n in table:
            return table[n]
    return settings.default_fallbacks
