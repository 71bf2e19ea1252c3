"""The policy file: a template-like file loads; every class of mistake is a one-line ConfigError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from agentguard.errors import ConfigError
from agentguard.keys import Identity
from agentguard.policy import Policy, PolicyError, load_policy, policy_schema

TEMPLATE = """\
# agentguard policy: who is trusted, who approves, what is forbidden.
version: 1

trusted_roots:
  - id: org:acme
    key_file: keys/org_acme.pub

approvers:
  - id: user:carol
    tools: ["*/*"]
    min_assurance: signed

step_up:
  - tools: ["billing/refund"]
    where: {amount: {">": 100}}
    reason: large refunds need a human
    min_assurance: authenticated

deny:
  - tools: ["*/delete_*"]
    reason: nothing deletes in production

limits:
  max_root_ttl: 7d
  max_link_ttl: 24h
  max_chain_length: 5
  require_purpose: true
  require_sponsor: true
  call_token_ttl: 30s
  leeway: 5s

redact: [password, secret, token, api_key]

approval:
  channel: queue
  timeout: 5m
  mode: block
  reusable_for: 2m
  separation_of_duties: true

storage:
  home: .agentguard
  durability: normal

shadow: false
guard_id: service:agentguard
"""


def write_root_key(directory: Path) -> Identity:
    """Put ``org:acme``'s public key where the template's ``key_file`` points."""
    org = Identity.generate("org:acme")
    keys = directory / "keys"
    keys.mkdir(exist_ok=True)
    doc = {"id": org.id, "jwk": org.principal.public_jwk()}
    (keys / "org_acme.pub").write_text(json.dumps(doc), encoding="utf-8")
    return org


def load_text(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "agentguard.yaml"
    path.write_text(text, encoding="utf-8")
    return load_policy(path)


def config_error(tmp_path: Path, text: str) -> str:
    """The message of the ConfigError loading ``text`` raises (asserted to be one line)."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text).root_principals()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_template_policy_loads_and_resolves_key_files(tmp_path: Path) -> None:
    org = write_root_key(tmp_path)
    policy = load_text(tmp_path, TEMPLATE)
    assert [p.kid for p in policy.root_principals()] == [org.kid]
    assert policy.limits.max_root_ttl == 7 * 86400
    assert policy.limits.max_link_ttl == 86400
    assert policy.limits.call_token_ttl == 30
    assert policy.approval.timeout == 300
    assert policy.approval.reusable_for == 120
    assert policy.step_up[0].matches("billing/refund", {"amount": 500})
    assert not policy.step_up[0].matches("billing/refund", {"amount": 50})
    assert policy.deny[0].matches("db/delete_all", {})
    assert policy.base_dir == str(tmp_path.resolve())


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    policy = load_text(tmp_path, "# nothing yet\n")
    assert policy.trusted_roots == []
    assert policy.approval.channel == "none"
    assert not policy.shadow


def test_mapping_source_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^policy: limits\.max_hops: unknown key$"):
        load_policy({"limits": {"max_hops": 3}})


@pytest.mark.parametrize(
    ("text", "line", "path", "what"),
    [
        pytest.param(
            "version: 1\nlimits:\n  max_chain_length: 3\n  max_hops: 2\n",
            4,
            "limits.max_hops",
            "unknown key",
            id="unknown-key",
        ),
        pytest.param(
            "version: 1\nshadow: maybe\n",
            2,
            "shadow",
            "boolean",
            id="wrong-type",
        ),
        pytest.param(
            "limits:\n  max_chain_length: many\n",
            2,
            "limits.max_chain_length",
            "integer",
            id="wrong-type-nested",
        ),
        pytest.param(
            "deny:\n  - tools: ['tickets']\n",
            2,
            "deny[0].tools",
            "",
            id="bad-tool-pattern",
        ),
        pytest.param(
            "approvers:\n  - id: user:carol\n    tools: ['a/../b']\n",
            3,
            "approvers[0].tools",
            "",
            id="bad-approver-pattern",
        ),
        pytest.param(
            "step_up:\n  - tools: ['billing/*']\n    where: {amount: {'=~': 3}}\n",
            3,
            "step_up[0].where",
            "",
            id="bad-predicate",
        ),
        pytest.param(
            "limits:\n  max_link_ttl: 3 fortnights\n",
            2,
            "limits.max_link_ttl",
            "invalid duration",
            id="bad-duration",
        ),
        pytest.param(
            "approval:\n  timeout: -5\n",
            2,
            "approval.timeout",
            "positive",
            id="negative-duration",
        ),
        pytest.param(
            "trusted_roots:\n  - id: acme\n    key_file: k.pub\n",
            2,
            "trusted_roots[0].id",
            "",
            id="bad-principal-id",
        ),
        pytest.param(
            "approval:\n  channel: carrier-pigeon\n",
            2,
            "approval.channel",
            "",
            id="bad-literal",
        ),
    ],
)
def test_bad_file_names_file_line_and_key_path(
    tmp_path: Path, text: str, line: int, path: str, what: str
) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'agentguard.yaml'}:{line}: {path}: "), message
    assert what in message


def test_missing_root_key_file_names_the_root(tmp_path: Path) -> None:
    message = config_error(
        tmp_path, "trusted_roots:\n  - id: org:acme\n    key_file: keys/nowhere.pub\n"
    )
    assert "trusted_roots[0] (org:acme)" in message
    assert "keys/nowhere.pub" in message
    assert "does not exist" in message


def test_root_needs_exactly_one_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "trusted_roots:\n  - id: org:acme\n")
    assert ":2: trusted_roots[0]: " in message
    assert "exactly one of public_key or key_file" in message


def test_corrupt_root_key_file(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("{not json", encoding="utf-8")
    message = config_error(tmp_path, "trusted_roots:\n  - id: org:acme\n    key_file: k.pub\n")
    assert "trusted_roots[0] (org:acme): cannot load key" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, "version: 1\nlimits:\n  max_chain_length: [1, 2\nshadow: x\n")
    assert re.match(rf"^{re.escape(str(tmp_path / 'agentguard.yaml'))}:\d+: ", message), message


def test_every_problem_is_named_with_its_line(tmp_path: Path) -> None:
    """All three problems, in file order, each with file:line (the error is a PolicyError)."""
    message = config_error(tmp_path, "shadow: maybe\nbogus: 1\nlimits: {max_hops: 1}\n")
    name = str(tmp_path / "agentguard.yaml")
    with pytest.raises(PolicyError) as info:
        load_text(tmp_path, "shadow: maybe\nbogus: 1\nlimits: {max_hops: 1}\n")
    assert [p.split(": ")[0] for p in info.value.problems] == [
        f"{name}:1",
        f"{name}:2",
        f"{name}:3",
    ]
    assert message == "; ".join(info.value.problems)
    assert "limits.max_hops: unknown key" in message


def test_unknown_keys_get_the_closest_known_key(tmp_path: Path) -> None:
    """approver -> approvers, min_asurance -> min_assurance (in a list item), none for nonsense."""
    text = "approver: []\ndeny:\n  - tools: [a/b]\n    min_asurance: local\nqqqq: 1\n"
    with pytest.raises(PolicyError) as info:
        load_text(tmp_path, text)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        "approver: unknown key (did you mean 'approvers'?)",
        "deny[0].min_asurance: unknown key (did you mean 'min_assurance'?)",
        "qqqq: unknown key",
    ]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "- a\n- b\n")
    assert "must be a mapping" in message


def test_unreadable_policy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path)  # a directory


def test_python_object_tags_are_refused(tmp_path: Path) -> None:
    """A YAML tag that would build Python objects fails as a ConfigError; nothing runs."""
    marker = tmp_path / "pwned"
    text = (
        "shadow: !!python/object/apply:os.system\n"
        f"  - 'touch {marker}'\n"
        "guard_id: !!python/name:os.system\n"
    )
    message = config_error(tmp_path, text)
    assert "agentguard.yaml:1:" in message
    assert not marker.exists()


def test_deep_nesting_fails_cleanly(tmp_path: Path) -> None:
    deep = "[" * 5000 + "]" * 5000
    message = config_error(tmp_path, f"redact: {deep}\n")
    assert message.startswith(str(tmp_path / "agentguard.yaml"))


def test_deep_nesting_in_predicate_fails_cleanly(tmp_path: Path) -> None:
    where = "{not: " * 300 + "{a: 1}" + "}" * 300
    message = config_error(tmp_path, f"step_up:\n  - tools: ['a/b']\n    where: {where}\n")
    assert "step_up[0].where" in message


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    message = config_error(tmp_path, "# padding\n" * 200_000)
    assert "larger than 1000000 bytes" in message


def test_alias_bomb_fails_cleanly(tmp_path: Path) -> None:
    """Billion-laughs aliases expand into a big structure; validation must still answer quickly."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("redact: *a6")
    message = config_error(tmp_path, "\n".join(lines) + "\n")
    assert "agentguard.yaml" in message


def test_schema_is_valid_json_schema_naming_the_top_level_keys() -> None:
    schema = policy_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    properties = set(schema["properties"])
    for key in (
        "version",
        "trusted_roots",
        "approvers",
        "step_up",
        "deny",
        "limits",
        "redact",
        "approval",
        "storage",
        "shadow",
    ):
        assert key in properties
    assert "base_dir" not in properties
    assert schema["additionalProperties"] is False
    json.dumps(schema)


def test_schema_accepts_a_valid_document_and_refuses_unknown_keys() -> None:
    validator = jsonschema.Draft202012Validator(policy_schema())
    assert validator.is_valid({"version": 1, "shadow": True, "limits": {"max_chain_length": 3}})
    assert not validator.is_valid({"version": 1, "bogus": 1})


@pytest.mark.parametrize("tools", [None, 7, {"a": 1}, [1], ["ok/*", None]])
def test_non_pattern_tools_are_a_config_error(tools: object) -> None:
    """Found by atheris: `tools:` left empty (null) raised a bare TypeError."""
    for section in ("approvers", "deny", "step_up"):
        entry: dict[str, object] = {"tools": tools}
        if section == "approvers":
            entry["id"] = "user:carol"
        with pytest.raises(ConfigError, match=rf"{section}\[0\]\.tools"):
            load_policy({section: [entry]})
