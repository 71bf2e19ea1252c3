"""The guard pipeline: allow, every denial, policy on top, shadow mode, fail-closed, storage."""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel, QueueChannel
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, ConfigError, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World, audit_records
from agentguard.tokens import Rule


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def deny_reason(guard: Guard, world: World, tool: str, args: dict[str, Any], **kw: Any) -> str:
    """Call through ``guard`` expecting a denial; the tool must not run. Returns the reason."""
    tool_fn = RecordingTool()
    kw.setdefault("holder", world.bot)
    with pytest.raises(DeniedError) as info:
        guard.call(kw.pop("delegation", world.delegation), tool, args, tool_fn, **kw)
    assert not tool_fn.ran
    return info.value.reason


# -- allow --------------------------------------------------------------------------------


def test_allowed_call_runs_and_is_audited(guard: Guard, world: World) -> None:
    tool = RecordingTool()
    result = guard.call(world.delegation, "tickets/read", {"id": 7}, tool, holder=world.bot)
    assert result == "done"
    assert tool.calls == [{"id": 7}]
    decision, completion = audit_records(guard)
    assert decision["type"] == "decision"
    assert decision["outcome"] == "allow"
    assert decision["reason"] == "allowed"
    assert decision["path"] == ["org:acme", "user:alice", "agent:bot"]
    assert decision["link_ids"] == list(world.delegation.link_ids)
    assert decision["call_token"]  # the proof
    assert decision["enforced"] is True
    assert completion["type"] == "completion"
    assert completion["decision_id"] == decision["decision_id"]
    assert guard.audit.verify() is None


def test_check_is_a_dry_run(guard: Guard, world: World) -> None:
    decision = guard.check(world.delegation, "tickets/read", {"id": 7}, holder=world.bot)
    assert decision.allowed
    assert decision.path == ("org:acme", "user:alice", "agent:bot")
    (record,) = audit_records(guard)
    assert record["dry_run"] is True
    assert record["decision_id"] == decision.id


def test_delegation_string_is_accepted(guard: Guard, world: World) -> None:
    tool = RecordingTool()
    guard.call(world.delegation.serialize(), "fs/read", {"p": "/a"}, tool, holder=world.bot)
    assert tool.ran


def test_external_token_expiring_during_the_approval_wait_is_refused(world: World) -> None:
    """The presented token is checked once, but its expiry again just before the run."""
    clock = world.clock
    assert isinstance(clock, ManualClock)

    def approve_slowly(request: ApprovalRequest, book: ApprovalBook) -> None:
        book.approve(request.id, world.carol)
        clock.advance(120)  # the human took two minutes; the token lived thirty seconds

    guard = world.guard(approver=CallbackChannel(approve_slowly))
    args = {"target": "db1"}
    token = world.delegation.mint_call_token(world.bot, "admin/reset", args, clock=clock)
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "admin/reset", args, tool, call_token=token)
    assert info.value.reason == "call_token_expired"
    assert not tool.ran


def test_external_call_token_is_accepted(guard: Guard, world: World) -> None:
    token = world.delegation.mint_call_token(
        world.bot, "tickets/read", {"id": 1}, clock=world.clock
    )
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {"id": 1}, tool, call_token=token)
    assert tool.ran


# -- denials, one per reason code ------------------------------------------------------------


def test_untrusted_root(world: World) -> None:
    guard = world.guard(trusted_roots=[])
    assert deny_reason(guard, world, "tickets/read", {}) == "untrusted_root"


def test_out_of_scope(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "mail/send", {"to": "x"}) == "out_of_scope"


def test_unknown_or_malformed_tool_is_denied(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "nosuch/tool", {}) == "out_of_scope"
    assert deny_reason(guard, world, "tickets", {}) in ("invalid_tool", "out_of_scope")
    assert deny_reason(guard, world, "tickets/../admin", {}) in ("invalid_tool", "out_of_scope")


def test_predicate_failed(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "billing/refund", {"amount": 5000}) == "predicate_failed"
    assert deny_reason(guard, world, "billing/refund", {}) == "predicate_failed"


def test_revoked_link(guard: Guard, world: World) -> None:
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    guard.revoke("link", world.delegation.root.link_id, reason="offboarding")
    assert deny_reason(guard, world, "tickets/read", {}) == "revoked"


def test_revoked_principal(guard: Guard, world: World) -> None:
    guard.revoke("principal", "agent:bot")
    assert deny_reason(guard, world, "tickets/read", {}) == "revoked"


def test_link_expired(guard: Guard, world: World) -> None:
    assert isinstance(world.clock, ManualClock)
    world.clock.advance(2 * 3600)
    assert deny_reason(guard, world, "tickets/read", {}) == "link_expired"


def test_policy_deny_rule_beats_the_grant(world: World) -> None:
    guard = world.guard(deny=[{"tools": ["tickets/delete"], "reason": "never"}])
    assert deny_reason(guard, world, "tickets/delete", {"id": 1}) == "policy_denied"
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)


def test_policy_deny_rule_with_predicate(world: World) -> None:
    guard = world.guard(deny=[{"tools": ["fs/*"], "where": {"path": {"within": "/etc"}}}])
    assert deny_reason(guard, world, "fs/read", {"path": "/etc/../etc/shadow"}) == "policy_denied"
    guard.call(world.delegation, "fs/read", {"path": "/tmp/x"}, RecordingTool(), holder=world.bot)


def test_deny_rule_beats_approval_required(world: World) -> None:
    guard = world.guard(deny=[{"tools": ["admin/drop"]}])
    assert deny_reason(guard, world, "admin/drop", {}) == "policy_denied"


def test_out_of_scope_beats_step_up(world: World) -> None:
    """A call both out of scope and privileged is denied, not sent for approval."""
    guard = world.guard(step_up=[{"tools": ["mail/*"]}])
    assert deny_reason(guard, world, "mail/send", {}) == "out_of_scope"
    assert guard.store.approval_list() == []


def test_policy_limit_link_ttl(world: World) -> None:
    guard = world.guard(limits={"max_link_ttl": "30m"})
    assert deny_reason(guard, world, "tickets/read", {}) == "policy_limit"


def test_policy_limit_root_ttl(world: World) -> None:
    guard = world.guard(limits={"max_root_ttl": "12h"})
    assert deny_reason(guard, world, "tickets/read", {}) == "policy_limit"


def test_policy_limit_chain_length(world: World) -> None:
    guard = world.guard(limits={"max_chain_length": 1})
    assert deny_reason(guard, world, "tickets/read", {}) in ("policy_limit", "chain_too_long")


def test_policy_limit_purpose(world: World) -> None:
    guard = world.guard(limits={"require_purpose": True})
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    anonymous = world.chain(world.bot, purpose=None)
    reason = deny_reason(guard, world, "tickets/read", {}, delegation=anonymous)
    assert reason == "policy_limit"


def test_policy_limit_sponsor(world: World) -> None:
    guard = world.guard(limits={"require_sponsor": True})
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    unsponsored = world.chain(world.bot, sponsor=None)
    reason = deny_reason(guard, world, "tickets/read", {}, delegation=unsponsored)
    assert reason == "policy_limit"


def test_issue_refuses_grants_that_break_limits(world: World) -> None:
    from agentguard.errors import IssuanceError

    guard = world.guard(limits={"max_root_ttl": "1h", "require_purpose": True})
    with pytest.raises(IssuanceError):
        guard.issue(world.org, world.alice, ["tickets/*"], ttl="2h", purpose="x")
    with pytest.raises(IssuanceError):
        guard.issue(world.org, world.alice, ["tickets/*"], ttl="30m")
    guard.issue(world.org, world.alice, ["tickets/*"], ttl="30m", purpose="x")


def test_invalid_arguments_nan(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "tickets/create", {"prio": math.nan}) == "invalid_arguments"
    record = audit_records(guard)[-1]
    assert record["reason"] == "invalid_arguments"


def test_missing_call_token(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "tickets/read", {}, holder=None) == "missing_call_token"


def test_external_call_token_replayed(guard: Guard, world: World) -> None:
    token = world.delegation.mint_call_token(
        world.bot, "tickets/read", {"id": 1}, clock=world.clock
    )
    guard.call(world.delegation, "tickets/read", {"id": 1}, RecordingTool(), call_token=token)
    reason = deny_reason(guard, world, "tickets/read", {"id": 1}, holder=None, call_token=token)
    assert reason == "call_token_replayed"


def test_call_token_mismatch(guard: Guard, world: World) -> None:
    token = world.delegation.mint_call_token(
        world.bot, "tickets/read", {"id": 1}, clock=world.clock
    )
    for tool, args in (("tickets/read", {"id": 2}), ("tickets/comment", {"id": 1})):
        reason = deny_reason(guard, world, tool, args, holder=None, call_token=token)
        assert reason == "call_token_mismatch"
    other = world.chain(world.bot)
    reason = deny_reason(
        guard, world, "tickets/read", {"id": 1}, holder=None, call_token=token, delegation=other
    )
    assert reason == "call_token_mismatch"


def test_call_token_signed_by_someone_else(guard: Guard, world: World) -> None:
    from agentguard.tokens import mint_call_token

    token = mint_call_token(
        Identity.generate("agent:bot"),
        leaf_link_id=world.delegation.leaf.link_id,
        tool="tickets/read",
        args={},
        now=world.clock.now(),
    )
    reason = deny_reason(guard, world, "tickets/read", {}, holder=None, call_token=token)
    assert reason == "call_token_signer"


def test_dry_run_does_not_burn_an_external_call_token(guard: Guard, world: World) -> None:
    """After any number of dry runs the token still runs its call, once."""
    token = world.delegation.mint_call_token(world.bot, "tickets/read", {}, clock=world.clock)
    for _ in range(2):
        assert guard.check(world.delegation, "tickets/read", {}, call_token=token).allowed
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {}, tool, call_token=token)
    assert tool.calls == [{}]
    # Single use is enforced on real calls, so the dry runs above really spent nothing.
    assert deny_reason(guard, world, "tickets/read", {}, holder=None, call_token=token) == (
        "call_token_replayed"
    )


def test_a_dry_run_reports_a_spent_call_token_as_replayed(guard: Guard, world: World) -> None:
    """A dry run spends nothing, but says "deny" for a token a real call would refuse."""
    token = world.delegation.mint_call_token(world.bot, "tickets/read", {}, clock=world.clock)
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), call_token=token)
    decision = guard.check(world.delegation, "tickets/read", {}, call_token=token)
    assert (decision.outcome, decision.reason) == ("deny", "call_token_replayed")


def test_denial_message_leaks_no_argument_or_token(guard: Guard, world: World) -> None:
    canary = "CANARY-7f3e"
    with pytest.raises(DeniedError) as info:
        guard.call(
            world.delegation, "mail/send", {"body": canary}, RecordingTool(), holder=world.bot
        )
    assert canary not in str(info.value)
    assert info.value.decision_id is not None
    assert info.value.decision_id in info.value.short
    assert world.delegation.serialize() not in str(info.value)


def test_delegation_object_with_a_widened_grant_object_is_not_trusted(world: World) -> None:
    """Attack: a Delegation built from a real token but an edited Grant object widens the scope."""
    everything = (Rule.from_claim({"tool": "*/*"}, "scope[0]"),)
    forged = Delegation([replace(grant, scope=everything) for grant in world.delegation])
    guard = world.guard()
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(forged, "secrets/dump", {}, fn, holder=world.bot)
    assert info.value.reason == "out_of_scope"
    assert not fn.ran


# -- approval with the default channel ---------------------------------------------------------


def test_approval_required_is_denied_by_the_default_channel(guard: Guard, world: World) -> None:
    assert deny_reason(guard, world, "admin/reset", {"target": "db"}) == "approval_unavailable"
    decision = guard.check(world.delegation, "admin/reset", {"target": "db"}, holder=world.bot)
    assert decision.outcome == "approval_required"
    assert decision.approval_rules


def test_policy_step_up_applies_without_a_link_rule(world: World) -> None:
    guard = world.guard(step_up=[{"tools": ["tickets/delete"], "min_assurance": "local"}])
    assert deny_reason(guard, world, "tickets/delete", {}) == "approval_unavailable"
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)


# -- shadow mode -----------------------------------------------------------------------------


def test_shadow_mode_runs_denied_calls_and_says_so(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    guard = world.guard(shadow=True)
    tool = RecordingTool()
    guard.call(world.delegation, "mail/send", {"to": "x"}, tool, holder=world.bot)
    assert tool.ran
    decision = audit_records(guard)[0]
    assert decision["outcome"] == "deny"
    assert decision["reason"] == "out_of_scope"
    assert decision["shadow"] is True
    assert decision["enforced"] is False
    assert "NOT enforced" in decision["shadow_notice"]
    assert "SHADOW MODE" in caplog.text


def test_shadow_mode_allowed_calls_are_enforced(world: World) -> None:
    guard = world.guard(shadow=True)
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    decision = audit_records(guard)[0]
    assert decision["shadow"] is False
    assert decision["enforced"] is True


def test_shadow_mode_audit_matches_what_happened_to_a_pending_call(world: World) -> None:
    """Attack: shadow mode logs an approval-pending call as 'NOT enforced' but blocks it anyway."""
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}, shadow=True
    )
    fn = RecordingTool()
    with contextlib.suppress(ApprovalPending):
        guard.call(world.delegation, "admin/reset", {}, fn, holder=world.bot)
    record = next(r for r in reversed(audit_records(guard)) if r["type"] == "decision")
    assert record["reason"] == "approval_pending"
    assert record["enforced"] is (not fn.ran)


# -- fail closed -------------------------------------------------------------------------------


class AuditFails(MemoryStore):
    """A store whose audit log cannot be written."""

    def audit_append(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")


def test_audit_write_failure_blocks_the_call(world: World) -> None:
    guard = world.guard(store=AuditFails())
    assert deny_reason(guard, world, "tickets/read", {}) == "audit_error"


def test_audit_write_failure_blocks_even_in_shadow_mode(world: World) -> None:
    guard = world.guard(store=AuditFails(), shadow=True)
    assert deny_reason(guard, world, "mail/send", {}) == "audit_error"


def test_closed_store_blocks_the_call(world: World, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    guard = world.guard(store=store)
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    store.close()
    assert deny_reason(guard, world, "tickets/read", {}) == "store_error"


def test_unopenable_store_path_is_a_store_error(world: World, tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()  # a directory where the database file should be
    with pytest.raises(StoreError):
        world.guard(home=tmp_path)


def test_home_that_is_a_file_is_a_store_error(world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create state directory"):
        world.guard(home=home)


def test_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        Guard(policy=tmp_path / "missing.yaml", store=MemoryStore())


def test_policy_with_missing_root_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.yaml"
    path.write_text("trusted_roots:\n  - id: org:acme\n    key_file: nowhere.pub\n")
    with pytest.raises(ConfigError, match=r"nowhere\.pub"):
        Guard(policy=path, store=MemoryStore())


# -- sync and async drivers --------------------------------------------------------------------


@pytest.mark.anyio
async def test_acall_with_an_async_tool(guard: Guard, world: World) -> None:
    seen: list[dict[str, Any]] = []

    async def tool(**kwargs: Any) -> str:
        seen.append(kwargs)
        return "async done"

    result = await guard.acall(world.delegation, "tickets/read", {"id": 3}, tool, holder=world.bot)
    assert result == "async done"
    assert seen == [{"id": 3}]


@pytest.mark.anyio
async def test_acall_with_a_sync_tool(guard: Guard, world: World) -> None:
    tool = RecordingTool()
    assert await guard.acall(world.delegation, "tickets/read", {}, tool, holder=world.bot) == "done"
    assert tool.ran


@pytest.mark.anyio
async def test_acall_denial_does_not_run_the_tool(guard: Guard, world: World) -> None:
    ran = False

    async def tool(**kwargs: Any) -> None:
        nonlocal ran
        ran = True

    with pytest.raises(DeniedError) as info:
        await guard.acall(world.delegation, "mail/send", {}, tool, holder=world.bot)
    assert info.value.reason == "out_of_scope"
    assert not ran


@pytest.mark.anyio
async def test_acheck(guard: Guard, world: World) -> None:
    decision = await guard.acheck(
        world.delegation, "billing/refund", {"amount": 10}, holder=world.bot
    )
    assert decision.allowed
    decision = await guard.acheck(world.delegation, "admin/x", {}, holder=world.bot)
    assert decision.outcome == "approval_required"


# -- completion records --------------------------------------------------------------------------


def test_completion_record_for_success(guard: Guard, world: World) -> None:
    guard.call(
        world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot, call_id="c-1"
    )
    decision, completion = audit_records(guard)
    assert completion["status"] == "success"
    assert completion["error_type"] is None
    assert completion["duration_ms"] >= 0
    assert completion["call_id"] == decision["call_id"] == "c-1"


def test_completion_record_for_error(guard: Guard, world: World) -> None:
    def broken(**kwargs: Any) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        guard.call(world.delegation, "tickets/read", {}, broken, holder=world.bot)
    decision, completion = audit_records(guard)
    assert decision["outcome"] == "allow"
    assert completion["status"] == "error"
    assert completion["error_type"] == "KeyError"
    assert completion["decision_id"] == decision["decision_id"]


@pytest.mark.anyio
async def test_completion_record_for_async_error(guard: Guard, world: World) -> None:
    async def broken(**kwargs: Any) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await guard.acall(world.delegation, "tickets/read", {}, broken, holder=world.bot)
    completion = audit_records(guard)[-1]
    assert completion["status"] == "error"
    assert completion["error_type"] == "ValueError"


def test_completion_record_for_a_reported_tool_error(guard: Guard, world: World) -> None:
    """A tool that returns an error (an MCP isError result) is audited as tool_error."""

    def answer(**kwargs: Any) -> dict[str, bool]:
        return {"is_error": True}

    result = guard.call(
        world.delegation,
        "tickets/read",
        {},
        answer,
        holder=world.bot,
        failed=lambda r: r["is_error"],
    )
    assert result == {"is_error": True}
    assert audit_records(guard)[-1]["status"] == "tool_error"


def test_a_broken_failed_test_does_not_break_the_call(guard: Guard, world: World) -> None:
    def boom(result: object) -> bool:
        raise RuntimeError("bad test")

    assert guard.call(
        world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot, failed=boom
    )
    assert audit_records(guard)[-1]["status"] == "success"


def test_denied_call_has_no_completion_record(guard: Guard, world: World) -> None:
    deny_reason(guard, world, "mail/send", {})
    assert [r["type"] for r in audit_records(guard)] == ["decision"]


def test_grant_inventory_records_last_use(guard: Guard, world: World) -> None:
    """A real call marks every link used; a dry run does not (it would hide stale grants)."""
    guard.record(world.delegation)
    assert all(g.last_used is None for g in guard.grants())
    guard.check(world.delegation, "tickets/read", {}, holder=world.bot)
    assert all(g.last_used is None for g in guard.grants())
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    assert {g.link_id: g.last_used for g in guard.grants()} == dict.fromkeys(
        world.delegation.link_ids, START
    )


# -- embedded defaults ------------------------------------------------------------------------


def test_bare_guard_in_an_empty_directory_uses_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    guard = Guard()
    assert guard.store.location == "memory"
    assert "in-memory" in guard.describe()
    assert list(tmp_path.iterdir()) == []


def test_bare_guard_uses_dot_agentguard_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    (tmp_path / ".agentguard").mkdir()
    guard = Guard()
    try:
        assert isinstance(guard.store, SQLiteStore)
        assert Path(guard.store.location).resolve() == (tmp_path / ".agentguard/state.db").resolve()
        assert "state.db" in guard.describe()
    finally:
        guard.close()


def test_bare_guard_honours_agentguard_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / "elsewhere"))
    guard = Guard()
    try:
        assert Path(guard.store.location) == tmp_path / "elsewhere" / "state.db"
    finally:
        guard.close()


def test_bare_guard_reads_agentguard_yaml_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: World
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    world.write_policy(tmp_path / "agentguard.yaml")
    guard = Guard(clock=world.clock)
    guard.call(world.delegation, "tickets/read", {}, RecordingTool(), holder=world.bot)
    assert str(tmp_path.resolve()) in guard.describe()


# -- redaction and the store on disk ------------------------------------------------------------


def test_redacted_canary_never_reaches_the_database_file(world: World, tmp_path: Path) -> None:
    canary = "CANARY-s3cr3t-9d1c2b"
    guard = world.guard(home=tmp_path, step_up=[{"tools": ["tickets/login"]}])
    tool = RecordingTool()
    args = {"user": "ann", "password": canary, "nested": {"API_KEY": canary}}
    guard.call(world.delegation, "tickets/create", args, tool, holder=world.bot)
    assert tool.calls == [args]
    deny_reason(guard, world, "mail/send", args)
    guard.check(world.delegation, "tickets/login", args, holder=world.bot, request_approval=True)
    assert guard.store.approval_list()  # the request (with its display) was stored

    def leaked() -> list[str]:
        return [
            p.name for p in tmp_path.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()
        ]

    assert (tmp_path / "state.db-wal").exists()
    assert leaked() == []
    guard.close()
    assert leaked() == []
    records = audit_records(world.guard(home=tmp_path))
    assert records[0]["args"]["password"] == "[redacted]"


def test_newer_store_schema_is_refused_clearly(world: World, tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "state.db").close()
    conn = sqlite3.connect(tmp_path / "state.db")
    with conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(StoreError, match=r"schema version 999.*upgrade agentguard"):
        world.guard(home=tmp_path)


def test_store_records_its_schema_version(tmp_path: Path) -> None:
    from agentguard.store.sqlite import SCHEMA_VERSION

    store = SQLiteStore(tmp_path / "state.db")
    assert store.schema_version() == SCHEMA_VERSION
    store.close()


WORKER = """
import sys
from pathlib import Path
from agentguard.delegation import Delegation
from agentguard.guard import Guard
from agentguard.keys import Identity

home, policy, chain, key, n = sys.argv[1:6]
guard = Guard(policy=Path(policy), home=Path(home))
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))
for i in range(int(n)):
    guard.call(delegation, "tickets/comment", {"i": i, "worker": key}, lambda **kw: None,
               holder=holder)
guard.close()
"""


def test_two_processes_share_one_home(tmp_path: Path) -> None:
    """Two guards in two processes append to one audit log; it verifies and holds every record."""
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    chain = tmp_path / "chain.txt"
    chain.write_text(world.delegation.serialize())
    key = tmp_path / "bot.key"
    world.bot.save(key)
    n = 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(policy), str(chain), str(key), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    guard = Guard(policy=policy, home=home)
    try:
        records = audit_records(guard)
        assert [r["seq"] for r in records] == list(range(1, 4 * n + 1))
        decisions = [r for r in records if r["type"] == "decision"]
        assert len(decisions) == 2 * n
        assert all(r["outcome"] == "allow" for r in decisions)
        assert len({r["call_token"] for r in decisions}) == 2 * n
        assert sum(r["type"] == "completion" for r in records) == 2 * n
        assert guard.audit.verify() is None
    finally:
        guard.close()


def test_audit_json_is_canonical(guard: Guard, world: World) -> None:
    guard.call(
        world.delegation, "tickets/read", {"b": 1, "a": 2}, RecordingTool(), holder=world.bot
    )
    body = guard.store.audit_entries()[0].body
    assert json.loads(body)["args"] == {"a": 2, "b": 1}
