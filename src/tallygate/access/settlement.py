"""A call's settlement as data: what its ledger row and its budgets need.

An answered, billed call's settlement travels with its usage event in the outbox (the
same atomic insert, before the answer's last byte), and the outbox's ``ledger`` sink
writes it: the ledger row and, only when that row is new, the budget spend and the
release of the call's reservation, in one transaction (on SQLite, the insert itself
does it: ``ledger_sink.SQLITE_SETTLE``). So after any crash every answered call has one
ledger row and its spend counted once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tallygate.access.budgets import Scope, Settlement, to_micros
from tallygate.event import UsageEvent, format_decimal

LEDGER_SINK = "ledger"


def settlement_data(*, key_token: str | None, key_alias: str | None, team_id: str | None,
                    customer_id: str | None, scopes: Sequence[Scope],
                    reserved: Sequence[Scope]) -> dict[str, Any]:
    """The JSON-safe part of a settlement the event does not carry itself."""
    return {"key_token": key_token, "key_alias": key_alias, "team_id": team_id,
            "customer_id": customer_id, "scopes": [list(s) for s in scopes],
            "reserved": [list(s) for s in reserved]}


def _scopes(value: Any) -> list[Scope]:
    return [(str(scope), str(ident)) for scope, ident in value]


def ledger_row(event: UsageEvent, data: Mapping[str, Any]) -> tuple[Any, ...]:
    """The call's ``access_ledger`` row, in ``budgets.LEDGER_COLUMNS`` order."""
    u = event.usage
    return (event.call_id, event.finished_at_ms, data.get("key_token"), data.get("key_alias"),
            event.user_id, data.get("team_id", event.team_id),
            data.get("customer_id", event.customer), event.customer, event.end_user,
            event.model, event.provider, event.provider_model, event.kind,
            # The ledger keeps four columns: audio and image input count as uncached
            # input, every cache write as a write, audio output as output.
            u.input_tokens + u.audio_input_tokens + u.image_input_tokens, u.cache_read_tokens,
            u.cache_write_all_tokens, u.completion_tokens,
            None if event.cost is None else format_decimal(event.cost),
            "billed" if event.customer else "unattributed", ",".join(sorted(event.flags)),
            data.get("event"))


def settlement_of(event: UsageEvent, data: Mapping[str, Any]) -> Settlement:
    """``budgets.settle_many``'s item for the call (raises on a malformed ``data``)."""
    return (event.call_id, _scopes(data.get("scopes") or ()),
            _scopes(data.get("reserved") or ()), _cost_micros(event), ledger_row(event, data))


def with_ledger_row(event: UsageEvent, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the call's ledger row and cost in micros written out, so that the
    SQLite outbox settles the call inside its insert (``ledger_sink.SQLITE_SETTLE``)."""
    return {**data, "row": list(ledger_row(event, data)), "cost_micros": _cost_micros(event)}


def _cost_micros(event: UsageEvent) -> int:
    """What the call adds to its budgets' spend (an unpriced call: nothing)."""
    return to_micros(event.cost) if event.cost is not None else 0
