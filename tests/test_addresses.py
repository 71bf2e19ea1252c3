"""Tests for agentguard.addresses: the ``namespace/tool`` grammar and tool globs."""

from __future__ import annotations

import subprocess
import sys
from typing import SupportsIndex

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agentguard.addresses import (
    _wildcard_match,
    compile_pattern,
    parse_address,
    pattern_matches,
    patterns_overlap,
    validate_pattern,
)
from agentguard.errors import InvalidAddressError

# --- grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("tickets/read", ("tickets", "read")),
        ("fs/read_file", ("fs", "read_file")),
        ("github/repos/list", ("github", "repos/list")),
        ("server.v2/tool.name", ("server.v2", "tool.name")),
        ("a-b_c/x-y_z", ("a-b_c", "x-y_z")),
        ("Tickets/Read", ("Tickets", "Read")),
        ("ns/..x", ("ns", "..x")),
    ],
)
def test_valid_addresses_split_at_the_first_slash(address: str, parts: tuple[str, str]) -> None:
    assert parse_address(address) == parts


@pytest.mark.parametrize(
    "address",
    [
        "",
        "tickets",
        "tickets/",
        "/read",
        "/",
        "tickets//read",
        "tickets/read/",
        "tickets/./read",
        "tickets/../billing/refund",
        "tickets/..",
        "tickets/.",
        "../read",
        "./read",
        "..//read",
    ],
)
def test_addresses_with_empty_or_dot_parts_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddressError):
        parse_address(address)
    with pytest.raises(InvalidAddressError):
        validate_pattern(address)


@pytest.mark.parametrize(
    "address",
    [
        "tickets/re ad",
        " tickets/read",
        "tickets/read ",
        "tickets/read\t",
        "tickets/read\n",
        "tickets\r/read",
        "tickets/read\x00",
        "tickets/read\x1b[2J",
        "tickets/read\x7f",
        "tickets/read\x85",
        "tickets/read\x9b31m",
        "tickets/read\u00a0x",
        "tickets/read\u2028",
        "tickets/read\u3000",
    ],
)
def test_addresses_with_whitespace_or_control_characters_are_refused(address: str) -> None:
    with pytest.raises(InvalidAddressError, match="whitespace or control"):
        parse_address(address)
    with pytest.raises(InvalidAddressError, match="whitespace or control"):
        validate_pattern(address)


@pytest.mark.parametrize("address", ["tickets/*", "*/read", "tickets/re?d", "t*/read"])
def test_concrete_addresses_may_not_contain_wildcards(address: str) -> None:
    with pytest.raises(InvalidAddressError, match="wildcards"):
        parse_address(address)
    assert validate_pattern(address) == address


def test_overlong_addresses_are_refused() -> None:
    with pytest.raises(InvalidAddressError, match="longer than"):
        parse_address("ns/" + "a" * 300)
    with pytest.raises(InvalidAddressError, match="longer than"):
        validate_pattern("ns/" + "*" * 300)


@pytest.mark.parametrize("value", [None, 42, b"tickets/read"])
def test_non_string_addresses_are_refused(value: object) -> None:
    with pytest.raises(InvalidAddressError, match="must be a string"):
        parse_address(value)  # type: ignore[arg-type]


def test_invalid_address_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="namespace/tool"):
        parse_address("tickets")


# --- glob semantics --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("tickets/read", "tickets/read", True),
        ("tickets/read", "tickets/reads", False),
        ("tickets/*", "tickets/read", True),
        ("tickets/*", "tickets/a/b", True),
        ("tickets/*", "tickets2/read", False),
        ("tickets/*", "billing/tickets", False),
        ("tickets/a/*", "tickets/a/b/c", True),
        ("tickets/a/*", "tickets/ab", False),
        ("*/read_*", "fs/read_file", True),
        ("*/read_*", "tickets/read_", True),
        ("*/read_*", "fs/write_file", False),
        ("*/read_*", "fs/dir/read_file", False),
        ("*/*", "a/b/c", True),
        ("*/c", "a/b/c", False),
        ("ti*/x", "ti/cke/x", False),
        ("ti*/x", "tickets/x", True),
        ("*s/read", "tickets/read", True),
        ("t?ckets/read", "tickets/read", True),
        ("t?ckets/read", "tiickets/read", False),
        ("tickets/r?ad", "tickets/r/ad", True),
        ("tickets/**", "tickets/a/b", True),
        ("**/read", "a/b/read", False),
        ("tickets/re.d", "tickets/read", False),
        ("tickets/re+d", "tickets/reed", False),
        ("tickets/[r]ead", "tickets/read", False),
    ],
)
def test_pattern_matching(pattern: str, address: str, expected: bool) -> None:
    assert pattern_matches(pattern, address) is expected


@pytest.mark.parametrize(
    ("pattern", "address"),
    [
        ("Tickets/*", "tickets/read"),
        ("tickets/*", "Tickets/read"),
        ("tickets/Read", "tickets/read"),
        ("*/READ_*", "fs/read_file"),
    ],
)
def test_patterns_are_case_sensitive(pattern: str, address: str) -> None:
    assert not pattern_matches(pattern, address)


def test_namespace_wildcard_never_matches_a_slash() -> None:
    """Whatever the address, ``*`` in the namespace part stops at the first ``/``."""
    regex = compile_pattern("*/x")
    assert regex.fullmatch("a/x")
    assert not regex.fullmatch("a/b/x")
    assert not compile_pattern("?/x").fullmatch("//x")


class _CountedText(str):
    """An address part that counts how often the matcher reads a character of it.

    Past ``budget`` reads it raises, so a matcher that backtracks exponentially
    fails at once instead of hanging the test run.
    """

    budget: int
    reads: int

    def __new__(cls, value: str, budget: int) -> _CountedText:
        text = super().__new__(cls, value)
        text.budget, text.reads = budget, 0
        return text

    def __getitem__(self, index: SupportsIndex | slice) -> str:
        self.reads += 1
        if self.reads > self.budget:
            raise AssertionError(f"more than {self.budget} reads: the matcher is not O(n*m)")
        return str.__getitem__(self, index)


ADVERSARIAL = [
    ("*a" * 40 + "b", "a" * 200, False),
    ("*a" * 40 + "b", "a" * 200 + "b", True),
    ("a*" * 50 + "c", "a" * 300, False),
    ("*?" * 30 + "*x", "y" * 400, False),
    ("*ab" * 25, "ab" * 24 + "a" * 200, False),
]


@pytest.mark.parametrize(("glob", "text", "expected"), ADVERSARIAL)
def test_many_stars_stay_linear(glob: str, text: str, expected: bool) -> None:
    """Adversarial globs read each address character O(len(glob)) times at most.

    The bound is counted in reads, not measured in seconds: a regression to a
    backtracking matcher fails on the budget instead of hanging.
    """
    counted = _CountedText(text, budget=(len(glob) + 1) * (len(text) + 1))
    assert _wildcard_match(glob, counted) is expected
    assert counted.reads >= len(text)  # the matcher really read the address through it


def test_many_stars_stay_linear_through_the_public_matcher() -> None:
    """The same inputs through ``pattern_matches`` in a child process that cannot hang us.

    Whatever the matcher becomes (even a C regex that no counter sees), a
    catastrophic case ends in ``TimeoutExpired`` and a killed child, not a stuck run.
    """
    code = (
        "import sys\n"
        "from agentguard.addresses import pattern_matches\n"
        f"cases = {ADVERSARIAL!r}\n"
        "print([pattern_matches('ns/' + g, 'ns/' + t) for g, t, _ in cases])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr([expected for _, _, expected in ADVERSARIAL])


# --- overlap ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("tickets/*", "tickets/read", True),
        ("tickets/*", "tickets/a/b", True),
        ("tickets/*", "billing/*", False),
        ("tickets/read", "tickets/write", False),
        ("*/read_*", "fs/*", True),
        ("*/read_*", "fs/write", False),
        ("*/read_*", "*/*_file", True),
        ("a*/x", "*b/x", True),
        ("t?/x", "tx/x", True),
        ("t?/x", "t/x", False),
        ("*/*", "anything/at/all", True),
        ("Tickets/*", "tickets/*", False),
        ("fs/read_*", "fs/*_log", True),
        ("fs/read_?", "fs/read_ab", False),
    ],
)
def test_patterns_overlap(a: str, b: str, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


@pytest.mark.parametrize(
    ("a", "b", "witness"),
    [
        ("a*/x", "*b/x", "ab/x"),
        ("*/read_*", "*/*_file", "ns/read_file"),
        ("fs/read_*", "fs/*_log", "fs/read_log"),
    ],
)
def test_overlap_has_a_witness(a: str, b: str, witness: str) -> None:
    assert pattern_matches(a, witness)
    assert pattern_matches(b, witness)


def test_overlap_validates_both_patterns() -> None:
    with pytest.raises(InvalidAddressError):
        patterns_overlap("tickets", "tickets/*")
    with pytest.raises(InvalidAddressError):
        patterns_overlap("tickets/*", "tickets/../x")


_GLOB_CHARS = st.sampled_from(["a", "b", "/", "*", "?"])
_TEXT_CHARS = st.sampled_from(["a", "b", "/"])


@settings(max_examples=300, deadline=None, database=None)
@given(
    ns=st.text(st.sampled_from(["a", "b", "*", "?"]), min_size=1, max_size=4),
    tool=st.text(_GLOB_CHARS, min_size=1, max_size=6),
    address=st.text(_TEXT_CHARS, min_size=3, max_size=8),
)
def test_matching_agrees_with_the_anchored_regex(ns: str, tool: str, address: str) -> None:
    """The backtracking-free matcher decides exactly like the reference regex."""
    pattern = f"{ns}/{tool}"
    assume("//" not in pattern and not pattern.endswith("/") and "/" in address)
    expected = compile_pattern(pattern).fullmatch(address) is not None
    assert pattern_matches(pattern, address) is expected
