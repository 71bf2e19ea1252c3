"""grants list, audit tail/verify/export, approvals and policy through the CLI."""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import time
from pathlib import Path

from agentguard.clock import ManualClock
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.policy import load_policy

from .cli_support import CLI, one_line_error


def _grants(cli: CLI, *args: str) -> list[dict[str, object]]:
    doc = json.loads(cli.ok("grants", "list", "--json", *args).stdout)
    assert isinstance(doc, list)
    return doc


def _pairs(rows: list[dict[str, object]]) -> set[tuple[object, object, object]]:
    return {(r["issuer"], r["subject"], r["status"]) for r in rows}


def test_grants_list_statuses_and_filters(scenario: CLI) -> None:
    """Grants issued in the past (expired, stale) or for later (pending) sit beside the CLI's."""
    now = time.time()
    keys = Keyring(scenario.home / "keys")
    policy = load_policy(scenario.root / "agentguard.yaml")
    past = Guard(policy, home=scenario.home, clock=ManualClock(now - 3 * 3600))
    try:
        org, bot = keys.identity("org:acme"), keys.principal("agent:bot")
        past.issue(org, bot, ["tickets/read"], ttl="1h", purpose="expired one")
        past.issue(org, bot, ["tickets/list"], ttl="24h", purpose="stale one")
        past.issue(org, bot, ["tickets/late"], ttl="1h", not_before=now + 3600, purpose="later")
    finally:
        past.close()
    assert scenario("check", "sub.dlg", "tickets/read").exit_code == 0  # a dry run: no use
    assert all(r["last_used"] is None for r in _grants(scenario))
    live = Guard(policy, home=scenario.home)
    try:  # a real guarded call marks its chain used
        chain = (scenario.root / "sub.dlg").read_text()
        live.call(chain, "tickets/read", {}, lambda: "ok", holder=keys.identity("agent:sub"))
    finally:
        live.close()

    rows = _grants(scenario)
    assert {str(r["purpose"]): r["status"] for r in rows if r["issuer"] == "org:acme"} == {
        "support shift": "active",
        "expired one": "expired",
        "stale one": "active",
        "later": "pending",
    }
    used = {r["subject"]: r["last_used"] for r in rows}
    assert used["agent:sub"] is not None

    stale = _grants(scenario, "--stale", "1h")
    assert [r["purpose"] for r in stale] == ["stale one"]
    expiring = _grants(scenario, "--expiring", "2h")
    assert _pairs(expiring) == {("agent:bot", "agent:sub", "active")}
    mine = _grants(scenario, "--principal", "agent:sub")
    assert _pairs(mine) == {("agent:bot", "agent:sub", "active")}

    scenario.ok("revoke", "--grant", "bot.dlg")
    statuses = _pairs(_grants(scenario, "--principal", "agent:bot"))
    assert ("user:alice", "agent:bot", "revoked") in statuses
    assert ("agent:bot", "agent:sub", "revoked") in statuses  # through its revoked parent
    table = scenario.ok("grants", "list").stdout
    assert "revoked" in table
    assert "expired" in table
    assert "pending" in table
    one_line_error(scenario("grants", "list", "--stale", "soon"), "--stale")


def test_audit_tail_export_and_verify(scenario: CLI) -> None:
    scenario("check", "sub.dlg", "tickets/read", '{"id": 1}')
    scenario("check", "sub.dlg", "tickets/close", '{"id": 1}')
    scenario("check", "bot.dlg", "billing/refund", '{"amount": 5}')
    tail = json.loads(scenario.ok("audit", "tail", "-n", "2", "--json").stdout)
    assert [r["outcome"] for r in tail] == ["deny", "approval_required"]
    assert all(r["dry_run"] for r in tail)
    assert "dry run" in scenario.ok("audit", "tail").stdout
    lines = scenario.ok("audit", "export", "--format", "jsonl").stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["record"]["tool"] == "tickets/read"
    assert records[1]["prev"] == records[0]["hash"]
    assert "intact: 3 record(s)" in scenario.ok("audit", "verify").stdout


def test_audit_verify_names_an_edited_record(scenario: CLI) -> None:
    scenario("check", "sub.dlg", "tickets/read")
    scenario("check", "sub.dlg", "tickets/close")
    db = sqlite3.connect(scenario.home / "state.db")
    with db:
        db.execute("UPDATE audit SET body = replace(body, '\"allow\"', '\"deny\"') WHERE seq = 1")
    db.close()
    result = scenario("audit", "verify")
    assert result.exit_code == 1
    one_line_error(result, "record 1", "edited")


def test_audit_verify_names_a_deleted_record(scenario: CLI) -> None:
    for _ in range(3):
        scenario("check", "sub.dlg", "tickets/read")
    db = sqlite3.connect(scenario.home / "state.db")
    with db:
        db.execute("DELETE FROM audit WHERE seq = 2")
    db.close()
    one_line_error(scenario("audit", "verify"), "record 2", "deleted")


def _add_approvers(root: Path) -> None:
    path = root / "agentguard.yaml"
    text = path.read_text()
    assert "approvers: []" in text
    path.write_text(
        text.replace(
            "approvers: []",
            "approvers:\n"
            "  - id: user:alice\n"
            "    tools: ['billing/*']\n"
            "  - id: user:carol\n"
            "    tools: ['billing/*']\n"
            "  - id: agent:bot\n",  # listed, but separation of duties still refuses it
        )
    )


def test_approval_queue_request_approve_then_allowed(scenario: CLI) -> None:
    call = ("check", "bot.dlg", "billing/refund", '{"amount": 40}')
    _add_approvers(scenario.root)  # without approvers the request is refused: no_approver
    scenario.ok("policy", "validate")
    filed = scenario(*call, "--request-approval")
    assert filed.exit_code == 4
    match = re.search(r"approval request (apr_[A-Za-z0-9_-]+)", filed.stdout)
    assert match is not None
    request_id = match.group(1)
    listed = json.loads(scenario.ok("approvals", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [request_id]
    assert listed[0]["requester"] == "agent:bot"
    assert listed[0]["args"] == {"amount": 40}
    assert "billing/refund" in scenario.ok("approvals", "show", request_id).stdout

    scenario.ok("identity", "new", "user:bob")
    unlisted = scenario("approvals", "approve", request_id, "--as", "user:bob")
    assert unlisted.exit_code == 3
    one_line_error(unlisted, "user:bob is not an approver")

    agent = scenario("approvals", "approve", request_id, "--as", "agent:bot")
    assert agent.exit_code == 3
    one_line_error(agent, "separation_of_duties")
    assert scenario(*call).exit_code == 4  # still pending

    # The org demanded approval on alice's own grant: alice may not approve her
    # agent's call under it (separation of duties by the demanding link).
    own = scenario("approvals", "approve", request_id, "--as", "user:alice")
    assert own.exit_code == 3
    one_line_error(own, "separation_of_duties", "user:alice is a subject or sponsor")

    scenario.ok("identity", "new", "user:carol")
    scenario.ok("approvals", "approve", request_id, "--as", "user:carol", "--message", "ok")
    allowed = scenario(*call, "--json")
    assert allowed.exit_code == 0, allowed.stdout
    doc = json.loads(allowed.stdout)
    assert (doc["reason"], doc["approver"]) == ("approved", "user:carol")
    assert scenario("approvals", "list", "--json").stdout.strip() == "[]"
    answered = json.loads(scenario.ok("approvals", "list", "--all", "--json").stdout)
    assert answered[0]["status"] == "approved"
    assert answered[0]["approver"] == "user:carol"
    # A second answer to a closed request is refused.
    one_line_error(scenario("approvals", "deny", request_id, "--as", "user:carol"), "not pending")


def test_approvals_token_for_the_web_page(scenario: CLI) -> None:
    _add_approvers(scenario.root)
    result = scenario.ok("approvals", "token", "--for", "user:alice")
    token = result.stdout.strip()
    assert len(token) > 32
    assert "user:alice" in result.stderr
    tokens = scenario.home / "approver-tokens.json"
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    assert token not in tokens.read_text()  # only its hash is stored
    assert "not an approver" in scenario.ok("approvals", "token", "--for", "user:zed").stderr


def test_approval_deny_carries_the_message(scenario: CLI) -> None:
    _add_approvers(scenario.root)
    filed = scenario("check", "bot.dlg", "billing/refund", '{"amount": 9}', "--request-approval")
    request_id = json.loads(
        scenario("check", "bot.dlg", "billing/refund", '{"amount": 9}', "--json").stdout
    )["approval_request_id"]
    assert request_id in filed.stdout
    scenario.ok("approvals", "deny", request_id, "--as", "user:alice", "--message", "not today")
    shown = scenario.ok("approvals", "show", request_id).stdout
    assert "rejected" in shown
    assert "not today" in shown
    one_line_error(scenario("approvals", "show", "apr_nope"), "no approval request")


def test_policy_validate_names_file_line_and_key_path(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme")
    Path("bad.yaml").write_text("version: 1\nlimits:\n  max_link_ttl: 1h\n  bogus: 3\n")
    result = cli("policy", "validate", "bad.yaml")
    assert result.exit_code == 1
    one_line_error(result, "bad.yaml", "1 problem")
    assert "bad.yaml:4: limits.bogus: unknown key" in result.stderr.splitlines()
    Path("nokey.yaml").write_text("trusted_roots:\n  - id: org:acme\n    key_file: missing.pub\n")
    one_line_error(cli("policy", "validate", "nokey.yaml"), "does not exist")
    schema = json.loads(cli.ok("policy", "schema").stdout)
    assert "trusted_roots" in schema["properties"]
