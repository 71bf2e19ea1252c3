"""``redact`` gives what its straightforward form gives, for any value and any field names.

The guard redacts every audit record's arguments; the function remembers the
lowercased names and copies plain values inline, which must change nothing:
masking at any depth and case, the depth and size bounds, subclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.redaction import REDACTED, redact


def _reference(value: Any, fields: Iterable[str], depth: int = 0) -> Any:
    """The redaction rules written out plainly (the function as it was before)."""
    names = {f.lower() for f in fields}

    def walk(value: Any, depth: int) -> Any:
        if depth > 16:
            return "[too deep]"
        if isinstance(value, Mapping):
            return {
                str(k): (REDACTED if str(k).lower() in names else walk(v, depth + 1))
                for k, v in list(value.items())[:200]
            }
        if isinstance(value, list | tuple):
            return [walk(v, depth + 1) for v in value[:200]]
        if isinstance(value, str) and len(value) > 1000:
            return value[:1000] + "...[truncated]"
        return value

    return walk(value, depth)


class _Text(str):
    pass


class _Number(int):
    pass


_keys = st.one_of(
    st.sampled_from(["password", "Token", "API_KEY", "query", "n", "1"]),
    st.text(max_size=6),
    st.integers(0, 3),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["x" * 1000, "y" * 1001, _Text("sub"), _Number(5), _Text("z" * 1200)]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(_keys, inner, max_size=4),
    ),
    max_leaves=25,
)


@given(_values, st.lists(st.sampled_from(["password", "TOKEN", "api_key", "n", "x"]), max_size=3))
@settings(max_examples=400, deadline=None)
def test_redact_equals_the_plain_rules(value: Any, fields: list[str]) -> None:
    assert redact(value, fields) == _reference(value, fields)
    # Names given as a tuple, a generator or a set: the same answer each time.
    assert redact(value, tuple(fields)) == _reference(value, fields)
    assert redact(value, (f for f in fields)) == _reference(value, fields)
    assert redact(value, set(fields)) == _reference(value, fields)


@pytest.mark.parametrize("levels", [14, 15, 16, 17, 18])
def test_the_depth_bound_holds_for_plain_values_at_every_level(levels: int) -> None:
    """A plain value right at the bound is kept; one level deeper it is cut."""
    for leaf in ("s", 5, 2.5, None, True, "x" * 1001):
        deep: Any = leaf
        for _ in range(levels):
            deep = {"k": deep}
        assert redact(deep, ["password"]) == _reference(deep, ["password"])
        assert redact(deep, ["password"], depth=3) == _reference(deep, ["password"], depth=3)


def test_an_unhashable_field_name_is_refused_as_before() -> None:
    with pytest.raises((TypeError, AttributeError)):
        _reference({"a": 1}, [["password"]])  # type: ignore[list-item]
    with pytest.raises((TypeError, AttributeError)):
        redact({"a": 1}, [["password"]])  # type: ignore[list-item]
