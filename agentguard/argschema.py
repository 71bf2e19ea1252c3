"""Tool arguments checked against the tool's own JSON Schema, before any decision.

A guard decides on the arguments it is given; the tool may read them
differently (an upstream MCP server turning ``"5000"`` into ``5000``, a JSON
string into a list). :func:`check_arguments` refuses arguments that do not
already conform to the tool's input schema exactly, so what the guard decides
on is what the tool receives:

* strict JSON types, no coercion: ``"5000"`` is not an integer, ``"true"`` not
  a boolean, a string holding a JSON array not an array;
* argument names the schema does not declare are refused, at every level of
  an object schema, unless the schema allows them explicitly
  (``additionalProperties`` true or a subschema, ``unevaluatedProperties``,
  or a matching ``patternProperties``);
* the ``$schema`` dialect is honoured (default Draft 2020-12);
* a schema that cannot be applied (malformed, an unknown dialect, a ``$ref``
  that does not resolve inside the schema, a pattern that does not compile,
  too large or too deep) is a refusal too: nothing is fetched from the
  network and nothing falls back to "allow".

Compiled validators are cached by the schema's canonical JSON.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

import jsonschema
import referencing
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator

from agentguard.errors import AgentGuardError

__all__ = [
    "MAX_DEPTH",
    "MAX_SCHEMA_CHARS",
    "ArgumentSchemaError",
    "check_arguments",
    "fill_defaults",
]

#: Largest schema (characters of its canonical JSON) that is applied; larger is refused.
MAX_SCHEMA_CHARS = 256 * 1024
#: Deepest nesting of a schema, or of arguments, that is checked; deeper is refused.
#: The validator recurses, so the bound keeps it far from Python's recursion limit.
MAX_DEPTH = 64

_PATH_CHARS = 120
_NAME_CHARS = 64
_NAMES_SHOWN = 3
_ERRORS_RANKED = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_COMPOSITION = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else", "$ref", "dependencies")
# Keywords whose subschemas describe a value (so an object there is a fresh set of
# names), as opposed to composition keywords, which describe the same value again.
_VALUE_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_VALUE_ONE = ("additionalProperties", "items", "additionalItems", "contains")
_VALUE_LIST = ("prefixItems", "items")
_APPLICATOR_ONE = ("not", "if", "then", "else")
_APPLICATOR_LIST = ("allOf", "anyOf", "oneOf")
_APPLICATOR_MAPS = ("dependentSchemas",)
_MODERN = (jsonschema.Draft201909Validator, jsonschema.Draft202012Validator)
#: The dialects ``$schema`` may name (with or without the trailing ``#``).
_DIALECTS: dict[str, type[Validator]] = {
    str(cls.META_SCHEMA["$schema"]).rstrip("#"): cls
    for cls in (
        jsonschema.Draft4Validator,
        jsonschema.Draft6Validator,
        jsonschema.Draft7Validator,
        *_MODERN,
    )
}
_DEFAULT_DIALECT = str(jsonschema.Draft202012Validator.META_SCHEMA["$schema"])
_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


class ArgumentSchemaError(AgentGuardError, ValueError):
    """Arguments do not conform to the tool's input schema, or the schema cannot be applied.

    The message names the argument path and what is wrong, never an argument
    value; names are escaped and cut to a bounded length.

    Attributes:
        path: where the problem is, e.g. ``$.amount`` or ``$["odd name"][0]``
            (``$`` for the arguments as a whole or the schema itself).
        keyword: the JSON Schema keyword that failed (``type``,
            ``unevaluatedProperties``, ...), or ``schema`` when the schema
            itself is unusable.
        problem: the description without the path.
    """

    def __init__(self, problem: str, *, path: str = "$", keyword: str = "schema") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.keyword = keyword
        self.problem = problem


def check_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """Refuse ``arguments`` unless they conform to ``schema`` exactly (see the module doc).

    Raises:
        ArgumentSchemaError: the arguments do not conform, or the schema is
            invalid or cannot be applied (fail closed).
    """
    validator = _compiled(schema)
    if not isinstance(arguments, Mapping):
        raise ArgumentSchemaError("arguments must be an object", keyword="type")
    if _deeper(arguments, MAX_DEPTH):
        raise ArgumentSchemaError(f"arguments nest deeper than {MAX_DEPTH} levels", keyword="depth")
    try:
        error = best_match(itertools.islice(validator.iter_errors(dict(arguments)), _ERRORS_RANKED))
    except Exception:  # noqa: BLE001 - a schema that cannot be applied refuses (fail closed)
        raise ArgumentSchemaError(
            "the tool's schema cannot be applied (e.g. a $ref it does not define)"
        ) from None
    if error is not None:
        raise _explained(error)


def fill_defaults(
    schema: Mapping[str, Any], arguments: Mapping[str, Any]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The arguments with every omitted top-level argument the schema gives a default
    for filled in, and the names filled (sorted).

    Only the schema's own ``properties`` are read (not ``$ref``, ``allOf`` and
    the like, nor nested objects): a guard then judges, and the tool receives,
    the values the schema says an omitted argument takes, rather than whatever
    the tool would pick. A default that is not plain JSON is not filled. Check
    the result with :func:`check_arguments`, as any other arguments.

    Raises:
        ArgumentSchemaError: ``schema`` or ``arguments`` is not an object.
    """
    if not isinstance(schema, Mapping):
        raise ArgumentSchemaError("the tool's schema is not a JSON object")
    if not isinstance(arguments, Mapping):
        raise ArgumentSchemaError("arguments must be an object", keyword="type")
    filled = dict(arguments)
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return filled, ()
    names: list[str] = []
    for name, spec in properties.items():
        if name in filled or not isinstance(spec, Mapping) or "default" not in spec:
            continue
        try:
            default = json.loads(json.dumps(spec["default"], allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            continue
        filled[name] = default
        names.append(name)
    return filled, tuple(sorted(names))


def _compiled(schema: Mapping[str, Any]) -> Validator:
    if not isinstance(schema, Mapping):
        raise ArgumentSchemaError("the tool's schema is not a JSON object")
    if _deeper(schema, MAX_DEPTH):
        raise ArgumentSchemaError(f"the tool's schema nests deeper than {MAX_DEPTH} levels")
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise ArgumentSchemaError("the tool's schema is not JSON") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise ArgumentSchemaError(f"the tool's schema is larger than {MAX_SCHEMA_CHARS} characters")
    result = _compile(text)
    if isinstance(result, ArgumentSchemaError):
        raise ArgumentSchemaError(result.problem, path=result.path, keyword=result.keyword)
    return result


@lru_cache(maxsize=64)
def _compile(text: str) -> Validator | ArgumentSchemaError:
    """A validator for the schema in canonical JSON ``text``, or why there is none (cached too)."""
    schema = json.loads(text)
    dialect = schema.get("$schema", _DEFAULT_DIALECT)
    cls = _DIALECTS.get(dialect.rstrip("#")) if isinstance(dialect, str) else None
    if cls is None:
        return ArgumentSchemaError("the tool's schema uses an unknown dialect ($schema)")
    try:
        cls.check_schema(schema)
        strict = _strict(schema, modern=issubclass(cls, _MODERN))
    except jsonschema.SchemaError as exc:
        keyword = exc.validator if isinstance(exc.validator, str) else "schema"
        problem = "a pattern does not compile" if exc.validator == "format" else "it is invalid"
        return ArgumentSchemaError(f"the tool's schema cannot be used: {problem} ({keyword})")
    except ArgumentSchemaError as exc:
        return exc
    except RecursionError:
        return ArgumentSchemaError("the tool's schema is too complex to check")
    # An empty registry that retrieves nothing: only references inside the schema
    # (and the dialects' own meta-schemas) resolve; a remote $ref is never fetched.
    validator: Validator = cls(strict, registry=referencing.Registry())
    return validator


def _strict(schema: dict[str, Any], *, modern: bool) -> dict[str, Any]:
    """``schema`` with undeclared argument names refused wherever the schema did not decide.

    Each object schema in a value position (the root, a property, an item, a
    definition) that sets neither ``additionalProperties`` nor
    ``unevaluatedProperties`` gets ``unevaluatedProperties: false``, which
    sees through ``allOf``/``$ref``/``if`` and friends (2019-09 and later). Older
    dialects have only ``additionalProperties``, which does not: there an object
    schema that composes others without saying is refused, since which names
    it allows cannot be told.
    """
    pending: list[tuple[Any, bool, bool]] = [(schema, True, True)]  # node, value position, root
    while pending:
        node, value_position, root = pending.pop()
        if not isinstance(node, dict):
            continue
        if value_position and _undecided_object(node, root=root):
            if modern:
                node["unevaluatedProperties"] = False
            elif any(k in node for k in _COMPOSITION):
                raise ArgumentSchemaError(
                    "the tool's schema composes object schemas without additionalProperties "
                    "(a pre-2019 dialect): which argument names it allows cannot be told",
                    keyword="additionalProperties",
                )
            else:
                node["additionalProperties"] = False
        pending.extend((child, True, False) for child in _children(node, _VALUE_MAPS, _VALUE_ONE))
        for key in _VALUE_LIST:
            if isinstance(node.get(key), list):
                pending.extend((child, True, False) for child in node[key])
        pending.extend(
            (child, False, False) for child in _children(node, _APPLICATOR_MAPS, _APPLICATOR_ONE)
        )
        for key in _APPLICATOR_LIST:
            if isinstance(node.get(key), list):
                pending.extend((child, False, False) for child in node[key])
    return schema


def _children(node: dict[str, Any], maps: tuple[str, ...], ones: tuple[str, ...]) -> Iterator[Any]:
    for key in maps:
        value = node.get(key)
        if isinstance(value, dict):
            yield from value.values()
    for key in ones:
        if key in node and not isinstance(node[key], list):
            yield node[key]


def _undecided_object(node: dict[str, Any], *, root: bool) -> bool:
    if "additionalProperties" in node or "unevaluatedProperties" in node:
        return False
    kind = node.get("type")
    looks_like_object = (
        "properties" in node
        or "patternProperties" in node
        or kind == "object"
        or (isinstance(kind, list) and "object" in kind)
    )
    # A tool's arguments are always an object: the root is one even when it says nothing.
    return looks_like_object or root


def _deeper(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (no recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, Mapping | list | tuple):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, Mapping) else item
            pending.extend((child, depth + 1) for child in children)
    return False


# -- what the refusal says ------------------------------------------------------------------------


def _explained(error: ValidationError) -> ArgumentSchemaError:
    path = _path(error.absolute_path)
    if error.validator is None:  # a ``false`` subschema
        return ArgumentSchemaError("no value is allowed here", path=path, keyword="false")
    keyword = str(error.validator)
    expected = error.validator_value
    instance = error.instance
    if keyword == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        names = " or ".join(str(t) for t in wanted if isinstance(t, str)) or "another type"
        problem = f"expected {names}, got {_kind(instance)} (values are not converted)"
    elif keyword in ("additionalProperties", "unevaluatedProperties"):
        problem = _extra_names(error)
    elif keyword == "required":
        wanted = expected if isinstance(expected, list) else []
        missing = [n for n in wanted if isinstance(instance, dict) and n not in instance]
        problem = f"missing required argument {_names(missing)}"
    elif keyword in ("enum", "const"):
        problem = "not one of the values the tool allows"
    elif keyword in ("anyOf", "oneOf"):
        problem = f"does not match the alternatives the tool allows ({keyword})"
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        problem = f"violates {keyword} {expected}"
    else:
        problem = f"does not satisfy {keyword!r}"
    return ArgumentSchemaError(problem, path=path, keyword=keyword)


def _extra_names(error: ValidationError) -> str:
    instance = error.instance if isinstance(error.instance, dict) else {}
    schema = error.schema if isinstance(error.schema, dict) else {}
    generic = "has arguments the tool's schema does not declare"
    if any(k in schema for k in _COMPOSITION) or "dependentSchemas" in schema:
        return generic  # names declared by composed subschemas: not worth re-deriving here
    declared = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    if not isinstance(declared, dict) or not isinstance(patterns, dict):
        return generic
    extra = [
        name
        for name in instance
        if name not in declared and not any(_search(p, name) for p in patterns)
    ]
    if not extra:
        return generic
    noun = "argument" if len(extra) == 1 else "arguments"
    return f"unexpected {noun} {_names(extra)} (not declared by the tool's schema)"


def _search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _names(names: list[Any]) -> str:
    shown = ", ".join(_quoted(str(n)) for n in names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _quoted(name: str) -> str:
    """A name as JSON (ASCII, every control character escaped), cut to a bounded length."""
    text = json.dumps(name[:_NAME_CHARS], ensure_ascii=True)
    return text[:-1] + '…"' if len(name) > _NAME_CHARS else text


def _path(parts: Any) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.match(part) and len(part) <= _NAME_CHARS:
            out += f".{part}"
        else:
            out += f"[{_quoted(str(part))}]"
        if len(out) > _PATH_CHARS:
            return out[:_PATH_CHARS] + "…"
    return out


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)
