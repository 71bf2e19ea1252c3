"""`agentguard policy schema` accepts the policies we write and show (issue 18, item 3).

The schema is checked with a real JSON Schema validator against the policy
`agentguard init` writes, each commented example in it, the demo's policy and
the built-in defaults; and for durations, the schema and the loader agree on
every value, hostile ones included.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agentguard.cli.init import policy_template
from agentguard.errors import ConfigError
from agentguard.keys import Identity
from agentguard.policy import Policy, load_policy, policy_schema

VALIDATOR = jsonschema.Draft202012Validator(policy_schema())


def _problems(doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def _template() -> str:
    return policy_template("org:acme", "keys/org_acme.pub")


def _examples(template: str) -> list[dict[str, Any]]:
    """The template's commented ``Example:`` blocks, uncommented."""
    found = []
    for block in re.findall(r"# Example:\n((?:#   .*\n)+)", template):
        text = "".join(line[4:] + "\n" for line in block.splitlines())
        found.append(yaml.safe_load(text))
    return found


def test_the_schema_itself_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_schema())


def test_the_policy_init_writes_validates() -> None:
    """The template `agentguard init` fills in (durations like 7d) has no schema problem."""
    assert _problems(yaml.safe_load(_template())) == []


def test_every_commented_example_in_the_template_validates(tmp_path: Path) -> None:
    """Each example the template shows, put into the policy, passes the schema and the loader."""
    examples = _examples(_template())
    assert len(examples) == 3  # approvers, step_up, deny
    for example in examples:
        doc = {**yaml.safe_load(_template()), **example}
        assert _problems(doc) == [], example
        del doc["trusted_roots"]  # the key file is not there: the rest must load
        load_policy(doc)


def test_the_demo_policy_validates(tmp_path: Path) -> None:
    from examples.agentguard_demo.world import write_policy

    identities = {
        n: Identity.generate(p) for n, p in (("org", "org:acme"), ("alice", "user:alice"))
    }

    class Cast:
        org, alice = identities["org"], identities["alice"]

    path = write_policy(tmp_path, Cast())  # type: ignore[arg-type]
    assert _problems(yaml.safe_load(path.read_text())) == []


def test_the_defaults_validate() -> None:
    doc = json.loads(Policy().model_dump_json(exclude={"base_dir"}))
    assert _problems(doc) == []


DURATIONS: list[Any] = [
    "7d", "24h", "15m", "90s", "2w", "30", " 5m ", "000005s", "999999999s",
    30, 0.5, 1e6,
    "0", "0s", "00m", "-5m", "5 minutes", "7x", "", "1e3", "1234567890s", "5m5s", "d",
    0, -1, True, None, [], {},
]  # fmt: skip


@pytest.mark.parametrize("value", DURATIONS, ids=repr)
@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("limits", "max_root_ttl"),
        ("limits", "call_token_ttl"),
        ("limits", "leeway"),
        ("approval", "timeout"),
        ("approval", "reusable_for"),
    ],
)
def test_schema_and_loader_agree_on_durations(section: str, key: str, value: Any) -> None:
    """A duration the schema accepts is one the loader accepts, and the other way round.

    Bounds the loader adds on top (leeway at most 300 s, reusable_for at most 1 h)
    are not the schema's to say: a value past them is well formed for the schema.
    """
    doc = {section: {key: value}}
    try:
        load_policy(doc)
        loads = True
    except ConfigError as exc:
        loads = "300 seconds" in str(exc) or "at most 1h" in str(exc)
    assert (_problems(doc) == []) == loads, (doc, _problems(doc))
