"""Reason codes: one enum, every code the library emits is in it, and the README lists it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import agentguard
from agentguard import Outcome, Reason
from agentguard.errors import DeniedError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    *sorted((ROOT / "agentguard").rglob("*.py")),
    *sorted((ROOT / "adapters").glob("*/agentguard_*/**/*.py")),
]


def test_no_bare_reason_strings_remain_in_the_library() -> None:
    """``reason="..."`` and ``{"reason": "..."}`` literals are Reason members instead."""
    pattern = re.compile(r"""reason(?:=|"\s*:\s*)\s*"[a-z_]+\"""")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in SOURCES
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_every_refusal_class_defaults_to_a_reason_member() -> None:
    def subclasses(cls: type[DeniedError]) -> list[type[DeniedError]]:
        found = [cls]
        for sub in cls.__subclasses__():
            found += subclasses(sub)
        return found

    import agentguard_langchain  # noqa: F401 (its refusal classes)
    import agentguard_mcp.proxy  # noqa: F401

    for cls in subclasses(DeniedError):
        assert cls.default_reason in set(Reason), cls


def test_reasons_compare_and_serialise_as_their_plain_strings() -> None:
    import json

    assert Reason.REVOKED == "revoked"  # type: ignore[comparison-overlap]  # a StrEnum is its str
    assert json.dumps({"reason": Reason.REVOKED, "outcome": Outcome.DENY}) == (
        '{"reason": "revoked", "outcome": "deny"}'
    )
    assert agentguard.Reason is Reason


def test_the_readme_lists_every_reason_with_its_meaning() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Reason codes", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^\| `([a-z_]+)` \| (.+) \|$", section, re.M))
    assert set(listed) == {r.value for r in Reason}
    source = ast.parse((ROOT / "agentguard" / "decision.py").read_text(encoding="utf-8"))
    (enum,) = [n for n in source.body if isinstance(n, ast.ClassDef) and n.name == "Reason"]
    meanings = {
        node.value.value: after.value.value
        for node, after in zip(enum.body, enum.body[1:], strict=False)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(after, ast.Expr)
        and isinstance(after.value, ast.Constant)
    }
    assert listed == meanings
