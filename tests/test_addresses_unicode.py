"""Tool addresses and patterns are NFC text without control, format or bidi characters.

A right-to-left override (U+202E) or a zero-width character makes the address an
operator reads differ from the one a pattern matches; a decomposed accent makes
two spellings of one name. All are refused wherever an address or a pattern
enters: grants, call checks, policy files and the CLI.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.addresses import parse_address, pattern_matches, validate_pattern
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import ConfigError, DeniedError, InvalidAddressError, TokenFormatError
from agentguard.keys import Identity
from agentguard.policy import load_policy
from agentguard.tokens import Rule
from agentguard.verify import Verifier
from tests.test_verify_attacks import denial, hand_signed, segments

#: One of each kind: bidi overrides/isolates/marks, zero-width, BOM, soft hyphen, C0/C1, surrogate.
REFUSED = [
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u202a",  # LEFT-TO-RIGHT EMBEDDING
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2069",  # POP DIRECTIONAL ISOLATE
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "\u200b",  # ZERO WIDTH SPACE
    "\u200d",  # ZERO WIDTH JOINER
    "\ufeff",  # BYTE ORDER MARK
    "\u00ad",  # SOFT HYPHEN
    "\u2060",  # WORD JOINER
    "\U000e0041",  # TAG LATIN CAPITAL LETTER A
    "\x07",
    "\x9b",
    "\ud800",  # a lone surrogate
]


@pytest.mark.parametrize("char", REFUSED, ids=[f"U+{ord(c):04X}" for c in REFUSED])
def test_format_bidi_and_control_characters_are_refused(char: str) -> None:
    """Anywhere in the namespace or the tool part, in an address or a pattern."""
    for text in (f"tickets/re{char}ad", f"tick{char}ets/read", f"tickets/*{char}", f"{char}x/y"):
        with pytest.raises(InvalidAddressError, match="control characters"):
            parse_address(text.replace("*", "x"))
        with pytest.raises(InvalidAddressError, match="control characters"):
            validate_pattern(text)


def test_refusal_message_shows_the_character_escaped() -> None:
    """The message names the offending code point; it never prints a raw override."""
    with pytest.raises(InvalidAddressError) as info:
        parse_address("tickets/daer\u202e")
    assert "\u202e" not in str(info.value)
    assert "U+202E" in str(info.value)


def test_decomposed_text_is_refused_and_composed_text_is_fine() -> None:
    """``e`` + COMBINING ACUTE is not NFC; ``\\u00e9`` is, and stays usable."""
    with pytest.raises(InvalidAddressError, match="NFC"):
        parse_address("files/re\u0301sume\u0301")
    with pytest.raises(InvalidAddressError, match="NFC"):
        validate_pattern("files/re\u0301*")
    assert parse_address("files/r\u00e9sum\u00e9") == ("files", "r\u00e9sum\u00e9")
    assert pattern_matches(validate_pattern("files/r\u00e9*"), "files/r\u00e9sum\u00e9")


def test_a_grant_rule_with_an_override_cannot_be_issued() -> None:
    """Issuance refuses the pattern before anything is signed."""
    with pytest.raises(InvalidAddressError):
        Rule("tickets/\u202edaer")


def test_a_signed_grant_whose_pattern_has_an_override_is_refused(
    org: Identity, bot: Identity, clock: ManualClock, verifier: Verifier
) -> None:
    """A root grant signed by the trusted root itself, by hand, still does not verify."""
    good = Delegation.issue(org, bot, ["tickets/read"], ttl="1h", clock=clock)
    header, claims, _ = segments(good.root.token)
    claims["scope"] = [{"tool": "tickets/\u202edaer"}]
    forged = hand_signed(header, claims, org)
    denial(lambda: verifier.verify_chain(forged), TokenFormatError, "malformed_token")


def test_a_call_to_an_address_with_an_override_is_refused(
    chain: Delegation, verifier: Verifier
) -> None:
    """``tickets/*`` must not admit ``tickets/read\\u202e``: the call is an invalid tool."""
    verified = verifier.verify_chain(chain)
    denial(
        lambda: verifier.authorize(verified, "tickets/read\u202e", {}), DeniedError, "invalid_tool"
    )
    denial(
        lambda: verifier.authorize(verified, "tickets/re\u0301ad", {}), DeniedError, "invalid_tool"
    )


def test_a_policy_pattern_with_a_format_character_is_a_config_error() -> None:
    """``deny: [{tools: ["*/delete\\u200b*"]}]`` never silently matches nothing."""
    with pytest.raises(ConfigError, match="format, bidi or control"):
        load_policy({"deny": [{"tools": ["*/delete\u200b*"]}]})


_NAME = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=12
).map(lambda s: unicodedata.normalize("NFC", s))
_BAD = st.characters(categories=["Cc", "Cf", "Cs"])


@given(_NAME, _NAME, _BAD, st.integers(min_value=0, max_value=30))
@settings(max_examples=300, deadline=None)
def test_any_address_with_a_control_format_or_surrogate_char_is_refused(
    namespace: str, tool: str, bad: str, at: int
) -> None:
    """Inserting one Cc, Cf or Cs character anywhere makes an address and a pattern invalid."""
    address = f"{namespace}/{tool}"
    at = min(at, len(address))
    text = address[:at] + bad + address[at:]
    with pytest.raises(InvalidAddressError):
        parse_address(text)
    with pytest.raises(InvalidAddressError):
        validate_pattern(text)


@given(st.text(min_size=1, max_size=20))
@settings(max_examples=300, deadline=None)
def test_every_accepted_address_is_nfc_without_control_or_format_chars(text: str) -> None:
    """Whatever parse_address accepts is NFC and free of Cc, Cf and Cs characters."""
    address = f"ns/{text}"
    try:
        parse_address(address)
    except InvalidAddressError:
        return
    assert unicodedata.is_normalized("NFC", address)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in address)


def test_homoglyphs_are_a_documented_limit() -> None:
    """SECURITY.md says so: a Cyrillic small ie (U+0435) makes an address a pattern misses."""
    lookalike = "fs/d\u0435lete_x"
    assert parse_address(lookalike) == ("fs", "d\u0435lete_x")
    assert not pattern_matches("*/delete_*", lookalike)
