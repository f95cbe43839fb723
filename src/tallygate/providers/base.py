"""The Provider interface: build an upstream request, read its answer or its stream.

Adapters do no I/O; ``transport`` sends what they build. That keeps each adapter a pure
translation, testable on bytes, and lets the proxy pass OpenAI-compatible bytes through
untouched where no translation is needed. The one exception is ``authorize``: credentials
that must be fetched (Vertex AI's OAuth tokens, AWS credentials) are got there, off the
event loop, and a request signed over its final bytes (Bedrock's SigV4) is signed there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import orjson

from tallygate.errors import BadRequestError, UpstreamError
from tallygate.usage import Usage

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
_NO_PARAMS: Mapping[str, Any] = MappingProxyType({})


_NO_RATES: Mapping[str, Decimal] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """Prices set in config, in LiteLLM's names (USD per token). A bucket whose price is
    not set is not priced at another bucket's rate: the call's price is then unknown.
    ``per_request`` prices per-request items by their usage name (``web_searches``)."""

    input_cost_per_token: Decimal | None = None
    output_cost_per_token: Decimal | None = None
    cache_read_input_token_cost: Decimal | None = None
    cache_creation_input_token_cost: Decimal | None = None
    cache_creation_input_token_cost_above_1hr: Decimal | None = None
    input_cost_per_audio_token: Decimal | None = None
    output_cost_per_audio_token: Decimal | None = None
    #: reasoning tokens at their own rate (else at the output rate: they are output)
    output_cost_per_reasoning_token: Decimal | None = None
    citation_cost_per_token: Decimal | None = None
    per_request: Mapping[str, Decimal] = field(default_factory=lambda: _NO_RATES)
    input_cost_per_image_token: Decimal | None = None
    # Other units (images, seconds, characters, rerank searches), USD per unit.
    output_cost_per_image: Decimal | None = None
    input_cost_per_second: Decimal | None = None
    input_cost_per_character: Decimal | None = None
    input_cost_per_query: Decimal | None = None

    def is_empty(self) -> bool:
        """No per-token or per-unit price set. A ``per_request`` table alone prices its
        items and leaves the tokens to the price library."""
        return all(getattr(self, name) is None for name in PRICE_KEYS)


# LiteLLM's price keys of the non-token units -> the usage item each prices.
UNIT_PRICE_KEYS: dict[str, str] = {
    "output_cost_per_image": "images",
    "input_cost_per_second": "audio_seconds",
    "input_cost_per_character": "input_characters",
    "input_cost_per_query": "rerank_searches",
}
# PriceOverride's per-token fields: the names a config entry or an SDK call sets prices with.
PRICE_KEYS: tuple[str, ...] = ("input_cost_per_token", "output_cost_per_token",
                               "cache_read_input_token_cost",
                               "cache_creation_input_token_cost",
                               "cache_creation_input_token_cost_above_1hr",
                               "input_cost_per_audio_token", "output_cost_per_audio_token",
                               "output_cost_per_reasoning_token", "citation_cost_per_token",
                               "input_cost_per_image_token", *UNIT_PRICE_KEYS)
# LiteLLM's per-request price table, {search_context_size_low|medium|high: USD per request}:
# it prices the per-request items of those names (Perplexity's request fee).
PER_REQUEST_PRICE_KEY = "search_context_cost_per_query"


@dataclass(frozen=True, slots=True)
class Deployment:
    """One concrete upstream target: a provider, its model name and how to reach it."""

    provider: str
    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a log line
    timeout: float | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    price: PriceOverride | None = None
    mock_response: str | None = None
    #: provider-specific litellm_params (api_version, vertex_project, aws_region_name...),
    #: the keys the provider declares in ``Provider.litellm_params``; env-resolved.
    params: Mapping[str, Any] = field(default_factory=lambda: _NO_PARAMS, repr=False)
    #: the config entry's ``model_info`` (``base_model``, ``id``, limits...)
    model_info: Mapping[str, Any] = field(default_factory=lambda: _NO_PARAMS)

    @property
    def base_model(self) -> str | None:
        """The model the deployment really serves when its name says nothing (Azure's
        deployment names): LiteLLM's ``model_info.base_model``, provider prefix dropped."""
        base = self.model_info.get("base_model")
        if not isinstance(base, str) or not base:
            return None
        return base.split("/", 1)[1] if "/" in base else base


class StreamedBody(Protocol):
    """A request body written in chunks (an upload spooled off memory,
    ``tallygate.multipart.FormBody``): its length is known, and each iteration of
    ``chunks`` writes it whole from the start (so a retry can send it again)."""

    @property
    def length(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes
    #: the url is percent-encoded exactly as it must go on the wire (a signature covers
    #: its path): the transport sends it without re-quoting (``%3A`` stays ``%3A``).
    encoded_url: bool = False
    #: a body sent in chunks instead of ``body`` (which is then empty)
    upload: StreamedBody | None = None

    @classmethod
    def of(cls, url: str, headers: dict[str, str],
           body: bytes | StreamedBody) -> UpstreamRequest:
        if isinstance(body, bytes):
            return cls(url, headers, body)
        return cls(url, headers, b"", upload=body)


@dataclass(slots=True)
class ChatResult:
    """A finished chat completion in the OpenAI shape.

    ``raw`` holds the upstream bytes when they already are the OpenAI answer, so the
    proxy can forward them without re-serialising; ``body`` is always the parsed dict.
    ``provider_cost`` is what the provider itself says the call cost (OpenRouter's
    ``usage.cost``), kept beside tallygate's own price.
    """

    body: dict[str, Any]
    usage: Usage | None
    raw: bytes | None = None
    provider_cost: Decimal | None = None

    @property
    def answered_model(self) -> str | None:
        """The model the answer says served it (read only when pricing needs it)."""
        model = self.body.get("model")
        return model if isinstance(model, str) and model else None


class StreamItem:
    """One ChatCompletionChunk: its SSE frame as an OpenAI client reads it, and its dict.

    A pass-through chunk keeps only its JSON bytes and is parsed when ``data`` is read:
    the proxy forwards frames and never needs most chunks as dicts.
    """

    __slots__ = ("_data", "_payload", "frame")

    def __init__(self, data: dict[str, Any] | None, frame: bytes,
                 payload: bytes | None = None) -> None:
        if data is None and payload is None:
            raise ValueError("a StreamItem needs its dict or its JSON payload")
        self._data = data
        self._payload = payload
        self.frame = frame

    @property
    def data(self) -> dict[str, Any]:
        """The chunk as a dict; a payload that is not a JSON object is the upstream's
        failure (an UpstreamError), never an internal one."""
        if self._data is None:
            assert self._payload is not None
            try:
                parsed = orjson.loads(self._payload)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise UpstreamError("the upstream sent a stream chunk that is not a JSON "
                                    "object")
            self._data = parsed
        return self._data

    def __repr__(self) -> str:
        return f"StreamItem({self.frame!r})"


def _no_estimate() -> int:
    return 0


class StreamDecoder(ABC):
    """Turns upstream stream bytes into OpenAI chunks, and remembers usage and text."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        # The usage is the provider's final count (OpenAI's usage chunk, Anthropic's
        # message_delta), good to bill even if the stream then breaks.
        self.usage_final = False
        self.output_parts: list[str] = []
        self.done = False
        #: the prompt's estimated size, for a provider that may leave its input count
        #: out (Ollama); the engine sets it, as it knows the prompt.
        self.estimate_prompt: Callable[[], int] = _no_estimate
        #: an upstream failure read after the chunks ``feed`` returned with it: raised
        #: once those chunks are delivered (what was generated is still billed).
        self.failure: UpstreamError | None = None
        #: what the provider says the call cost, when it says (see ChatResult)
        self.provider_cost: Decimal | None = None

    @abstractmethod
    def feed(self, data: bytes) -> list[StreamItem]:
        """Consume a piece of the upstream body; return the chunks completed by it."""

    def output_text(self) -> str:
        return "".join(self.output_parts)

    def answered_model(self) -> str | None:
        """The model the stream says served it, if it says (read only when pricing
        needs it: a deployment whose name is not a model)."""
        return None


class PassThroughDecoder(StreamDecoder):
    """A decoder whose items carry the upstream's own frames, byte for byte, for a door
    that speaks the upstream's API. The frame that ends the stream is kept in ``tail``
    instead of being returned, so that the call is billed before its last byte leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.tail = b""


class NativeMessages(ABC):
    """A provider that speaks Anthropic's Messages API itself (Anthropic; Claude on
    other clouds): the Messages door forwards requests to it as they came and streams
    its answer back byte for byte, reading usage on the way."""

    def speaks_messages(self, deployment: Deployment) -> bool:
        """Whether this deployment takes the Messages API natively (Vertex AI: its
        Claude models, not its Gemini ones); the door translates for the others."""
        return True

    @abstractmethod
    def messages_request(self, deployment: Deployment, body: dict[str, Any],
                         headers: Mapping[str, str], *, stream: bool,
                         query: str = "") -> UpstreamRequest:
        """The upstream request for a Messages API ``body`` as the client sent it
        (``model`` still the client's). ``headers`` are the client's API headers to keep
        (``anthropic-version``, ``anthropic-beta``); ``query`` its query string."""

    @abstractmethod
    def messages_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        """Read a non-streamed Messages answer: its parsed body, usage, and ``raw``, the
        bytes that go back to the client."""

    @abstractmethod
    def messages_stream(self, deployment: Deployment) -> PassThroughDecoder:
        """A decoder that passes the Messages stream through and reads its usage."""

    @abstractmethod
    def count_tokens_request(self, deployment: Deployment, body: dict[str, Any],
                             headers: Mapping[str, str]) -> UpstreamRequest:
        """The upstream request for ``POST /v1/messages/count_tokens``."""


class NativeGemini(ABC):
    """A provider that speaks Google's Gemini API itself (``gemini/``; Gemini on Vertex
    AI): the Gemini door forwards requests to it as they came and passes its answers
    and streams back, reading usage on the way."""

    def speaks_gemini(self, deployment: Deployment) -> bool:
        """Whether this deployment takes the Gemini API natively (Vertex AI: its Gemini
        models, not its Claude ones); the door translates for the others."""
        return True

    @abstractmethod
    def gemini_request(self, deployment: Deployment, method: str,
                       body: bytes) -> UpstreamRequest:
        """The upstream request for a Gemini API ``method`` (``generateContent``,
        ``streamGenerateContent?alt=sse``, ``countTokens``) with the client's ``body``
        as it came, to the deployment's model, with the gateway's credentials."""


class NativeCompletions(ABC):
    """A provider that serves OpenAI's legacy ``/completions`` itself."""

    @abstractmethod
    def completion_request(self, deployment: Deployment, params: dict[str, Any],
                           stream: bool) -> UpstreamRequest:
        """The upstream request for text-completion ``params``."""

    @abstractmethod
    def completion_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        """Read a text completion answer (``raw`` is the upstream bytes)."""

    @abstractmethod
    def completion_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        """A decoder for a text completion stream (frames passed through)."""


class Provider(ABC):
    """A translation between the OpenAI chat API and one provider's wire format."""

    name: ClassVar[str]
    default_api_base: ClassVar[str | None] = None
    api_key_env: ClassVar[str | None] = None
    #: further key variables LiteLLM reads for this provider, tried after api_key_env
    api_key_env_aliases: ClassVar[tuple[str, ...]] = ()
    #: the variables LiteLLM reads the api_base from when the deployment sets none
    api_base_envs: ClassVar[tuple[str, ...]] = ()
    #: litellm_params LiteLLM reads from the environment when unset (Azure's
    #: api_version from AZURE_API_VERSION): key -> variables, first set wins
    param_envs: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    #: False when the deployment name says nothing of the model (Azure's deployment
    #: names): such a call is priced by ``model_info.base_model``, else by the model
    #: the answer names, else its price is unknown.
    names_model: ClassVar[bool] = True
    #: True when the provider answers in-process (the mock): no transport is used.
    is_local: ClassVar[bool] = False
    #: True when the provider serves OpenAI's Responses API itself (``responses_request``):
    #: the Responses door then passes requests through instead of translating them.
    responses_api: ClassVar[bool] = False
    #: genai-prices' provider id for this provider's models; None: no library price.
    price_provider: ClassVar[str | None] = None
    #: litellm_params keys this provider reads besides the common ones (model, api_base,
    #: api_key, timeout, prices...); they reach it in ``Deployment.params``.
    litellm_params: ClassVar[frozenset[str]] = frozenset()
    #: True when the provider reads ``top_k`` (an extension the Messages door passes on
    #: only to providers that read it; an OpenAI-compatible server may refuse it).
    reads_top_k: ClassVar[bool] = False
    #: True when credentials take I/O to obtain (OAuth access tokens, AWS credentials)
    #: or a request is signed over its final bytes (SigV4): the engine then awaits
    #: ``authorize`` on every request before sending it.
    needs_authorize: ClassVar[bool] = False
    #: True when the adapter reads Anthropic's ``cache_control`` breakpoints and ``top_k``
    #: (doors keep them for it and strip them for the others).
    reads_cache_control: ClassVar[bool] = False
    #: The OpenAI chat parameters this adapter translates (LiteLLM's
    #: ``get_supported_openai_params``); the rest would be left out, so the proxy and the
    #: SDK refuse them (or drop and name them, with ``drop_params``). None: the body is
    #: passed through and every parameter reaches the provider; the check is skipped.
    supported_openai_params: ClassVar[frozenset[str] | None] = None

    def openai_params_for(self, model: str) -> frozenset[str] | None:
        """``supported_openai_params`` for one model (a provider serving several model
        families overrides it)."""
        return self.supported_openai_params

    def config_params(self, model: str, params: dict[str, Any],
                      config_env: Mapping[str, str]) -> dict[str, Any]:
        """The deployment's params with what the config's ``environment_variables`` block
        supplies: LiteLLM puts that block into the process environment, where a provider
        reading AWS_* or similar variables finds it; ours is not, so it is bound here, at
        config load. By default the params are unchanged."""
        return params

    def price_names(self, model: str) -> tuple[str, ...]:
        """The names genai-prices may know ``model`` by, best first (a cloud's model ids
        carry regions or ARNs the library does not know as they are); () for none."""
        return (model,)

    def check_deployment(self, deployment: Deployment) -> None:
        """Refuse a deployment the provider cannot serve, at config load (raise
        ConfigError naming the litellm_params key). Most providers need no check."""
        return None

    async def authorize(self, deployment: Deployment, request: UpstreamRequest, *,
                        rejected: bool = False) -> None:
        """For ``needs_authorize`` providers: put credentials that take I/O to get (an
        access token) on ``request``. ``rejected``: the upstream answered 401 to the
        ones on it, so they are stale; get fresh ones (the engine then retries once)."""
        return None

    @abstractmethod
    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        """The upstream request for OpenAI chat ``params`` (``model`` already resolved)."""

    @abstractmethod
    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        """Read a successful upstream answer."""

    @abstractmethod
    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        """A decoder for one upstream stream. ``include_usage``: the caller asked for
        the final usage chunk (``stream_options.include_usage``)."""

    @abstractmethod
    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        """Map an upstream error answer to an UpstreamError, keeping its status."""

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        raise BadRequestError(f"provider {self.name!r} does not serve embeddings",
                              param="model", code="embeddings_not_supported")

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        raise BadRequestError(f"provider {self.name!r} does not serve embeddings",
                              param="model", code="embeddings_not_supported")

    def embedding_requests(self, deployment: Deployment,
                           params: dict[str, Any]) -> list[UpstreamRequest]:
        """The upstream requests of one embeddings call: one, unless the provider embeds
        one input per request (Titan); ``embedding_responses`` reads their answers."""
        return [self.embedding_request(deployment, params)]

    def embedding_responses(self, deployment: Deployment, bodies: list[bytes]) -> ChatResult:
        """The answers of ``embedding_requests``, in their order, as one result."""
        return self.embedding_response(deployment, bodies[0])

    def responses_request(self, deployment: Deployment, body: bytes) -> UpstreamRequest:
        """For ``responses_api`` providers: the upstream request of a Responses API body
        (``model`` already the deployment's)."""
        raise BadRequestError(f"provider {self.name!r} does not serve the Responses API",
                              param="model", code="responses_not_supported")

    def media_request(self, deployment: Deployment, path: str, body: bytes | StreamedBody,
                      content_type: str) -> UpstreamRequest:
        """For providers that serve OpenAI's other endpoints (``images/generations``,
        ``audio/transcriptions``, ``audio/speech``, ``moderations``, ``rerank``): the
        upstream request of ``body`` (``model`` the deployment's): JSON bytes, or a
        multipart upload as a ``StreamedBody``, to pass on as it is
        (``UpstreamRequest.of``), never read whole."""
        raise BadRequestError(f"provider {self.name!r} does not serve /{path}",
                              param="model", code="endpoint_not_supported")

    def media_response(self, deployment: Deployment, path: str, body: bytes,
                       content_type: str) -> tuple[bytes, str]:
        """A 200 answer of ``media_request`` in OpenAI's shape (body, content type); a
        provider that translates the request translates the answer here."""
        return body, content_type

    def local_chat(self, deployment: Deployment, params: dict[str, Any]) -> bytes:
        """For ``is_local`` providers: the raw upstream-format answer (JSON or SSE)."""
        raise NotImplementedError

    def estimated_requests(self, deployment: Deployment,
                           params: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
        """Per-request items a call is charged even when its usage never arrived (a
        stream cut short): Perplexity's search fee. Most providers charge none."""
        return ()

    def wire_model(self, deployment: Deployment) -> str:
        """The model name as sent upstream (and priced): most providers take the
        deployment's as it is."""
        return deployment.model

    def api_key_envs(self) -> tuple[str, ...]:
        return ((self.api_key_env,) if self.api_key_env else ()) + self.api_key_env_aliases

    def api_key(self, deployment: Deployment, environ: Mapping[str, str]) -> str | None:
        if deployment.api_key:
            return deployment.api_key
        for name in self.api_key_envs():
            value = environ.get(name)
            if value:
                return value
        return None

    def param(self, deployment: Deployment, key: str,
              environ: Mapping[str, str]) -> Any:
        """A litellm_param of the deployment, else from its variable (``param_envs``)."""
        value = deployment.params.get(key)
        if value is not None:
            return value
        return next((environ[n] for n in self.param_envs.get(key, ()) if environ.get(n)), None)

    def api_base(self, deployment: Deployment, environ: Mapping[str, str]) -> str | None:
        """The deployment's api_base, else the first of ``api_base_envs`` set, else the
        provider's default."""
        if deployment.api_base:
            return deployment.api_base
        for name in self.api_base_envs:
            value = environ.get(name)
            if value:
                return value
        return self.default_api_base
