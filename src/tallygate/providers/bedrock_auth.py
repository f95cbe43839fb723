"""AWS credentials and request signing for Bedrock, done by botocore.

Who signs a deployment's requests is decided from its litellm_params in LiteLLM's order:
``api_key`` (a Bedrock API key) -> ``aws_role_name`` (STS AssumeRole, from the given keys,
profile or the default chain) -> ``aws_profile_name`` -> ``aws_access_key_id`` +
``aws_secret_access_key`` (+ ``aws_session_token``) -> ``AWS_BEARER_TOKEN_BEDROCK`` ->
botocore's default chain (environment, shared files, SSO, container, instance metadata).

botocore is imported on first use, so ``import tallygate`` stays cheap and deployments of
other providers never load it. Its calls that block (reading files, STS, instance
metadata) run in a worker thread; refreshable credentials (assume-role, instance roles)
are refreshed by botocore before they expire, and a request only hops to a thread when
botocore says a refresh is due.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tallygate.errors import (
    ConfigError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamPermissionDeniedError,
)

if TYPE_CHECKING:
    from botocore.credentials import Credentials, ReadOnlyCredentials

SIGNING_NAME = "bedrock"  # the service name Bedrock Runtime signs with (not "bedrock-runtime")
DEFAULT_REGION = "us-west-2"  # LiteLLM's last resort
BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"
_REGION = re.compile(r"\A[a-z0-9-]+\Z")

# litellm_params that choose the identity; each unset one falls back to its AWS_* variable,
# as in LiteLLM (AWS_ACCESS_KEY_ID and friends are also read by botocore's default chain).
CREDENTIAL_PARAMS: dict[str, str] = {
    "aws_access_key_id": "AWS_ACCESS_KEY_ID",
    "aws_secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "aws_session_token": "AWS_SESSION_TOKEN",
    "aws_profile_name": "AWS_PROFILE_NAME",
    "aws_role_name": "AWS_ROLE_NAME",
    "aws_session_name": "AWS_SESSION_NAME",
    "aws_sts_endpoint": "AWS_STS_ENDPOINT",
    "aws_external_id": "AWS_EXTERNAL_ID",
}


_quieted = False


def _quiet_botocore() -> None:
    # botocore's debug records carry secrets (the canonical request shows the session
    # token; the STS response body shows the new secret key): keep them off unless the
    # operator set botocore's level on purpose.
    global _quieted
    if not _quieted:
        _quieted = True
        logger = logging.getLogger("botocore")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def region_of_arn(model_id: str) -> str | None:
    """The region of a Bedrock ARN model id (``arn:aws:bedrock:REGION:...``)."""
    parts = model_id.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[3] and _REGION.match(parts[3]):
        return parts[3]
    return None


def resolve_region(params: Mapping[str, Any], model_id: str,
                   environ: Mapping[str, str]) -> str:
    """``aws_region_name``, else the ARN's region, else AWS_REGION_NAME / AWS_REGION /
    AWS_DEFAULT_REGION, else us-west-2 (LiteLLM's order)."""
    region = params.get("aws_region_name") or region_of_arn(model_id)
    if not region:
        region = next((environ[name] for name in ("AWS_REGION_NAME", "AWS_REGION",
                                                  "AWS_DEFAULT_REGION") if environ.get(name)),
                      DEFAULT_REGION)
    region = str(region)
    if not _REGION.match(region):
        raise ConfigError(f"aws_region_name {region!r} is not an AWS region name")
    return region


@dataclass(frozen=True, slots=True)
class IdentityKey:
    """What decides one AWS identity; equal keys share their credentials."""

    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    profile_name: str | None
    role_name: str | None
    session_name: str | None
    sts_endpoint: str | None
    external_id: str | None
    region: str

    def __repr__(self) -> str:  # never the secrets
        return (f"IdentityKey(access_key_id={self.access_key_id!r}, "
                f"profile_name={self.profile_name!r}, role_name={self.role_name!r})")


_KEY_TRIO = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def identity_key(params: Mapping[str, Any], region: str,
                 environ: Mapping[str, str]) -> IdentityKey:
    """The deployment's identity; each unset param falls back to its AWS_* variable, except
    that the key, secret and session token come all from the params or all from the
    environment (a configured key never pairs with another identity's session token)."""
    trio_source = params if params.get("aws_access_key_id") else None
    values: dict[str, str | None] = {}
    for name, env in CREDENTIAL_PARAMS.items():
        if name in _KEY_TRIO and trio_source is not None:
            value = trio_source.get(name)
        else:
            value = params.get(name) or environ.get(env)
        values[name] = str(value) if value else None
    if trio_source is None and values["aws_profile_name"]:
        # a profile names its own keys: the environment's do not override them
        values.update(dict.fromkeys(_KEY_TRIO))
    if bool(values["aws_access_key_id"]) != bool(values["aws_secret_access_key"]):
        raise ConfigError("aws_access_key_id and aws_secret_access_key go together: "
                          "set both or neither")
    return IdentityKey(
        access_key_id=values["aws_access_key_id"],
        secret_access_key=values["aws_secret_access_key"],
        session_token=values["aws_session_token"], profile_name=values["aws_profile_name"],
        role_name=values["aws_role_name"], session_name=values["aws_session_name"],
        sts_endpoint=values["aws_sts_endpoint"], external_id=values["aws_external_id"],
        region=region)


def with_environment(model_id: str, params: Mapping[str, Any],
                     env: Mapping[str, str]) -> dict[str, Any]:
    """``params`` plus the AWS variables ``env`` sets for the unset ones, read as
    ``identity_key`` and ``resolve_region`` read the process environment (the key, secret
    and token only together, and not over a profile)."""
    out = dict(params)
    trio_from_env = not params.get("aws_access_key_id") and not params.get("aws_profile_name")
    for name, var in CREDENTIAL_PARAMS.items():
        if name in _KEY_TRIO and not trio_from_env:
            continue
        if not out.get(name) and env.get(var):
            out[name] = env[var]
    region = next((env[var] for var in ("AWS_REGION_NAME", "AWS_REGION", "AWS_DEFAULT_REGION")
                   if env.get(var)), None)
    if not out.get("aws_region_name") and region and region_of_arn(model_id) is None:
        out["aws_region_name"] = region
    if not out.get("aws_bedrock_runtime_endpoint") and env.get("AWS_BEDROCK_RUNTIME_ENDPOINT"):
        out["aws_bedrock_runtime_endpoint"] = env["AWS_BEDROCK_RUNTIME_ENDPOINT"]
    return out


def explicit_identity(params: Mapping[str, Any]) -> bool:
    """The deployment names its AWS identity itself (so a bearer token in the environment
    does not override it)."""
    return any(params.get(name) for name in
               ("aws_access_key_id", "aws_profile_name", "aws_role_name"))


class AwsIdentity:
    """The credentials of one identity: resolved once, off the event loop, and refreshed by
    botocore before they expire. Safe to share between event loops and threads."""

    def __init__(self, key: IdentityKey) -> None:
        self.key = key
        self._credentials: Credentials | None = None
        self._lock = threading.Lock()

    async def frozen(self) -> ReadOnlyCredentials:
        """This request's credentials (access key, secret, session token)."""
        creds = self._credentials
        if creds is None or _refresh_due(creds):
            return await asyncio.to_thread(self._frozen_blocking)
        return creds.get_frozen_credentials()

    def _frozen_blocking(self) -> ReadOnlyCredentials:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with self._lock:
                if self._credentials is None:
                    self._credentials = _resolve(self.key)
                creds = self._credentials
            return creds.get_frozen_credentials()
        except ClientError as exc:
            # STS refused: name its error code, never its message or the keys.
            code = str(exc.response.get("Error", {}).get("Code") or "error")
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 403)
            raise _sts_error(code, status) from None
        except BotoCoreError as exc:
            raise _botocore_error(exc) from None


def _refresh_due(creds: Credentials) -> bool:
    from botocore.credentials import RefreshableCredentials

    return isinstance(creds, RefreshableCredentials) and bool(creds.refresh_needed())


def _resolve(key: IdentityKey) -> Credentials:
    """botocore credentials for ``key`` (blocking: files, STS, instance metadata)."""
    import botocore.session
    from botocore.credentials import (
        AssumeRoleCredentialFetcher,
        Credentials,
        DeferredRefreshableCredentials,
    )

    _quiet_botocore()
    session = botocore.session.Session(profile=key.profile_name) if key.profile_name \
        else botocore.session.Session()
    source: Credentials | None
    if key.access_key_id and key.secret_access_key:
        source = Credentials(key.access_key_id, key.secret_access_key, key.session_token)
    else:
        source = session.get_credentials()
    if source is None:
        raise ConfigError("no AWS credentials found for this Bedrock deployment: set "
                          "aws_access_key_id/aws_secret_access_key, aws_profile_name, "
                          "aws_role_name, an api_key (Bedrock API key), or the standard "
                          "AWS environment")
    if not key.role_name:
        return source
    extra: dict[str, Any] = {}
    if key.session_name:
        extra["RoleSessionName"] = key.session_name
    if key.external_id:
        extra["ExternalId"] = key.external_id
    fetcher = AssumeRoleCredentialFetcher(
        client_creator=_sts_client_creator(session, key), source_credentials=source,
        role_arn=key.role_name, extra_args=extra)
    # Refreshable: botocore assumes the role again before these credentials expire.
    return DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials,
                                          method="assume-role")


def _sts_client_creator(session: Any, key: IdentityKey) -> Callable[..., Any]:
    def create(service_name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("region_name", key.region)
        if key.sts_endpoint:
            kwargs["endpoint_url"] = key.sts_endpoint
        return session.create_client(service_name, **kwargs)

    return create


def _sts_error(code: str, status: int) -> UpstreamError:
    message = (f"AWS STS refused to assume the role configured for this Bedrock deployment "
               f"({status} {code}); check aws_role_name and the credentials it is assumed "
               "with")
    if status in (401, 403) or code in ("AccessDenied", "InvalidClientTokenId",
                                        "ExpiredToken", "SignatureDoesNotMatch"):
        return UpstreamPermissionDeniedError(message, status_code=403, code="aws_credentials")
    return UpstreamError(message, code="aws_credentials")


def _botocore_error(exc: Exception) -> Exception:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return ConfigError("no AWS credentials found for this Bedrock deployment")
    if isinstance(exc, EndpointConnectionError):
        return UpstreamConnectionError("cannot reach the AWS STS endpoint")
    return UpstreamError(f"AWS credentials could not be obtained ({type(exc).__name__})",
                         code="aws_credentials")


def sign_headers(creds: ReadOnlyCredentials, region: str, url: str, headers: Mapping[str, str],
                 body: bytes) -> dict[str, str]:
    """``headers`` plus SigV4's (X-Amz-Date, X-Amz-Security-Token, Authorization) for a
    POST of ``body`` to ``url``, which must be exactly the URL sent (percent-encoding
    included): the signature covers its path."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    _quiet_botocore()
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(creds, SIGNING_NAME, region).add_auth(request)
    return dict(request.headers.items())


def bearer_token(api_key: str | None, params: Mapping[str, Any],
                 environ: Mapping[str, str]) -> str | None:
    """The Bedrock API key to send as a Bearer token instead of signing, if any."""
    if api_key:
        return api_key
    if explicit_identity(params):
        return None
    return environ.get(BEARER_ENV) or None


class Identities:
    """The AwsIdentity of each key, made once per process."""

    def __init__(self) -> None:
        self._by_key: dict[IdentityKey, AwsIdentity] = {}
        self._lock = threading.Lock()

    def get(self, key: IdentityKey) -> AwsIdentity:
        found = self._by_key.get(key)
        if found is None:
            with self._lock:
                found = self._by_key.setdefault(key, AwsIdentity(key))
        return found

