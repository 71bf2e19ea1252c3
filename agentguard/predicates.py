"""Argument predicates: a small JSON language that constrains one tool call's arguments.

The canonical form, stored inside signed tokens, is a JSON array of statements
that must all hold. People write a friendlier object form
(``{"business_unit": "emea", "amount": {"<=": 100}}``) that
:func:`compile_predicate` turns into the canonical one.

Evaluation is deterministic, uses no regular expressions, runs under a node
budget and never raises. It is three-valued (:class:`Truth`): a statement is
true, false or *unknown*. Unknown means "cannot tell": a missing argument, a
value of another JSON type than the statement compares with (``"5000"`` under
``> 100``, ``["prod"]`` against ``"prod"``), a path that is not an absolute
POSIX path or holds a NUL byte, an exhausted budget. ``not``, ``and`` and
``or`` follow Kleene's tables (``not unknown`` is unknown). A rule that
*grants* admits only on :data:`Truth.TRUE` (:func:`admits`); a rule that
*restricts* applies unless the answer is :data:`Truth.FALSE` (:func:`restricts`).

Semantics worth knowing:

* Equality is JSON equality by kind: ``true`` never equals ``1``, ``1``
  equals ``1.0``; comparing values of different kinds (other than ``null``,
  which is simply unequal to everything else) is unknown, so ``!=`` never
  admits a value it cannot compare.
* ``within`` normalises both paths lexically with POSIX rules (``.`` and
  ``//`` collapse, ``..`` removes a segment, and ``/..`` is ``/``) and then
  compares them segment by segment. Its base must be an absolute path.
* ``==``, ``!=``, ``in`` and ``like`` take optional *modifiers*, a fourth
  element of the statement: ``["==", ".city", "Paris", ["case", "whitespace"]]``.
  ``whitespace`` compares after ``str.strip()`` (Unicode whitespace at either
  end); ``case`` compares after :func:`fold`. Both sides are normalised. A
  string argument is then compared as text; any other kind is judged as
  without modifiers (``null`` unequal, anything else unknown). Verifiers
  before modifiers existed refuse such a statement (wrong operand count), so
  a token using them fails closed there.
* ``["exists", SEL]`` is true when the selected field is present (any value,
  ``null`` included), false when an object lacks the key or an array is too
  short, and unknown when a value of another kind stands on the way.
"""

from __future__ import annotations

import enum
import json
import math
import operator
import string
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final, TypeAlias

from agentguard.errors import PredicateError
from agentguard.redaction import REDACTED, redact

__all__ = [
    "DEFAULT_BUDGET",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_STRING",
    "MODIFIERS",
    "Predicate",
    "Truth",
    "admits",
    "compile_predicate",
    "describe",
    "evaluate",
    "explain",
    "fold",
    "narrows",
    "parse_selector",
    "restricts",
    "root_fields",
    "validate_predicate",
]

Predicate: TypeAlias = list[Any]

DEFAULT_BUDGET: Final = 10_000
"""Statements, elements and compared values one evaluation may visit."""
MAX_DEPTH: Final = 32
"""Deepest array/object nesting allowed in a canonical predicate."""
MAX_NODES: Final = 1000
"""Most statements plus JSON values a predicate may contain."""
MAX_STRING: Final = 4096
"""Longest selector, string value or object key allowed in a predicate."""

MODIFIERS: Final = ("case", "whitespace")
"""Modifiers ``==``, ``!=``, ``in`` and ``like`` accept, in their canonical order."""

_ORDERING: Final = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FIELD_OPS: Final = ("==", "!=", "<", "<=", ">", ">=", "like", "in", "within")
# The operators that compare text and so accept modifiers.
_TEXT_OPS: Final = ("==", "!=", "in", "like")
_FRIENDLY_OPS: Final = (*_FIELD_OPS, "not", "all", "any", "exists", "ignore")
# Operand count (excluding the operator) of each canonical operator; the text
# operators take one more, optional: their modifiers.
_ARITY: Final = {
    **dict.fromkeys((*_FIELD_OPS, "all", "any"), 2),
    **dict.fromkeys(("not", "and", "or", "exists"), 1),
}
_OPS_TEXT: Final = ", ".join(_FRIENDLY_OPS)
_IDENT_START: Final = frozenset(string.ascii_letters + "_")
_IDENT_REST: Final = _IDENT_START | frozenset(string.digits + "-")
_ARRAY: Final = (list, tuple)
_MISSING: Final = object()
_DECODER: Final = json.JSONDecoder()


_KINDS: Final[dict[type, str]] = {bool: "a boolean", int: "a number", float: "a number"}
_KINDS.update({str: "a string", list: "an array", dict: "an object", type(None): "null"})


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), f"a {type(value).__name__}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@lru_cache(maxsize=1024)
def _parse_selector(sel: str) -> tuple[str | int, ...]:
    if not sel.startswith("."):
        raise PredicateError("a selector must start with '.'")
    if len(sel) > MAX_STRING:
        raise PredicateError(f"a selector is longer than {MAX_STRING} characters")
    if sel == ".":
        return ()
    parts: list[str | int] = []
    i, n = 0, len(sel)
    while i < n:
        if sel[i] == ".":
            i += 1
            if i < n and sel[i] in _IDENT_START:
                start = i
                while i < n and sel[i] in _IDENT_REST:
                    i += 1
                parts.append(sel[start:i])
                continue
        if i >= n or sel[i] != "[":
            raise PredicateError(f"malformed selector: expected a field name or '[' at offset {i}")
        i += 1
        if i < n and sel[i] == '"':
            try:
                key, i = _DECODER.raw_decode(sel, i)
            except ValueError:
                raise PredicateError("malformed selector: bad quoted key") from None
            parts.append(key)
        else:
            start = i
            i += 1 if i < n and sel[i] == "-" else 0
            digits = i
            while i < n and sel[i] in string.digits:
                i += 1
            if i == digits or (sel[digits] == "0" and i - digits > 1):
                raise PredicateError(f"malformed selector: bad index at offset {start}")
            parts.append(int(sel[start:i]))
        if i >= n or sel[i] != "]":
            raise PredicateError(f"malformed selector: expected ']' at offset {i}")
        i += 1
    return tuple(parts)


def parse_selector(sel: str) -> tuple[str | int, ...]:
    """Split a selector such as ``.items[0].name`` into keys and indexes.

    ``.`` is the root (an empty tuple); ``.["any key"]`` takes a JSON-quoted key;
    negative indexes count from the end of a list.

    Raises:
        PredicateError: the selector is not a string or does not follow the grammar.
    """
    if not isinstance(sel, str):
        raise PredicateError(f"a selector is a string, got {_kind(sel)}")
    return _parse_selector(sel)


def _checked_selector(sel: Any, path: str) -> str:
    try:
        parse_selector(sel)
    except PredicateError as exc:
        raise PredicateError(exc.detail, path=path) from None
    return str(sel)


def _select(root: Any, parts: tuple[str | int, ...]) -> Any:
    value = root
    for part in parts:
        if isinstance(part, str):
            if not isinstance(value, dict) or part not in value:
                return _MISSING
        elif not isinstance(value, _ARRAY) or not -len(value) <= part < len(value):
            return _MISSING
        value = value[part]
    return value


@lru_cache(maxsize=512)
def _glob_pieces(pattern: str) -> tuple[str, ...]:
    """Split a glob at its unescaped stars into the literal pieces between them."""
    pieces: list[str] = []
    current: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None or escaped not in "*\\":
                raise PredicateError("in a 'like' pattern '\\' must be followed by '*' or '\\'")
            current.append(escaped)
        elif ch == "*":
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return tuple(pieces)


def _glob_match(pieces: tuple[str, ...], text: str) -> bool:
    # With only '*' wildcards, placing each middle piece at its leftmost possible
    # position is optimal, so one forward scan decides: no backtracking.
    if len(pieces) == 1:
        return text == pieces[0]
    first, last = pieces[0], pieces[-1]
    end = len(text) - len(last)
    if end < len(first) or not text.startswith(first) or not text.endswith(last):
        return False
    pos = len(first)
    for piece in pieces[1:-1]:
        found = text.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _path_segments(path: str) -> tuple[str, ...] | None:
    """Normalise an absolute POSIX path lexically; None for anything else.

    ``.`` and empty segments vanish, ``..`` removes the segment before it and
    stays at the root above it (``/..`` is ``/``, as on every POSIX system).
    Relative paths, empty strings and NUL bytes have no answer here.
    """
    if not path.startswith("/") or "\0" in path:
        return None
    stack: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if stack:
                stack.pop()
        elif segment not in ("", "."):
            stack.append(segment)
    return tuple(stack)


class _Checker:
    """Walks a predicate, enforcing the grammar and size limits and building a copy."""

    def __init__(self) -> None:
        self.nodes = 0

    def enter(self, path: str, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise PredicateError(f"predicate has more than {MAX_NODES} nodes", path=path)
        if depth > MAX_DEPTH:
            raise PredicateError(f"predicate nests deeper than {MAX_DEPTH} levels", path=path)

    def statements(self, items: Any, path: str, depth: int) -> list[Any]:
        if not isinstance(items, list):
            raise PredicateError(f"expected an array of statements, got {_kind(items)}", path=path)
        self.enter(path, depth)
        return [self.statement(s, f"{path}[{i}]", depth + 1) for i, s in enumerate(items)]

    def statement(self, stmt: Any, path: str, depth: int) -> list[Any]:
        if not isinstance(stmt, list) or not stmt:
            raise PredicateError(f"a statement is a non-empty array, got {_kind(stmt)}", path=path)
        self.enter(path, depth)
        op = stmt[0]
        if not isinstance(op, str) or op not in _ARITY:
            detail = _short(op) if isinstance(op, str) else _kind(op)
            raise PredicateError(
                f"unknown operator {detail} (expected one of {', '.join(_ARITY)})",
                path=f"{path}[0]",
            )
        modified = op in _TEXT_OPS and len(stmt) == _ARITY[op] + 2
        if len(stmt) != _ARITY[op] + 1 and not modified:
            extra = " and optionally an array of modifiers" if op in _TEXT_OPS else ""
            raise PredicateError(
                f"'{op}' takes {_ARITY[op]} operand(s){extra}, got {len(stmt) - 1}", path=path
            )
        if op == "not":
            return [op, self.statement(stmt[1], f"{path}[1]", depth + 1)]
        if op in ("and", "or"):
            return [op, self.statements(stmt[1], f"{path}[1]", depth + 1)]
        selector = _checked_selector(stmt[1], f"{path}[1]")
        if op == "exists":
            return [op, selector]
        if op in ("all", "any"):
            return [op, selector, self.statement(stmt[2], f"{path}[2]", depth + 1)]
        if modified:
            mods = self.modifiers(stmt[3], f"{path}[3]", depth + 1)
            operand = self.operand(op, stmt[2], f"{path}[2]", depth + 1, text=True)
            return [op, selector, operand, mods]
        return [op, selector, self.operand(op, stmt[2], f"{path}[2]", depth + 1)]

    def modifiers(self, mods: Any, path: str, depth: int) -> list[str]:
        """A non-empty array of distinct modifier names, in the order of :data:`MODIFIERS`."""
        names = ", ".join(MODIFIERS)
        if not isinstance(mods, list) or not mods:
            raise PredicateError(f"modifiers are a non-empty array of: {names}", path=path)
        self.enter(path, depth)
        for i, mod in enumerate(mods):
            self.enter(f"{path}[{i}]", 0)
            if not isinstance(mod, str) or mod not in MODIFIERS:
                shown = _short(mod) if isinstance(mod, str) else _kind(mod)
                raise PredicateError(
                    f"unknown modifier {shown} (expected one of {names})", path=f"{path}[{i}]"
                )
        if mods != [m for m in MODIFIERS if m in mods]:
            raise PredicateError(f"modifiers must be distinct and in the order {names}", path=path)
        return list(mods)

    def operand(self, op: str, value: Any, path: str, depth: int, *, text: bool = False) -> Any:
        fits = (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
            if op == "in"
            else isinstance(value, str)
        )
        if text and not fits:
            wanted = "an array of strings" if op == "in" else "a string"
            raise PredicateError(
                f"'{op}' with modifiers needs {wanted}, got {_kind(value)}", path=path
            )
        if op in _ORDERING and not _is_number(value):
            raise PredicateError(f"'{op}' needs a number, got {_kind(value)}", path=path)
        if op in ("like", "within") and not isinstance(value, str):
            raise PredicateError(f"'{op}' needs a string, got {_kind(value)}", path=path)
        if op == "in" and not isinstance(value, list):
            raise PredicateError(f"'in' needs an array of values, got {_kind(value)}", path=path)
        copy = self.value(value, path, depth)
        if op == "like":
            try:
                _glob_pieces(copy)
            except PredicateError as exc:
                raise PredicateError(exc.detail, path=path) from None
        if op == "within" and _path_segments(copy) is None:
            raise PredicateError(
                "'within' needs an absolute path (starting with '/') without NUL bytes",
                path=path,
            )
        return copy

    def value(self, value: Any, path: str, depth: int) -> Any:
        self.enter(path, depth if isinstance(value, list | dict) else 0)  # scalars nest nothing
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise PredicateError("numbers must be finite", path=path)
            return value
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                raise PredicateError(f"string is longer than {MAX_STRING} characters", path=path)
            return value
        if isinstance(value, list):
            return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, dict):
            copy: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str) or len(key) > MAX_STRING:
                    raise PredicateError("object keys must be strings of sane length", path=path)
                copy[key] = self.value(item, f"{path}[{json.dumps(key)}]", depth + 1)
            return copy
        raise PredicateError(f"not a JSON value: {_kind(value)}", path=path)


def validate_predicate(canonical: Any) -> list[Any]:
    """Check a canonical predicate (e.g. one read from a token) and return a fresh copy.

    Raises:
        PredicateError: the predicate breaks the grammar or a size limit; ``path``
            locates the problem, e.g. ``$[0][2]``.
    """
    return _Checker().statements(canonical, "$", 1)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _symbolic(key: Any) -> bool:
    return isinstance(key, str) and bool(key) and set(key) <= set("=<>!~")


def _merge(statements: list[Any]) -> list[Any]:
    return statements[0] if len(statements) == 1 else ["and", statements]


class _Friendly:
    """Compiles the friendly object form; error paths name keys of the input."""

    def __init__(self) -> None:
        self.checker = _Checker()

    def obj(self, spec: Any, path: str, depth: int) -> list[Any]:
        if not isinstance(spec, dict):
            raise PredicateError(
                f"expected an object of field conditions, got {_kind(spec)}", path=path or "$"
            )
        self.checker.enter(path or "$", depth)
        out: list[Any] = []
        for key, cond in spec.items():
            here = _join(path, key)
            if not isinstance(key, str) or not key:
                raise PredicateError("field names must be non-empty strings", path=here or "$")
            if key.startswith("$"):
                out.append(self.reserved(key, cond, here, depth + 1))
            else:
                selector = key if key.startswith(".") else "." + key
                selector = _checked_selector(selector, here)
                out.extend(self.condition(selector, cond, here, depth + 1))
        return out

    def reserved(self, key: str, spec: Any, path: str, depth: int) -> list[Any]:
        if key == "$not":
            return ["not", _merge(self.obj(spec, path, depth))]
        if key not in ("$and", "$or"):
            raise PredicateError(
                f"unknown reserved key {_short(key)} (expected $and, $or or $not)", path=path
            )
        if not isinstance(spec, list):
            raise PredicateError(f"'{key}' needs an array of objects, got {_kind(spec)}", path=path)
        parts = [_merge(self.obj(s, f"{path}[{i}]", depth + 1)) for i, s in enumerate(spec)]
        return [key[1:], parts]

    def condition(self, selector: str, cond: Any, path: str, depth: int) -> list[Any]:
        if not isinstance(cond, dict):
            return [["==", selector, self.checker.value(cond, path, depth)]]
        if not cond:
            raise PredicateError(
                'empty condition; write {"==": {}} to match an empty object', path=path
            )
        self.checker.enter(path, depth)
        stray = [key for key in cond if key not in _FRIENDLY_OPS]
        # A key made of comparison symbols is a mistyped operator, not a field name.
        stray.sort(key=lambda k: not _symbolic(k))
        if stray and (len(stray) < len(cond) or _symbolic(stray[0])):
            raise PredicateError(
                f"unknown operator {_short(stray[0])} (expected one of {_OPS_TEXT})", path=path
            )
        if stray:
            raise PredicateError(
                'an object condition must hold operators only; write {"==": {...}} to match'
                ' an object, or a key such as "a.b" for a nested field',
                path=path,
            )
        mods = self.ignored(cond, path, depth)
        out: list[Any] = []
        for op, operand in cond.items():
            here = f"{path}.{op}"
            if op == "ignore":
                continue
            if op == "not":
                out.append(["not", _merge(self.condition(selector, operand, here, depth + 1))])
            elif op in ("all", "any"):
                out.append([op, selector, _merge(self.element(operand, here, depth + 1))])
            elif op == "exists":
                if not isinstance(operand, bool):
                    raise PredicateError(
                        f"'exists' needs true or false, got {_kind(operand)}", path=here
                    )
                out.append(["exists", selector] if operand else ["not", ["exists", selector]])
            elif mods:
                checked = self.checker.operand(op, operand, here, depth + 1, text=True)
                out.append([op, selector, checked, mods])
            else:
                out.append([op, selector, self.checker.operand(op, operand, here, depth + 1)])
        return out

    def ignored(self, cond: dict[str, Any], path: str, depth: int) -> list[str]:
        """The modifiers an ``ignore`` key gives the text operators of its object."""
        if "ignore" not in cond:
            return []
        here = f"{path}.ignore"
        spec = cond["ignore"]
        names = [spec] if isinstance(spec, str) else spec
        others = [op for op in cond if op != "ignore"]
        if not others or any(op not in _TEXT_OPS for op in others):
            raise PredicateError(
                "'ignore' applies to ==, !=, in and like, and may stand only beside them"
                " (write it inside 'not', 'all' or 'any')",
                path=here,
            )
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            names = [m for m in MODIFIERS if m in names] + [n for n in names if n not in MODIFIERS]
        return self.checker.modifiers(names, here, depth + 1)

    def element(self, spec: Any, path: str, depth: int) -> list[Any]:
        """Compile the per-element part of ``all``/``any``."""
        if isinstance(spec, dict) and spec:
            operators = [key for key in spec if key in _FRIENDLY_OPS]
            if len(operators) == len(spec):
                return self.condition(".", spec, path, depth)
            if operators:
                raise PredicateError(
                    f"mixes operators and field names (operator {_short(operators[0])});"
                    ' use the key "." for conditions on the element itself',
                    path=path,
                )
            return self.obj(spec, path, depth)
        if isinstance(spec, dict):
            return []
        return self.condition(".", spec, path, depth)


def compile_predicate(spec: Any) -> list[Any]:
    """Turn a friendly object (or an already canonical array) into a validated canonical copy.

    Friendly keys are selectors with the leading ``.`` optional (``"a.b"`` means
    ``.a.b``). A value is a literal compared with ``==`` or an object holding only
    operators (write ``{"==": {...}}`` to compare with an object). ``all``/``any``
    take a friendly object per element (key ``"."`` is the element), or an
    operator object or literal applied to the element itself. ``$and``, ``$or``
    and ``$not`` combine whole friendly objects.

    Raises:
        PredicateError: the input is malformed; ``path`` names the offending key
            (``amount.<=``) or, for canonical input, its position (``$[0][2]``).
    """
    if isinstance(spec, list):
        return validate_predicate(spec)
    if not isinstance(spec, dict):
        raise PredicateError(
            f"a predicate is an object (friendly form) or an array (canonical form),"
            f" got {_kind(spec)}"
        )
    return validate_predicate(_Friendly().obj(spec, "", 1))


class _BudgetExhausted(Exception):
    pass


class _Budget:
    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def spend(self, amount: int = 1) -> None:
        self.left -= amount
        if self.left < 0:
            raise _BudgetExhausted


class Truth(enum.Enum):
    """The answer of a three-valued evaluation."""

    FALSE = "false"
    TRUE = "true"
    UNKNOWN = "unknown"

    def __invert__(self) -> Truth:
        """Kleene negation: ``~UNKNOWN`` is ``UNKNOWN``."""
        if self is Truth.UNKNOWN:
            return self
        return Truth.FALSE if self is Truth.TRUE else Truth.TRUE


def _truth(value: bool) -> Truth:
    return Truth.TRUE if value else Truth.FALSE


def _all(answers: Iterable[Truth]) -> Truth:
    """Kleene conjunction: false wins, then unknown; empty is true."""
    result = Truth.TRUE
    for answer in answers:
        if answer is Truth.FALSE:
            return answer
        if answer is Truth.UNKNOWN:
            result = answer
    return result


def _any(answers: Iterable[Truth]) -> Truth:
    """Kleene disjunction: true wins, then unknown; empty is false."""
    result = Truth.FALSE
    for answer in answers:
        if answer is Truth.TRUE:
            return answer
        if answer is Truth.UNKNOWN:
            result = answer
    return result


def _json_kind(value: Any) -> str | None:
    """The JSON kind of a value, or None for anything that is not plain JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _ARRAY):
        return "array"
    return "object" if isinstance(value, dict) else None


def _equal(actual: Any, expected: Any, budget: _Budget) -> Truth:
    budget.spend()
    kind, wanted = _json_kind(actual), _json_kind(expected)
    if kind is None or wanted is None:
        return Truth.UNKNOWN
    if kind != wanted:
        # null is a value of its own, unequal to everything else; any other
        # mismatch ("5000" against 5000, ["prod"] against "prod") cannot be told.
        return Truth.FALSE if "null" in (kind, wanted) else Truth.UNKNOWN
    if kind == "array":
        if len(actual) != len(expected):
            return Truth.FALSE
        return _all(_equal(a, e, budget) for a, e in zip(actual, expected, strict=True))
    if kind == "object":
        if actual.keys() != expected.keys():
            return Truth.FALSE
        return _all(_equal(actual[key], expected[key], budget) for key in expected)
    return _truth(bool(actual == expected))


@lru_cache(maxsize=512)
def _base_segments(base: str) -> tuple[str, ...] | None:
    return _path_segments(base)


def _within(value: Any, base: str) -> Truth:
    if not isinstance(value, str):
        return Truth.UNKNOWN
    target, root = _path_segments(value), _base_segments(base)
    if target is None or root is None:
        return Truth.UNKNOWN
    return _truth(target[: len(root)] == root)


def fold(text: str) -> str:
    """Case-fold ``text`` the way the ``case`` modifier compares it: NFC, ``casefold()``, NFC.

    NFC first makes canonically equivalent spellings one (``e`` followed by
    U+0301 COMBINING ACUTE and the precomposed ``\u00e9``). ``str.casefold()``
    is Unicode full case folding without locale tailoring: ``Straße`` and
    ``STRASSE`` fold alike, and so do final sigma U+03C2 and U+03A3; Turkish
    dotted capital I (U+0130) folds to ``i`` plus U+0307, not to ``i``, and
    dotless i (U+0131) stays itself. The final NFC makes folding idempotent:
    casefold turns ``ß`` followed by U+0301 into ``ss`` and U+0301, which NFC
    composes into a new letter. It applies no compatibility mapping (NFKC), so
    fullwidth A (U+FF21) stays apart from ``A``, and maps no look-alikes:
    Cyrillic a (U+0430) is not Latin ``a``. The tables are those of the
    running Python's :mod:`unicodedata`.
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())


def _normalised(text: str, mods: Iterable[str]) -> str:
    """``text`` as the modifiers compare it: stripped (``whitespace``), then folded (``case``)."""
    if "whitespace" in mods:
        text = text.strip()
    return fold(text) if "case" in mods else text


@lru_cache(maxsize=1024)
def _normalised_operand(text: str, mods: tuple[str, ...]) -> str:
    return _normalised(text, mods)


@lru_cache(maxsize=512)
def _normalised_pieces(pattern: str, mods: tuple[str, ...]) -> tuple[str, ...]:
    if "whitespace" in mods:
        pattern = pattern.strip()
    pieces = _glob_pieces(pattern)
    return tuple(fold(p) for p in pieces) if "case" in mods else pieces


def _judge_text(op: str, value: Any, target: Any, mods: tuple[str, ...], budget: _Budget) -> Truth:
    """A text operator with modifiers: strings compare normalised, other kinds as usual."""
    if op == "like":
        pieces = _normalised_pieces(target, mods)
        budget.spend(len(pieces))
        if not isinstance(value, str):
            return Truth.UNKNOWN
        return _truth(_glob_match(pieces, _normalised(value, mods)))
    options = target if op == "in" else [target]
    if not isinstance(value, str):
        # null is unequal to a string; any other kind cannot be told.
        answer = _any(_equal(value, option, budget) for option in options)
    else:
        budget.spend(len(options))
        text = _normalised(value, mods)
        answer = _truth(any(text == _normalised_operand(o, mods) for o in options))
    return ~answer if op == "!=" else answer


def _exists(root: Any, parts: tuple[str | int, ...]) -> Truth:
    if _absent(root, parts):
        return Truth.FALSE
    return Truth.UNKNOWN if _select(root, parts) is _MISSING else Truth.TRUE


def _judge(stmt: Any, root: Any, budget: _Budget) -> Truth:
    budget.spend()
    op = stmt[0]
    if op == "not":
        return ~_judge(stmt[1], root, budget)
    if op == "and":
        return _all(_judge(s, root, budget) for s in stmt[1])
    if op == "or":
        return _any(_judge(s, root, budget) for s in stmt[1])
    if op == "exists":
        return _exists(root, _parse_selector(stmt[1]))
    value = _select(root, _parse_selector(stmt[1]))
    if value is _MISSING:
        return Truth.UNKNOWN
    target = stmt[2]
    if len(stmt) == 4 and op in _TEXT_OPS:
        return _judge_text(op, value, target, tuple(stmt[3]), budget)
    if op in ("all", "any"):
        if not isinstance(value, _ARRAY):
            return Truth.UNKNOWN
        combine = _all if op == "all" else _any
        return combine(_judge(target, v, budget) for v in value)
    if op == "==":
        return _equal(value, target, budget)
    if op == "!=":
        return ~_equal(value, target, budget)
    if op in _ORDERING:
        if not (_is_number(value) and _is_number(target)) or _json_kind(value) is None:
            return Truth.UNKNOWN
        return _truth(bool(_ORDERING[op](value, target)))
    if op == "like":
        pieces = _glob_pieces(target)
        budget.spend(len(pieces))
        return _truth(_glob_match(pieces, value)) if isinstance(value, str) else Truth.UNKNOWN
    if op == "in" and isinstance(target, list):
        return _any(_equal(value, option, budget) for option in target)
    if op == "within" and isinstance(target, str):
        return _within(value, target)
    raise ValueError("malformed statement")


def evaluate(predicate: list[Any], args: Any, *, budget: int = DEFAULT_BUDGET) -> Truth:
    """Judge ``args`` against every statement of a canonical predicate (three-valued).

    ``budget`` caps the statements, list elements and compared values visited.
    This function never raises: running out of budget, or any problem with a
    predicate that was not validated, is :data:`Truth.UNKNOWN`.
    """
    if type(predicate) is list and len(predicate) == 1 and type(args) is dict:
        try:
            answer = _fast(predicate[0], args, budget)
        except Exception:  # noqa: BLE001 - whatever broke it, the general path decides
            answer = None
        if answer is not None:
            return answer
    return _evaluate(predicate, args, budget)


#: The operators :func:`_fast` may answer for; the others go to the general path.
_FAST_OPS: Final = frozenset(("==", "!=", "<", "<=", ">", ">=", "like", "in", "within"))


@lru_cache(maxsize=1024)
def _top_field(sel: str) -> str | None:
    """The field a selector names when it is one top-level key (``.name``), else None."""
    try:
        parts = _parse_selector(sel)
    except PredicateError:
        return None
    return parts[0] if len(parts) == 1 and isinstance(parts[0], str) else None


def _fast(stmt: Any, args: dict[str, Any], budget: int) -> Truth | None:
    """The answer of the general path to one statement, for the shapes most rules
    carry, or None to leave the statement to it.

    Answers a top-level field compared with ``==``, ``!=``, ``like``, ``in``
    (strings) or ``within``, or ordered against a number, without modifiers, when
    the budget covers the most the general path would spend on it. A missing
    field is unknown, as there. Any other shape or kind of value (a nested
    selector, a string subclass, a number under ``==``, an object) is None.
    ``tests/test_predicates_fast.py`` holds the two paths to the same answers.
    """
    if type(stmt) is not list or len(stmt) != 3 or budget < 2:
        return None
    op, sel, target = stmt
    if type(sel) is not str or type(op) is not str or op not in _FAST_OPS:
        return None
    name = _top_field(sel)
    if name is None:
        return None
    value = args.get(name, _MISSING)
    if value is _MISSING:
        return Truth.UNKNOWN
    kind = type(value)
    if op in _ORDERING:
        if (kind is int or (kind is float and math.isfinite(value))) and type(target) in (
            int,
            float,
        ):
            return Truth.TRUE if _ORDERING[op](value, target) else Truth.FALSE
        return None
    if kind is not str:
        return None
    if op == "in":
        if type(target) is not list or len(target) >= budget:
            return None
        for option in target:
            if type(option) is not str:
                return None
        return Truth.TRUE if value in target else Truth.FALSE
    if type(target) is not str:
        return None
    if op == "==":
        return Truth.TRUE if value == target else Truth.FALSE
    if op == "!=":
        return Truth.FALSE if value == target else Truth.TRUE
    if op == "within":
        return _within(value, target)
    try:  # like
        pieces = _glob_pieces(target)
    except PredicateError:
        return None
    if len(pieces) >= budget:
        return None
    return Truth.TRUE if _glob_match(pieces, value) else Truth.FALSE


def _evaluate(predicate: Any, args: Any, budget: int) -> Truth:
    """The general path of :func:`evaluate`: every statement, every shape."""
    try:
        meter = _Budget(budget)
        if not isinstance(predicate, list):
            return Truth.UNKNOWN
        return _all(_judge(s, args, meter) for s in predicate)
    except Exception:  # noqa: BLE001 - budget, garbage predicates, recursion: all unknown
        return Truth.UNKNOWN


def admits(predicate: list[Any] | None, args: Any, *, budget: int = DEFAULT_BUDGET) -> bool:
    """Whether a granting rule's predicate lets the call through: only on definite truth.

    No predicate admits everything.
    """
    return predicate is None or evaluate(predicate, args, budget=budget) is Truth.TRUE


def restricts(
    predicate: list[Any] | None,
    args: Any,
    *,
    budget: int = DEFAULT_BUDGET,
    skip_if_missing: bool = False,
) -> bool:
    """Whether a restricting rule (deny, step-up, approval) applies: unless definitely false.

    With ``skip_if_missing`` the rule steps aside for a call that lacks one of
    the top-level arguments its predicate names (:func:`root_fields`); a
    restricting rule otherwise applies to such calls.
    """
    if predicate is None:
        return True
    if skip_if_missing:
        try:
            absent = any(_absent(args, parts) for parts in root_fields(predicate))
        except (PredicateError, TypeError, ValueError, IndexError):
            absent = False  # a malformed predicate cannot prove anything absent
        if absent:
            return False
    return evaluate(predicate, args, budget=budget) is not Truth.FALSE


def _absent(root: Any, parts: tuple[str | int, ...]) -> bool:
    """Whether the selected field is provably not there: an object lacks the key, or
    an array is too short. A value of the wrong type on the way (a string where an
    object was expected) is not absence: it may be parsed into one further on."""
    value = root
    for part in parts:
        if isinstance(part, str) and isinstance(value, dict):
            if part not in value:
                return True
        elif isinstance(part, int) and isinstance(value, _ARRAY):
            if not -len(value) <= part < len(value):
                return True
        else:
            return False
        value = value[part]
    return False


def root_fields(predicate: list[Any]) -> list[tuple[str | int, ...]]:
    """The selectors of a canonical predicate that read the call's arguments directly.

    Selectors inside ``all``/``any`` read list elements, not the arguments, and
    are not listed; nor are those of ``exists``, whose answer for a missing
    argument is a definite false.

    Raises:
        PredicateError: a selector is malformed (the predicate was not validated).
    """
    found: list[tuple[str | int, ...]] = []
    pending: list[Any] = list(predicate)
    while pending:
        stmt = pending.pop()
        op = stmt[0]
        if op == "not":
            pending.append(stmt[1])
        elif op in ("and", "or"):
            pending.extend(stmt[1])
        elif op != "exists":
            parts = parse_selector(stmt[1])
            if parts and parts not in found:
                found.append(parts)
    return found


def _field(selector: str) -> str:
    return selector[1:] if len(selector) > 1 and selector[1] != "[" else selector


def _literal(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _grouped(stmt: Any) -> str:
    text = _describe(stmt)
    compound = stmt[0] in ("and", "or") and len(stmt[1]) > 1
    return f"({text})" if compound else text


def _describe(stmt: Any) -> str:
    op = stmt[0]
    if op == "not":
        inner = stmt[1]
        if inner[0] == "exists":
            return f"{_field(inner[1])} is absent"
        return f"not {_grouped(inner)}"
    if op in ("and", "or"):
        if not stmt[1]:
            return "true" if op == "and" else "false"
        return f" {op} ".join(_grouped(s) for s in stmt[1])
    if op in ("all", "any"):
        return f"{op} of {_field(stmt[1])} ({_describe(stmt[2])})"
    if op == "exists":
        return f"{_field(stmt[1])} exists"
    return f"{_field(stmt[1])} {_operation(stmt)}"


def _operation(stmt: Any) -> str:
    """The operator, operand and modifiers of a field statement: ``== "x" (ignoring case)``."""
    text = f"{stmt[0]} {_literal(stmt[2])}"
    if len(stmt) == 4:
        text += f" (ignoring {', '.join(stmt[3])})"
    return text


def describe(predicate: list[Any]) -> str:
    """Render a canonical predicate as short text, e.g. ``amount <= 100 and tag == "x"``.

    Meant for people (CLI, audit explanations); a malformed predicate yields
    ``"<malformed predicate>"`` rather than an exception.
    """
    try:
        if len(predicate) == 1:
            return _describe(predicate[0])
        return " and ".join(_grouped(s) for s in predicate) if predicate else "true"
    except Exception:  # noqa: BLE001 - a description must never break the caller's error path
        return "<malformed predicate>"


# -- narrowing ----------------------------------------------------------------------------


def narrows(child: list[Any], parent: list[Any]) -> bool:
    """Whether ``child`` provably admits nothing that ``parent`` does not: every call it
    judges true, ``parent`` judges true as well.

    A sound, incomplete check over canonical predicates: ``False`` means "not
    shown", never "wider". It recognises the same statement; a conjunction
    whose part narrows; pins (``==``, ``in``) whose values the parent's statement
    on the same field admits, where the pin's modifiers are among the parent's
    (an exact pin narrows a case-insensitive pin of the same folded value; a
    case-insensitive pin never narrows an exact one); numeric bounds; ``within``
    under a base inside the parent's; and any comparison of a field under
    ``exists`` of that field or a field on its way. Evaluation stays
    conjunctive whatever this says: a child's rule never widens its parent's.
    """
    try:
        return all(_implied(child, goal) for goal in parent)
    except Exception:  # noqa: BLE001 - not shown is the safe answer for garbage
        return False


def _implied(facts: list[Any], goal: Any) -> bool:
    """Whether the conjunction ``facts`` makes ``goal`` true."""
    if goal[0] == "and":
        return all(_implied(facts, g) for g in goal[1])
    if goal[0] == "or" and any(_implied(facts, g) for g in goal[1]):
        return True
    for fact in facts:
        if fact[0] == "and" and _implied(fact[1], goal):
            return True
        if fact[0] == "or" and fact[1] and all(_implied([f], goal) for f in fact[1]):
            return True
        if _same(fact, goal) or _fact_implies(fact, goal):
            return True
    return False


def _same(a: Any, b: Any) -> bool:
    # Compared as JSON text: in Python 1 == True and 1 == 1.0, which here differ.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _fact_implies(fact: Any, goal: Any) -> bool:
    op, gop = fact[0], goal[0]
    if op in ("not", "and", "or") or gop in ("not", "and", "or"):
        return False
    where, gwhere = _parse_selector(fact[1]), _parse_selector(goal[1])
    if gop == "exists":
        # Any field statement that is true has read its field, so the field is there.
        return gwhere == where[: len(gwhere)]
    if where != gwhere:
        return False
    if op in ("==", "in"):
        mods = tuple(fact[3]) if len(fact) == 4 else ()
        pins = [fact[2]] if op == "==" else fact[2]
        return bool(pins) and all(_pin_implies(pin, mods, goal) for pin in pins)
    if op in _ORDERING and gop in _ORDERING:
        return _bound_implies(op, fact[2], gop, goal[2])
    if op == gop == "within":
        inner, outer = _path_segments(fact[2]), _path_segments(goal[2])
        return inner is not None and outer is not None and inner[: len(outer)] == outer
    return False


def _pin_implies(pin: Any, mods: tuple[str, ...], goal: Any) -> bool:
    """Whether every value the pin admits satisfies ``goal`` (on the same field)."""
    if mods:
        # The pin admits every string that normalises like it; the goal can only be
        # judged on the normalised text when it normalises at least as much, since
        # stripping and folding commute.
        goal_mods = tuple(goal[3]) if len(goal) == 4 and goal[0] in _TEXT_OPS else ()
        if not isinstance(pin, str) or not set(mods) <= set(goal_mods):
            return False
    # The pin admits only values JSON-equal to it (or normalising alike): the goal
    # judges all of them as it judges the pin.
    return evaluate([[goal[0], ".", *goal[2:]]], pin) is Truth.TRUE


_UPPER: Final = ("<", "<=")


def _bound_implies(op: str, bound: Any, gop: str, gbound: Any) -> bool:
    if (op in _UPPER) != (gop in _UPPER):
        return False
    if op in _UPPER:
        return bool(bound < gbound or (bound == gbound and (op == "<" or gop == "<=")))
    return bool(bound > gbound or (bound == gbound and (op == ">" or gop == ">=")))


# -- why a predicate does not hold ----------------------------------------------------------


def explain(predicate: list[Any], args: Any, *, redact_fields: Iterable[str] | None = ()) -> str:
    """Say which argument keeps ``predicate`` from being true, for the operator.

    Names the argument, its value as the audit record would show it (any
    argument whose name, or the name of a field on its way, is in
    ``redact_fields`` shows as ``[redacted]``, case-insensitively; nested
    secret fields are masked; control, format and line-separator characters
    are escaped; long values are cut) and the statement that failed, e.g.
    ``argument amount = 5000 fails <= 100``. With ``redact_fields=None`` no
    value is shown at all (``[not shown]``). Never raises; an empty string when the
    predicate is true or cannot be explained. Not for the model: it carries
    argument values.
    """
    try:
        names = None if redact_fields is None else frozenset(f.lower() for f in redact_fields)
        lines = _why(predicate, args, (), names, _Budget(DEFAULT_BUDGET))
        return "; ".join(dict.fromkeys(lines))
    except Exception:  # noqa: BLE001 - an explanation must never break the caller's error path
        return ""


def _why(
    stmts: list[Any],
    root: Any,
    at: tuple[str | int, ...],
    names: frozenset[str] | None,
    meter: _Budget,
) -> list[str]:
    out: list[str] = []
    for stmt in stmts:
        if _judge(stmt, root, meter) is not Truth.TRUE:
            out.extend(_why_one(stmt, root, at, names, meter))
    return out


def _why_one(
    stmt: Any, root: Any, at: tuple[str | int, ...], names: frozenset[str] | None, meter: _Budget
) -> list[str]:
    op = stmt[0]
    if op == "and":
        return _why(stmt[1], root, at, names, meter)
    if op in ("or", "not"):
        read = _reads([stmt], root, at, names)
        return [f"{read or 'the arguments'}: fails {_describe(stmt)}"]
    where = _parse_selector(stmt[1])
    here = at + where
    value = _select(root, where)
    if op == "exists":
        state = "cannot be reached" if value is _MISSING else "is present"
        state = "is missing" if _absent(root, where) else state
        return [f"{_arg(here)} {state}: fails exists"]
    if value is _MISSING:
        return [f"{_arg(here)} is missing: fails {_operation_text(stmt)}"]
    if op == "all" and isinstance(value, _ARRAY):
        for index, item in enumerate(value):
            if _judge(stmt[2], item, meter) is not Truth.TRUE:
                return _why_one(stmt[2], item, (*here, index), names, meter)
    shown = f"{_arg(here)} = {_shown(value, here, names)}"
    if _judge(stmt, root, meter) is Truth.UNKNOWN:
        return [
            f"{shown} ({_kind(value)}): cannot tell whether it satisfies {_operation_text(stmt)}"
        ]
    return [f"{shown} fails {_operation_text(stmt)}"]


def _reads(
    stmts: list[Any], root: Any, at: tuple[str | int, ...], names: frozenset[str] | None
) -> str:
    """The top-level fields a compound statement reads, with their values."""
    fields: dict[tuple[str | int, ...], str] = {}
    pending = list(stmts)
    while pending and len(fields) < 3:
        stmt = pending.pop(0)
        if stmt[0] == "not":
            pending.append(stmt[1])
        elif stmt[0] in ("and", "or"):
            pending.extend(stmt[1])
        else:
            where = _parse_selector(stmt[1])
            value = _select(root, where)
            shown = "missing" if value is _MISSING else _shown(value, at + where, names)
            fields.setdefault(at + where, f"{_arg(at + where)} = {shown}")
    return ", ".join(fields.values())


def _operation_text(stmt: Any) -> str:
    op = stmt[0]
    if op in ("all", "any"):
        return f"{op} ({_describe(stmt[2])})"
    return "exists" if op == "exists" else _operation(stmt)


def _arg(parts: tuple[str | int, ...]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part and set(part) <= _IDENT_REST and part[0] in _IDENT_START:
            text += f".{part}" if text else part
        else:
            text += f"[{_escaped(json.dumps(part, ensure_ascii=False))}]"
    return f"argument {text or '(the arguments)'}"


def _shown(value: Any, parts: tuple[str | int, ...], names: frozenset[str] | None) -> str:
    if names is None:
        return "[not shown]"
    if any(isinstance(p, str) and p.lower() in names for p in parts):
        return REDACTED
    text = json.dumps(redact(value, names), ensure_ascii=False, default=repr)
    text = _escaped(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _escaped(text: str) -> str:
    """Control, format (bidi) and line-separator characters as escapes: one line, no tricks."""
    return "".join(
        f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch
        for ch in text
    )
