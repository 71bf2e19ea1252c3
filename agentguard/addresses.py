"""Tool addresses (``namespace/tool``) and the glob patterns that select them.

An address splits at the first ``/``: the namespace is the one an operator gives an MCP
server or a toolkit; the tool part may itself contain ``/`` or ``.``.
Patterns are case-sensitive globs where ``*`` matches any run of characters and
``?`` exactly one, except that a wildcard never crosses the first ``/``: in the
namespace part it matches no ``/`` at all. ``tickets/*`` is every tool of the
``tickets`` namespace; ``*/read_*`` is the ``read_`` tools of every namespace.

Addresses and patterns are NFC text without whitespace, control (Cc), format (Cf,
which includes every bidi control such as U+202E) or surrogate characters.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from agentguard.errors import InvalidAddressError

__all__ = [
    "compile_pattern",
    "parse_address",
    "pattern_matches",
    "patterns_overlap",
    "validate_pattern",
]

_MAX_ADDRESS = 256
# C0, DEL and C1 controls (\x9b is a one-byte terminal escape) and any Unicode whitespace.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# Control, format (every bidi control: U+202A-E, U+2066-9, U+200E/F, U+061C; zero-width
# characters, tags) and surrogate code points: they make the address a human reads differ
# from the one a pattern matches.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _check_unicode(text: str, what: str) -> None:
    for char in text:
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            raise InvalidAddressError(
                f"{what} contains U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')}): "
                "format, bidi or control characters are not allowed"
            )
    # One spelling per name: a decomposed accent must not make a second address.
    if not unicodedata.is_normalized("NFC", text):
        raise InvalidAddressError(f"{what} {text!r} is not in Unicode normal form NFC")


def _check_parts(text: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise InvalidAddressError(f"{what} must be a string")
    if len(text) > _MAX_ADDRESS:
        raise InvalidAddressError(f"{what} is longer than {_MAX_ADDRESS} characters")
    if _FORBIDDEN.search(text):
        raise InvalidAddressError(f"{what} {text!r} contains whitespace or control characters")
    if not text.isascii():  # ASCII (the usual case) has no format characters and is NFC
        _check_unicode(text, what)
    namespace, sep, tool = text.partition("/")
    if not sep or not namespace or not tool:
        raise InvalidAddressError(f"{what} {text!r} must have the form 'namespace/tool'")
    for segment in (namespace, *tool.split("/")):
        if segment in ("", ".", ".."):
            raise InvalidAddressError(f"{what} {text!r} has an empty, '.' or '..' segment")
    return namespace, tool


def parse_address(address: str) -> tuple[str, str]:
    """Split a concrete tool address into ``(namespace, tool)``.

    Raises:
        InvalidAddressError: the address is malformed or contains wildcards.
    """
    if type(address) is str:
        # Checked twice per guarded call (scope and call token): valid addresses
        # are remembered (a bounded cache; errors are never cached).
        return _parse_text(address)
    return _parse_text.__wrapped__(address)


@lru_cache(maxsize=1024)
def _parse_text(address: str) -> tuple[str, str]:
    namespace, tool = _check_parts(address, "tool address")
    if "*" in address or "?" in address:
        raise InvalidAddressError(f"tool address {address!r} must not contain wildcards")
    return namespace, tool


def validate_pattern(pattern: str) -> str:
    """Check a tool pattern and return it unchanged.

    Raises:
        InvalidAddressError: the pattern is malformed.
    """
    _check_parts(pattern, "tool pattern")
    return pattern


def _glob_regex(glob: str, *, slash_ok: bool) -> str:
    any_run = ".*" if slash_ok else "[^/]*"
    one = "." if slash_ok else "[^/]"
    out = []
    for ch in glob:
        if ch == "*":
            out.append(any_run)
        elif ch == "?":
            out.append(one)
        else:
            out.append(re.escape(ch))
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a validated pattern into an anchored regular expression.

    Raises:
        InvalidAddressError: the pattern is malformed.
    """
    namespace, tool = _check_parts(pattern, "tool pattern")
    # Consecutive stars are one star; this also keeps the regex linear.
    namespace = re.sub(r"\*+", "*", namespace)
    tool = re.sub(r"\*+", "*", tool)
    body = _glob_regex(namespace, slash_ok=False) + "/" + _glob_regex(tool, slash_ok=True)
    return re.compile(body, re.DOTALL)


@lru_cache(maxsize=4096)
def pattern_matches(pattern: str, address: str) -> bool:
    """Whether ``address`` is selected by ``pattern`` (both assumed validated)."""
    # Cached: every call re-checks every link's rules against the same few tools.
    # Not the regex of compile_pattern: patterns come from tokens any holder signs, and a
    # backtracking regex such as '*a*a*a...b' takes exponential time (ReDoS).
    p_ns, _, p_tool = pattern.partition("/")
    a_ns, sep, a_tool = address.partition("/")
    return bool(sep) and _wildcard_match(p_ns, a_ns) and _wildcard_match(p_tool, a_tool)


def _wildcard_match(glob: str, text: str) -> bool:
    """``*``/``?`` glob match in O(len(glob) * len(text)) at worst, without recursion.

    On a mismatch only the most recent ``*`` is retried one character further: a
    later star can absorb whatever an earlier one would have.
    """
    g = t = 0
    star, mark = -1, 0
    while t < len(text):
        if g < len(glob) and glob[g] == "*":
            star, mark = g, t
            g += 1
        elif g < len(glob) and glob[g] in ("?", text[t]):
            g += 1
            t += 1
        elif star >= 0:
            g, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while g < len(glob) and glob[g] == "*":
        g += 1
    return g == len(glob)


def _globs_overlap(a: str, b: str) -> bool:
    """Whether some string matches both globs (``*`` and ``?`` wildcards).

    ``ok[i][j]`` tells whether the suffixes ``a[i:]`` and ``b[j:]`` can match a
    common string; it is filled from the ends backwards.
    """
    n, m = len(a), len(b)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            if i < n and a[i] == "*":
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            elif j < m and b[j] == "*":
                ok[i][j] = ok[i][j + 1] or (i < n and ok[i + 1][j])
            elif i < n and j < m:
                ok[i][j] = (a[i] == b[j] or "?" in (a[i], b[j])) and ok[i + 1][j + 1]
    return ok[0][0]


def pattern_covers(broad: str, narrow: str) -> bool:
    """Whether every address ``narrow`` selects is also selected by ``broad``.

    Decided exactly when ``narrow`` is a plain address or the same pattern;
    otherwise answered ``False`` (unproven). Used only for issuance warnings.
    """
    if broad == narrow:
        return True
    if "*" in narrow or "?" in narrow:
        return False
    return pattern_matches(broad, narrow)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some tool address matches both patterns.

    Used at issuance to refuse child rules that could never be used because no
    parent rule reaches any tool they name.
    """
    a_ns, a_tool = _check_parts(a, "tool pattern")
    b_ns, b_tool = _check_parts(b, "tool pattern")
    return _globs_overlap(a_ns, b_ns) and _globs_overlap(a_tool, b_tool)
