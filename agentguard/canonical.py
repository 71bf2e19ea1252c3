"""Canonical JSON (RFC 8785) and its digest: what every signature and hash covers."""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from agentguard.keys import b64url_encode

__all__ = ["canonical_digest", "canonical_json"]


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``.

    Raises:
        ValueError: the value is not representable in canonical JSON (NaN,
            non-string keys, integers beyond IEEE double range, foreign types).
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"value is not canonical JSON: {type(exc).__name__}") from exc


def canonical_digest(value: Any) -> str:
    """Base64url SHA-256 of the RFC 8785 canonical JSON of ``value``.

    Raises:
        ValueError: see :func:`canonical_json`.
    """
    return b64url_encode(hashlib.sha256(canonical_json(value)).digest())
