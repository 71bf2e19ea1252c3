"""``agentguard init --approver ID``: the policy it writes lets that person approve at once.

Everything goes through real files: the CLI writes the policy, keys and state
database; a guard opened on the same home files the request; the CLI approves it
with the approver's own key; the guard then runs the call once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.testing import RecordingTool

from .cli.cli_support import CLI, grant, one_line_error

TOOL = "admin/reset"
ARGS: dict[str, Any] = {"target": "db1"}


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    """A CLI runner in ``tmp_path`` with ``AGENTGUARD_HOME`` pointing inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


def _privileged_agent(cli: CLI) -> None:
    """agent:bot may call admin/* under a rule that demands approval (org -> bot)."""
    cli.ok("identity", "new", "agent:bot")
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "admin/*",
        "--approval", "admin/*", "--ttl", "1h", "--purpose", "maintenance",
        out="bot.dlg",
    )  # fmt: skip


def _call(cli: CLI, tool: RecordingTool, **options: Any) -> Any:
    guard = Guard(cli.root / "agentguard.yaml", home=cli.home, **options)
    try:
        bot = Keyring(cli.home / "keys").identity("agent:bot")
        delegation = (cli.root / "bot.dlg").read_text().strip()
        return guard.call(delegation, TOOL, ARGS, tool, holder=bot)
    finally:
        guard.close()


def _approvers(cli: CLI) -> list[dict[str, Any]]:
    doc = yaml.safe_load((cli.root / "agentguard.yaml").read_text())
    approvers: list[dict[str, Any]] = doc["approvers"]
    return approvers


def test_the_approver_init_writes_approves_a_privileged_call_that_then_runs_once(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme", "--approver", "user:alice")
    cli.ok("policy", "validate")
    cli.ok("identity", "new", "user:alice")
    _privileged_agent(cli)
    tool = RecordingTool()

    with pytest.raises(ApprovalPending) as pending:
        _call(cli, tool, approval_mode="raise")
    assert "user:alice" in str(pending.value)  # who can answer
    request_id = pending.value.request_id

    approved = cli.ok("approvals", "approve", request_id, "--as", "user:alice")
    assert f"approved {request_id} as user:alice" in approved.stdout + approved.stderr
    _call(cli, tool, approval_mode="raise")
    assert tool.calls == [ARGS]

    # The receipt was used: the same call asks again and does not run a second time.
    with pytest.raises(ApprovalPending) as again:
        _call(cli, tool, approval_mode="raise")
    assert again.value.request_id != request_id
    assert tool.calls == [ARGS]


def test_without_approver_the_init_policy_refuses_the_call_at_once_saying_what_to_add(
    cli: CLI,
) -> None:
    cli.ok("init", "--org", "org:acme")
    _privileged_agent(cli)
    tool = RecordingTool()
    # The template's own mode (block, 5 minutes): refused without waiting.
    with pytest.raises(DeniedError) as info:
        _call(cli, tool)
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.reason == "no_approver"
    text = str(info.value)
    assert "approvers:" in text
    assert "agentguard init --approver" in text or "--approver" in text
    assert 'tools: ["admin/*"]' in text  # an entry that would cover this very tool
    assert not tool.calls


def test_init_writes_each_approver_once_for_every_tool_with_no_floor_of_their_own(
    cli: CLI,
) -> None:
    done = cli.ok(
        "init", "--org", "org:acme",
        "--approver", "user:alice", "--approver", "user:bob", "--approver", "user:alice",
    )  # fmt: skip
    assert [a["id"] for a in _approvers(cli)] == ["user:alice", "user:bob"]
    for entry in _approvers(cli):
        # No floor of their own: each rule's level decides (the page counts where a rule
        # accepts 'authenticated'); the template's queue channel answers at 'signed'.
        assert entry["tools"] == ["*/*"]
        assert "min_assurance" not in entry
        assert "public_key" not in entry  # no key in the keyring yet
    assert "agentguard identity new user:alice" in done.stdout + done.stderr  # her key


def test_init_writes_the_approver_s_public_key_when_the_keyring_has_it(cli: CLI) -> None:
    cli.ok("identity", "new", "user:alice")
    public = Keyring(cli.home / "keys").principal("user:alice").public_jwk()
    done = cli.ok("init", "--org", "org:acme", "--approver", "user:alice")
    # Her private key sits in the agents' home: init says what that allows.
    said = " ".join((done.stdout + done.stderr).split())  # the console wraps long lines
    assert "an agent that can run commands here can approve as them" in said
    (entry,) = _approvers(cli)
    assert entry["public_key"] == public
    cli.ok("policy", "validate")

    # The key in the policy is what checks alice's answers from now on.
    _privileged_agent(cli)
    tool = RecordingTool()
    with pytest.raises(ApprovalPending) as pending:
        _call(cli, tool, approval_mode="raise")
    cli.ok("approvals", "approve", pending.value.request_id, "--as", "user:alice")
    _call(cli, tool, approval_mode="raise")
    assert tool.calls == [ARGS]


@pytest.mark.parametrize(
    ("approver", "says"),
    [
        pytest.param("agent:bot", "user:", id="an agent cannot be an approver"),
        pytest.param("org:acme", "user:", id="nor the organisation"),
        pytest.param("user:alice\napprovers: []", "invalid principal id", id="yaml injection"),
        pytest.param('user:a"}, {id: user:mallory', "invalid principal id", id="flow injection"),
        pytest.param("", "invalid principal id", id="empty"),
        pytest.param("user:" + "a" * 300, "invalid principal id", id="too long"),
    ],
)
def test_init_refuses_an_approver_that_is_not_a_person_and_writes_nothing(
    cli: CLI, approver: str, says: str
) -> None:
    result = cli("init", "--org", "org:acme", "--approver", approver)
    assert result.exit_code != 0
    one_line_error(result, says)
    assert not (cli.root / "agentguard.yaml").exists()


def test_check_request_approval_files_nothing_nobody_may_answer(cli: CLI) -> None:
    """`check --request-approval` on the init policy without approvers: refused at once
    (exit 3, no_approver, saying what to add); no request waits in the queue."""
    cli.ok("init", "--org", "org:acme")
    _privileged_agent(cli)
    done = cli("check", "bot.dlg", TOOL, '{"target": "db1"}', "--request-approval")
    assert done.exit_code == 3, done.stdout + done.stderr
    assert "no_approver" in done.stdout
    assert "agentguard init --approver" in done.stdout
    assert cli("approvals", "list", "--json").stdout.strip() == "[]"
    # With an approver the same command files the request (exit 4).
    cli.ok("init", "--org", "org:acme", "--force", "--approver", "user:alice")
    filed = cli("check", "bot.dlg", TOOL, '{"target": "db1"}', "--request-approval")
    assert filed.exit_code == 4, filed.stdout + filed.stderr
    assert "approval request apr_" in filed.stdout
