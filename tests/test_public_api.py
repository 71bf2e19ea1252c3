"""The public API stays small, sorted and importable."""

import importlib

import agentguard


def test_all_is_sorted_and_importable() -> None:
    names = list(agentguard.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(agentguard, name), name


def test_public_modules_have_docstrings() -> None:
    """Every public module starts with a docstring saying what lives there."""
    for module in (
        "agentguard",
        "agentguard.addresses",
        "agentguard.approval",
        "agentguard.audit",
        "agentguard.clock",
        "agentguard.delegation",
        "agentguard.errors",
        "agentguard.guard",
        "agentguard.keys",
        "agentguard.policy",
        "agentguard.predicates",
        "agentguard.store",
        "agentguard.telemetry",
        "agentguard.testing",
        "agentguard.tokens",
        "agentguard.verify",
    ):
        doc = importlib.import_module(module).__doc__
        assert doc, module
        assert doc.strip(), module


def test_no_name_is_exported_twice() -> None:
    assert len(set(agentguard.__all__)) == len(agentguard.__all__)
