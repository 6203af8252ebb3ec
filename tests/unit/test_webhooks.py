"""The pure parts of webhooks: signatures, the headers kept, the body as input."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest

from orchestrator.application.webhooks import (
    SIGNATURE_TOLERANCE_S,
    SignatureRejected,
    parse_body,
    safe_headers,
    token_digest,
    verify_signature,
)
from orchestrator.domain.errors import ValidationFailed

SECRET = "unit-secret-0123456789"
BODY = b'{"action": "opened"}'
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


def hex_hmac(message: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_a_good_signature_gives_its_digest() -> None:
    digest = hex_hmac(BODY)
    assert verify_signature(SECRET, BODY, f"sha256={digest}", None, NOW) == digest
    assert verify_signature(SECRET, BODY, f"sha256={digest.upper()}", None, NOW) == digest


@pytest.mark.parametrize(
    ("signature", "why"),
    [
        (None, "send X-Signature-256"),
        ("sha256=abc", "64 hex digits"),
        (hex_hmac(BODY), "sha256= followed by"),
        (f"sha1={hex_hmac(BODY)}", "sha256= followed by"),
        (f"sha256={hex_hmac(BODY, 'another-secret-entirely')}", "does not match"),
        (f"sha256={hex_hmac(BODY + b' ')}", "does not match"),
    ],
    ids=["missing", "short", "no prefix", "sha1", "other secret", "other body"],
)
def test_a_bad_signature_is_rejected_saying_why(signature: str | None, why: str) -> None:
    with pytest.raises(SignatureRejected, match=why):
        verify_signature(SECRET, BODY, signature, None, NOW)


def test_a_timestamp_is_signed_with_the_body_and_must_be_near_now() -> None:
    sent = int(NOW.timestamp()) - 10
    signed = f"sha256={hex_hmac(f'{sent}.'.encode() + BODY)}"
    assert verify_signature(SECRET, BODY, signed, str(sent), NOW)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify_signature(SECRET, BODY, f"sha256={hex_hmac(BODY)}", str(sent), NOW)
    with pytest.raises(SignatureRejected, match="does not match"):
        verify_signature(SECRET, BODY, signed, str(sent + 1), NOW)
    for off in (SIGNATURE_TOLERANCE_S + 1, -SIGNATURE_TOLERANCE_S - 1):
        stale = int(NOW.timestamp()) - off
        stale_signed = f"sha256={hex_hmac(f'{stale}.'.encode() + BODY)}"
        with pytest.raises(SignatureRejected, match="at most 300 s"):
            verify_signature(SECRET, BODY, stale_signed, str(stale), NOW)
    with pytest.raises(SignatureRejected, match="Unix time"):
        verify_signature(SECRET, BODY, signed, "yesterday", NOW)


def test_only_safe_headers_are_kept() -> None:
    sent = [
        ("Content-Type", "application/json"),
        ("User-Agent", "curl/8"),
        ("X-GitHub-Event", "push"),
        ("X-Event-Type", "created"),
        ("X-Custom", "a"),
        ("x-custom", "b"),
        ("Authorization", "Bearer t"),
        ("Cookie", "c=1"),
        ("Proxy-Authorization", "Basic x"),
        ("X-Signature-256", "sha256=..."),
        ("X-Signature-Timestamp", "1"),
        ("X-Hub-Signature", "sha1=..."),
        ("X-Api-Key", "k"),
        ("X-Auth-Token", "t"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Real-IP", "10.0.0.1"),
        ("X-Gateway-Secret", "g"),
        ("X-User-Id", "u"),
        ("X-CSRF-Token", "t"),
        ("Host", "example.com"),
        ("Accept", "*/*"),
    ]
    assert safe_headers(sent) == {
        "content-type": "application/json",
        "user-agent": "curl/8",
        "x-github-event": "push",
        "x-event-type": "created",
        "x-custom": "a, b",
    }


def test_the_body_is_json_for_a_json_type_else_text() -> None:
    assert parse_body(b'{"a": [1, 2]}', "application/json; charset=utf-8") == {"a": [1, 2]}
    assert parse_body(b'{"a": 1}', "application/vnd.github+json") == {"a": 1}
    assert parse_body(b'{"a": 1}', "text/plain") == '{"a": 1}'
    assert parse_body(b"a=1&b=2", None) == "a=1&b=2"
    assert parse_body(b"\xff\xfeok", "application/octet-stream") == "\ufffd\ufffdok"
    assert parse_body(b"", "application/json") is None
    for malformed in (b'{"a": ', b"NaN", b"{'a': 1}"):
        with pytest.raises(ValidationFailed, match="not valid JSON"):
            parse_body(malformed, "application/json")


def test_a_token_is_stored_as_its_sha256() -> None:
    assert token_digest("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(token_digest("\udcff")) == 64  # any path text hashes, even a lone surrogate
