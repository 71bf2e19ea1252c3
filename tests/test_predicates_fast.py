"""The fast path of ``evaluate`` answers exactly as the general path does.

``predicates.evaluate`` answers the statement shapes most rules carry (one
top-level field under ``==``, ``!=``, ``like``, ``in``, ``within`` or an
ordering) without the general path's machinery, and hands everything else to
it. Here both paths judge the same random predicates and arguments, including
type-confused values, ``/..`` paths, missing arguments, odd selectors and
budgets too small to finish.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentguard.predicates import (
    DEFAULT_BUDGET,
    Truth,
    _evaluate,
    _fast,
    admits,
    evaluate,
    restricts,
)

#: ``make hardening`` (AGENTGUARD_HARDENING=1) runs the slow-marked properties here
#: with their full example counts; ``make test`` with a third or so of them.
HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"


class _Text(str):
    """A string subclass: the fast path leaves it to the general path."""


_OPS = ["==", "!=", "<", "<=", ">", ">=", "like", "in", "within"]
_OTHER_OPS = ["not", "and", "or", "exists", "all", "any", "bogus", "", "LIKE"]
_SELECTORS = [".a", ".b", ".a.b", '.["a"]', ".a[0]", ".[0]", "a", ".", "..", ".1x", "", ".a-b"]
_PATHS = ["/srv", "/srv/", "/srv/x", "/srv/../etc", "/..", "/", "/srv/./x", "srv", "/srv\0x", ""]
_STRINGS = ["emea", "EMEA", " emea", "*", "e*", "*a", "\\*", "a\\", "**", "x*y*z", "é", *_PATHS]
_SCALARS = st.one_of(
    st.sampled_from(_STRINGS),
    # Equal to a target but another object: equality must not be identity.
    st.sampled_from(_STRINGS).map(lambda text: "".join(list(text))),
    st.text(max_size=6),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.builds(_Text, st.sampled_from(_STRINGS)),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_STATEMENTS = st.one_of(
    st.tuples(
        st.sampled_from(_OPS + _OTHER_OPS),
        st.one_of(st.sampled_from(_SELECTORS), st.text(max_size=4), _SCALARS),
        _VALUES,
    ).map(list),
    st.tuples(st.sampled_from(_OPS + _OTHER_OPS), st.sampled_from(_SELECTORS)).map(list),
    st.tuples(
        st.sampled_from(_OPS),
        st.sampled_from(_SELECTORS),
        _VALUES,
        st.sampled_from([["case"], ["whitespace"], [], "case"]),
    ).map(list),
    _VALUES,
)
_PREDICATES = st.one_of(
    st.tuples(_STATEMENTS).map(list),
    st.lists(_STATEMENTS, max_size=3),
    _VALUES,
)
_ARGS = st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "c", "0"]), _VALUES, max_size=3),
    _VALUES,
)
_BUDGETS = st.one_of(st.integers(min_value=-1, max_value=6), st.just(DEFAULT_BUDGET))


@pytest.mark.slow
@settings(
    max_examples=3000 if HARDENING else 1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_PREDICATES, _ARGS, _BUDGETS)
def test_the_fast_path_answers_as_the_general_path(predicate: Any, args: Any, budget: int) -> None:
    assert evaluate(predicate, args, budget=budget) is _evaluate(predicate, args, budget)


@pytest.mark.slow
@settings(
    max_examples=2000 if HARDENING else 600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.sampled_from(_OPS),
    st.sampled_from([".a", ".b"]),
    st.one_of(
        st.sampled_from(_STRINGS),
        st.lists(st.sampled_from(_STRINGS), max_size=4),
        st.integers(min_value=-5, max_value=5),
        st.floats(min_value=-5, max_value=5),
    ),
    st.dictionaries(st.sampled_from(["a", "b"]), _SCALARS, max_size=2),
    _BUDGETS,
)
def test_common_statements_agree(op: str, sel: str, target: Any, args: Any, budget: int) -> None:
    """The shapes the fast path is for, drawn densely (most of them answered by it)."""
    predicate = [[op, sel, target]]
    assert evaluate(predicate, args, budget=budget) is _evaluate(predicate, args, budget)


@pytest.mark.parametrize(
    ("statement", "args", "expected"),
    [
        (["==", ".unit", "emea"], {"unit": "emea"}, Truth.TRUE),
        (["==", ".unit", "emea"], {"unit": "apac"}, Truth.FALSE),
        (["!=", ".unit", "emea"], {"unit": "apac"}, Truth.TRUE),
        (["like", ".query", "*"], {"query": "vpn outage"}, Truth.TRUE),
        (["like", ".query", "vpn*age"], {"query": "vpn outage"}, Truth.TRUE),
        (["like", ".query", "vpn*x"], {"query": "vpn outage"}, Truth.FALSE),
        (["in", ".unit", ["emea", "apac"]], {"unit": "apac"}, Truth.TRUE),
        (["in", ".unit", ["emea", "apac"]], {"unit": "amer"}, Truth.FALSE),
        (["within", ".path", "/srv"], {"path": "/srv/data/x"}, Truth.TRUE),
        (["within", ".path", "/srv"], {"path": "/srv/../etc/passwd"}, Truth.FALSE),
        (["within", ".path", "/srv"], {"path": "/.."}, Truth.FALSE),
        (["within", ".path", "/"], {"path": "/.."}, Truth.TRUE),
        (["within", ".path", "/srv"], {"path": "srv/x"}, Truth.UNKNOWN),
        (["within", ".path", "/srv"], {"path": "/srv/x\0"}, Truth.UNKNOWN),
        (["<=", ".amount", 100], {"amount": 99.5}, Truth.TRUE),
        (["<=", ".amount", 100], {"amount": 101}, Truth.FALSE),
        (["==", ".unit", "emea"], {}, Truth.UNKNOWN),
        (["<=", ".amount", 100], {}, Truth.UNKNOWN),
    ],
)
def test_the_fast_path_answers_the_common_shapes(
    statement: list[Any], args: dict[str, Any], expected: Truth
) -> None:
    """These are answered by the fast path itself (not handed on), as the general path does."""
    assert _fast(statement, args, DEFAULT_BUDGET) is expected
    assert _evaluate([statement], args, DEFAULT_BUDGET) is expected
    assert evaluate([statement], args) is expected


@pytest.mark.parametrize(
    ("statement", "args"),
    [
        # Type-confused values: a string under an ordering, a list or a number under
        # ==, a string subclass, booleans, NaN: all left to the general path.
        (["<=", ".amount", 100], {"amount": "5000"}),
        (["<=", ".amount", 100], {"amount": True}),
        (["<=", ".amount", 100], {"amount": math.nan}),
        (["<=", ".amount", 100], {"amount": math.inf}),
        (["==", ".env", "prod"], {"env": ["prod"]}),
        (["==", ".env", "prod"], {"env": _Text("prod")}),
        (["==", ".n", 5], {"n": 5}),
        (["like", ".q", "*"], {"q": 5}),
        (["in", ".unit", ["emea", 5]], {"unit": "emea"}),
        (["within", ".path", "/srv"], {"path": ["/srv"]}),
        # Nested selectors, modifiers, an operator it does not answer, a tiny budget.
        (["==", ".a.b", "x"], {"a": {"b": "x"}}),
        (["==", ".env", "prod", ["case"]], {"env": "PROD"}),
        (["exists", ".env", "x"], {"env": "prod"}),
    ],
)
def test_the_fast_path_hands_on_what_it_does_not_cover(
    statement: list[Any], args: dict[str, Any]
) -> None:
    assert _fast(statement, args, DEFAULT_BUDGET) is None
    assert evaluate([statement], args) is _evaluate([statement], args, DEFAULT_BUDGET)


def test_a_budget_too_small_is_left_to_the_general_path() -> None:
    """The general path runs out on these (unknown); the fast path must not answer them."""
    like = [["like", ".q", "a*b*c"]]  # 1 statement + 3 pieces
    assert _fast(like[0], {"q": "abc"}, 3) is None
    assert evaluate(like, {"q": "abc"}, budget=3) is Truth.UNKNOWN
    assert evaluate(like, {"q": "abc"}, budget=4) is Truth.TRUE
    one_of = [["in", ".u", ["x", "y", "z"]]]  # 1 statement + up to 3 comparisons
    assert evaluate(one_of, {"u": "z"}, budget=3) is Truth.UNKNOWN
    assert evaluate(one_of, {"u": "z"}, budget=4) is Truth.TRUE
    assert evaluate([["==", ".u", "x"]], {"u": "x"}, budget=1) is Truth.UNKNOWN


def test_restrictive_rules_still_apply_unless_definitely_false() -> None:
    """A deny or approval rule applies to calls the fast path cannot rule out."""
    deny = [["==", ".env", "prod"]]
    assert restricts(deny, {"env": "prod"})
    assert restricts(deny, {})  # missing: cannot tell, so it applies
    assert restricts(deny, {"env": ["prod"]})  # another kind: cannot tell
    assert not restricts(deny, {"env": "dev"})
    limit = [["<=", ".amount", 100]]
    assert restricts([[">", ".amount", 100]], {"amount": "5000"})
    assert not admits(limit, {"amount": "50"})
    assert not admits([["within", ".path", "/srv"]], {"path": "/srv/../etc/passwd"})


class _Hostile:
    """A key equal in hash to a field name whose comparison raises."""

    def __hash__(self) -> int:
        return hash("amount")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("boom")


def test_an_argument_that_breaks_comparison_is_unknown_on_both_paths() -> None:
    """``evaluate`` never raises: what breaks the fast path goes to the general path."""
    args = {_Hostile(): 5}
    predicate = [["<=", ".amount", 100]]
    assert _evaluate(predicate, args, 100) is Truth.UNKNOWN
    assert evaluate(predicate, args) is Truth.UNKNOWN
    assert restricts(predicate, args)
