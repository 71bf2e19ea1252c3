"""A lost passkey is revoked by its key id, not by revoking the person.

The key id is base64url (no padding) of the SHA-256 of the enrolled COSE public
key (``docs/receipts.md``). ``agentguard approvals show`` names it;
``agentguard revoke --key ID`` makes the guard refuse that authenticator's
answers, stored or new, while the person's own key and a newly enrolled passkey
still count. The MCP upstream verifier's side is in ``test_passkeys_mcp.py``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest

from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.passkeys import write_passkey
from agentguard.testing import RecordingTool
from tests.passkey_support import ORIGIN, RP_ID, SoftKey

from .cli.cli_support import CLI, grant

ALICE = "user:alice"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    cli = CLI(tmp_path)
    cli.ok("init", "--org", "org:acme", "--approver", ALICE)
    cli.ok("identity", "new", ALICE)  # her own key: another channel of hers
    cli.ok("identity", "new", "agent:bot")
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "admin/*",
        "--approval", "admin/*", "--ttl", "1h", "--purpose", "maintenance",
        out="bot.dlg",
    )  # fmt: skip
    return cli


def key_id(key: SoftKey) -> str:
    """The documented key id, computed here from the COSE key bytes."""
    cose = base64.urlsafe_b64decode(key.cose() + "=" * (-len(key.cose()) % 4))
    return base64.urlsafe_b64encode(hashlib.sha256(cose).digest()).rstrip(b"=").decode()


def enrol(cli: CLI, key: SoftKey) -> None:
    entry = {"credential_id": key.credential_id, "public_key": key.cose()}
    write_passkey(cli.root / "agentguard.yaml", ALICE, {**entry, "rp_id": RP_ID, "origin": ORIGIN})


def call(cli: CLI, target: str, tool: RecordingTool) -> Any:
    guard = Guard(cli.root / "agentguard.yaml", home=cli.home, approval_mode="raise")
    try:
        holder = Keyring(cli.home / "keys").identity("agent:bot")
        delegation = (cli.root / "bot.dlg").read_text().strip()
        return guard.call(delegation, "admin/reset", {"target": target}, tool, holder=holder)
    finally:
        guard.close()


def ask(cli: CLI, target: str) -> str:
    with pytest.raises(ApprovalPending) as pending:
        call(cli, target, RecordingTool())
    return pending.value.request_id


def answer_with_passkey(cli: CLI, request_id: str, key: SoftKey) -> None:
    guard = Guard(cli.root / "agentguard.yaml", home=cli.home, approval_mode="raise")
    try:
        book = guard.approvals
        statement = book.passkey_statement(request_id, approver=ALICE, approve=True)
        book.record_passkey_answer(statement, key.receipt(statement).assertion)
    finally:
        guard.close()


def test_revoking_a_passkeys_key_id_stops_that_authenticator_not_the_person(cli: CLI) -> None:
    lost = SoftKey()
    kid = key_id(lost)
    enrol(cli, lost)
    first = ask(cli, "db1")
    answer_with_passkey(cli, first, lost)
    shown = cli.ok("approvals", "show", first).stdout
    assert f"passkey assertion by {ALICE}, verified (approve, assurance signed" in shown
    assert f"; passkey key {kid}" in shown

    # The authenticator is lost: its key id is revoked, the person is not.
    revoked = cli.ok("revoke", "--key", kid, "--reason", "lost phone").stdout
    assert f"revoked key {kid}" in revoked
    shown = cli.ok("approvals", "show", first).stdout
    assert "does not verify or no longer counts" in shown
    assert f"the passkey of {ALICE} (key {kid}) is revoked" in shown
    tool = RecordingTool()
    with pytest.raises(DeniedError) as refused:
        call(cli, "db1", tool)  # the stored answer no longer counts
    assert refused.value.reason == "approval_invalid"
    assert tool.calls == []
    second = ask(cli, "db2")
    with pytest.raises(DeniedError) as refused:
        answer_with_passkey(cli, second, lost)  # nor does a new one from it
    assert refused.value.reason == "approval_invalid"
    assert "is revoked" in refused.value.explanation

    # Her own key still counts (the CLI's signed answer) ...
    cli.ok("approvals", "approve", second, "--as", ALICE)
    assert call(cli, "db2", tool) == "done"
    # ... and so does a passkey enrolled in place of the lost one.
    replacement = SoftKey(-7)
    assert key_id(replacement) != kid
    enrol(cli, replacement)
    third = ask(cli, "db3")
    answer_with_passkey(cli, third, replacement)
    assert call(cli, "db3", tool) == "done"
    assert tool.calls == [{"target": "db2"}, {"target": "db3"}]
    assert f"; passkey key {key_id(replacement)}" in cli.ok("approvals", "show", third).stdout
