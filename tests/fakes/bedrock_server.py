"""A stand-in Bedrock Runtime (and STS) speaking AWS's wire formats over HTTP.

    async with FakeBedrock() as fake:          # or: with run_in_thread(FakeBedrock()) as fake
        client = boto3.client("bedrock-runtime", endpoint_url=fake.url, region_name=fake.region,
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

Routes (rest-json, as botocore's bedrock-runtime model has them):
  POST /model/{modelId}/converse          Converse: JSON answer
  POST /model/{modelId}/converse-stream   ConverseStream: application/vnd.amazon.eventstream
  POST /model/{modelId}/invoke            InvokeModel, for Titan and Cohere embedding models
  POST /                                  STS AssumeRole (query protocol, XML answer)

Every request's SigV4 signature is recomputed with botocore's signer over the raw path it
arrived with (so a client that re-quotes ``%3A`` after signing fails) and refused with 403
and AWS's error body and ``x-amzn-errortype`` when wrong; Bedrock API keys (Bearer tokens)
are accepted when listed. Converse bodies are checked against botocore's service model:
an unknown member, a missing required one or a union with two members is a 400
ValidationException. Stream events are real event-stream messages (prelude, string
headers, CRC32s), padded with a ``p`` member as AWS pads them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import itertools
import re
import secrets
import struct
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from aiohttp import web

from tests.fakes.server_base import FakeServer, FakeToolCall, Received, run_in_thread, split_text

__all__ = ["ACCESS_KEY", "SECRET_KEY", "FakeBedrock", "FakeToolCall", "event_frame",
           "run_in_thread"]

ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake/Secret+Key/bedrock0000000000000001"
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=(?P<cred>[^,\s]+),\s*"
                   r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-f]+)")
_SIGNATURE_MISMATCH = ("The request signature we calculated does not match the signature you "
                       "provided. Check your AWS Secret Access Key and signing method. Consult "
                       "the service documentation for details.")
_service_model: Any = None


def service_model() -> Any:
    global _service_model
    if _service_model is None:
        import botocore.session

        _service_model = botocore.session.get_session().get_service_model("bedrock-runtime")
    return _service_model


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode()))
        + value.encode() for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(name: str, body: dict[str, Any]) -> bytes:
    padded = {**body, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: 4 + len(name)]}
    return event_frame({":event-type": name, ":content-type": "application/json",
                        ":message-type": "event"}, orjson.dumps(padded))


def _exception(kind: str, message: str) -> bytes:
    return event_frame({":exception-type": kind, ":content-type": "application/json",
                        ":message-type": "exception"}, orjson.dumps({"message": message}))


# --- validating a request body against botocore's model of the operation ----------------

def shape_errors(value: Any, shape: Any, where: str) -> list[str]:
    """What AWS's request validation would refuse in ``value`` (JSON) for ``shape``."""
    kind = shape.type_name
    if shape.metadata.get("document"):
        return []
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        errors = [f"{where}.{k}: unknown member" for k in value if k not in shape.members]
        errors += [f"{where}.{k}: member must not be null" for k in shape.required_members
                   if k not in value and shape.members[k].serialization.get("location") is None]
        if shape.metadata.get("union") and len(value) != 1:
            errors.append(f"{where}: a union takes exactly one member, got {sorted(value)}")
        for k, v in value.items():
            if k in shape.members:
                errors += shape_errors(v, shape.members[k], f"{where}.{k}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in shape_errors(v, shape.member,
                                                                      f"{where}.{i}")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        return [e for k, v in value.items() for e in shape_errors(v, shape.value,
                                                                   f"{where}.{k}")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected a string"]
        if shape.enum and value not in shape.enum:
            return [f"{where}: {value!r} is not one of {shape.enum}"]
        return []
    if kind in ("integer", "long"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer"]
    if kind in ("float", "double"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: expected a boolean"]
    if kind == "blob":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError, ValueError):
            return [f"{where}: expected base64 bytes"]
        return []
    return []


@dataclass
class IssuedCredentials:
    secret: str
    token: str | None = None
    expires_at: dt.datetime | None = None
    role_arn: str | None = None


@dataclass
class SignatureCheck:
    """The outcome of checking one request's authentication."""

    ok: bool
    error_type: str = ""
    message: str = ""
    access_key: str | None = None
    bearer: bool = False


@dataclass
class StsCall:
    role_arn: str
    session_name: str
    external_id: str | None
    access_key: str                 # who asked
    issued_key: str                 # what they got


class FakeBedrock(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.region = "us-east-1"
        self.credentials: dict[str, IssuedCredentials] = {
            ACCESS_KEY: IssuedCredentials(SECRET_KEY)}
        self.bearer_tokens: set[str] = set()
        self.roles: set[str] = set()            # role ARNs AssumeRole grants
        self.sts_duration_s = 3600              # lifetime of the credentials STS issues
        self.sts_calls: list[StsCall] = []
        self.auth_failures: list[SignatureCheck] = []
        self.checks: list[SignatureCheck] = []  # every accepted request's identity
        self.raw_paths: list[str] = []
        self.model_ids: list[str] = []
        # the answer
        self.reply_text = "Hello from the fake Bedrock."
        self.reasoning_text: str | None = None   # a reasoningContent block before the text
        self.tool_call: FakeToolCall | None = None
        self.stop_reason = "end_turn"
        self.input_tokens = 11                   # uncached input, as Converse reports it
        self.output_tokens = 6
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0              # 5-minute writes
        self.cache_write_1h_tokens = 0
        self.cache_details = True                # report cacheDetails when writes happen
        self.stream_chunks = 3
        # an in-stream exception of this type after the first text delta (then the end)
        self.stream_exception: str | None = None
        self.frames_sent = self.frames_total = 0
        self.stream_aborted = False
        self._ids = itertools.count(1)

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/model/{tail:.+}", self._model_route),
                web.post("/", self._sts)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return {"message": message}

    def fail(self, status: int, message: str | None = None, *, error_type: str | None = None,
             headers: dict[str, str] | None = None, times: int = 1) -> None:
        kind = error_type or {400: "ValidationException", 403: "AccessDeniedException",
                              404: "ResourceNotFoundException", 429: "ThrottlingException",
                              503: "ServiceUnavailableException"}.get(status,
                                                                     "InternalServerException")
        super().fail(status, message, error_type=kind,
                     headers={"x-amzn-errortype": f"{kind}:{ERROR_NAMESPACE}",
                              "x-amzn-RequestId": secrets.token_hex(8), **(headers or {})},
                     times=times)

    def aws_error(self, status: int, kind: str, message: str) -> web.Response:
        return web.Response(status=status, body=orjson.dumps({"message": message}),
                            content_type="application/json",
                            headers={"x-amzn-errortype": f"{kind}:{ERROR_NAMESPACE}",
                                     "x-amzn-RequestId": secrets.token_hex(8)})

    # -- authentication -----------------------------------------------------------------

    def check_signature(self, request: web.Request, body: bytes, service: str) -> SignatureCheck:
        """Recompute the request's SigV4 signature with botocore and compare."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
            if service == "bedrock" and any(hmac.compare_digest(token, known)
                                            for known in self.bearer_tokens):
                return SignatureCheck(True, bearer=True)
            return SignatureCheck(False, "UnrecognizedClientException",
                                  "The security token included in the request is invalid.")
        match = _AUTH.fullmatch(auth.strip())
        if match is None:
            return SignatureCheck(False, "MissingAuthenticationTokenException",
                                  "Missing Authentication Token")
        parts = match["cred"].split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            return SignatureCheck(False, "IncompleteSignatureException",
                                  "Credential must have exactly 5 slash-delimited elements")
        access_key, day, region, scope_service, _ = parts
        issued = self.credentials.get(access_key)
        if issued is None:
            return SignatureCheck(False, "UnrecognizedClientException",
                                  "The security token included in the request is invalid.")
        if issued.token is not None and request.headers.get("X-Amz-Security-Token") \
                != issued.token:
            return SignatureCheck(False, "UnrecognizedClientException",
                                  "The security token included in the request is invalid.")
        if issued.expires_at is not None and issued.expires_at <= dt.datetime.now(dt.UTC):
            return SignatureCheck(False, "ExpiredTokenException",
                                  "The security token included in the request is expired")
        if scope_service != service:
            return SignatureCheck(False, "InvalidSignatureException",
                                  f"Credential should be scoped to correct service: "
                                  f"'{service}'. ")
        if region != self.region:
            return SignatureCheck(False, "InvalidSignatureException",
                                  "Credential should be scoped to a valid region. ")
        amz_date = request.headers.get("X-Amz-Date", "")
        try:
            signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            return SignatureCheck(False, "IncompleteSignatureException",
                                  "Authorization header requires existence of either a "
                                  "'X-Amz-Date' or a 'Date' header.")
        if abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds()) > 300 \
                or not amz_date.startswith(day):
            return SignatureCheck(False, "InvalidSignatureException", "Signature expired")
        signed = match["signed"].split(";")
        if "host" not in signed:
            return SignatureCheck(False, "InvalidSignatureException",
                                  "'Host' must be a 'SignedHeader' in the AWS Authorization.")
        headers = {name: ",".join(request.headers.getall(name, "")) for name in signed}
        url = f"http://{request.host}{request.raw_path}"  # the path exactly as it came
        aws_request = AWSRequest(method=request.method, url=url, data=body, headers=headers)
        aws_request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(access_key, issued.secret, issued.token), service,
                           region)
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        if not hmac.compare_digest(expected, match["sig"]):
            return SignatureCheck(False, "InvalidSignatureException", _SIGNATURE_MISMATCH,
                                  access_key)
        return SignatureCheck(True, access_key=access_key)

    async def _authenticated(self, request: web.Request, service: str
                             ) -> tuple[bytes, web.Response | None]:
        body = await request.read()
        check = self.check_signature(request, body, service)
        if not check.ok:
            self.auth_failures.append(check)
            return body, self.aws_error(403, check.error_type, check.message)
        self.checks.append(check)
        return body, None

    # -- Bedrock Runtime ------------------------------------------------------------------

    async def _model_route(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        self.raw_paths.append(raw_path)
        segments = raw_path.split("/")
        got = await self.record(request)
        body, refused = await self._authenticated(request, "bedrock")
        if refused is not None:
            return refused
        if len(segments) != 4 or segments[3] not in ("converse", "converse-stream", "invoke"):
            return self.aws_error(404, "UnknownOperationException", "")
        model_id = unquote(segments[2])
        self.model_ids.append(model_id)
        failure = self.take_error()
        if failure is not None:
            return failure
        operation = segments[3]
        if operation == "invoke":
            return await self._invoke(request, model_id, body)
        errors = shape_errors(got.body, service_model().operation_model(
            "ConverseStream" if operation == "converse-stream" else "Converse").input_shape,
            "body")
        if got.body is None or errors:
            return self.aws_error(400, "ValidationException",
                                  f"{len(errors)} validation error(s) detected: "
                                  + "; ".join(errors or ["body: not a JSON object"]))
        if not got.body.get("messages"):
            return self.aws_error(400, "ValidationException",
                                  "A conversation must start with a user message.")
        if operation == "converse-stream":
            return await self._send_events(request, self._events())
        return await self.send_json(request, self.converse_answer())

    def usage(self) -> dict[str, Any]:
        written = self.cache_write_tokens + self.cache_write_1h_tokens
        usage: dict[str, Any] = {
            "inputTokens": self.input_tokens, "outputTokens": self.output_tokens,
            "totalTokens": (self.input_tokens + self.output_tokens + self.cache_read_tokens
                            + written)}
        if self.cache_read_tokens or written:
            usage["cacheReadInputTokens"] = self.cache_read_tokens
            usage["cacheWriteInputTokens"] = written
        if written and self.cache_details:
            usage["cacheDetails"] = [
                {"ttl": ttl, "inputTokens": n}
                for ttl, n in (("5m", self.cache_write_tokens),
                               ("1h", self.cache_write_1h_tokens)) if n]
        return usage

    def _stop_reason(self) -> str:
        return "tool_use" if self.tool_call is not None else self.stop_reason

    def converse_answer(self) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if self.reasoning_text:
            content.append({"reasoningContent": {"reasoningText": {
                "text": self.reasoning_text, "signature": "sig-fake-1"}}})
        if self.reply_text:
            content.append({"text": self.reply_text})
        if self.tool_call is not None:
            content.append({"toolUse": {"toolUseId": self.tool_call.id,
                                        "name": self.tool_call.name,
                                        "input": self.tool_call.arguments}})
        return {"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": self._stop_reason(), "usage": self.usage(),
                "metrics": {"latencyMs": 42}}

    def _events(self) -> list[bytes]:
        frames = [_event("messageStart", {"role": "assistant"})]
        index = 0
        if self.reasoning_text:
            for piece in split_text(self.reasoning_text, 2):
                frames.append(_event("contentBlockDelta", {
                    "contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}}))
            frames.append(_event("contentBlockDelta", {
                "contentBlockIndex": index,
                "delta": {"reasoningContent": {"signature": "sig-fake-1"}}}))
            frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if self.reply_text:
            for piece in split_text(self.reply_text, self.stream_chunks):
                frames.append(_event("contentBlockDelta", {
                    "contentBlockIndex": index, "delta": {"text": piece}}))
                if self.stream_exception:
                    frames.append(_exception(self.stream_exception,
                                             "fake in-stream failure"))
                    return frames
            frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if self.tool_call is not None:
            frames.append(_event("contentBlockStart", {
                "contentBlockIndex": index, "start": {"toolUse": {
                    "toolUseId": self.tool_call.id, "name": self.tool_call.name}}}))
            for piece in split_text(orjson.dumps(self.tool_call.arguments).decode(),
                                    self.stream_chunks):
                frames.append(_event("contentBlockDelta", {
                    "contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
            frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(_event("messageStop", {"stopReason": self._stop_reason()}))
        frames.append(_event("metadata", {"usage": self.usage(), "metrics": {"latencyMs": 42}}))
        return frames

    async def _send_events(self, request: web.Request,
                           frames: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-RequestId": secrets.token_hex(8)})
        if self.drop_connection == "before":
            self._drop(request)
            return response
        await response.prepare(request)
        cut = len(frames) // 2 if self.drop_connection == "mid" else len(frames)
        self.frames_total = len(frames)
        self.frames_sent = 0
        try:
            for i, frame in enumerate(frames[:cut]):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                # split a frame across writes too: a decoder must not assume whole messages
                half = len(frame) // 2
                await response.write(frame[:half])
                await response.write(frame[half:])
                self.frames_sent += 1
        except ConnectionError:
            self.stream_aborted = True  # the client hung up on us
            return response
        if self.drop_connection == "mid":
            self._drop(request)
            return response
        await response.write_eof()
        return response

    @staticmethod
    def embedding_tokens(text: str) -> int:
        """How many input tokens the stand-in's Titan counts for ``text``."""
        return len(text.split()) + 1

    async def _invoke(self, request: web.Request, model_id: str,
                      raw: bytes) -> web.StreamResponse:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self.aws_error(400, "ValidationException", "Malformed input request")
        if not isinstance(body, dict):
            return self.aws_error(400, "ValidationException", "Malformed input request")
        if "titan-embed" in model_id:
            extra = set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
            if not isinstance(body.get("inputText"), str) or extra:
                return self.aws_error(400, "ValidationException",
                                      f"Malformed input request: extraneous key {sorted(extra)}"
                                      if extra else "Malformed input request: inputText")
            dims = int(body.get("dimensions") or 1024)
            vector = [round(0.001 * (i + 1), 6) for i in range(dims)]
            return await self.send_json(request, {
                "embedding": vector, "embeddingsByType": {"float": vector},
                "inputTextTokenCount": self.embedding_tokens(body["inputText"])})
        if model_id.startswith("cohere.embed"):
            texts = body.get("texts")
            extra = set(body) - {"texts", "input_type", "truncate", "embedding_types",
                                 "images", "output_dimension", "max_tokens", "inputs"}
            if not isinstance(texts, list) or not body.get("input_type") or extra:
                return self.aws_error(400, "ValidationException",
                                      "Malformed input request: texts and input_type")
            vectors = [[round(0.01 * (i + j + 1), 6) for j in range(4)]
                       for i in range(len(texts))]
            return await self.send_json(request, {
                "embeddings": vectors, "id": f"emb-{next(self._ids)}",
                "response_type": "embeddings_floats", "texts": texts})
        return self.aws_error(400, "ValidationException",
                              "The provided model doesn't support this operation.")

    # -- STS --------------------------------------------------------------------------------

    async def _sts(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.received.append(Received(request.method, request.path,
                                      request.headers.copy(), None))  # type: ignore[arg-type]
        check = self.check_signature(request, raw, "sts")
        if not check.ok:
            self.auth_failures.append(check)
            return self._sts_error(403, "Sender", "InvalidClientTokenId"
                                   if check.error_type == "UnrecognizedClientException"
                                   else "SignatureDoesNotMatch", check.message)
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if form.get("Action") != "AssumeRole":
            return self._sts_error(400, "Sender", "InvalidAction",
                                   f"Could not find operation {form.get('Action')}")
        role = form.get("RoleArn", "")
        session_name = form.get("RoleSessionName", "")
        if role not in self.roles:
            return self._sts_error(403, "Sender", "AccessDenied",
                                   f"User: arn:aws:iam::123456789012:user/caller is not "
                                   f"authorized to perform: sts:AssumeRole on resource: {role}")
        issued_key = "ASIA" + secrets.token_hex(8).upper()
        secret = secrets.token_urlsafe(30)
        token = "FwoGZXIvYXdzE" + secrets.token_urlsafe(48)
        expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(
            seconds=self.sts_duration_s)
        self.credentials[issued_key] = IssuedCredentials(secret, token, expires, role)
        self.sts_calls.append(StsCall(role, session_name, form.get("ExternalId"),
                                      str(check.access_key), issued_key))
        xml = (f'<AssumeRoleResponse xmlns="{STS_NS}"><AssumeRoleResult>'
               f"<AssumedRoleUser><AssumedRoleId>AROAFAKE:{session_name}</AssumedRoleId>"
               f"<Arn>{role.replace(':role/', ':assumed-role/')}/{session_name}</Arn>"
               f"</AssumedRoleUser><Credentials><AccessKeyId>{issued_key}</AccessKeyId>"
               f"<SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}"
               f"</SessionToken><Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}"
               f"</Expiration></Credentials></AssumeRoleResult><ResponseMetadata>"
               f"<RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>"
               f"</AssumeRoleResponse>")
        return web.Response(body=xml.encode(), content_type="text/xml")

    @staticmethod
    def _sts_error(status: int, kind: str, code: str, message: str) -> web.Response:
        xml = (f'<ErrorResponse xmlns="{STS_NS}"><Error><Type>{kind}</Type><Code>{code}'
               f"</Code><Message>{message}</Message></Error><RequestId>"
               f"{secrets.token_hex(8)}</RequestId></ErrorResponse>")
        return web.Response(status=status, body=xml.encode(), content_type="text/xml")

