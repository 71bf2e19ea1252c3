"""atheris harness: predicates (canonical and friendly forms) and their evaluation.

.venv/bin/python fuzz/fuzz_predicate.py -max_total_time=60 build/fuzz/predicate
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from _world import seed

    from agentguard.errors import AgentGuardError
    from agentguard.predicates import Truth, compile_predicate, evaluate, validate_predicate

SEEDS = [
    {"predicate": [["==", ".business_unit", "emea"]], "args": {"business_unit": "emea"}},
    {"predicate": {"amount": {"<=": 100}}, "args": {"amount": 5}},
    {"predicate": [["within", ".path", "/data"]], "args": {"path": "/data/../etc/passwd"}},
    {"predicate": [["all", ".items", ["like", ".name", "a*b*"]]], "args": {"items": [{}]}},
    {"predicate": [["or", [["in", ".x", [1, 2, "3"]], ["not", [">", ".y", 1.5]]]]], "args": {}},
]


def test_one_input(data: bytes) -> None:
    """Parse the input as JSON {"predicate": ..., "args": ...}; validate, compile, evaluate."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return
    if not isinstance(doc, dict):
        return
    for parse in (validate_predicate, compile_predicate):
        try:
            predicate = parse(doc.get("predicate"))
        except AgentGuardError:
            continue
        result = evaluate(predicate, doc.get("args"))
        if not isinstance(result, Truth):
            raise AssertionError("evaluate returned something other than a Truth")


def main() -> None:
    seed(json.dumps(s).encode() for s in SEEDS)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
