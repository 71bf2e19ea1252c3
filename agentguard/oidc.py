"""What agentguard's two clients of identity providers share.

The approval page's single sign-on (:mod:`agentguard.web_sso`, ID tokens) and the
MCP proxy's bearer-token validation (``agentguard_mcp.oauth``, access tokens)
accept the same signature algorithms, the same provider URLs and pick the
verification key from a JWKS the same way; each keeps its own fetching (one
blocking, one async) and its own errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import jwt

__all__ = ["ALGORITHMS", "KeyRefused", "is_provider_url", "signing_keys", "verification_key"]

#: Asymmetric signature algorithms accepted from identity providers (never ``none``, never HS*).
ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class KeyRefused(ValueError):
    """A JWK cannot verify a token signed with the algorithm its header names.

    Attributes:
        reason: ``algorithm_not_allowed`` (the key's type or declared ``alg``
            does not fit) or ``unknown_key`` (the key cannot be used).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_provider_url(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an https URL with a host, or http on a loopback address.

    A user part, a fragment, spaces and control characters are refused too: such
    a URL is either a mistake or an attempt to smuggle something into a header.
    """
    if not isinstance(value, str) or not all(" " < c < "\x7f" for c in value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.username is not None or parts.fragment:
        return False
    return (parts.scheme == "https" and bool(parts.hostname)) or (
        parts.scheme == "http" and _loopback(parts.hostname)
    )


def signing_keys(document: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The signature keys of a JWKS document by ``kid``; ``None`` when it has no key list.

    Keys without a text ``kid``, for encryption, or holding private parts (a
    provider's mistake) are left out.
    """
    keys = document.get("keys")
    if not isinstance(keys, list):
        return None
    return {
        jwk["kid"]: jwk
        for jwk in keys
        if isinstance(jwk, dict)
        and isinstance(jwk.get("kid"), str)
        and jwk.get("use", "sig") == "sig"
        and "d" not in jwk
    }


def verification_key(jwk: Mapping[str, Any], algorithm: str) -> Any:
    """The public key of ``jwk`` for ``algorithm`` (one of :data:`ALGORITHMS`).

    Raises:
        KeyRefused: the key's type or declared ``alg`` does not fit ``algorithm``
            (a token cannot pick how its key is used), or the key is unusable.
    """
    if jwk.get("kty") != _KEY_TYPES.get(algorithm[:2]):
        raise KeyRefused("algorithm_not_allowed", f"algorithm {algorithm} does not fit the key")
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        raise KeyRefused(
            "algorithm_not_allowed", f"the key is for {declared}, the token says {algorithm}"
        )
    try:
        return jwt.PyJWK(dict(jwk), algorithm=algorithm).key
    except jwt.PyJWTError:
        raise KeyRefused("unknown_key", "the provider's key cannot be used") from None
