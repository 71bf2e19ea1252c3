"""Tests for agentguard.predicates: the argument predicate language."""

from __future__ import annotations

import math
import posixpath
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentguard import predicates
from agentguard.errors import AgentGuardError, PredicateError
from agentguard.predicates import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_STRING,
    Truth,
    compile_predicate,
    describe,
    evaluate,
    parse_selector,
    validate_predicate,
)


def judge(statement: list[Any], args: Any) -> Truth:
    """Judge one canonical statement after validating it, as tokens do."""
    return evaluate(validate_predicate([statement]), args)


def holds(statement: list[Any], args: Any) -> bool:
    """Whether one statement is definitely true (what a granting rule needs)."""
    return judge(statement, args) is Truth.TRUE


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and every name in it exists."""
    assert predicates.__all__ == sorted(predicates.__all__)
    for name in predicates.__all__:
        assert hasattr(predicates, name)


def test_predicate_error_is_a_value_error() -> None:
    with pytest.raises(PredicateError) as info:
        compile_predicate(42)
    assert isinstance(info.value, AgentGuardError)
    assert isinstance(info.value, ValueError)
    assert info.value.path == "$"


# --- comparison operators --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "arg", "expected"),
    [
        ("emea", "emea", True),
        ("emea", "EMEA", False),
        (1, 1, True),
        (1, 1.0, True),
        (1.5, 1.5, True),
        (1, True, False),
        (True, 1, False),
        (0, False, False),
        (False, 0, False),
        (True, True, True),
        (None, None, True),
        (None, 0, False),
        ("1", 1, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1], [True], False),
        ([1], [1.0], True),
        ({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": 1}, {"a": True}, False),
        ([], {}, False),
    ],
)
def test_equality_is_strict_json_equality(value: Any, arg: Any, expected: bool) -> None:
    assert holds(["==", ".x", value], {"x": arg}) is expected


def test_equality_on_tuples_behaves_like_lists() -> None:
    """Python callers may pass tuples where JSON would have arrays."""
    assert holds(["==", ".x", [1, 2]], {"x": (1, 2)})


def test_not_equal_is_definite_only_between_values_of_one_kind() -> None:
    """``!=`` is true only when the field exists, has the operand's kind and differs."""
    assert judge(["!=", ".x", 1], {"x": 2}) is Truth.TRUE
    assert judge(["!=", ".x", 1], {"x": 1.0}) is Truth.FALSE
    assert judge(["!=", ".x", 1], {"x": True}) is Truth.UNKNOWN
    assert judge(["!=", ".x", 1], {"x": "1"}) is Truth.UNKNOWN
    assert judge(["!=", ".x", 1], {}) is Truth.UNKNOWN
    assert judge(["!=", ".x", 1], {"y": 2}) is Truth.UNKNOWN
    assert judge(["!=", ".env", "prod"], {"env": ["prod"]}) is Truth.UNKNOWN
    assert judge(["!=", ".x", None], {"x": 3}) is Truth.TRUE
    assert judge(["==", ".x", None], {"x": "null"}) is Truth.FALSE


@pytest.mark.parametrize(
    ("expected", "actual", "truth"),
    [
        (5000, "5000", Truth.UNKNOWN),
        (True, "true", Truth.UNKNOWN),
        (True, 1, Truth.UNKNOWN),
        ("prod", ["prod"], Truth.UNKNOWN),
        ([1, 2], [1, "2"], Truth.UNKNOWN),
        ([1, 2], [3, "2"], Truth.FALSE),
        ([1, 2], [1, 2, 3], Truth.FALSE),
        ({"a": 1}, {"a": "1"}, Truth.UNKNOWN),
        ({"a": 1}, {"b": 1}, Truth.FALSE),
        ({"a": [1]}, {"a": [1.0]}, Truth.TRUE),
    ],
)
def test_equality_across_kinds_is_unknown(expected: Any, actual: Any, truth: Truth) -> None:
    """A value of another JSON kind than the operand cannot be told equal or unequal."""
    assert judge(["==", ".x", expected], {"x": actual}) is truth
    assert judge(["!=", ".x", expected], {"x": actual}) is ~truth


@pytest.mark.parametrize(
    ("op", "bound", "arg", "expected"),
    [
        ("<", 10, 9, True),
        ("<", 10, 10, False),
        ("<=", 10, 10, True),
        ("<=", 10, 10.5, False),
        (">", 0, 0.001, True),
        (">", 0, 0, False),
        (">=", 0, 0, True),
        (">=", 0, -1, False),
        ("<", 10, True, None),
        ("<", 10, "5", None),
        ("<", 10, None, None),
        ("<", 10, [5], None),
        ("<", 10, math.nan, None),
        (">=", 10, math.nan, None),
        ("<", 10.5, 10**400, False),
        (">", 10.5, 10**400, True),
        ("<", 1e308, -math.inf, None),
        (">", 100, " 5000", None),
        (">", 100, "5e3", None),
        (">", 100, ["5000"], None),
        (">", 100, [5000], None),
        (">", 100, {"v": 5000}, None),
    ],
)
def test_ordering(op: str, bound: float, arg: Any, expected: bool | None) -> None:
    """Ordering is definite between numbers only; anything else (None here) is unknown."""
    truth = Truth.UNKNOWN if expected is None else (Truth.TRUE if expected else Truth.FALSE)
    assert judge([op, ".n", bound], {"n": arg}) is truth


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("prod-*", "prod-eu", True),
        ("prod-*", "prod-", True),
        ("prod-*", "Prod-eu", False),
        ("prod-*", "staging-prod-eu", False),
        ("*", "", True),
        ("*", "anything", True),
        ("", "", True),
        ("", "x", False),
        ("abc", "abc", True),
        ("abc", "abcd", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "acb", False),
        ("a*a", "a", False),
        ("a*a", "aa", True),
        ("*a*a*", "xaxax", True),
        ("*ab*ab*", "xabx", False),
        ("/data/*", "/data/../etc/passwd", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("a\\\\b", "a\\b", True),
        ("a\\\\*", "a\\anything", True),
        ("**", "x", True),
        (".*", "abc", False),
        ("[ab]", "a", False),
    ],
)
def test_like(pattern: str, text: str, expected: bool) -> None:
    """``like`` matches whole strings, case-sensitively, with only ``*`` as a wildcard."""
    assert holds(["like", ".s", pattern], {"s": text}) is expected


def test_like_needs_a_string() -> None:
    assert not holds(["like", ".s", "*"], {"s": 5})
    assert not holds(["like", ".s", "*"], {"s": None})
    assert not holds(["like", ".s", "*"], {})


def test_like_is_fast_on_pathological_input() -> None:
    """Patterns that make backtracking matchers explode stay linear here."""
    pattern = "*a" * 40 + "*b"
    text = "a" * 200_000
    start = time.perf_counter()
    assert not holds(["like", ".s", pattern], {"s": text})
    assert holds(["like", ".s", pattern], {"s": text + "b"})
    assert time.perf_counter() - start < 2


def test_in() -> None:
    assert holds(["in", ".x", ["a", "b"]], {"x": "b"})
    assert not holds(["in", ".x", ["a", "b"]], {"x": "c"})
    assert not holds(["in", ".x", []], {"x": "a"})
    assert not holds(["in", ".x", [1, 2]], {"x": True})
    assert holds(["in", ".x", [1, 2]], {"x": 2.0})
    assert holds(["in", ".x", [[1], {"k": "v"}]], {"x": {"k": "v"}})
    assert not holds(["in", ".x", ["a"]], {})


@pytest.mark.parametrize(
    ("path", "base", "expected"),
    [
        ("/data", "/data", True),
        ("/data/x", "/data", True),
        ("/data/x/y.txt", "/data", True),
        ("/data/", "/data", True),
        ("/data/x/", "/data/", True),
        ("/data//x", "/data", True),
        ("//data///x", "/data", True),
        ("/data/./x", "/data", True),
        ("/data/x/..", "/data", True),
        ("/data/a/../b", "/data", True),
        ("/database", "/data", False),
        ("/data-old/x", "/data", False),
        ("/dat", "/data", False),
        ("/", "/data", False),
        ("/data/../etc/passwd", "/data", False),
        ("/data/a/../../etc", "/data", False),
        ("/data/..", "/data", False),
        ("/../etc/shadow", "/etc", True),
        ("//etc/./shadow", "/etc", True),
        ("/etc/../../etc/passwd", "/etc", True),
        ("/../data/x", "/data", True),
        ("/etc/passwd", "/", True),
        ("/anything", "/", True),
        ("data/x", "/data", None),
        ("./data/x", "/data", None),
        ("..", "/", None),
        ("", "/data", None),
        ("/data/x\0", "/data", None),
        ("/etc/shadow\0", "/etc", None),
        ("/DATA/x", "/data", False),
        ("/data/x\\..\\..\\etc", "/data", True),
    ],
)
def test_within(path: str, base: str, expected: bool | None) -> None:
    """Containment of POSIX-normalised absolute paths by whole segments; None is unknown."""
    truth = Truth.UNKNOWN if expected is None else (Truth.TRUE if expected else Truth.FALSE)
    assert judge(["within", ".p", base], {"p": path}) is truth


def test_within_of_anything_but_a_string_is_unknown() -> None:
    """An array, null or missing path cannot be placed, so the answer is unknown."""
    assert judge(["within", ".p", "/data"], {"p": ["/data"]}) is Truth.UNKNOWN
    assert judge(["within", ".p", "/data"], {"p": None}) is Truth.UNKNOWN
    assert judge(["within", ".p", "/data"], {}) is Truth.UNKNOWN


@pytest.mark.parametrize("base", ["data", ".", "", "x/..", "/a\0"])
def test_a_relative_within_base_is_refused(base: str) -> None:
    """A base that is not an absolute path is refused when the predicate is compiled."""
    with pytest.raises(PredicateError, match="absolute path"):
        compile_predicate({"p": {"within": base}})


# --- logic and quantifiers -------------------------------------------------------------


def test_not_and_or() -> None:
    assert holds(["not", ["==", ".x", 1]], {"x": 2})
    assert not holds(["not", ["==", ".x", 1]], {"x": 1})
    assert holds(["and", []], {})
    assert not holds(["or", []], {})
    assert holds(["and", [["==", ".x", 1], ["==", ".y", 2]]], {"x": 1, "y": 2})
    assert not holds(["and", [["==", ".x", 1], ["==", ".y", 2]]], {"x": 1, "y": 3})
    assert holds(["or", [["==", ".x", 1], ["==", ".y", 2]]], {"x": 0, "y": 2})
    assert not holds(["or", [["==", ".x", 1], ["==", ".y", 2]]], {"x": 0, "y": 0})


def test_not_of_a_missing_field_stays_unknown() -> None:
    """A missing field is unknown, and so is its negation (Kleene)."""
    assert judge(["not", ["==", ".x", 1]], {}) is Truth.UNKNOWN
    assert judge(["not", ["!=", ".x", 1]], {"x": 2}) is Truth.FALSE
    assert judge(["not", ["!=", ".x", 1]], {}) is Truth.UNKNOWN


@pytest.mark.parametrize(
    ("op", "left", "right", "truth"),
    [
        ("and", Truth.TRUE, Truth.UNKNOWN, Truth.UNKNOWN),
        ("and", Truth.FALSE, Truth.UNKNOWN, Truth.FALSE),
        ("and", Truth.TRUE, Truth.TRUE, Truth.TRUE),
        ("or", Truth.TRUE, Truth.UNKNOWN, Truth.TRUE),
        ("or", Truth.FALSE, Truth.UNKNOWN, Truth.UNKNOWN),
        ("or", Truth.FALSE, Truth.FALSE, Truth.FALSE),
    ],
)
def test_and_or_follow_kleene_tables(op: str, left: Truth, right: Truth, truth: Truth) -> None:
    """and/or combine unknown as Kleene's strong three-valued logic says, in either order."""
    statement = {Truth.TRUE: ["==", ".x", 1], Truth.FALSE: ["==", ".x", 2]}
    statement[Truth.UNKNOWN] = ["==", ".missing", 1]
    parts = [statement[left], statement[right]]
    assert judge([op, parts], {"x": 1}) is truth
    assert judge([op, parts[::-1]], {"x": 1}) is truth


def test_quantifiers_over_non_arrays_and_empty_arrays() -> None:
    """all/any over a non-array is unknown; over [] all is true and any false."""
    element: list[Any] = ["==", ".", 1]
    assert judge(["all", ".xs", element], {"xs": "1"}) is Truth.UNKNOWN
    assert judge(["any", ".xs", element], {"xs": {"0": 1}}) is Truth.UNKNOWN
    assert judge(["all", ".xs", element], {"xs": []}) is Truth.TRUE
    assert judge(["any", ".xs", element], {"xs": []}) is Truth.FALSE
    assert judge(["any", ".xs", element], {"xs": ["1", 2]}) is Truth.UNKNOWN
    assert judge(["any", ".xs", element], {"xs": ["1", 1]}) is Truth.TRUE
    assert judge(["all", ".xs", element], {"xs": ["1", 2]}) is Truth.FALSE


def test_top_level_statements_are_all_required() -> None:
    predicate = compile_predicate([["==", ".a", 1], ["==", ".b", 2]])
    assert evaluate(predicate, {"a": 1, "b": 2}) is Truth.TRUE
    assert evaluate(predicate, {"a": 1, "b": 3}) is Truth.FALSE
    assert evaluate(predicate, {"a": 1}) is Truth.UNKNOWN
    assert evaluate([], {"anything": True}) is Truth.TRUE


def test_all_and_any() -> None:
    tags = ["like", ".", "prod-*"]
    assert holds(["all", ".tags", tags], {"tags": ["prod-a", "prod-b"]})
    assert not holds(["all", ".tags", tags], {"tags": ["prod-a", "dev"]})
    assert holds(["any", ".tags", tags], {"tags": ["dev", "prod-b"]})
    assert not holds(["any", ".tags", tags], {"tags": ["dev", "qa"]})
    assert holds(["all", ".tags", tags], {"tags": []})
    assert not holds(["any", ".tags", tags], {"tags": []})


def test_quantifiers_need_a_list() -> None:
    statement = ["all", ".tags", ["==", ".", 1]]
    assert not holds(statement, {"tags": {"0": 1}})
    assert not holds(statement, {"tags": "111"})
    assert not holds(statement, {"tags": None})
    assert not holds(statement, {})


def test_quantifier_elements_are_the_root_of_the_inner_statement() -> None:
    statement = ["all", ".items", ["and", [["<=", ".price", 10], ["==", ".sku[0]", "A"]]]]
    assert holds(statement, {"items": [{"price": 3, "sku": ["A"]}, {"price": 10, "sku": ["A"]}]})
    assert not holds(statement, {"items": [{"price": 3, "sku": ["A"]}, {"price": 11}]})
    assert not holds(statement, {"items": [{"price": 3, "sku": ["A"]}, 7]})


# --- selectors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "parts"),
    [
        (".", ()),
        (".a", ("a",)),
        (".a.b", ("a", "b")),
        (".items[0]", ("items", 0)),
        (".a[2].b", ("a", 2, "b")),
        (".a[-1]", ("a", -1)),
        (".[0]", (0,)),
        (".a[1][2]", ("a", 1, 2)),
        ('.["key with spaces"]', ("key with spaces",)),
        ('.["a\\"b"].c', ('a"b', "c")),
        ('.["\\u00e9"]', ("é",)),
        ('.a["x.y"]', ("a", "x.y")),
        (".snake_case-and-dash9", ("snake_case-and-dash9",)),
        ("._private", ("_private",)),
    ],
)
def test_parse_selector(selector: str, parts: tuple[str | int, ...]) -> None:
    assert parse_selector(selector) == parts


@pytest.mark.parametrize(
    "selector",
    [
        "",
        "a",
        "..",
        ".a.",
        ".a..b",
        ".9a",
        ".a b",
        ".a[",
        ".a[]",
        ".a[x]",
        ".a[01]",
        ".a[1",
        ".a[-]",
        ".a[1.5]",
        '.["unterminated]',
        ".['single']",
        ".é",
        ".a]",
        ".a[\u0661]",  # an Arabic-Indic digit is not an index
        "." + "a" * MAX_STRING,
    ],
)
def test_parse_selector_rejects(selector: str) -> None:
    with pytest.raises(PredicateError):
        parse_selector(selector)


def test_parse_selector_rejects_non_strings() -> None:
    with pytest.raises(PredicateError, match="got a number"):
        parse_selector(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (".a.b", True),
        (".list[0]", True),
        (".list[-1]", True),
        (".list[-3]", True),
        (".list[3]", False),
        (".list[-4]", False),
        ('.["key with spaces"]', True),
        (".a.b.c", False),
        (".a.missing", False),
        (".list.x", False),
        (".a[0]", False),
        (".s[0]", False),
    ],
)
def test_selection(selector: str, expected: bool) -> None:
    """Existing paths select; missing keys, bad indexes and type mismatches are false."""
    args = {"a": {"b": 1}, "list": [1, 2, 1], "key with spaces": 1, "s": "1"}
    assert holds(["in", selector, [1]], args) is expected


def test_root_selector() -> None:
    assert holds(["==", ".", {"a": 1}], {"a": 1})
    assert holds(["like", ".", "x*"], "xyz")


# --- friendly form ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("friendly", "canonical"),
    [
        ({}, []),
        ({"business_unit": "emea"}, [["==", ".business_unit", "emea"]]),
        ({"amount": {"<=": 100, ">": 0}}, [["<=", ".amount", 100], [">", ".amount", 0]]),
        ({"a.b": 1}, [["==", ".a.b", 1]]),
        ({".a.b": 1}, [["==", ".a.b", 1]]),
        ({"[0]": 1}, [["==", ".[0]", 1]]),
        ({'.["x y"]': 1}, [["==", '.["x y"]', 1]]),
        ({"items[0].sku": "A"}, [["==", ".items[0].sku", "A"]]),
        ({"tags": ["a", "b"]}, [["==", ".tags", ["a", "b"]]]),
        ({"flag": None}, [["==", ".flag", None]]),
        ({"x": {"==": {"k": 1}}}, [["==", ".x", {"k": 1}]]),
        ({"x": {"in": [1, 2]}}, [["in", ".x", [1, 2]]]),
        ({"x": {"!=": 3}}, [["!=", ".x", 3]]),
        ({"p": {"within": "/data"}}, [["within", ".p", "/data"]]),
        ({"p": {"like": "/data/*"}}, [["like", ".p", "/data/*"]]),
        ({"x": {"not": {"in": [1, 2]}}}, [["not", ["in", ".x", [1, 2]]]]),
        ({"x": {"not": 5}}, [["not", ["==", ".x", 5]]]),
        (
            {"x": {"not": {">": 1, "<": 5}}},
            [["not", ["and", [[">", ".x", 1], ["<", ".x", 5]]]]],
        ),
        (
            {"tags": {"all": {".": {"like": "prod-*"}}}},
            [["all", ".tags", ["like", ".", "prod-*"]]],
        ),
        ({"tags": {"any": {"like": "prod-*"}}}, [["any", ".tags", ["like", ".", "prod-*"]]]),
        ({"tags": {"any": "prod"}}, [["any", ".tags", ["==", ".", "prod"]]]),
        (
            {"items": {"all": {"price": {"<=": 10}, "qty": {">": 0}}}},
            [["all", ".items", ["and", [["<=", ".price", 10], [">", ".qty", 0]]]]],
        ),
        ({"items": {"all": {}}}, [["all", ".items", ["and", []]]]),
        (
            {"$or": [{"a": 1}, {"b": 2, "c": 3}]},
            [["or", [["==", ".a", 1], ["and", [["==", ".b", 2], ["==", ".c", 3]]]]]],
        ),
        ({"$and": [{"a": 1}, {"b": 2}]}, [["and", [["==", ".a", 1], ["==", ".b", 2]]]]),
        ({"$not": {"a": 1}}, [["not", ["==", ".a", 1]]]),
        ({"$or": []}, [["or", []]]),
        (
            {"business_unit": "emea", "amount": {"<=": 100}},
            [["==", ".business_unit", "emea"], ["<=", ".amount", 100]],
        ),
    ],
)
def test_compile_friendly(friendly: dict[str, Any], canonical: list[Any]) -> None:
    assert compile_predicate(friendly) == canonical


def test_compile_returns_a_fresh_copy() -> None:
    canonical: list[Any] = [["in", ".x", [[1]]]]
    compiled = compile_predicate(canonical)
    assert compiled == canonical
    compiled[0][2][0].append(2)
    assert canonical == [["in", ".x", [[1]]]]


def test_compiled_friendly_predicate_evaluates() -> None:
    predicate = compile_predicate(
        {"business_unit": "emea", "amount": {"<=": 100, ">": 0}, "path": {"within": "/srv"}}
    )
    assert evaluate(predicate, {"business_unit": "emea", "amount": 50, "path": "/srv/a"}) is (
        Truth.TRUE
    )
    assert evaluate(predicate, {"business_unit": "emea", "amount": 500, "path": "/srv/a"}) is (
        Truth.FALSE
    )
    assert evaluate(predicate, {"business_unit": "emea", "amount": 50, "path": "/srvx"}) is (
        Truth.FALSE
    )


@pytest.mark.parametrize(
    ("friendly", "path", "message"),
    [
        ({"amount": {"=<": 100}}, "amount", "unknown operator '=<' (expected one of =="),
        ({"amount": {"<=": 1, "lte": 2}}, "amount", "unknown operator 'lte'"),
        ({"amount": {"<=": "100"}}, "amount.<=", "'<=' needs a number, got a string"),
        ({"amount": {">": True}}, "amount.>", "'>' needs a number, got a boolean"),
        ({"amount": {"<": math.inf}}, "amount.<", "numbers must be finite"),
        ({"x": {"in": "ab"}}, "x.in", "'in' needs an array of values, got a string"),
        ({"x": {"like": 5}}, "x.like", "'like' needs a string, got a number"),
        ({"x": {"like": "a\\b"}}, "x.like", "must be followed by"),
        ({"x": {"within": ""}}, "x.within", "'within' needs an absolute path"),
        ({"x": {"within": "a/b"}}, "x.within", "'within' needs"),
        ({"x": {"within": "/a\0"}}, "x.within", "'within' needs"),
        ({"x": {}}, "x", "empty condition"),
        ({"meta": {"owner": "bob"}}, "meta", "operators only"),
        ({"x": {"not": {"=<": 1}}}, "x.not", "unknown operator '=<'"),
        ({"x": {"not": {}}}, "x.not", "empty condition"),
        ({"x": {"all": {".": {">": "a"}}}}, "x.all...>", "needs a number"),
        ({"x": {"any": {"like": "a", "name": "b"}}}, "x.any", "mixes operators"),
        ({"x": {"==": math.nan}}, "x.==", "numbers must be finite"),
        ({"x": {"==": {1: 2}}}, "x.==", "object keys must be strings"),
        ({"x": {"==": object()}}, "x.==", "not a JSON value"),
        ({"x": math.nan}, "x", "numbers must be finite"),
        ({"x": ["a", b"b"]}, "x[1]", "not a JSON value: a bytes"),
        ({"x": "y" * (MAX_STRING + 1)}, "x", "longer than"),
        ({"a b": 1}, "a b", "malformed selector"),
        ({"a..b": 1}, "a..b", "malformed selector"),
        ({"": 1}, "$", "non-empty strings"),
        ({"$xor": []}, "$xor", "unknown reserved key '$xor'"),
        ({"$or": {"a": 1}}, "$or", "'$or' needs an array of objects, got an object"),
        ({"$or": [{"a": 1}, 5]}, "$or[1]", "expected an object of field conditions"),
        ({"$or": [{"a": {"<": "x"}}]}, "$or[0].a.<", "needs a number"),
        ({"$not": [1]}, "$not", "expected an object"),
        ({"$and": [{"$not": {"x": {"foo": 1}}}]}, "$and[0].$not.x", "operators only"),
    ],
)
def test_compile_friendly_errors(friendly: Any, path: str, message: str) -> None:
    """Friendly-form errors name the offending key path."""
    with pytest.raises(PredicateError) as info:
        compile_predicate(friendly)
    assert info.value.path == path
    assert message in info.value.detail


def test_compile_rejects_other_types() -> None:
    for spec in ("x", 5, None, True, (1,)):
        with pytest.raises(PredicateError, match=r"object \(friendly form\) or an array"):
            compile_predicate(spec)


# --- canonical validation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "path", "message"),
    [
        ({"a": 1}, "$", "expected an array of statements, got an object"),
        ("[]", "$", "expected an array of statements, got a string"),
        ([5], "$[0]", "a statement is a non-empty array, got a number"),
        ([[]], "$[0]", "non-empty array"),
        ([["=<", ".a", 1]], "$[0][0]", "unknown operator '=<'"),
        ([[5, ".a", 1]], "$[0][0]", "unknown operator a number"),
        (
            [["==", ".a"]],
            "$[0]",
            "'==' takes 2 operand(s) and optionally an array of modifiers, got 1",
        ),
        ([["<", ".a", 1, 2]], "$[0]", "'<' takes 2 operand(s), got 3"),
        ([["==", ".a", 1, 2, 3]], "$[0]", "optionally an array of modifiers, got 4"),
        ([["==", ".a", 1, 2]], "$[0][3]", "modifiers are a non-empty array"),
        ([["not"]], "$[0]", "'not' takes 1 operand(s), got 0"),
        ([["==", "a", 1]], "$[0][1]", "must start with '.'"),
        ([["==", 5, 1]], "$[0][1]", "a selector is a string"),
        ([["==", ".a[x]", 1]], "$[0][1]", "bad index"),
        ([["<", ".a", "1"]], "$[0][2]", "'<' needs a number, got a string"),
        ([["<", ".a", None]], "$[0][2]", "got null"),
        ([["like", ".a", "\\"]], "$[0][2]", "must be followed by"),
        ([["in", ".a", 1]], "$[0][2]", "'in' needs an array"),
        ([["in", ".a", [1, math.inf]]], "$[0][2][1]", "finite"),
        ([["==", ".a", {"k": [1, math.nan]}]], '$[0][2]["k"][1]', "finite"),
        ([["within", ".a", "../x"]], "$[0][2]", "'within' needs"),
        ([["within", ".a", "a\0"]], "$[0][2]", "'within' needs"),
        ([["not", "x"]], "$[0][1]", "a statement is a non-empty array, got a string"),
        ([["and", ["==", ".a", 1]]], "$[0][1][0]", "a statement is a non-empty array"),
        ([["or", {}]], "$[0][1]", "expected an array of statements, got an object"),
        ([["all", ".a", ["=="]]], "$[0][2]", "'==' takes 2 operand(s)"),
        ([["any", ".a", 1]], "$[0][2]", "non-empty array"),
        ([["==", ".a", 1], ["or", [["==", ".b", 1], ["!", ".c", 1]]]], "$[1][1][1][0]", "'!'"),
    ],
)
def test_validate_errors(canonical: Any, path: str, message: str) -> None:
    """Canonical-form errors locate the problem as ``$[i][j]...``."""
    with pytest.raises(PredicateError) as info:
        validate_predicate(canonical)
    assert info.value.path == path
    assert message in info.value.detail
    assert f"(at {path})" in str(info.value)


def test_validate_accepts_every_operator() -> None:
    canonical = [
        ["==", ".a", {"k": [1, 2.5, None, True, "s"]}],
        ["!=", ".a", 1],
        ["<", ".a", 1],
        ["<=", ".a", 1.5],
        [">", ".a", -1],
        [">=", ".a", 0],
        ["like", ".a", "x\\*\\\\*"],
        ["in", ".a", [1, "2"]],
        ["within", ".a", "/data"],
        ["not", ["and", []]],
        ["or", [["==", ".", 1]]],
        ["all", ".a", ["any", ".", ["==", ".", 1]]],
    ]
    assert validate_predicate(canonical) == canonical


def nested_not(levels: int) -> list[Any]:
    statement: list[Any] = ["==", ".a", 1]
    for _ in range(levels):
        statement = ["not", statement]
    return statement


def test_depth_limit() -> None:
    """The top array is level 1, so MAX_DEPTH - 1 nested statements still fit."""
    validate_predicate([nested_not(MAX_DEPTH - 2)])
    with pytest.raises(PredicateError, match="nests deeper") as info:
        validate_predicate([nested_not(MAX_DEPTH - 1)])
    assert info.value.path == "$[0]" + "[1]" * (MAX_DEPTH - 1)


def test_depth_limit_counts_values() -> None:
    value: Any = 1
    for _ in range(MAX_DEPTH):
        value = [value]
    with pytest.raises(PredicateError, match="nests deeper"):
        validate_predicate([["==", ".a", value]])


def test_deep_friendly_input_is_rejected_without_recursion_error() -> None:
    spec: dict[str, Any] = {"a": 1}
    for _ in range(5000):
        spec = {"$not": spec}
    with pytest.raises(PredicateError, match="nests deeper"):
        compile_predicate(spec)


def test_node_limit() -> None:
    """Statements and values count as nodes."""
    validate_predicate([["in", ".a", list(range(MAX_NODES - 3))]])
    with pytest.raises(PredicateError, match="more than"):
        validate_predicate([["in", ".a", list(range(MAX_NODES))]])
    with pytest.raises(PredicateError, match="more than"):
        validate_predicate([["==", ".a", 1]] * MAX_NODES)
    with pytest.raises(PredicateError, match="more than"):
        compile_predicate({"a": {"in": list(range(10 * MAX_NODES))}})


def test_string_limits() -> None:
    validate_predicate([["==", ".a", "x" * MAX_STRING]])
    with pytest.raises(PredicateError, match="longer than") as info:
        validate_predicate([["==", ".a", "x" * (MAX_STRING + 1)]])
    assert info.value.path == "$[0][2]"
    with pytest.raises(PredicateError, match="longer than"):
        validate_predicate([["like", ".a", "*" * (MAX_STRING + 1)]])
    with pytest.raises(PredicateError, match="selector is longer") as info:
        validate_predicate([["==", "." + "a" * MAX_STRING, 1]])
    assert info.value.path == "$[0][1]"
    with pytest.raises(PredicateError, match="object keys"):
        validate_predicate([["==", ".a", {"k" * (MAX_STRING + 1): 1}]])


# --- bounded evaluation ----------------------------------------------------------------


def test_budget_stops_huge_fan_out() -> None:
    """An ``any`` that never matches over a million elements runs out of budget."""
    args = {"items": [0] * 1_000_000}
    start = time.perf_counter()
    assert not holds(["any", ".items", ["==", ".", 1]], args)
    assert time.perf_counter() - start < 1
    assert holds(["any", ".items", ["==", ".", 0]], args)


def test_budget_exhaustion_is_not_negated() -> None:
    """Running out of budget inside ``not`` still fails the whole evaluation."""
    args = {"items": [0] * 100_000}
    assert not holds(["not", ["all", ".items", ["==", ".", 0]]], args)
    assert not holds(["not", ["any", ".items", ["==", ".", 1]]], args)


def test_budget_stops_nested_quantifiers() -> None:
    statement: list[Any] = ["==", ".", 1]
    for _ in range(5):
        statement = ["all", ".", statement]
    args: Any = 1
    for _ in range(5):
        args = [args] * 10
    assert judge(statement, args) is Truth.UNKNOWN
    assert evaluate(validate_predicate([statement]), args, budget=10**6) is Truth.TRUE


def test_explicit_budget() -> None:
    predicate = validate_predicate([["all", ".xs", ["==", ".", 1]]])
    args = {"xs": [1] * 50}
    assert evaluate(predicate, args, budget=200) is Truth.TRUE
    assert evaluate(predicate, args, budget=20) is Truth.UNKNOWN
    assert evaluate(predicate, args, budget=0) is Truth.UNKNOWN


def test_budget_counts_deep_equality() -> None:
    value = list(range(900))
    predicate = validate_predicate([["==", ".x", value]])
    assert evaluate(predicate, {"x": list(range(900))}) is Truth.TRUE
    assert evaluate(predicate, {"x": list(range(900))}, budget=100) is Truth.UNKNOWN


def test_deeply_nested_args_do_not_raise() -> None:
    args: Any = "leaf"
    for _ in range(100_000):
        args = [args]
    assert not holds(["==", ".", [[["leaf"]]]], args)
    assert holds(["any", ".", ["any", ".", ["==", ".", [[["leaf"]]]]]], [[args]]) is False
    assert not holds(["all", ".", ["all", ".", ["all", ".", ["==", ".", 1]]]], args)


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "x",
        [None],
        [[]],
        [["zz", ".a", 1]],
        [["==", 5, 1]],
        [["==", ".a"]],
        [["like", ".a", 5]],
        [["like", ".a", "\\q"]],
        [["in", ".a", 5]],
        [["in", ".a", "abc"]],
        [["within", ".a", None]],
        [["and", 5]],
        [["not"]],
        [["all", ".a", None]],
        [["<", ".a", "x"]],
        [nested_not(10_000)],
    ],
)
def test_evaluate_never_raises_on_garbage_predicates(garbage: Any) -> None:
    """A predicate that was never validated yields unknown, never an exception."""
    assert evaluate(garbage, {"a": "abc"}) is Truth.UNKNOWN


# --- describe --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("friendly", "text"),
    [
        ({}, "true"),
        (
            {"business_unit": "emea", "amount": {"<=": 100}},
            'business_unit == "emea" and amount <= 100',
        ),
        ({"x": {"in": [1, "a"]}}, 'x in [1, "a"]'),
        ({"p": {"within": "/data"}}, 'p within "/data"'),
        ({"x": {"not": {"like": "a*"}}}, 'not x like "a*"'),
        ({"$or": [{"a": 1}, {"b": 2, "c": 3}]}, "a == 1 or (b == 2 and c == 3)"),
        ({"$or": []}, "false"),
        ({"tags": {"all": {"like": "prod-*"}}}, 'all of tags (. like "prod-*")'),
        ({"items[0].sku": "A"}, 'items[0].sku == "A"'),
        ({'.["a b"]': 1}, '.["a b"] == 1'),
        ({"x": "y" * 100}, 'x == "' + "y" * 56 + "..."),
    ],
)
def test_describe(friendly: dict[str, Any], text: str) -> None:
    assert describe(compile_predicate(friendly)) == text


def test_describe_never_raises() -> None:
    assert describe([5]) == "<malformed predicate>"


# --- properties ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["/data/x", "/data/../etc", "prod-a", "a*b"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["a", "b", "items", "key with spaces"]), children, max_size=4
        )
    ),
    max_leaves=25,
)
finite_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
selectors = st.sampled_from(
    [".", ".a", ".b", ".a.b", ".items", ".items[0]", ".items[-1]", '.["key with spaces"]']
)
globs = st.lists(st.sampled_from(["a", "b", "*", "\\*", "\\\\", "/", "-"]), max_size=6).map("".join)
bases = st.sampled_from(["/", "/data", "/data/", "/data/x/..", "/..", "//data/./x"])


def _leaf(op: str, selector: str, operand: Any) -> list[Any]:
    return [op, selector, operand]


leaf_statements = st.one_of(
    st.builds(_leaf, st.sampled_from(["==", "!="]), selectors, finite_values),
    st.builds(_leaf, st.sampled_from(["<", "<=", ">", ">="]), selectors, numbers),
    st.builds(_leaf, st.just("like"), selectors, globs),
    st.builds(_leaf, st.just("in"), selectors, st.lists(finite_values, max_size=3)),
    st.builds(_leaf, st.just("within"), selectors, bases),
)
statements = st.recursive(
    leaf_statements,
    lambda inner: st.one_of(
        st.builds(lambda s: ["not", s], inner),
        st.builds(
            lambda op, ss: [op, ss], st.sampled_from(["and", "or"]), st.lists(inner, max_size=3)
        ),
        st.builds(_leaf, st.sampled_from(["all", "any"]), selectors, inner),
    ),
    max_leaves=8,
)
canonical_predicates = st.lists(statements, max_size=4)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical_predicates, json_values)
def test_evaluate_never_raises(predicate: list[Any], args: Any) -> None:
    """Any valid predicate over any JSON-ish arguments yields a Truth, never an exception."""
    assert isinstance(evaluate(predicate, args), Truth)
    assert isinstance(evaluate(predicate, {"a": args, "items": [args, args]}), Truth)
    assert isinstance(evaluate(predicate, args, budget=5), Truth)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical_predicates)
def test_compile_is_identity_on_canonical_forms(predicate: list[Any]) -> None:
    assume(_depth(predicate) <= MAX_DEPTH)
    assert compile_predicate(predicate) == predicate
    assert validate_predicate(predicate) == predicate
    assert isinstance(describe(predicate), str)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_compile_never_fails_unexpectedly(spec: Any) -> None:
    """Arbitrary input either compiles or raises PredicateError, nothing else."""
    try:
        compiled = compile_predicate(spec)
    except PredicateError:
        return
    assert validate_predicate(compiled) == compiled


# --- differential: a reference evaluator written separately from the library -------------

arg_scalars = st.sampled_from(
    [0, 1, 100, 5000, 1.5, -3, "5000", " 5000", "5e3", "prod", "prod-a", "a*b", "", True, None]
) | st.sampled_from(
    ["/data/x", "/data/../etc", "/../etc/shadow", "//data/./x", "data/x", "/data/x\0", "/"]
)
differential_args = st.dictionaries(
    st.sampled_from(["a", "b", "items", "key with spaces"]),
    st.recursive(
        arg_scalars,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


def _ref_kind(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "number"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else None
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object" if isinstance(value, dict) else None


def _ref_and(results: list[bool | None]) -> bool | None:
    return False if False in results else (None if None in results else True)


def _ref_or(results: list[bool | None]) -> bool | None:
    return True if True in results else (None if None in results else False)


def _ref_equal(actual: Any, expected: Any) -> bool | None:
    kinds = (_ref_kind(actual), _ref_kind(expected))
    if None in kinds:
        return None
    if kinds[0] != kinds[1]:
        return False if "null" in kinds else None
    if kinds[0] == "array":
        if len(actual) != len(expected):
            return False
        return _ref_and([_ref_equal(a, e) for a, e in zip(actual, expected, strict=True)])
    if kinds[0] == "object":
        if set(actual) != set(expected):
            return False
        return _ref_and([_ref_equal(actual[k], expected[k]) for k in expected])
    return bool(actual == expected)


def _ref_path(path: str) -> str | None:
    if not path.startswith("/") or "\0" in path:
        return None
    return posixpath.normpath("/" + path.lstrip("/"))


def _ref_lookup(root: Any, selector: str) -> tuple[bool, Any]:
    value = root
    for part in parse_selector(selector):
        if isinstance(part, str):
            if not isinstance(value, dict) or part not in value:
                return False, None
        elif not isinstance(value, list | tuple) or not -len(value) <= part < len(value):
            return False, None
        value = value[part]
    return True, value


def _ref_like(pattern: str, text: str) -> bool:
    # fnmatch-style, but only '*' is special and '\' escapes it.
    regex, chars = "", iter(pattern)
    for ch in chars:
        if ch == "\\":
            regex += re.escape(next(chars))
        else:
            regex += ".*" if ch == "*" else re.escape(ch)
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


def reference(stmt: list[Any], root: Any) -> bool | None:
    """Three-valued truth of one statement (None is unknown), per the README's table."""
    op = stmt[0]
    if op == "not":
        inner = reference(stmt[1], root)
        return None if inner is None else not inner
    if op in ("and", "or"):
        results = [reference(s, root) for s in stmt[1]]
        return _ref_and(results) if op == "and" else _ref_or(results)
    found, value = _ref_lookup(root, stmt[1])
    if not found:
        return None
    operand = stmt[2]
    if op in ("all", "any"):
        if not isinstance(value, list | tuple):
            return None
        results = [reference(operand, v) for v in value]
        return _ref_and(results) if op == "all" else _ref_or(results)
    if op in ("==", "!="):
        equal = _ref_equal(value, operand)
        return equal if op == "==" or equal is None else not equal
    if op == "in":
        return _ref_or([_ref_equal(value, option) for option in operand])
    if op in ("<", "<=", ">", ">="):
        if _ref_kind(value) != "number":
            return None
        order: dict[str, bool] = {
            "<": value < operand,
            "<=": value <= operand,
            ">": value > operand,
            ">=": value >= operand,
        }
        return order[op]
    if not isinstance(value, str):
        return None
    if op == "like":
        return _ref_like(operand, value)
    target, base = _ref_path(value), _ref_path(operand)
    if target is None or base is None:
        return None
    return base == "/" or target == base or target.startswith(base + "/")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(canonical_predicates, differential_args)
def test_evaluation_agrees_with_the_reference(predicate: list[Any], args: Any) -> None:
    """The library's three-valued answer equals an independent reference evaluator's."""
    assume(_depth(predicate) <= MAX_DEPTH)
    expected = _ref_and([reference(s, args) for s in predicate])
    truth = {True: Truth.TRUE, False: Truth.FALSE, None: Truth.UNKNOWN}[expected]
    assert evaluate(predicate, args, budget=10**9) is truth
    # A granting rule admits only on definite truth; a restricting rule steps
    # aside only on definite falsehood.
    assert predicates.admits(predicate, args, budget=10**9) is (expected is True)
    assert predicates.restricts(predicate, args, budget=10**9) is (expected is not False)


def test_restricting_rules_can_step_aside_for_a_missing_argument() -> None:
    """``skip_if_missing`` makes a restricting rule step aside only when a named field is absent."""
    predicate = compile_predicate({"amount": {">": 100}})
    assert predicates.restricts(predicate, {})
    assert not predicates.restricts(predicate, {}, skip_if_missing=True)
    assert predicates.restricts(predicate, {"amount": "5000"}, skip_if_missing=True)
    assert not predicates.restricts(predicate, {"amount": 5}, skip_if_missing=True)
    assert predicates.restricts(None, {}, skip_if_missing=True)


def test_root_fields_lists_argument_selectors_not_element_selectors() -> None:
    """Selectors under all/any read list elements and are not arguments of the call."""
    predicate = compile_predicate(
        {"$or": [{"a.b": 1}, {"$not": {"c": 2}}], "items": {"all": {"name": "x"}}}
    )
    assert sorted(predicates.root_fields(predicate), key=str) == [("a", "b"), ("c",), ("items",)]


def test_skip_if_missing_does_not_treat_a_wrongly_typed_container_as_absent() -> None:
    """A JSON string where an object was expected may be parsed downstream: the rule applies."""
    predicate = compile_predicate({"config.path": {"within": "/etc"}, "items[2]": {"==": 1}})
    smuggled = {"config": '{"path": "/etc/shadow"}', "items": [0, 0, 1]}
    assert predicates.restricts(predicate, smuggled, skip_if_missing=True)
    assert predicates.restricts(predicate, {"config": {"path": "/etc/x"}, "items": "abc"},
                                skip_if_missing=True)  # fmt: skip
    assert not predicates.restricts(predicate, {"config": {}, "items": [0, 0, 1]},
                                    skip_if_missing=True)  # fmt: skip
    assert not predicates.restricts(predicate, {"config": {"path": "/etc/x"}, "items": [0]},
                                    skip_if_missing=True)  # fmt: skip
