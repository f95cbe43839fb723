"""OpenAI-shaped answers for SDK users: attribute access and ``model_dump()``.

A thin view over the parsed JSON dict instead of pydantic models: building models for
every chunk would cost more than the rest of the call's work, and the dict is what we
already have.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import orjson

from tallygate.event import UsageEvent


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return ResponseObject(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class ResponseObject:
    """Read-only attribute view of a JSON object; missing optional fields read as None."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "_data", data)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(self._data.get(name))

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        return _wrap(self._data.get(key, default))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResponseObject):
            return bool(self._data == other._data)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def model_dump(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def model_dump_json(self) -> str:
        return orjson.dumps(self._data).decode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class ModelResponse(ResponseObject):
    """A ``chat.completion`` (or embeddings list), plus what tallygate billed for it."""

    __slots__ = ("dropped_params", "usage_event")
    usage_event: UsageEvent
    #: parameters left out because the provider does not take them (``drop_params``)
    dropped_params: tuple[str, ...]

    def __init__(self, data: dict[str, Any], usage_event: UsageEvent,
                 dropped_params: tuple[str, ...] = ()) -> None:
        super().__init__(data)
        object.__setattr__(self, "usage_event", usage_event)
        object.__setattr__(self, "dropped_params", dropped_params)

    @property
    def call_id(self) -> str:
        """The id of this call; it is Lago's ``transaction_id``."""
        return self.usage_event.call_id

    @property
    def cost(self) -> Decimal | None:
        """The call's cost in USD, or None when the model's price is unknown."""
        return self.usage_event.cost


class ChunkObject(ResponseObject):
    """A ``chat.completion.chunk``."""

    __slots__ = ()
