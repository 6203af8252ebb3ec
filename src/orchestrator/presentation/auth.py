"""Who is calling: AUTH_MODE none, gateway or jwt, for REST requests and Socket.IO handshakes.

- none: open; `userId` (query) only narrows what a call sees.
- gateway: the platform gateway verified the user and names it in `userId` (or `X-User-Id`);
  with GATEWAY_SHARED_SECRET, only a request carrying it (`X-Gateway-Secret`) may do so.
- jwt: the service verifies `Authorization: Bearer <token>` itself (PyJWT): HS256 with
  JWT_SECRET, RS256/ES256 with JWT_PUBLIC_KEY or a JWKS_URL (keys cached five minutes, and
  fetched again for an unknown `kid` at most every 30 s, so that made-up ids cannot make the
  service hammer the identity provider); audience, issuer, expiry and not-before are checked
  with a small leeway.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.exceptions import HTTPException

from orchestrator.application.access import ANYONE, Caller
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

GATEWAY_SECRET_HEADER = "x-gateway-secret"
USER_HEADER = "x-user-id"
MAX_USER_ID = 200


class Unauthenticated(HTTPException):
    """No credentials, or credentials that do not hold (401)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": "Bearer"})
        self.message = message


class Forbidden(HTTPException):
    """Credentials that hold, for something they do not allow (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)
        self.message = message


@dataclass(frozen=True)
class Identity:
    """An authenticated caller, and until when (epoch seconds) the credentials hold."""

    caller: Caller
    expires_at: float | None = None


class Authenticator:
    """Turns a request's or a handshake's credentials into a Caller, per AUTH_MODE."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth_mode
        self._settings = settings
        secret = settings.gateway_shared_secret
        self._gateway_secret = secret.get_secret_value().encode() if secret else None
        self._jwks = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True) if settings.jwks_url else None
        )
        if self.mode == "none":
            log.warning(
                "AUTH_MODE=none: the service is open; anyone who reaches it can read and change "
                "every workflow and execution (set AUTH_MODE=gateway or jwt)"
            )

    @property
    def scoped(self) -> bool:
        """True when callers see only their own workflows and executions."""
        return self.mode != "none"

    async def request(self, headers: Mapping[str, str], query_user: str | None) -> Identity:
        """The caller of a REST request (`headers` with lowercase names)."""
        if self.mode == "none":
            return Identity(Caller(query_user) if query_user is not None else ANYONE)
        if self.mode == "gateway":
            return Identity(self._gateway_user(headers, query_user))
        token = _bearer(headers.get("authorization"))
        if token is None:
            raise Unauthenticated("A bearer token is required (Authorization: Bearer <token>)")
        identity = await self.token(token)
        if query_user is not None and query_user != identity.caller.user_id:
            raise Forbidden("userId does not match the token's user")
        return identity

    async def handshake(self, environ: Mapping[str, Any], auth: Any) -> Identity:
        """The caller of a Socket.IO connection: `auth: {token}`, an `Authorization` header,
        or `?token=` (browsers that cannot set headers); in gateway mode, as a request."""
        query = parse_qs(str(environ.get("QUERY_STRING", "")))
        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if self.mode == "none":
            return Identity(ANYONE)
        if self.mode == "gateway":
            users = query.get("userId")
            return Identity(self._gateway_user(headers, users[0] if users else None))
        token = auth.get("token") if isinstance(auth, dict) else None
        if not isinstance(token, str):
            token = _bearer(headers.get("authorization"))
        if token is None and query.get("token"):
            token = query["token"][0]
        if token is None:
            raise Unauthenticated("A token is required: auth: {token}, Authorization or ?token=")
        return await self.token(token)

    def _gateway_user(self, headers: Mapping[str, str], query_user: str | None) -> Caller:
        if self._gateway_secret is not None:
            sent = headers.get(GATEWAY_SECRET_HEADER, "").encode()
            if not hmac.compare_digest(sent, self._gateway_secret):
                raise Unauthenticated("Only the gateway may call this service")
        header_user = headers.get(USER_HEADER)
        if query_user is not None and header_user is not None and query_user != header_user:
            raise Forbidden("userId and X-User-Id name different users")
        user = query_user if query_user is not None else header_user
        if not user or len(user) > MAX_USER_ID:
            raise Unauthenticated("userId (or X-User-Id) is required")
        return Caller(user, scoped=True)

    async def token(self, token: str) -> Identity:
        """Verify a bearer token; its user claim names the caller."""
        settings = self._settings
        try:
            key = await self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=settings.jwt_algorithms,
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer,
                leeway=settings.jwt_leeway_seconds,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("The token has expired") from exc
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthenticated(f"The token is not valid: {_short(str(exc))}") from exc
        user = claims.get(settings.jwt_user_claim)
        if not isinstance(user, str) or not user or len(user) > MAX_USER_ID:
            raise Unauthenticated(f"The token has no {settings.jwt_user_claim!r} claim")
        admin = False
        if settings.admin_claim is not None:
            held = claims.get(settings.admin_claim)
            values = held if isinstance(held, list) else [held]
            admin = settings.admin_value in values
        expires = claims.get("exp")
        return Identity(
            Caller(user, scoped=True, reads_all=admin),
            # The leeway that lets a just-expired token in lets it subscribe too.
            float(expires) + settings.jwt_leeway_seconds
            if isinstance(expires, int | float)
            else None,
        )

    async def _key(self, token: str) -> Any:
        """The key that checks this token: the JWKS's for its `kid`, else the configured one."""
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in self._settings.jwt_algorithms:
            raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} is not allowed")
        if algorithm.startswith("HS"):
            if self._settings.jwt_secret is None:
                raise jwt.InvalidAlgorithmError("no JWT_SECRET for an HMAC token")
            return self._settings.jwt_secret.get_secret_value()
        if self._jwks is not None and header.get("kid") is not None:
            # PyJWKClient fetches with urllib: off the event loop.
            signing = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
            return signing.key
        if self._settings.jwt_public_key is None:
            raise jwt.InvalidKeyError("no JWT_PUBLIC_KEY or JWKS_URL for this token")
        return self._settings.jwt_public_key


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."
