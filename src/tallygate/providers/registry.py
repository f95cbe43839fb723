"""Where provider adapters are found: by name, registered exactly like third-party ones.

Built-in adapters are the modules of this package; each calls ``register`` at import.
Third-party adapters register through the ``tallygate.providers`` entry point group.
Adding a provider therefore touches one new module and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from tallygate.errors import BadRequestError
from tallygate.providers.base import Provider

_NOT_ADAPTERS = {"base", "registry", "sse", "gemini_schema", "gemini_request", "gemini_answer",
                 "google_auth", "openai_compat"}
_providers: dict[str, Provider] = {}
_loaded = False


def register(provider: Provider) -> Provider:
    """Make ``provider`` available under ``provider.name``; returns it."""
    _providers[provider.name] = provider
    return provider


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import tallygate.providers as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_ADAPTERS:
            importlib.import_module(f"{package.__name__}.{info.name}")
    for ep in entry_points(group="tallygate.providers"):
        obj = ep.load()
        if isinstance(obj, Provider):
            register(obj)


def get_provider(name: str) -> Provider:
    _load()
    try:
        return _providers[name]
    except KeyError:
        raise BadRequestError(
            f"unknown provider {name!r}; known: {', '.join(sorted(_providers))}",
            param="model", code="unknown_provider") from None


def provider_names() -> list[str]:
    _load()
    return sorted(_providers)


def split_model(model: str) -> tuple[str, str]:
    """``provider/model`` -> (provider, model). A bare name means ``openai``."""
    _load()
    head, sep, rest = model.partition("/")
    if sep and head in _providers:
        return head, rest
    return "openai", model
