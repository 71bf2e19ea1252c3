"""Canonical JSON: the fast path writes exactly what the RFC 8785 reference writes.

Every digest and signature covers these bytes, so one differing byte would
make a call token or an audit record unverifiable elsewhere.
"""

from __future__ import annotations

import enum
import json
import math
import random
import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard import canonical
from agentguard.canonical import _plain, canonical_json, compiled_encoder


def _reference(value: Any) -> bytes | None:
    """What ``rfc8785`` writes, or ``None`` when it refuses the value."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError):
        return None


def _ours(value: Any) -> bytes | None:
    try:
        return canonical_json(value)
    except ValueError:
        return None


_texts = st.text(
    # Every code point, lone surrogates (refused) and controls (escaped) included.
    alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
    max_size=12,
)
_numbers = st.one_of(
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-8, max_value=1e22),
    st.sampled_from([0.0, -0.0, 1.0, 1e-4, 9.999e-5, 1e16, 1e21, 2.0**53, 0.1, 1 / 3]),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _texts)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_texts, inner, max_size=4),
        st.dictionaries(st.sampled_from(["a", "b", "\U0001f600", "\ue000", "é"]), inner),
    ),
    max_leaves=20,
)


@given(_values)
@settings(max_examples=600, deadline=None)
def test_fast_path_matches_the_reference(value: Any) -> None:
    """Same bytes as rfc8785 for any JSON-like value, or refused by both."""
    assert _ours(value) == _reference(value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": [1, 2.5, 'x\u2028\x7f\x00\x1f"\\'], "c": None, "d": True},
        {"time": 1718000000.123456, "duration_ms": 0.0421, "n": -(2**53) + 1},
        [0.0001, 123456789012345.6, -0.5, 1e-4 * 3],
    ],
)
def test_plain_values_take_the_fast_path(value: Any) -> None:
    """Ordinary records are encoded by the C encoder, and still match the reference."""
    assert _plain(value)
    assert canonical_json(value) == rfc8785.dumps(value)


class _Color(enum.StrEnum):
    RED = "red"


@pytest.mark.parametrize(
    "value",
    [
        {"t": 1700000000.0},  # integer-valued float: RFC 8785 writes 1700000000
        {"f": 1e-05},
        {"f": 1e16},
        {"n": 2**53},
        {"\U0001f600": 1, "\ue000": 2},  # UTF-16 order differs from code point order
        {1: "int key"},
        {"e": _Color.RED},
        {"x": float("nan")},
    ],
)
def test_other_values_go_to_the_reference(value: Any) -> None:
    """Values outside the fast path's exact domain are the reference's to encode or refuse."""
    assert not _plain(value)
    assert _ours(value) == _reference(value)


class _Int(enum.IntEnum):
    ONE = 1


class _Float(float):
    pass


class _List(list[Any]):
    pass


#: Values at the fast path's edges, and whether it admits each alone.
_EDGES: list[tuple[Any, bool]] = [
    (0.0, False),  # RFC 8785 writes 0, orjson 0.0
    (-0.0, False),  # RFC 8785 writes 0, orjson -0.0
    (1.0, False),
    (-1.0, False),
    (0.5, True),
    (-0.5, True),
    (1e-4, True),
    (-1e-4, True),
    (math.nextafter(1e-4, 0), False),
    (9.999e-5, False),
    (123456789012345.6, True),
    (math.nextafter(1e16, 0), False),  # integral
    (1e16, False),
    (-1e16, False),
    (1e21, False),
    (5e-324, False),
    (-5e-324, False),
    (float("nan"), False),
    (float("inf"), False),
    (-float("inf"), False),
    (2**53 - 1, True),
    (-(2**53) + 1, True),
    (2**53, False),
    (-(2**53), False),
    (2**64, False),
    (0, True),
    (True, True),
    (False, True),
    (None, True),
    ("", True),
    ("\ud800", True),  # admitted; orjson refuses it, then so does the reference
    (_Int.ONE, False),
    (_Float(0.5), False),
    (_Color.RED, False),
    (_List(["a"]), False),
    (("a", 0.5), True),
    (["a", 1.0], False),
    ({"k": 0.5}, True),
    ({"k": 1e16}, False),
]


@pytest.mark.parametrize(("edge", "admitted"), _EDGES, ids=[repr(x) for x, _ in _EDGES])
def test_object_members_are_tested_as_values_alone(edge: Any, admitted: bool) -> None:
    """An object's members are checked inline: the same answer, and bytes, as for the value alone.

    Every float and integer edge (signed zero, integral floats, the exponent
    thresholds, the smallest subnormal, NaN and the infinities, the IEEE-safe
    integer limits), booleans, subclasses and nested containers.
    """
    assert _plain(edge) is admitted
    for wrapped in ({"k": edge}, {"a": "x", "k": edge, "z": None}, {"k": [edge]}, [edge], (edge,)):
        assert _plain(wrapped) is admitted
        assert _ours(wrapped) == _reference(wrapped)


def test_lone_surrogate_is_refused() -> None:
    """A lone surrogate is not UTF-8: refused, as by the reference."""
    with pytest.raises(ValueError, match="not canonical JSON"):
        canonical_json({"s": "\ud800"})
    assert _reference({"s": "\ud800"}) is None


# -- the plain-value encoders: orjson (the ``fast`` extra) and the standard library's ----


def _both_plain_encoders(value: Any) -> tuple[bytes, bytes]:
    return canonical._dumps(value), canonical._encode_bytes(value)


def test_the_fast_extra_encodes_plain_values() -> None:
    """With the ``fast`` extra installed (as in this project's environment), orjson serves."""
    pytest.importorskip("orjson")
    assert canonical._dumps is not canonical._encode_bytes


@given(_values)
@settings(max_examples=600, deadline=None)
def test_both_plain_encoders_write_the_same_bytes(value: Any) -> None:
    """Whichever plain encoder is installed, a plain value gets the reference's bytes."""
    if not _plain(value):
        return
    try:
        fast, stdlib = _both_plain_encoders(value)
    except canonical._FAST_ERRORS:
        assert _reference(value) is None  # a lone surrogate: refused by the reference too
        return
    assert fast == stdlib == _reference(value)


def _float_samples() -> list[float]:
    """Floats the fast path admits, across every decade it covers and at its edges."""
    rnd = random.Random(8785)  # noqa: S311 - reproducible samples, not secrets
    samples = [rnd.uniform(-1e16, 1e16) for _ in range(2000)]
    samples += [10 ** rnd.uniform(-4, 16) for _ in range(4000)]
    samples += [struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0] for _ in range(4000)]
    for exponent in range(-4, 17):
        for digits in (1.0, 1.5, 3.0, 7.0, 9.99999, 9.999999999999998):
            x = digits * 10.0**exponent
            samples += [x, -x, math.nextafter(x, 0), math.nextafter(x, math.inf)]
    return [x for x in samples if _plain(x)]


def test_both_plain_encoders_write_floats_as_the_reference() -> None:
    """Shortest round-trip digits, no exponent, as ECMAScript prints them."""
    samples = _float_samples()
    assert len(samples) > 4000
    for x in samples:
        fast, stdlib = _both_plain_encoders(x)
        assert fast == stdlib == rfc8785.dumps(x), x


def test_nesting_the_fast_encoder_refuses_goes_to_the_reference() -> None:
    """orjson stops at 254 levels; deeper plain values are the reference's to write."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    assert _plain(deep)
    assert canonical_json(deep) == rfc8785.dumps(deep)


# -- compiled_encoder: the C encoder built once writes what JSONEncoder.encode writes ----


@given(_values)
@settings(max_examples=300, deadline=None)
def test_compiled_encoder_writes_what_the_encoder_writes(value: Any) -> None:
    for options in (
        {"ensure_ascii": False, "sort_keys": True, "separators": (",", ":")},
        {"separators": (",", ":")},  # PyJWT's json.dumps, as _jws signs call tokens
    ):
        encoder = json.JSONEncoder(check_circular=False, **options)
        try:
            expected: str | type[BaseException] = encoder.encode(value)
        except (ValueError, TypeError, RecursionError) as exc:
            expected = type(exc)
        try:
            got: str | type[BaseException] = compiled_encoder(encoder)(value)
        except (ValueError, TypeError, RecursionError) as exc:
            got = type(exc)
        assert got == expected


def test_compiled_encoder_falls_back_where_it_cannot_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    circular = json.JSONEncoder()  # checks for cycles: keeps its own encode
    assert compiled_encoder(circular) == circular.encode
    indented = json.JSONEncoder(indent=2, check_circular=False)
    assert compiled_encoder(indented) == indented.encode
    plain = json.JSONEncoder(check_circular=False)
    monkeypatch.setattr(json.encoder, "c_make_encoder", None)  # no C accelerator
    assert compiled_encoder(plain) == plain.encode

    def other_signature(*args: Any) -> Any:
        raise TypeError("takes 10 arguments")

    monkeypatch.setattr(json.encoder, "c_make_encoder", other_signature)
    assert compiled_encoder(plain) == plain.encode


def test_compiled_encoder_refuses_what_the_encoder_refuses() -> None:
    encode = compiled_encoder(json.JSONEncoder(allow_nan=False, check_circular=False))
    with pytest.raises(ValueError, match="Out of range float"):
        encode({"x": float("nan")})
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()})
    assert encode('a\u2028"b') == json.dumps('a\u2028"b')
