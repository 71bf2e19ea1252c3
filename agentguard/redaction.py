"""Redaction: masking secret-named fields before anything is shown or recorded.

Audit records, traces and approval requests show arguments through
:func:`redact`; an approver's edit keeps the marker where it leaves a secret
alone, and :func:`restore_redacted` puts the caller's value back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["REDACTED", "redact", "restore_redacted", "sets_redacted_field"]

REDACTED = "[redacted]"

#: Values _redact returns as they are (short strings are checked inline too).
_KEPT = frozenset({type(None), bool, int, float})


def redact(value: Any, fields: Iterable[str], *, depth: int = 0) -> Any:
    """A copy of ``value`` in which every mapping key named in ``fields`` is masked.

    Matching is case-insensitive and applies at any depth; very deep or very
    large structures are summarised rather than copied.
    """
    return _redact(value, _lowered(fields), depth)


def _lowered(fields: Iterable[str]) -> frozenset[str]:
    """The field names, lowercased (remembered per tuple of names: every audit record
    and traced call redacts with the policy's same few names)."""
    names = fields if isinstance(fields, tuple) else tuple(fields)
    try:
        return _lowered_names(names)
    except TypeError:  # an unhashable name: refused by lower() below, as before
        return frozenset(f.lower() for f in names)


@lru_cache(maxsize=64)
def _lowered_names(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(f.lower() for f in names)


def _redact(value: Any, names: frozenset[str], depth: int) -> Any:
    if depth > 16:
        return "[too deep]"
    if type(value) is dict or isinstance(value, Mapping):
        deeper = depth + 1
        out = {}
        for k, v in list(value.items())[:200]:
            key = str(k)
            if key.lower() in names:
                out[key] = REDACTED
            elif deeper <= 16 and (type(v) in _KEPT or (type(v) is str and len(v) <= 1000)):
                out[key] = v  # what _redact returns for it, without the call
            else:
                out[key] = _redact(v, names, deeper)
        return out
    if isinstance(value, list | tuple):
        return [_redact(v, names, depth + 1) for v in value[:200]]
    if isinstance(value, str) and len(value) > 1000:
        return value[:1000] + "...[truncated]"
    return value


def sets_redacted_field(edited: Any, fields: Iterable[str]) -> bool:
    """Whether an edit writes a value (other than the marker) under a redacted key."""
    names = {f.lower() for f in fields}

    def walk(value: Any, depth: int) -> bool:
        if depth > 16:
            return True
        if isinstance(value, Mapping):
            return any(
                (str(k).lower() in names and v != REDACTED) or walk(v, depth + 1)
                for k, v in value.items()
            )
        if isinstance(value, list | tuple):
            return any(walk(v, depth + 1) for v in value)
        return False

    return walk(edited, 0)


def restore_redacted(edited: Any, original: Any, fields: Iterable[str]) -> Any:
    """``edited`` with every redaction marker under a redacted key replaced by the
    caller's original value at the same place (dropped when there is none).

    Approvers only ever see redacted values, so an edit keeps the marker where
    it leaves a secret alone; the secret itself never travels through the
    approval path or its receipt.
    """
    names = {f.lower() for f in fields}
    missing = object()

    def walk(value: Any, source: Any) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                before = source.get(key, missing) if isinstance(source, Mapping) else missing
                if str(key).lower() in names and item == REDACTED:
                    if before is not missing:
                        out[key] = before
                    continue
                out[key] = walk(item, None if before is missing else before)
            return out
        if isinstance(value, list):
            items = source if isinstance(source, list) else []
            return [walk(v, items[i] if i < len(items) else None) for i, v in enumerate(value)]
        return value

    return walk(edited, original)
