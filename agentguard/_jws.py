"""Compact JWS signing and verification: the only module that imports PyJWT.

Every token type has its own ``typ`` header, checked on every decode because
PyJWT does not. The algorithm is pinned to EdDSA. Time claims are checked by the
callers against an injected clock, so only the signature is verified here.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

import jwt

from agentguard.canonical import canonical_digest, canonical_json, compiled_encoder
from agentguard.decision import Reason
from agentguard.errors import DeniedError, TokenFormatError
from agentguard.keys import Identity, KeySet, Principal, b64url_decode, b64url_encode

__all__ = [
    "MAX_TOKEN_BYTES",
    "canonical_digest",
    "canonical_json",
    "link_id",
    "peek",
    "sign",
    "sign_call",
    "verify",
]

#: Upper bound for one compact JWS; delegation strings have their own cap.
MAX_TOKEN_BYTES = 8192
_ALGORITHMS = ["EdDSA"]


def link_id(token: str) -> str:
    """The id of a grant: base64url SHA-256 of its ASCII JWS."""
    return b64url_encode(hashlib.sha256(token.encode("ascii")).digest())


def sign(claims: dict[str, Any], identity: Identity, typ: str) -> str:
    """Sign ``claims`` as a compact JWS with the identity's key and header ``typ``."""
    return jwt.encode(
        claims,
        identity.private_key,
        algorithm="EdDSA",
        headers={"typ": typ, "kid": identity.kid},
    )


#: ``json.dumps(..., separators=(",", ":"))`` as PyJWT calls it, without building an
#: encoder per call (no cycle check: the claims are a flat dict built by the caller).
_COMPACT = compiled_encoder(json.JSONEncoder(separators=(",", ":"), check_circular=False))


@lru_cache(maxsize=256)
def _encoded_header(kid: str, typ: str) -> str:
    # PyJWT's header for these arguments: sorted keys, no whitespace.
    header = json.dumps({"alg": "EdDSA", "kid": kid, "typ": typ}, separators=(",", ":"))
    return b64url_encode(header.encode("ascii"))


def sign_call(claims: dict[str, Any], identity: Identity, typ: str) -> str:
    """:func:`sign` without PyJWT's encoder, for the token minted on every call.

    PyJWT's encoder cost as much as the signature itself. This writes the same
    bytes PyJWT writes for the same arguments (its JSON: ASCII, no whitespace,
    sorted header, claims in the given order; Ed25519 signatures are
    deterministic), signed with :meth:`Identity.sign` (libsodium when
    installed); ``tests/test_jws_sign.py`` holds the two to that.

    Raises:
        TypeError: ``iss`` is present and not a string (as PyJWT refuses it).
    """
    if "iss" in claims and not isinstance(claims["iss"], str):
        raise TypeError("Issuer (iss) must be a string.")
    payload = _COMPACT(claims).encode("utf-8")
    signing_input = f"{_encoded_header(identity.kid, typ)}.{b64url_encode(payload)}"
    signature = identity.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def _segments(token: object, typ: str) -> list[str]:
    if not isinstance(token, str):
        raise TokenFormatError(f"{typ} token must be a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenFormatError(f"{typ} token is longer than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise TokenFormatError(f"{typ} token contains non-ASCII characters")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenFormatError(f"{typ} token is not a compact JWS")
    return parts


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); json.loads accepts them by default.
    raise ValueError(f"{name} is not JSON")


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of two equal keys, other parsers the first: a signed
    # token that repeats a key means different things to different verifiers.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey("duplicate key")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        # One shared decoder (json.loads builds a new one per call when given
        # parse_constant), fed text: JWS JSON is UTF-8 (RFC 7515), no sniffing.
        value = _DECODER.decode(b64url_decode(segment).decode("utf-8"))
    except _DuplicateKey as exc:
        raise TokenFormatError(f"token {what} repeats a JSON key (duplicate)") from exc
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise TokenFormatError(f"token {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise TokenFormatError(f"token {what} is not a JSON object")
    return value


@lru_cache(maxsize=256)
def _header(segment: str) -> dict[str, Any]:
    # One issuer's headers repeat verbatim (alg, typ, kid): decode each once.
    # Callers get a copy (see peek), so the cached dict is never mutated.
    return _json_object(segment, "header")


def peek(token: object, typ: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a token's header and claims WITHOUT verifying the signature.

    Checks the shape, the size cap, ``alg`` and ``typ``. The result must not be
    trusted until :func:`verify` succeeds.

    Raises:
        TokenFormatError: the token is malformed or of another type.
    """
    parts = _segments(token, typ)
    header = dict(_header(parts[0]))
    if header.get("alg") != "EdDSA":
        raise TokenFormatError("token algorithm is not EdDSA", reason=Reason.BAD_ALGORITHM)
    if header.get("typ") != typ:
        raise TokenFormatError(f"token is not of type {typ}", reason=Reason.WRONG_TOKEN_TYPE)
    if "crit" in header:
        raise TokenFormatError("token has critical header parameters we do not understand")
    claims = _json_object(parts[1], "payload")
    try:
        b64url_decode(parts[2])
    except ValueError as exc:
        raise TokenFormatError("token signature is not base64url") from exc
    return header, claims


def verify_signature(token: str, key: Principal, typ: str) -> None:
    """Check only the Ed25519 signature of a token already accepted by :func:`peek`.

    The header was checked to say ``alg: EdDSA`` and the right ``typ``; the
    signature is verified over the exact signing input with the given key.
    PyJWT's own decoder would parse both segments again (and validates base64
    character by character), which dominated cold verification.

    Raises:
        DeniedError: (reason ``bad_signature``) the signature does not verify.
    """
    head, _, signature = token.rpartition(".")
    try:
        raw = b64url_decode(signature)
    except ValueError as exc:
        raise TokenFormatError(f"{typ} signature is not base64url") from exc
    if len(raw) != 64 or not key.verify(raw, head.encode("ascii")):
        raise DeniedError(f"{typ} signature does not verify", reason=Reason.BAD_SIGNATURE)


def verify(token: str, key: Principal, typ: str) -> dict[str, Any]:
    """Verify the shape, ``typ`` and signature of a token with ``key``; return its claims.

    Raises:
        TokenFormatError: the token is malformed or of another type.
        DeniedError: (reason ``bad_signature``) the signature does not verify.
    """
    _, claims = peek(token, typ)
    verify_signature(token, key, typ)
    return claims


def verify_with(token: str, keys: KeySet, typ: str) -> dict[str, Any]:
    """Verify a token signed by one of ``keys``: the key its header names, valid at its ``iat``.

    The ``iat`` that chooses the key is the signed one: a token whose claims were changed
    fails the signature check that follows.

    Raises:
        TokenFormatError: the token is malformed or of another type.
        DeniedError: (reason ``bad_signature``) the key is not trusted, was not
            valid when the token claims to have been signed, or the signature
            does not verify.
    """
    header, claims = peek(token, typ)
    key = keys.key_for(header.get("kid"), claims.get("iat"))
    verify_signature(token, key, typ)
    return claims
