"""Authentication: the Authenticator per AUTH_MODE (tokens made with PyJWT); who may see what."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from orchestrator.application.access import ANYONE, Caller
from orchestrator.presentation.auth import Authenticator, Forbidden, Identity, Unauthenticated
from orchestrator.settings import Settings

SECRET = "s3cret-" + "x" * 64
AUDIENCE = "orchestrator"
ISSUER = "https://issuer.example"


def settings(**values: Any) -> Settings:
    """Settings from these values only (no .env file)."""
    return Settings(_env_file=None, **values)


def hs_auth(**values: Any) -> Authenticator:
    return Authenticator(
        settings(auth_mode="jwt", jwt_secret=SECRET, jwt_audience=AUDIENCE, **values)
    )


def claims(**extra: Any) -> dict[str, Any]:
    """Claims that hold: user alice, the audience, an hour to go."""
    return {"sub": "alice", "aud": AUDIENCE, "exp": int(time.time()) + 3600, **extra}


def hs_token(payload: dict[str, Any], key: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers or None)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """An `alg: none` token, built by hand: header.payload. and no signature."""
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


async def refused(auth: Authenticator, token: str) -> str:
    """The message of the 401 the token gets."""
    with pytest.raises(Unauthenticated) as caught:
        await auth.token(token)
    assert caught.value.status_code == 401
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}
    message: str = caught.value.message
    return message


# JWT: HS256 ---------------------------------------------------------------------------------


async def test_a_valid_hs256_token_names_its_user_and_when_it_stops_holding() -> None:
    payload = claims()
    identity = await hs_auth(jwt_leeway_seconds=30).token(hs_token(payload))
    # Until exp and the leeway: what lets a just-expired token in lets it subscribe too.
    assert identity == Identity(Caller("alice", scoped=True), float(payload["exp"]) + 30)


async def test_a_token_expired_beyond_the_leeway_is_refused_as_expired() -> None:
    token = hs_token(claims(exp=int(time.time()) - 60))
    assert "expired" in await refused(hs_auth(jwt_leeway_seconds=30), token)


async def test_a_token_expired_within_the_leeway_holds() -> None:
    token = hs_token(claims(exp=int(time.time()) - 10))
    identity = await hs_auth(jwt_leeway_seconds=30).token(token)
    assert identity.caller.user_id == "alice"


async def test_a_leeway_of_zero_refuses_a_just_expired_token() -> None:
    token = hs_token(claims(exp=int(time.time()) - 2))
    assert "expired" in await refused(hs_auth(jwt_leeway_seconds=0), token)


async def test_a_token_not_valid_yet_is_refused() -> None:
    token = hs_token(claims(nbf=int(time.time()) + 600))
    assert "not valid" in await refused(hs_auth(), token)


async def test_a_token_valid_from_within_the_leeway_holds() -> None:
    token = hs_token(claims(nbf=int(time.time()) + 5))
    assert (await hs_auth().token(token)).caller.user_id == "alice"


async def test_a_forged_signature_is_refused() -> None:
    token = hs_token(claims(), key="another-" + "y" * 64)
    assert "not valid" in await refused(hs_auth(), token)


async def test_a_tampered_payload_is_refused() -> None:
    header, _, signature = hs_token(claims()).split(".")
    token = f"{header}.{b64(claims(sub='mallory'))}.{signature}"
    await refused(hs_auth(), token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "...."])
async def test_garbage_is_refused(token: str) -> None:
    await refused(hs_auth(), token)


async def test_a_wrong_audience_is_refused() -> None:
    await refused(hs_auth(), hs_token(claims(aud="another-service")))


async def test_a_missing_audience_is_refused_when_one_is_required() -> None:
    payload = claims()
    del payload["aud"]
    await refused(hs_auth(), hs_token(payload))


async def test_an_audience_among_several_holds() -> None:
    token = hs_token(claims(aud=["another-service", AUDIENCE]))
    assert (await hs_auth().token(token)).caller.user_id == "alice"


async def test_the_issuer_is_checked_when_set() -> None:
    auth = hs_auth(jwt_issuer=ISSUER)
    assert (await auth.token(hs_token(claims(iss=ISSUER)))).caller.user_id == "alice"
    await refused(auth, hs_token(claims(iss="https://evil.example")))
    await refused(auth, hs_token(claims()))  # no iss at all


async def test_alg_none_is_refused() -> None:
    message = await refused(hs_auth(), unsigned(claims()))
    assert "'none'" in message


async def test_alg_none_is_refused_even_without_any_key_check_configured() -> None:
    # Even with every algorithm PyJWT would accept in the list, "none" is never among them.
    auth = Authenticator(settings(auth_mode="jwt", jwt_secret=SECRET))
    await refused(auth, unsigned({"sub": "alice", "exp": int(time.time()) + 60}))


def test_none_cannot_be_configured_as_an_algorithm() -> None:
    with pytest.raises(ValueError, match="must be some of"):
        settings(auth_mode="jwt", jwt_secret=SECRET, jwt_algorithms="HS256,none")


async def test_an_algorithm_not_allowed_is_refused() -> None:
    auth = hs_auth(jwt_algorithms="RS256")
    assert "not allowed" in await refused(auth, hs_token(claims()))
    other = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert "not allowed" in await refused(hs_auth(jwt_algorithms="HS256"), other)


async def test_a_token_without_expiry_is_refused() -> None:
    payload = claims()
    del payload["exp"]
    assert "exp" in await refused(hs_auth(), hs_token(payload))


@pytest.mark.parametrize("sub", [None, "", 42, ["alice"], "x" * 201])
async def test_a_token_without_a_usable_user_is_refused(sub: Any) -> None:
    payload = claims(sub=sub)
    if sub is None:
        del payload["sub"]
    await refused(hs_auth(), hs_token(payload))


async def test_a_custom_user_claim_names_the_user() -> None:
    auth = hs_auth(jwt_user_claim="email")
    identity = await auth.token(hs_token(claims(email="alice@example.com")))
    assert identity.caller.user_id == "alice@example.com"
    assert "'email'" in await refused(auth, hs_token(claims()))  # has sub, no email


@pytest.mark.parametrize(
    ("held", "admin"),
    [
        ("admin", True),
        (["user", "admin"], True),
        ("user", False),
        (["user"], False),
        ([], False),
        (None, False),
    ],
)
async def test_the_admin_claim_lets_a_user_read_everything(held: Any, admin: bool) -> None:
    auth = hs_auth(admin_claim="roles", admin_value="admin")
    payload = claims() if held is None else claims(roles=held)
    caller = (await auth.token(hs_token(payload))).caller
    assert caller == Caller("alice", scoped=True, reads_all=admin)


async def test_without_an_admin_claim_configured_nobody_is_admin() -> None:
    caller = (await hs_auth().token(hs_token(claims(roles=["admin"], admin="admin")))).caller
    assert not caller.reads_all


async def test_an_hmac_token_is_refused_when_only_a_public_key_is_configured() -> None:
    # The classic confusion: HS256 "signed" with the public key as the secret.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = pem(private)
    auth = Authenticator(settings(auth_mode="jwt", jwt_public_key=public_pem))
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims())}"
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    await refused(auth, confused)


# JWT: RS256, ES256, JWKS -------------------------------------------------------------------


def pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    """The public key of `private`, PEM."""
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_rs256_with_a_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(
        settings(auth_mode="jwt", jwt_public_key=pem(rsa_key), jwt_audience=AUDIENCE)
    )
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert (await auth.token(token)).caller.user_id == "alice"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(auth, jwt.encode(claims(), other, algorithm="RS256"))
    # An HS256 token with no JWT_SECRET configured: refused, whatever it was signed with.
    assert "JWT_SECRET" in await refused(auth, hs_token(claims()))


async def test_es256_with_a_public_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator(
        settings(auth_mode="jwt", jwt_public_key=pem(ec_key), jwt_audience=AUDIENCE)
    )
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    assert (await auth.token(token)).caller.user_id == "alice"
    await refused(
        auth, jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    )


async def test_an_asymmetric_token_needs_a_public_key_or_jwks(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), rsa_key, algorithm="RS256")
    assert "JWT_PUBLIC_KEY" in await refused(hs_auth(), token)


class JwksServer:
    """A JWKS document on a local HTTP server, counting how often it is fetched."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def jwk(private: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    key: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**key, "kid": kid, "use": "sig", "alg": "RS256"}


@pytest.fixture
def jwks(rsa_key: rsa.RSAPrivateKey) -> Iterator[JwksServer]:
    with JwksServer([jwk(rsa_key, "key-1")]) as server:
        yield server


async def test_jwks_verifies_a_token_by_its_kid(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = Authenticator(settings(auth_mode="jwt", jwks_url=jwks.url, jwt_audience=AUDIENCE))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "key-1"})
    assert (await auth.token(token)).caller.user_id == "alice"
    assert (await auth.token(token)).caller.user_id == "alice"
    assert jwks.fetches == 1  # the keys are cached


async def test_jwks_refuses_an_unknown_kid(jwks: JwksServer, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(settings(auth_mode="jwt", jwks_url=jwks.url, jwt_audience=AUDIENCE))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "key-2"})
    await refused(auth, token)


async def test_jwks_refuses_a_known_kid_signed_by_another_key(jwks: JwksServer) -> None:
    auth = Authenticator(settings(auth_mode="jwt", jwks_url=jwks.url, jwt_audience=AUDIENCE))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(claims(), other, algorithm="RS256", headers={"kid": "key-1"})
    await refused(auth, token)


async def test_jwks_picks_up_a_rotated_key_after_the_cooldown(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    auth = Authenticator(settings(auth_mode="jwt", jwks_url=jwks.url, jwt_audience=AUDIENCE))
    first = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "key-1"})
    assert (await auth.token(first)).caller.user_id == "alice"
    rotated = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys = [*jwks.keys, jwk(rotated, "key-2")]
    token = jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "key-2"})
    # Within PyJWKClient's cooldown an unknown kid does not make it fetch again: a stream of
    # made-up kids cannot turn the service into a load generator against the IdP.
    await refused(auth, token)
    await refused(auth, jwt.encode(claims(), rotated, algorithm="RS256", headers={"kid": "x"}))
    assert jwks.fetches == 1
    assert auth._jwks is not None
    auth._jwks.cooldown_duration = 0  # as if the cooldown (30 s) had passed
    assert (await auth.token(token)).caller.user_id == "alice"
    assert jwks.fetches == 2


async def test_an_unreachable_jwks_refuses_the_token(rsa_key: rsa.RSAPrivateKey) -> None:
    with JwksServer([]) as server:
        url = server.url
    auth = Authenticator(settings(auth_mode="jwt", jwks_url=url, jwt_audience=AUDIENCE))
    token = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "key-1"})
    await refused(auth, token)


def test_jwt_mode_needs_a_key() -> None:
    with pytest.raises(ValueError, match="JWT_SECRET"):
        settings(auth_mode="jwt")


# JWT: requests and handshakes -------------------------------------------------------------


async def test_a_request_needs_a_bearer_token() -> None:
    auth = hs_auth()
    token = hs_token(claims())
    for headers in (
        {},
        {"authorization": ""},
        {"authorization": token},
        {"authorization": "Basic x"},
    ):
        with pytest.raises(Unauthenticated):
            await auth.request(headers, None)
    identity = await auth.request({"authorization": f"Bearer {token}"}, None)
    assert identity.caller == Caller("alice", scoped=True)
    assert (await auth.request({"authorization": f"bearer {token}"}, "alice")).caller.user_id


async def test_a_user_id_other_than_the_tokens_is_forbidden() -> None:
    with pytest.raises(Forbidden) as caught:
        await hs_auth().request({"authorization": f"Bearer {hs_token(claims())}"}, "bob")
    assert caught.value.status_code == 403


async def test_a_handshake_takes_the_token_from_auth_header_or_query() -> None:
    auth = hs_auth()
    token = hs_token(claims())
    by_auth = await auth.handshake({}, {"token": token})
    by_header = await auth.handshake({"HTTP_AUTHORIZATION": f"Bearer {token}"}, None)
    by_query = await auth.handshake({"QUERY_STRING": f"EIO=4&token={token}"}, None)
    assert by_auth == by_header == by_query
    assert by_auth.caller == Caller("alice", scoped=True)
    for environ, sent in (({}, None), ({}, {}), ({"QUERY_STRING": "userId=alice"}, None)):
        with pytest.raises(Unauthenticated):
            await auth.handshake(environ, sent)
    with pytest.raises(Unauthenticated):
        await auth.handshake({}, {"token": hs_token(claims(exp=int(time.time()) - 3600))})


# Gateway ------------------------------------------------------------------------------------


def gateway(secret: str | None = None) -> Authenticator:
    return Authenticator(settings(auth_mode="gateway", gateway_shared_secret=secret))


async def test_the_gateway_names_the_user_by_query_or_header() -> None:
    auth = gateway()
    assert (await auth.request({}, "alice")).caller == Caller("alice", scoped=True)
    assert (await auth.request({"x-user-id": "alice"}, None)).caller == Caller("alice", scoped=True)
    assert (await auth.request({"x-user-id": "alice"}, "alice")).caller.user_id == "alice"


@pytest.mark.parametrize("user", [None, "", "x" * 201])
async def test_the_gateway_user_is_required(user: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await gateway().request({}, user)
    assert caught.value.status_code == 401


async def test_a_query_user_other_than_the_header_user_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        await gateway().request({"x-user-id": "bob"}, "alice")


@pytest.mark.parametrize(
    ("sent", "holds"),
    [("the-secret", True), ("the-secreT", False), ("", False), (None, False)],
)
async def test_the_shared_secret(sent: str | None, holds: bool) -> None:
    auth = gateway("the-secret")
    headers = {} if sent is None else {"x-gateway-secret": sent}
    if holds:
        assert (await auth.request(headers, "alice")).caller.user_id == "alice"
    else:
        with pytest.raises(Unauthenticated):
            await auth.request(headers, "alice")


async def test_a_gateway_handshake() -> None:
    secret = "the-secret"
    auth = gateway(secret)
    environ = {"QUERY_STRING": "userId=alice", "HTTP_X_GATEWAY_SECRET": secret}
    assert (await auth.handshake(environ, None)).caller == Caller("alice", scoped=True)
    assert (
        await auth.handshake(
            {"HTTP_X_USER_ID": "alice", "HTTP_X_GATEWAY_SECRET": "the-secret"}, None
        )
    ).caller.user_id == "alice"
    with pytest.raises(Unauthenticated):
        await auth.handshake({"QUERY_STRING": "userId=alice"}, None)  # no secret
    with pytest.raises(Unauthenticated):
        await auth.handshake({"HTTP_X_GATEWAY_SECRET": "the-secret"}, None)  # no user


# None ---------------------------------------------------------------------------------------


async def test_mode_none_is_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.presentation.auth"):
        auth = Authenticator(settings(auth_mode="none"))
    assert "AUTH_MODE=none" in caplog.text
    assert not auth.scoped
    assert (await auth.request({}, None)).caller == ANYONE
    assert (await auth.request({}, "alice")).caller == Caller("alice")
    assert (await auth.handshake({}, None)).caller == ANYONE


def test_scoped_modes() -> None:
    assert gateway().scoped
    assert hs_auth().scoped


# Caller -------------------------------------------------------------------------------------


def test_a_scoped_caller_sees_and_changes_only_their_own() -> None:
    alice = Caller("alice", scoped=True)
    assert alice.may_read("alice")
    assert alice.may_change("alice")
    for owner in ("bob", None, ""):
        assert not alice.may_read(owner)
        assert not alice.may_change(owner)
    assert alice.only == "alice"


def test_a_scoped_caller_without_a_user_sees_nothing() -> None:
    nobody = Caller(None, scoped=True)
    assert not nobody.may_read(None)
    assert not nobody.may_change(None)


def test_an_admin_reads_everything_but_changes_only_their_own() -> None:
    admin = Caller("root", scoped=True, reads_all=True)
    for owner in ("root", "bob", None):
        assert admin.may_read(owner)
    assert admin.may_change("root")
    assert not admin.may_change("bob")
    assert not admin.may_change(None)
    assert admin.only is None


def test_without_authentication_user_id_only_narrows() -> None:
    assert ANYONE.may_read("bob")
    assert ANYONE.may_change("bob")
    assert ANYONE.may_change(None)
    assert ANYONE.only is None
    alice = Caller("alice")
    assert alice.may_read("alice")
    assert alice.may_read(None)  # ownerless: everyone's
    assert not alice.may_read("bob")
    assert alice.only == "alice"
