"""Predicates real agents can satisfy: the ``case`` and ``whitespace`` modifiers, ``exists``,
what narrows what, and what verifiers of the release before make of the new forms."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import PredicateError
from agentguard.keys import Principal
from agentguard.predicates import (
    Truth,
    admits,
    compile_predicate,
    describe,
    evaluate,
    fold,
    narrows,
    restricts,
    root_fields,
    validate_predicate,
)
from agentguard.testing import World
from agentguard.tokens import Rule
from agentguard.verify import NO_REVOCATION_CHECK, Verifier
from tests import predicates_b172834 as before

#: ``make hardening`` (AGENTGUARD_HARDENING=1) runs the slow-marked properties here
#: with their full example counts; ``make test`` with a third or so of them.
HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"

LEGACY = json.loads(
    (Path(__file__).parent / "data" / "legacy_grant_b172834.json").read_text(encoding="utf-8")
)


def judge(where: Any, args: Any) -> Truth:
    """Compile a friendly (or canonical) predicate and judge ``args`` with it."""
    return evaluate(compile_predicate(where), args)


def case_pin(value: str) -> dict[str, Any]:
    return {"name": {"==": value, "ignore": "case"}}


# --- which folding, exactly ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pinned", "given_", "expected"),
    [
        ("Paris", "PARIS", Truth.TRUE),
        ("Paris", "paris", Truth.TRUE),
        ("Paris", "Lyon", Truth.FALSE),
        # German sharp s: full case folding maps ß to ss (and capital ẞ too).
        ("Straße", "STRASSE", Truth.TRUE),
        ("Straße", "strasse", Truth.TRUE),
        ("STRA\u1e9eE", "straße", Truth.TRUE),
        # Greek final sigma folds like sigma and capital sigma.
        ("ΣΊΣΥΦΟΣ", "σίσυφος", Truth.TRUE),
        ("ΟΔΟΣ", "οδος", Truth.TRUE),
        # Turkish: no locale tailoring. Capital dotted I folds to i + U+0307, dotless i
        # stays itself: neither matches plain i.
        ("istanbul", "ISTANBUL", Truth.TRUE),
        ("istanbul", "\u0130stanbul", Truth.FALSE),
        ("istanbul", "\u0131stanbul", Truth.FALSE),
        ("\u0130stanbul", "i\u0307stanbul", Truth.TRUE),
        # NFC first: a decomposed é equals the precomposed one.
        ("Caf\u00e9", "CAFE\u0301", Truth.TRUE),
        ("cafe\u0301", "Caf\u00c9", Truth.TRUE),
        # No compatibility mapping (NFKC) and no look-alikes.
        ("paris", "\uff30\uff21\uff32\uff29\uff33", Truth.FALSE),
        ("paypal", "p\u0430ypal", Truth.FALSE),
        # Case folding itself maps the ligature U+FB01 to "fi" (CaseFolding.txt says so).
        ("file", "\ufb01le", Truth.TRUE),
        # Only case: surrounding whitespace still counts.
        ("Paris", " Paris", Truth.FALSE),
    ],
)
def test_case_modifier_folds_with_nfc_then_casefold(
    pinned: str, given_: str, expected: Truth
) -> None:
    """`ignore: case` compares NFC + casefold + NFC of both sides, nothing more."""
    assert judge(case_pin(pinned), {"name": given_}) is expected


def test_folding_is_nfc_casefold_nfc() -> None:
    """The documented recipe, including why the second NFC is there."""
    # casefold turns "ß" + U+0301 into "ss" + U+0301; NFC then composes "s" + U+0301.
    once = unicodedata.normalize("NFC", "\u00df\u0301").casefold()
    assert unicodedata.normalize("NFC", once).casefold() != once  # NFC + casefold alone
    assert fold("\u00df\u0301") == "s\u015b"
    assert fold(fold("\u00df\u0301")) == fold("\u00df\u0301")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=12))
def test_folding_is_idempotent(text: str) -> None:
    assert fold(fold(text)) == fold(text)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=12), st.text(alphabet=" \t\n\u00a0\u2000\u3000", max_size=3))
def test_stripping_and_folding_commute(text: str, pad: str) -> None:
    """What lets a case-only pin narrow a case-and-whitespace pin (see narrows)."""
    padded = pad + text + pad
    assert fold(padded.strip()) == fold(padded).strip()


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        (" Paris", Truth.TRUE),
        ("Paris\n", Truth.TRUE),
        ("\u00a0\tParis\u3000", Truth.TRUE),  # str.strip(): Unicode whitespace
        ("Pa ris", Truth.FALSE),  # only the ends
        ("\u200bParis", Truth.FALSE),  # a zero-width space is not whitespace
        ("paris", Truth.FALSE),  # only whitespace: case still counts
    ],
)
def test_whitespace_modifier_strips_unicode_whitespace_at_the_ends(
    given_: str, expected: Truth
) -> None:
    assert judge({"city": {"==": "Paris", "ignore": "whitespace"}}, {"city": given_}) is expected


def test_both_modifiers_together() -> None:
    where = {"to": {"==": "bob@corp.example", "ignore": ["whitespace", "case"]}}
    assert compile_predicate(where) == [["==", ".to", "bob@corp.example", ["case", "whitespace"]]]
    assert judge(where, {"to": "  Bob@Corp.Example\n"}) is Truth.TRUE
    assert judge(where, {"to": "bob@corp.example.evil"}) is Truth.FALSE


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("==", 5, Truth.UNKNOWN),
        ("==", None, Truth.FALSE),
        ("==", ["Paris"], Truth.UNKNOWN),
        ("==", True, Truth.UNKNOWN),
        ("!=", " PARIS", Truth.FALSE),
        ("!=", "Lyon", Truth.TRUE),
        ("!=", 5, Truth.UNKNOWN),
        ("!=", None, Truth.TRUE),
        ("like", " PARIS ", Truth.TRUE),
        ("like", "LYON", Truth.FALSE),
        ("like", 5, Truth.UNKNOWN),
    ],
)
def test_modified_operators_on_other_kinds(op: str, value: Any, expected: Truth) -> None:
    """A non-string argument is judged as without modifiers: null unequal, else unknown."""
    operand = "par*" if op == "like" else "Paris"
    where = {"city": {op: operand, "ignore": ["case", "whitespace"]}}
    assert judge(where, {"city": value}) is expected


def test_in_and_like_with_modifiers() -> None:
    where_in = {"city": {"in": ["Paris", "Lyon"], "ignore": ["case", "whitespace"]}}
    assert judge(where_in, {"city": " LYON"}) is Truth.TRUE
    assert judge(where_in, {"city": "Nice"}) is Truth.FALSE
    assert judge(where_in, {"city": 3}) is Truth.UNKNOWN
    where_like = {"to": {"like": " *@CORP.example ", "ignore": ["case", "whitespace"]}}
    assert judge(where_like, {"to": "Bob@corp.EXAMPLE "}) is Truth.TRUE
    assert judge(where_like, {"to": "bob@corp.example.evil"}) is Truth.FALSE
    assert judge(
        {"to": {"like": "*@corp.example", "ignore": "case"}}, {"to": "x@CORP.example"}
    ) is (Truth.TRUE)


def test_modifiers_inside_all_and_any() -> None:
    where = {"to": {"all": {"like": "*@corp.example", "ignore": "case"}}}
    assert judge(where, {"to": ["A@Corp.Example", "b@corp.example"]}) is Truth.TRUE
    assert judge(where, {"to": ["A@Corp.Example", "b@evil.example"]}) is Truth.FALSE


def test_describe_shows_the_modifiers() -> None:
    where = {"city": {"==": "Paris", "ignore": ["case", "whitespace"]}, "cc": {"exists": False}}
    assert describe(compile_predicate(where)) == (
        'city == "Paris" (ignoring case, whitespace) and cc is absent'
    )


# --- exists -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"cc": "x"}, Truth.TRUE),
        ({"cc": None}, Truth.TRUE),  # present, with the value null
        ({"cc": ""}, Truth.TRUE),
        ({}, Truth.FALSE),
        ({"CC": "x"}, Truth.FALSE),  # names are exact
    ],
)
def test_exists(args: dict[str, Any], expected: Truth) -> None:
    assert judge({"cc": {"exists": True}}, args) is expected
    assert judge({"cc": {"exists": False}}, args) is ~expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"msg": {"to": {"addr": 1}}}, Truth.TRUE),
        ({"msg": {"to": {}}}, Truth.FALSE),
        ({"msg": {}}, Truth.FALSE),
        ({"msg": {"to": "addr"}}, Truth.UNKNOWN),  # a string on the way: cannot tell
        ({"msg": ["to"]}, Truth.UNKNOWN),
    ],
)
def test_exists_on_nested_fields(args: dict[str, Any], expected: Truth) -> None:
    assert judge({"msg.to.addr": {"exists": True}}, args) is expected


def test_exists_on_array_indexes() -> None:
    assert judge([["exists", ".items[1]"]], {"items": [1, 2]}) is Truth.TRUE
    assert judge([["exists", ".items[2]"]], {"items": [1, 2]}) is Truth.FALSE
    assert judge([["exists", ".items[-3]"]], {"items": [1, 2]}) is Truth.FALSE
    assert judge([["exists", ".items[0]"]], {"items": "ab"}) is Truth.UNKNOWN


def test_exists_in_restricting_and_granting_rules() -> None:
    """A deny on `bcc exists` applies unless bcc is provably absent; a grant needs truth."""
    deny = compile_predicate({"msg.bcc": {"exists": True}})
    assert restricts(deny, {"msg": {"bcc": "x"}})
    assert not restricts(deny, {"msg": {}})
    assert restricts(deny, {"msg": "bcc: eve@evil.example"})  # cannot tell: applies
    grant = compile_predicate({"msg.bcc": {"exists": False}})
    assert admits(grant, {"msg": {}})
    assert not admits(grant, {"msg": "bcc: eve@evil.example"})


def test_exists_selectors_are_not_root_fields() -> None:
    """`if_missing: skip` steps aside only for fields whose values a rule reads."""
    predicate = compile_predicate({"cc": {"exists": True}, "amount": {">": 5}})
    assert root_fields(predicate) == [("amount",)]
    assert restricts(predicate, {"cc": 1}, skip_if_missing=True) is False


# --- the parser meets hostile input ---------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "path", "message"),
    [
        ([["==", ".a", "x", []]], "$[0][3]", "modifiers are a non-empty array"),
        ([["==", ".a", "x", "case"]], "$[0][3]", "modifiers are a non-empty array"),
        ([["==", ".a", "x", {"case": True}]], "$[0][3]", "modifiers are a non-empty array"),
        ([["==", ".a", "x", ["CASE"]]], "$[0][3][0]", "unknown modifier 'CASE'"),
        ([["==", ".a", "x", ["nfkc"]]], "$[0][3][0]", "unknown modifier"),
        ([["==", ".a", "x", [None]]], "$[0][3][0]", "unknown modifier null"),
        ([["==", ".a", "x", ["case", "case"]]], "$[0][3]", "distinct and in the order"),
        ([["==", ".a", "x", ["whitespace", "case"]]], "$[0][3]", "distinct and in the order"),
        ([["==", ".a", 5, ["case"]]], "$[0][2]", "with modifiers needs a string"),
        ([["==", ".a", None, ["case"]]], "$[0][2]", "with modifiers needs a string"),
        ([["in", ".a", ["x", 5], ["case"]]], "$[0][2]", "needs an array of strings"),
        ([["in", ".a", "x", ["case"]]], "$[0][2]", "with modifiers needs an array of strings"),
        ([["<", ".a", 5, ["case"]]], "$[0]", "'<' takes 2 operand(s), got 3"),
        ([["within", ".a", "/x", ["case"]]], "$[0]", "'within' takes 2 operand(s), got 3"),
        ([["like", ".a", "x\\", ["case"]]], "$[0][2]", "must be followed by"),
        ([["exists"]], "$[0]", "'exists' takes 1 operand(s), got 0"),
        ([["exists", ".a", True]], "$[0]", "'exists' takes 1 operand(s), got 2"),
        ([["exists", "a"]], "$[0][1]", "must start with '.'"),
        ([["exists", 5]], "$[0][1]", "a selector is a string"),
        ([["exists", ".a["]], "$[0][1]", "malformed selector"),
        ([["==", ".a", "x", ["case"] * 2000]], "$[0][3]", "more than 1000 nodes"),
    ],
)
def test_hostile_canonical_forms_are_refused(canonical: Any, path: str, message: str) -> None:
    with pytest.raises(PredicateError) as info:
        validate_predicate(canonical)
    assert info.value.path.startswith(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("friendly", "path", "message"),
    [
        ({"a": {"exists": "yes"}}, "a.exists", "'exists' needs true or false, got a string"),
        ({"a": {"exists": 1}}, "a.exists", "'exists' needs true or false, got a number"),
        ({"a": {"ignore": "case"}}, "a.ignore", "'ignore' applies to ==, !=, in and like"),
        ({"a": {"<": 5, "ignore": "case"}}, "a.ignore", "may stand only beside them"),
        ({"a": {"==": "x", "not": {"==": "y"}, "ignore": "case"}}, "a.ignore", "inside 'not'"),
        ({"a": {"==": "x", "ignore": []}}, "a.ignore", "non-empty array"),
        ({"a": {"==": "x", "ignore": "accents"}}, "a.ignore[0]", "unknown modifier 'accents'"),
        ({"a": {"==": "x", "ignore": ["case", 7]}}, "a.ignore[1]", "unknown modifier a number"),
        ({"a": {"==": 5, "ignore": "case"}}, "a.==", "with modifiers needs a string"),
        ({"a": {"in": [None], "ignore": "case"}}, "a.in", "needs an array of strings"),
        ({"a": {"exists": True, "ignore": "case"}}, "a.ignore", "may stand only beside them"),
    ],
)
def test_hostile_friendly_forms_are_refused(friendly: Any, path: str, message: str) -> None:
    with pytest.raises(PredicateError) as info:
        compile_predicate(friendly)
    assert info.value.path == path
    assert message in str(info.value)


def test_friendly_ignore_takes_any_order_and_repeats() -> None:
    one = compile_predicate({"a": {"==": "x", "ignore": ["whitespace", "case", "case"]}})
    assert one == [["==", ".a", "x", ["case", "whitespace"]]]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_WORDS = st.sampled_from(["==", "!=", "in", "like", "exists", "case", "whitespace", ".a", "ignore"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_WORDS, _JSON), min_size=1, max_size=5))
def test_random_statements_are_refused_or_evaluate(stmt: list[Any]) -> None:
    """Garbage around the new forms: a PredicateError or a checked copy that evaluates."""
    try:
        checked = validate_predicate([stmt])
    except PredicateError:
        return
    assert evaluate(checked, {"a": "x"}) in (Truth.TRUE, Truth.FALSE, Truth.UNKNOWN)


@pytest.mark.slow
@settings(max_examples=300 if HARDENING else 100, deadline=None)
@given(st.dictionaries(st.text(max_size=4), st.dictionaries(_WORDS, _JSON, max_size=3)))
def test_random_friendly_conditions_are_refused_or_compile(spec: dict[str, Any]) -> None:
    try:
        compiled = compile_predicate(spec)
    except PredicateError:
        return
    assert validate_predicate(compiled) == compiled


# --- the release before: same meaning for its tokens, and it refuses the new forms ----------


def test_a_delegation_minted_before_verifies_and_means_the_same() -> None:
    """A grant signed by the release before modifiers: verified now, every truth unchanged."""
    clock = ManualClock(LEGACY["now"])
    root = Principal.from_jwk(LEGACY["root"]["id"], LEGACY["root"]["public_jwk"])
    with pytest.warns(UserWarning, match="NO_REVOCATION_CHECK"):
        verifier = Verifier([root], revocations=NO_REVOCATION_CHECK, clock=clock)
    chain = verifier.verify_chain(LEGACY["delegation"])
    for call in LEGACY["calls"]:
        rule = next(r for r in chain.delegation.leaf.scope if r.matches_tool(call["tool"]))
        assert rule.predicate is not None
        assert evaluate(rule.predicate, call["args"]).value == call["truth"], call


@pytest.mark.parametrize(
    "where",
    [
        {"city": {"==": "Paris", "ignore": "case"}},
        {"city": {"!=": "Paris", "ignore": "whitespace"}},
        {"city": {"in": ["Paris"], "ignore": ["case", "whitespace"]}},
        {"city": {"like": "Par*", "ignore": "case"}},
        {"cc": {"exists": True}},
        {"cc": {"exists": False}},
        {"$not": {"cc": {"exists": True}}},
        {"to": {"any": {"==": "a", "ignore": "case"}}},
    ],
)
def test_a_verifier_of_the_release_before_refuses_the_new_forms(where: Any) -> None:
    """Fail closed: the old grammar rejects the statement, so the old token parser rejects
    the grant (TokenFormatError) instead of reading it some other way."""
    canonical = Rule("tickets/send", where).to_claim()["where"]
    with pytest.raises(PredicateError):
        before.validate_predicate(canonical)


def test_old_forms_compile_exactly_as_before() -> None:
    """Every friendly form of the release before compiles to the same canonical array."""
    forms: list[Any] = [
        {"business_unit": "emea", "amount": {"<=": 100}},
        {"to": {"in": ["a", "b"]}, "path": {"within": "/srv"}, "tag": {"like": "x*"}},
        {"$or": [{"a": 1}, {"b": {"!=": None}}], "$not": {"force": True}},
        {"items": {"all": {"name": {"like": "n*"}, ".": {"!=": {}}}}},
        {"items": {"any": {">": 5}}, "c.d": {"not": {"==": [1, 2]}}},
    ]
    for form in forms:
        assert compile_predicate(form) == before.compile_predicate(form)


# --- narrowing -------------------------------------------------------------------------------


def test_an_exact_pin_narrows_a_case_insensitive_pin_of_the_same_folded_value() -> None:
    exact = compile_predicate({"city": "Paris"})
    loose = compile_predicate({"city": {"==": "PARIS", "ignore": "case"}})
    assert narrows(exact, loose)
    assert not narrows(loose, exact)  # "paris" passes the child, not the parent
    assert not narrows(compile_predicate({"city": "Lyon"}), loose)


@pytest.mark.parametrize(
    ("child", "parent", "expected"),
    [
        ({"a": {"==": "x", "ignore": "case"}}, {"a": {"==": "X", "ignore": ["case", "whitespace"]}},
         True),
        ({"a": {"==": "x", "ignore": "whitespace"}},
         {"a": {"==": " x", "ignore": ["case", "whitespace"]}}, True),
        ({"a": {"==": "x", "ignore": ["case", "whitespace"]}}, {"a": {"==": "x", "ignore": "case"}},
         False),
        ({"a": {"==": "x", "ignore": "case"}}, {"a": {"like": "X*", "ignore": "case"}}, True),
        ({"a": {"==": "x", "ignore": "case"}}, {"a": {"like": "x*"}}, False),
        ({"a": {"in": ["x", "y"]}}, {"a": {"in": ["X", "Y", "Z"], "ignore": "case"}}, True),
        ({"a": {"in": ["x", "w"]}}, {"a": {"in": ["X", "Y"], "ignore": "case"}}, False),
        ({"a": {"in": []}}, {"a": "x"}, False),
        ({"a": "x", "b": 1}, {"a": {"exists": True}}, True),
        ({"a.b": {"<": 3}}, {"a": {"exists": True}}, True),
        ({"a": {"exists": True}}, {"a.b": {"exists": True}}, False),
        ({"n": {"<=": 5}}, {"n": {"<": 6}}, True),
        ({"n": {"<=": 5}}, {"n": {"<": 5}}, False),
        ({"n": {">": 5}}, {"n": {">=": 5}}, True),
        ({"n": {">": 5}}, {"n": {"<": 9}}, False),
        ({"n": 1}, {"n": {"<=": 1}}, True),
        ({"n": 1}, {"n": True}, False),
        ({"p": {"within": "/srv/data"}}, {"p": {"within": "/srv"}}, True),
        ({"p": {"within": "/srv"}}, {"p": {"within": "/srv/data"}}, False),
        ({"a": "x"}, {"$or": [{"a": "y"}, {"a": {"like": "x*"}}]}, True),
        ({"$or": [{"a": "x"}, {"a": "y"}]}, {"a": {"in": ["x", "y"]}}, True),
        ({"$or": [{"a": "x"}, {"a": "z"}]}, {"a": {"in": ["x", "y"]}}, False),
        ({"a": "x"}, {"a": "x", "b": "y"}, False),
        ({"$not": {"a": "x"}}, {"$not": {"a": "x"}}, True),
        ({"$not": {"a": "x"}}, {"$not": {"a": "y"}}, False),
    ],
)  # fmt: skip
def test_narrowing_rules(child: Any, parent: Any, expected: bool) -> None:
    assert narrows(compile_predicate(child), compile_predicate(parent)) is expected


def test_narrows_says_no_for_garbage() -> None:
    assert narrows([["nonsense"]], [["exists", ".a"]]) is False


_VALUES = st.sampled_from(
    [
        "Paris",
        "paris",
        " PARIS ",
        "Straße",
        "STRASSE",
        "\u0130",
        "i",
        "x",
        "",
        0,
        1,
        5.5,
        None,
        True,
    ]
)
_MODS = st.sampled_from([None, ["case"], ["whitespace"], ["case", "whitespace"]])
_FIELDS = st.sampled_from([".a", ".b"])


@st.composite
def _statements(draw: st.DrawFn, depth: int = 0) -> list[Any]:
    kind = draw(st.sampled_from(["pin", "in", "like", "ord", "exists", "and", "or", "not"]))
    field = draw(_FIELDS)
    mods = draw(_MODS)
    if kind in ("and", "or", "not") and depth < 2:
        if kind == "not":
            return ["not", draw(_statements(depth + 1))]
        return [kind, draw(st.lists(_statements(depth + 1), max_size=3))]
    if kind == "exists":
        return ["exists", field]
    if kind == "ord":
        return [draw(st.sampled_from(["<", "<=", ">", ">="])), field, draw(st.integers(-2, 6))]
    value = draw(_VALUES)
    if kind == "in":
        options = draw(st.lists(_VALUES, max_size=3))
        if mods and all(isinstance(o, str) for o in options):
            return ["in", field, options, mods]
        return ["in", field, options]
    if kind == "like":
        pattern = draw(st.sampled_from(["*", "p*", "P*S", "*ss*", "x"]))
        return ["like", field, pattern, mods] if mods else ["like", field, pattern]
    op = draw(st.sampled_from(["==", "!="]))
    return [op, field, value, mods] if mods and isinstance(value, str) else [op, field, value]


@pytest.mark.slow
@settings(max_examples=1500 if HARDENING else 500, deadline=None)
@given(
    st.lists(_statements(), min_size=1, max_size=2),
    st.lists(_statements(), min_size=1, max_size=2),
    st.dictionaries(_FIELDS.map(lambda f: f[1:]), _VALUES),
)
def test_narrowing_never_admits_what_the_parent_refused(
    child: list[Any], parent: list[Any], args: dict[str, Any]
) -> None:
    child, parent = validate_predicate(child), validate_predicate(parent)
    if narrows(child, parent) and evaluate(child, args) is Truth.TRUE:
        assert evaluate(parent, args) is Truth.TRUE


@settings(max_examples=300, deadline=None)
@given(st.lists(_statements(), min_size=1, max_size=2), st.dictionaries(st.just("a"), _VALUES))
def test_a_pin_of_the_argument_narrows_whatever_admits_it(
    parent: list[Any], args: dict[str, Any]
) -> None:
    """The converse direction, so the property above is not vacuous: an exact pin of a
    value the parent admits is recognised as narrower."""
    parent = validate_predicate(parent)
    simple = all(s[0] not in ("and", "or", "not") and s[1] == ".a" for s in parent)
    if "a" in args and simple and evaluate(parent, args) is Truth.TRUE:
        assert narrows([["==", ".a", args["a"]]], parent)


def test_the_readme_example() -> None:
    """README, "Argument predicates": the `ignore` example and what folding leaves apart."""
    where = {"to": {"==": "bob@corp.example", "ignore": ["case", "whitespace"]}}
    assert judge(where, {"to": " Bob@Corp.Example"}) is Truth.TRUE
    assert judge(where, {"to": "bob@corp.example.evil.example"}) is Truth.FALSE
    assert judge(case_pin("Straße"), {"name": "STRASSE"}) is Truth.TRUE
    assert fold("\u03c2") == fold("\u03c3") == fold("\u03a3")  # both sigmas, one letter
    assert judge(case_pin("i"), {"name": "\u0130"}) is Truth.FALSE
    assert judge(case_pin("A"), {"name": "\uff21"}) is Truth.FALSE
    assert judge(case_pin("o"), {"name": "\u043e"}) is Truth.FALSE  # Cyrillic o, U+043E


def test_a_chain_applies_both_links_whatever_narrows_says(world: World) -> None:
    """Parent case-insensitive, child exact: only the exact value passes. Parent exact,
    child case-insensitive: the parent still refuses the variant (scope is conjunctive)."""
    loose: list[Any] = [
        {"tool": "travel/book", "where": {"city": {"==": "paris", "ignore": "case"}}}
    ]
    exact: list[Any] = [{"tool": "travel/book", "where": {"city": "Paris"}}]
    guard = world.guard()
    for parent, child, passes in ((loose, exact, ["Paris"]), (exact, loose, ["Paris"])):
        root = Delegation.issue(world.org, world.alice, parent, ttl="1h", clock=world.clock)
        chain = root.attenuate(world.alice, world.bot, child, clock=world.clock)
        for city in ("Paris", "PARIS", "paris"):
            decision = guard.check(chain, "travel/book", {"city": city}, holder=world.bot)
            assert decision.allowed is (city in passes), (parent, child, city)
