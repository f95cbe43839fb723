"""A stand-in Vertex AI with its own OAuth token endpoint, over real HTTP on loopback.

    async with FakeVertex() as fake:
        key = fake.service_account()          # a key file whose token_uri is this server
        ...
        assert fake.token_fetches == 1

Routes (from Vertex AI's REST reference):
- ``POST /token``: Google's OAuth 2.0 token endpoint for service accounts
  (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, ``assertion`` a JWT
  signed RS256 with the key). The assertion is verified with the key's public half
  (google-auth's own JWT decoder) for its signature, issuer, audience and scope; an
  access token ``{"access_token", "expires_in", "token_type": "Bearer"}`` comes back.
- ``POST /{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/
  {model}:generateContent`` and ``:streamGenerateContent`` (Gemini's body and answers,
  the same ``GeminiScript`` as the AI Studio stand-in), and
  ``.../publishers/anthropic/models/{model}:rawPredict`` / ``:streamRawPredict``
  (Anthropic's Messages body with ``anthropic_version`` and without ``model``; answers
  by ``FakeAnthropic``'s script, ``fake.claude``), and
  ``.../publishers/anthropic/models/count-tokens:rawPredict`` (the model in the body).
Every model call needs ``Authorization: Bearer <a token this server issued>``; others
get 401 UNAUTHENTICATED, as Vertex answers. ``revoke_tokens()`` scripts a token that
Vertex stops accepting before it expires.
"""

from __future__ import annotations

import itertools
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.gemini_server import BadRequest, GeminiScript, google_error_body
from tests.fakes.server_base import FakeServer, FakeTurn, Received

__all__ = ["FakeVertex", "make_rsa_key"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audience Google's token endpoint takes in a service account's assertion, whatever
# URL the key's token_uri sends it to.
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
CLIENT_EMAIL = "tallygate-test@tg-project.iam.gserviceaccount.com"


def make_rsa_key() -> tuple[str, str]:
    """A throwaway RSA key: (private PEM in PKCS#8, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class FakeVertex(FakeServer):
    def __init__(self, key: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.private_pem, self.public_pem = key or make_rsa_key()
        self.key_id = "fake-key-1"
        self.script = GeminiScript()          # Gemini models' answers
        self.imagen_filtered = 0              # Imagen images filtered (no bytes, not billed)
        self.claude = FakeAnthropic()         # Claude's answers (its script, not its server)
        self.token_lifetime = 3600
        self.token_delay = 0.0                # seconds the token endpoint takes
        self.token_fetches = 0
        self.token_failure: tuple[int, dict[str, Any]] | None = None
        self._issued: set[str] = set()
        self._token_ids = itertools.count(1)
        self._msg_ids = itertools.count(1)

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    def service_account(self, project_id: str | None = "tg-project") -> dict[str, Any]:
        """A service-account key file's contents, its token_uri pointing here."""
        info: dict[str, Any] = {
            "type": "service_account", "private_key_id": self.key_id,
            "private_key": self.private_pem, "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001", "token_uri": self.token_uri,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        }
        if project_id is not None:
            info["project_id"] = project_id
        return info

    def revoke_tokens(self) -> None:
        """Vertex stops accepting every token issued so far (a scripted 401)."""
        self._issued.clear()

    def routes(self) -> list[web.RouteDef]:
        prefix = "/{version:v1|v1beta1}/projects/{project}/locations/{location}/publishers"
        return [web.post("/token", self._token),
                web.post(prefix + "/google/models/{target}", self._gemini),
                web.post(prefix + "/anthropic/models/{target}", self._anthropic)]

    def error_body(self, status: int, message: str, error_type: str | None) -> dict[str, Any]:
        return google_error_body(status, message)

    # -- the OAuth token endpoint -------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        from google.auth import jwt  # google-auth's own verifier checks the assertion

        form = parse_qs((await request.read()).decode())
        self.token_fetches += 1
        if self.token_delay:
            import asyncio

            await asyncio.sleep(self.token_delay)
        if self.token_failure is not None:
            status, body = self.token_failure
            return web.json_response(body, status=status)
        if form.get("grant_type") != [JWT_BEARER] or len(form.get("assertion", [])) != 1:
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Invalid grant_type"}, status=400)
        try:
            claims = jwt.decode(form["assertion"][0], certs={self.key_id: self.public_pem},
                                audience=TOKEN_AUDIENCE)
        except ValueError as exc:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": f"Invalid JWT: {exc}"}, status=400)
        if claims.get("iss") != CLIENT_EMAIL or CLOUD_PLATFORM not in str(
                claims.get("scope", "")).split():
            return web.json_response({"error": "invalid_scope",
                                      "error_description": "bad issuer or scope"}, status=400)
        token = f"ya29.fake-token-{next(self._token_ids)}-{int(time.time())}"
        self._issued.add(token)
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime,
                                  "token_type": "Bearer"})

    # -- model calls --------------------------------------------------------------------

    def _unauthenticated(self, got: Received) -> web.Response | None:
        auth = got.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and auth[len("Bearer "):] in self._issued:
            return None
        return self.error(401, "Request had invalid authentication credentials. Expected "
                          "OAuth 2 access token, login cookie or other valid authentication "
                          "credential.")

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        refusal = self._unauthenticated(got) or self.take_error()
        if refusal is not None:
            return refusal
        model, _, method = request.match_info["target"].partition(":")
        try:
            if method == "predict" and model.startswith("imagen"):
                from tests.fakes.gemini_server import imagen_predict

                return imagen_predict(got.body, self.imagen_filtered)
            if method not in ("generateContent", "streamGenerateContent"):
                return self.error(404, f"method {method!r} not found")
            return await self._generate(request, got.body, model, method)
        except BadRequest as exc:
            return self.error(400, exc.message)

    async def _generate(self, request: web.Request, raw: dict[str, Any] | None, model: str,
                        method: str) -> web.StreamResponse:
        from tests.fakes.gemini_server import check_generate_body, sse_frames

        body = check_generate_body(raw)
        self.script.check_signatures(body)
        if method == "generateContent":
            return await self.send_json(request, self.script.answer(body, model))
        chunks = self.script.stream(body, model)
        if request.query.get("alt") == "sse":
            return await self.send_stream(request, sse_frames(chunks))
        return web.Response(body=orjson.dumps(chunks), content_type="application/json")

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        refusal = self._unauthenticated(got) or self.take_error()
        if refusal is not None:
            return refusal
        model, _, method = request.match_info["target"].partition(":")
        body = got.body or {}
        if method not in ("rawPredict", "streamRawPredict"):
            return self.error(404, f"method {method!r} not found")
        if not body.get("anthropic_version"):
            return self.claude.error(400, "anthropic_version: Field required")
        if model == "count-tokens":  # Vertex counts at one endpoint, the model in the body
            return self._count_tokens(body)
        if "model" in body:
            return self.claude.error(400, "model: Extra inputs are not permitted")
        for name in ("messages", "max_tokens"):
            if name not in body:
                return self.claude.error(400, f"{name}: Field required")
        extra = set(body.get("metadata") or {}) - {"user_id"}
        if extra:
            return self.claude.error(400, f"metadata.{sorted(extra)[0]}: Extra inputs are "
                                     "not permitted")
        claude = self.claude
        turn = claude.turns.pop(0) if claude.turns else FakeTurn(claude.reply_text,
                                                                  claude.tool_call)
        blocks = claude._blocks(turn)
        mid = f"msg_vrtx_{next(self._msg_ids)}"
        stop_reason = "tool_use" if turn.tool_call is not None else claude.stop_reason
        if method == "streamRawPredict" or body.get("stream"):
            return await self.send_stream(request,
                                          claude._frames(mid, model, stop_reason, blocks))
        return await self.send_json(request, {
            "id": mid, "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": claude.usage()})

    def _count_tokens(self, body: dict[str, Any]) -> web.Response:
        for name in ("model", "messages"):
            if name not in body:
                return self.claude.error(400, f"{name}: Field required")
        count = self.claude.counted_tokens
        if count is None:
            count = len(orjson.dumps([body.get("system"), body["messages"]])) // 4
        return web.json_response({"input_tokens": count})
