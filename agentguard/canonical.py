"""Canonical JSON (RFC 8785) and its digest: what every signature and hash covers.

The ``rfc8785`` package is the reference; it is pure Python and dominated the
cost of a guarded call (an audit record is canonicalised per decision and per
completion). Values made only of the plain JSON types, in the ranges where
Python's own JSON encoder writes exactly what RFC 8785 prescribes, are
encoded by orjson (the ``fast`` extra) or, without it, the standard library's
C encoder instead; anything else goes to ``rfc8785``.
``tests/test_canonical.py`` checks that all three agree byte for byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

import rfc8785

from agentguard.keys import b64url_encode

try:  # the ``fast`` extra: writes plain values as the C encoder below does, 8x faster
    import orjson
except ImportError:  # pragma: no cover - the standard library's encoder serves
    orjson = None  # type: ignore[assignment]

__all__ = ["canonical_digest", "canonical_json"]

#: RFC 8785 numbers are IEEE doubles: integers beyond this are refused.
_INT_LIMIT = 2**53 - 1


def compiled_encoder(encoder: json.JSONEncoder) -> Callable[[Any], str]:
    """``encoder.encode`` with the C encoder built once instead of on every call.

    :meth:`json.JSONEncoder.encode` builds a new C encoder per call, which cost
    about as much as encoding a small object. Built once here with the same
    settings (the C encoder holds no state between calls when it does not
    check for cycles); where there is no C encoder, or ``encoder`` is set up in
    a way this does not cover, ``encoder.encode`` itself is returned.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or encoder.indent is not None or encoder.check_circular:
        return encoder.encode
    strings = (
        json.encoder.encode_basestring_ascii
        if encoder.ensure_ascii
        else json.encoder.encode_basestring
    )
    try:
        compiled = make(
            None,
            encoder.default,
            strings,
            None,
            encoder.key_separator,
            encoder.item_separator,
            encoder.sort_keys,
            encoder.skipkeys,
            encoder.allow_nan,
        )
    except TypeError:  # another interpreter's signature: the documented path
        return encoder.encode

    def encode(value: Any) -> str:
        return "".join(compiled(value, 0))

    return encode


# Sorted keys, no whitespace, UTF-8 as is: for plain values this is RFC 8785.
# Python's JSON string escapes are ECMAScript's (\b \t \n \f \r, \u00xx for the
# other controls, lowercase hex), and so are rfc8785's.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=False
)
_encode = compiled_encoder(_ENCODER)


def _encode_bytes(value: Any) -> bytes:
    return _encode(value).encode("utf-8")


#: The plain-value encoder: orjson when installed (sorted keys, compact, UTF-8 as is;
#: for the values :func:`_plain` admits it writes the same bytes as the standard
#: library's encoder above, which ``tests/test_canonical.py`` checks), else that one.
#: Either refuses what it cannot write (lone surrogates; orjson also nesting beyond
#: 254 levels): the reference then decides.
if orjson is not None:
    _dumps: Callable[[Any], bytes] = functools.partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)
    _FAST_ERRORS: tuple[type[Exception], ...] = (
        UnicodeEncodeError,
        RecursionError,
        orjson.JSONEncodeError,
    )
else:  # pragma: no cover - exercised where orjson is not installed
    _dumps = _encode_bytes
    _FAST_ERRORS = (UnicodeEncodeError, RecursionError)


def _plain(value: Any) -> bool:
    """Whether the C encoder writes ``value`` exactly as RFC 8785 does.

    Exact types only (subclasses go to the reference). Object keys must be
    ASCII: Python sorts by code point, RFC 8785 by UTF-16 code unit, and the two
    orders differ only beyond ASCII. Integers must be IEEE-safe (the reference
    refuses others). Floats must print without exponent and with a fraction:
    there ``repr`` is ECMAScript's shortest round-trip form; ``1.0`` (RFC 8785:
    ``1``), ``1e-05`` or ``1e+16`` are not.

    Strings, null, booleans, floats, integers and lists of strings are tested
    inline in an object's values (an audit record is mostly made of them): a
    call costs more than the test. Each inline test is the one a value of that
    type meets on its own, below.
    """
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                return False
            kind = type(item)
            if kind is str or item is None or kind is bool:
                continue
            if kind is float:
                # NaN and the infinities fail the range test.
                if not 1e-4 <= abs(item) < 1e16 or item.is_integer():
                    return False
            elif kind is list:
                for element in item:
                    if type(element) is not str and not _plain(element):
                        return False
            elif kind is int:
                if not -_INT_LIMIT <= item <= _INT_LIMIT:
                    return False
            elif not _plain(item):
                return False
        return True
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        integer: int = value
        return -_INT_LIMIT <= integer <= _INT_LIMIT
    if kind is list or kind is tuple:
        return all(type(element) is str or _plain(element) for element in value)
    if kind is float:
        number: float = value
        return 1e-4 <= abs(number) < 1e16 and not number.is_integer()
    return False


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``.

    Raises:
        ValueError: the value is not representable in canonical JSON (NaN,
            non-string keys, integers beyond IEEE double range, foreign types).
    """
    try:
        if _plain(value):
            # Lone surrogates fail to encode here, as in the reference.
            return _dumps(value)
    except _FAST_ERRORS:
        pass
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
