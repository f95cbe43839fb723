"""LiteLLM's ``drop_params`` on the proxy: OpenAI parameters a deployment's provider has
no field for are refused with a 400 naming them and the provider (LiteLLM's
UnsupportedParamsError), or, with ``litellm_settings.drop_params: true`` or the request's
own ``"drop_params": true``, left out and named in ``x-tallygate-dropped-params``.

The list of what a provider takes is its adapter's ``supported_openai_params`` (the one
``get_supported_openai_params`` reads); an adapter that passes the body through (None)
is never checked, so the ``openai/`` hot path does no work here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tallygate.engine import CallContext, failure_event
from tallygate.errors import BadRequestError
from tallygate.model_info import OPENAI_CHAT_PARAMS
from tallygate.providers.base import Deployment
from tallygate.providers.registry import get_provider
from tallygate.proxy.gateway import Gateway

_CHECKED = frozenset(OPENAI_CHAT_PARAMS)
# The request's own switch; read by the gateway, never sent upstream.
DROP_PARAMS_FIELD = "drop_params"


def request_drop_params(data: Mapping[str, Any], default: bool) -> bool:
    """The request's ``drop_params`` (LiteLLM's proxy takes it in the body), else the
    config's. The routes keep the field itself from the provider."""
    value = data.get(DROP_PARAMS_FIELD)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequestError("drop_params must be true or false", param=DROP_PARAMS_FIELD)
    return value


def unsupported_params(deployment: Deployment, params: dict[str, Any]) -> list[str]:
    """The OpenAI parameters in ``params`` that ``deployment``'s provider does not take."""
    adapter = get_provider(deployment.provider)
    if adapter.supported_openai_params is None:
        return []
    supported = adapter.openai_params_for(deployment.model)
    if supported is None:
        return []
    return sorted(k for k, v in params.items()
                  if v is not None and k in _CHECKED and k not in supported)


def pop_unsupported(deployment: Deployment, params: dict[str, Any]) -> tuple[str, ...]:
    """Leave out what the provider does not take (the translating doors' documented
    behaviour); the names, for ``x-tallygate-dropped-params``."""
    names = unsupported_params(deployment, params)
    for name in names:
        del params[name]
    return tuple(names)


async def apply_drop_params(gw: Gateway, request: Mapping[str, Any], params: dict[str, Any],
                            deployment: Deployment, ctx: CallContext) -> tuple[str, ...]:
    """The OpenAI routes' check, after admission, of ``params`` (what goes upstream) for
    the client's ``request`` body: refuse, giving the reservation back, or drop from
    ``params``. Returns the dropped names."""
    try:
        drop = request_drop_params(request, gw.settings.drop_params)
        names = unsupported_params(deployment, params)
        if names and not drop:
            raise BadRequestError(
                f"{deployment.provider} does not support parameters {names} for model "
                f"{deployment.model!r}; set litellm_settings.drop_params: true, or send "
                '"drop_params": true in the request, to drop them',
                param=names[0], code="unsupported_params")
    except BadRequestError as exc:
        await gw.access.release(failure_event(ctx, deployment, exc))
        raise
    for name in names:
        del params[name]
    return tuple(names)
