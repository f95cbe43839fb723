"""AWS Bedrock: chat through the Converse API, embeddings through InvokeModel.

The provider puts the parts together: ``bedrock_converse`` translates OpenAI chat params
to a Converse body (``system``, content blocks, ``toolConfig``, ``inferenceConfig``,
reasoning, ``cachePoint`` blocks) and the answer back; ``bedrock_stream`` decodes
ConverseStream's AWS event-stream frames; ``bedrock_auth`` signs with SigV4. Requests are
signed over the exact URL that is sent: the model id is percent-encoded in the path (ARNs
carry ':' and '/') and the transport is told not to re-quote it. This module maps
Bedrock's error types to statuses and reads the embedding models' answers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from tallygate.errors import (
    ConfigError,
    UpstreamError,
    UpstreamPermissionDeniedError,
    UpstreamTimeoutError,
    retry_after_of,
    upstream_error_for,
)
from tallygate.estimate import estimate_text_tokens
from tallygate.providers.base import (
    ChatResult,
    Deployment,
    Provider,
    StreamDecoder,
    UpstreamRequest,
)
from tallygate.providers.bedrock_auth import (
    BEARER_ENV,
    CREDENTIAL_PARAMS,
    Identities,
    bearer_token,
    identity_key,
    resolve_region,
    sign_headers,
    with_environment,
)
from tallygate.providers.bedrock_converse import (
    OPENAI_PARAMS,
    bad_request,
    base_model_id,
    build_body,
    converse_usage,
    positive_int,
    price_names,
    translate_response,
)
from tallygate.providers.registry import register
from tallygate.usage import Usage

EVENTSTREAM = "application/vnd.amazon.eventstream"


# --- errors ------------------------------------------------------------------------------

# Bedrock's exceptions that mean "try again later": 503 with their own type.
_UNAVAILABLE = {"ServiceUnavailableException", "ModelNotReadyException"}
_STATUS = {"ThrottlingException": 429, "ValidationException": 400,
           "AccessDeniedException": 403, "ResourceNotFoundException": 404,
           "ServiceQuotaExceededException": 400, "ModelErrorException": 502,
           "InternalServerException": 502, "ModelStreamErrorException": 502,
           "UnrecognizedClientException": 403, "InvalidSignatureException": 403,
           "ExpiredTokenException": 403, "IncompleteSignatureException": 403,
           "MissingAuthenticationTokenException": 403}


def error_type_of(headers: Mapping[str, str], parsed: object) -> str | None:
    """AWS's error code: ``x-amzn-errortype`` (``Code:namespace``), else the body's."""
    raw = headers.get("x-amzn-errortype") or headers.get("X-Amzn-ErrorType")
    if not raw and isinstance(parsed, dict):
        raw = parsed.get("__type") or parsed.get("code")
    if not isinstance(raw, str) or not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1]


def bedrock_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """A Bedrock error answer as an UpstreamError with the status its type calls for."""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    err_type = error_type_of(headers, parsed)
    message = f"Bedrock answered {status}"
    if isinstance(parsed, dict):
        text = parsed.get("message") or parsed.get("Message")
        if isinstance(text, str) and text:
            message = text
    keep = retry_after_of(headers)
    code = err_type or f"http_{status}"
    if err_type in _UNAVAILABLE or (err_type is None and status == 503):
        return UpstreamError(message, status_code=503, code=code,
                             error_type="service_unavailable", headers=keep)
    if err_type == "ModelTimeoutException" or status == 408:
        exc = UpstreamTimeoutError(f"the Bedrock model did not answer in time: {message}")
        exc.headers = keep
        return exc
    mapped = _STATUS.get(err_type or "", status)
    if mapped in (401, 403):
        # AWS's text names the account and role ARNs: say what refused, never its words.
        return UpstreamPermissionDeniedError(
            f"AWS refused the gateway's credentials or permissions ({status} "
            f"{err_type or 'error'}); check the AWS credentials and IAM permissions "
            "configured for this model", status_code=403, code=code, headers=keep)
    return upstream_error_for(mapped, message, code=code, headers=keep)


# --- embeddings (InvokeModel) --------------------------------------------------------------

def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise bad_request("input must be a string or a non-empty list of strings for Bedrock "
                      "embedding models", "input")


def embedding_bodies(family: str, model: str, params: Mapping[str, Any]
                     ) -> list[dict[str, Any]]:
    """InvokeModel bodies for an embeddings call: Titan embeds one text per request,
    Cohere a list."""
    texts = _texts(params.get("input"))
    if family == "amazon" and "titan-embed" in model:
        extra = {} if params.get("dimensions") is None else {"dimensions": params["dimensions"]}
        return [{"inputText": text, **extra} for text in texts]
    if family == "cohere":
        body: dict[str, Any] = {"texts": texts,
                                "input_type": params.get("input_type") or "search_document"}
        if params.get("dimensions") is not None:
            body["output_dimension"] = params["dimensions"]
        return [body]
    raise bad_request(f"Bedrock model {model!r} is not an embedding model this gateway "
                      "serves (amazon.titan-embed-*, cohere.embed-*)", "model")


def _vectors_and_tokens(parsed: Mapping[str, Any]) -> tuple[list[Any], int | None]:
    """(vectors, input tokens or None when the answer has no count) of one answer."""
    if isinstance(parsed.get("embedding"), list):  # Titan
        return [parsed["embedding"]], positive_int(parsed.get("inputTextTokenCount"))
    raw = parsed.get("embeddings")  # Cohere: a list, or by type
    if isinstance(raw, dict):
        raw = raw.get("float")
    if not isinstance(raw, list):
        raise UpstreamError("Bedrock answered an embeddings call without embeddings")
    billed = (parsed.get("meta") or {}).get("billed_units") or {}
    counted = positive_int(billed.get("input_tokens"))
    if counted:
        return raw, counted
    return raw, None


def embedding_result(answers: list[Mapping[str, Any]], model: str) -> ChatResult:
    """OpenAI's embeddings list (floats) from Titan or Cohere answers, billed on their input
    tokens (Cohere's answer has no count: estimated from the texts it echoes, flagged)."""
    vectors: list[Any] = []
    tokens = 0
    estimated = False
    for parsed in answers:
        found, counted = _vectors_and_tokens(parsed)
        vectors += found
        if counted is None:
            estimated = True
            counted = sum(estimate_text_tokens(str(t)) for t in parsed.get("texts") or ())
        tokens += counted
    usage = Usage(input_tokens=tokens, source="estimated" if estimated else "provider")
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return ChatResult(body=body, usage=usage, raw=None)


# --- the provider --------------------------------------------------------------------------

_UNSUPPORTED = ("aws_web_identity_token", "aws_session_tags")


def _refuse_unsupported(deployment: Deployment) -> None:
    for key in _UNSUPPORTED:
        if deployment.params.get(key) is not None:
            raise ConfigError(f"{key} is not supported by tallygate's Bedrock provider (use "
                              "aws_role_name, aws_profile_name or the AWS environment)")

class BedrockProvider(Provider):
    name = "bedrock"
    price_provider = "aws"
    api_key_env = BEARER_ENV  # a Bedrock API key is a bearer token
    needs_authorize = True  # SigV4 over the final bytes, credentials off the loop
    reads_cache_control = True
    supported_openai_params = OPENAI_PARAMS
    litellm_params = frozenset({*CREDENTIAL_PARAMS, "aws_region_name",
                                "aws_bedrock_runtime_endpoint", "aws_web_identity_token",
                                "aws_session_tags"})

    def __init__(self) -> None:
        self._identities = Identities()

    def check_deployment(self, deployment: Deployment) -> None:
        _refuse_unsupported(deployment)
        region = resolve_region(deployment.params, deployment.model, os.environ)
        identity_key(deployment.params, region, os.environ)

    def config_params(self, model: str, params: dict[str, Any],
                      config_env: Mapping[str, str]) -> dict[str, Any]:
        return with_environment(model, params, config_env)

    def price_names(self, model: str) -> tuple[str, ...]:
        return price_names(model)

    # -- where and how ------------------------------------------------------------------

    def _base(self, deployment: Deployment, region: str) -> str:
        base = (deployment.api_base or deployment.params.get("aws_bedrock_runtime_endpoint")
                or os.environ.get("AWS_BEDROCK_RUNTIME_ENDPOINT")
                or f"https://bedrock-runtime.{region}.amazonaws.com")
        return str(base).rstrip("/")

    def _request(self, deployment: Deployment, operation: str, body: dict[str, Any],
                 accept: str = "application/json") -> UpstreamRequest:
        _refuse_unsupported(deployment)  # an SDK call's params are not checked at load
        region = resolve_region(deployment.params, deployment.model, os.environ)
        # Every byte of the id percent-encoded but -_.~, as botocore does: an ARN's ':'
        # and '/' go as %3A and %2F, and the signature covers them as sent.
        model = quote(deployment.model, safe="-_.~")
        headers = {"Content-Type": "application/json", "Accept": accept,
                   **deployment.headers}
        return UpstreamRequest(url=f"{self._base(deployment, region)}/model/{model}/{operation}",
                               headers=headers, body=orjson.dumps(body), encoded_url=True)

    async def authorize(self, deployment: Deployment, request: UpstreamRequest, *,
                        rejected: bool = False) -> None:
        # AWS refuses bad credentials with a 403, never a 401: ``rejected`` (a retry after
        # a 401) signs again with what botocore holds, which refreshes what is due.
        token = bearer_token(deployment.api_key, deployment.params, os.environ)
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
            return
        region = resolve_region(deployment.params, deployment.model, os.environ)
        identity = self._identities.get(identity_key(deployment.params, region, os.environ))
        creds = await identity.frozen()
        request.headers = sign_headers(creds, region, request.url, request.headers,
                                       request.body)

    # -- chat -----------------------------------------------------------------------------

    def chat_request(self, deployment: Deployment, params: dict[str, Any],
                     stream: bool) -> UpstreamRequest:
        body = build_body(deployment, params)
        if stream:
            return self._request(deployment, "converse-stream", body, EVENTSTREAM)
        return self._request(deployment, "converse", body)

    def chat_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        parsed = orjson.loads(body)
        if not isinstance(parsed, dict):
            raise UpstreamError("Bedrock answered with a non-object body")
        usage = converse_usage(parsed.get("usage"))
        return ChatResult(body=translate_response(parsed, deployment.model, usage),
                          usage=usage, raw=None)

    def chat_stream(self, deployment: Deployment, include_usage: bool) -> StreamDecoder:
        from tallygate.providers.bedrock_stream import ConverseStreamDecoder

        return ConverseStreamDecoder(include_usage, deployment.model)

    def error_from_response(self, status: int, body: bytes,
                            headers: Mapping[str, str]) -> UpstreamError:
        return bedrock_error(status, body, headers)

    # -- embeddings -------------------------------------------------------------------------

    def embedding_requests(self, deployment: Deployment,
                           params: dict[str, Any]) -> list[UpstreamRequest]:
        model = base_model_id(deployment.base_model or deployment.model)
        return [self._request(deployment, "invoke", body)
                for body in embedding_bodies(model.partition(".")[0], model, params)]

    def embedding_request(self, deployment: Deployment,
                          params: dict[str, Any]) -> UpstreamRequest:
        requests = self.embedding_requests(deployment, params)
        if len(requests) != 1:
            raise bad_request("this model embeds one input per request", "input")
        return requests[0]

    def embedding_responses(self, deployment: Deployment, bodies: list[bytes]) -> ChatResult:
        answers = [orjson.loads(body) for body in bodies]
        if not all(isinstance(a, dict) for a in answers):
            raise UpstreamError("Bedrock answered with a non-object body")
        return embedding_result(answers, deployment.model)

    def embedding_response(self, deployment: Deployment, body: bytes) -> ChatResult:
        return self.embedding_responses(deployment, [body])


register(BedrockProvider())
