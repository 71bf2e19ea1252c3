"""Attack tests from the security review: each names the attack in its docstring."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentguard.approval import QueueChannel
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import ApprovalRow
from agentguard.store.memory import MemoryStore
from agentguard.tokens import Rule
from tests.guard_helpers import Recorder, World, audit_records, make_guard, manual_world

RECIPIENTS = [f"ok{i}" for i in range(20_000)]


@pytest.fixture
def world() -> World:
    return manual_world()


def _queue_guard(world: World, **policy: Any) -> Guard:
    approval = {"channel": "queue", **policy.pop("approval", {})}
    return make_guard(
        world, approver=QueueChannel(), approval_mode="raise", approval=approval, **policy
    )


def test_deny_rule_skipped_by_exhausting_the_predicate_budget(world: World) -> None:
    """A huge argument list makes a policy deny rule's predicate run out of budget."""
    guard = make_guard(
        world,
        deny=[{"tools": ["tickets/*"], "where": {"to": {"any": {"==": "evil"}}}}],
    )
    fn = Recorder()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/send", {"to": [*RECIPIENTS, "evil"]}, fn,
                   holder=world.bot)  # fmt: skip
    assert info.value.reason == "policy_denied"
    assert not fn.ran


def test_step_up_rule_skipped_by_exhausting_the_predicate_budget(world: World) -> None:
    """A huge argument list makes a policy step_up rule's predicate run out of budget."""
    guard = _queue_guard(
        world,
        step_up=[{"tools": ["tickets/*"], "where": {"to": {"any": {"==": "vip"}}}}],
        # Large enough to show all 20 001 recipients to the approver.
        approval={"display_limit": 400_000},
    )
    fn = Recorder()
    with pytest.raises(ApprovalPending):
        guard.call(world.delegation, "tickets/send", {"to": [*RECIPIENTS, "vip"]}, fn,
                   holder=world.bot)  # fmt: skip
    assert not fn.ran
    assert audit_records(guard)[-1]["reason"] == "approval_pending"


def test_edit_into_a_higher_assurance_step_up_is_refused(world: World) -> None:
    """A 'local' approver edits the call into arguments whose step-up rule needs 'signed'."""
    guard = _queue_guard(
        world,
        step_up=[
            {"tools": ["tickets/*"], "min_assurance": "local"},
            {"tools": ["tickets/*"], "where": {"amount": {">": 100}}, "min_assurance": "signed"},
        ],
    )
    args = {"amount": 10}
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "tickets/pay", args, Recorder(), holder=world.bot)
    guard.approvals.answer(
        info.value.request_id,
        approver="user:carol",
        approve=True,
        channel="terminal",
        assurance="local",
        edited_args={"amount": 5000},
    )
    fn = Recorder()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "tickets/pay", args, fn, holder=world.bot)
    assert denied.value.reason == "approval_assurance"
    assert not fn.ran


def test_revoked_approver_principal_cannot_approve(world: World) -> None:
    """An approver whose principal was revoked still has a receipt accepted."""
    guard = _queue_guard(world)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", {"t": 1}, Recorder(), holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    guard.revoke("principal", "user:carol", reason="left the company")
    fn = Recorder()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "admin/reset", {"t": 1}, fn, holder=world.bot)
    assert denied.value.reason == "approver_not_authorized"
    assert not fn.ran


def test_revoked_approver_key_cannot_approve(world: World) -> None:
    """An approver whose signing key was revoked still has a signed receipt accepted."""
    guard = _queue_guard(world)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", {"t": 2}, Recorder(), holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    guard.revoke("key", world.carol.kid, reason="key leaked")
    fn = Recorder()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "admin/reset", {"t": 2}, fn, holder=world.bot)
    assert denied.value.reason == "approval_invalid"
    assert not fn.ran


class _FlakyApprovals(MemoryStore):
    """A store whose approval lookups fail once a request is pending."""

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        raise StoreError("approvals table is locked")


def test_store_error_while_waiting_for_approval_is_an_audited_denial(world: World) -> None:
    """A store failure while the driver waits escapes as a raw error with no audit record."""
    guard = make_guard(
        world,
        store=_FlakyApprovals(),
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue"},
    )
    fn = Recorder()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "admin/reset", {"t": 3}, fn, holder=world.bot)
    assert not fn.ran
    assert info.value.reason == "approval_unavailable"
    assert audit_records(guard)[-1]["reason"] == "approval_unavailable"


def test_upstream_verifier_accepts_a_call_whose_link_demands_approval(world: World) -> None:
    """The holder calls an agentguard-aware upstream directly, skipping the proxy's step-up."""
    verify = pytest.importorskip("agentguard_mcp.verify")
    proxy = pytest.importorskip("agentguard_mcp.proxy")
    verifier = verify.DelegationVerifier(
        "admin", trusted_roots=[world.org.principal], revocations=MemoryStore(), clock=world.clock
    )
    args = {"target": "db1"}
    token = world.delegation.mint_call_token(world.bot, "admin/reset", args, clock=world.clock)
    params = {
        "name": "reset",
        "arguments": args,
        "_meta": {proxy.META_DELEGATION: world.delegation.serialize(), proxy.META_CALL: token},
    }
    with pytest.raises(DeniedError) as info:
        verifier.check(params)
    assert info.value.reason == "approval_required"
    # Trusting an approver's key is not enough either: the call carries no receipt.
    keyed = verify.DelegationVerifier(
        "admin", trusted_roots=[world.org.principal], revocations=MemoryStore(),
        clock=world.clock, approval_keys=[world.carol.principal],
    )  # fmt: skip
    with pytest.raises(DeniedError) as missing:
        keyed.check(params)
    assert missing.value.reason == "approval_required"


def test_delegation_object_with_a_widened_grant_object_is_not_trusted(world: World) -> None:
    """A Delegation built from a real token but an edited Grant object widens the scope."""
    everything = (Rule.from_claim({"tool": "*/*"}, "scope[0]"),)
    forged = Delegation([replace(grant, scope=everything) for grant in world.delegation])
    guard = make_guard(world)
    fn = Recorder()
    with pytest.raises(DeniedError) as info:
        guard.call(forged, "secrets/dump", {}, fn, holder=world.bot)
    assert info.value.reason == "out_of_scope"
    assert not fn.ran


def test_checkpoint_write_failure_is_an_audit_error_not_a_raw_exception(
    world: World, tmp_path: Path
) -> None:
    """An unwritable side file at durability full is an audit error: the tool does not run.

    (At durability normal the side file is written after the commit, off the call's
    path; the signed head in the database still anchors the record.)
    """
    guard = make_guard(world, home=tmp_path, storage={"durability": "full"})
    guard.audit.checkpoint_every = 1
    side = guard.audit.side_file
    assert side is not None
    side.mkdir()  # opening it for appending now fails with IsADirectoryError
    fn = Recorder()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/list", {}, fn, holder=world.bot)
    assert info.value.reason == "audit_error"
    assert not fn.ran


def test_agent_cannot_name_the_elicitation_approver_by_attenuating(world: World) -> None:
    """The agent attenuates its delegation with on_behalf_of=<an approver> to speak for them.

    A form's answer is the holder's own (at ``agent`` assurance), never a sponsor's."""
    proxy_mod = pytest.importorskip("agentguard_mcp.proxy")
    sub = Identity.generate("agent:sub")
    child = world.delegation.attenuate(
        world.bot, sub, ["tickets/*"], on_behalf_of="user:carol", clock=world.clock
    )
    proxy = proxy_mod.GuardedProxy(make_guard(world), [])
    approver = proxy._form_approver(proxy_mod.Caller(child.serialize()))
    assert approver == "agent:sub"


def test_shadow_mode_audit_matches_what_happened_to_a_pending_call(world: World) -> None:
    """Shadow mode logs an approval-pending call as 'NOT enforced' but blocks it anyway."""
    guard = _queue_guard(world, shadow=True)
    fn = Recorder()
    with contextlib.suppress(ApprovalPending):
        guard.call(world.delegation, "admin/reset", {}, fn, holder=world.bot)
    record = next(r for r in reversed(audit_records(guard)) if r["type"] == "decision")
    assert record["reason"] == "approval_pending"
    assert record["enforced"] is (not fn.ran)


def test_agent_cannot_name_the_form_approver_through_a_user_it_made_up(world: World) -> None:
    """The bot mints user:fake, delegates to it, and signs as it naming user:carol: ignored."""
    proxy_mod = pytest.importorskip("agentguard_mcp.proxy")
    root = Delegation.issue(
        world.org, world.alice, ["tickets/*"], ttl="1d", on_behalf_of="user:alice",
        max_depth=4, clock=world.clock,
    )  # fmt: skip
    to_bot = root.attenuate(world.alice, world.bot, ["tickets/*"], clock=world.clock)
    fake = Identity.generate("user:fake")
    via_fake = to_bot.attenuate(world.bot, fake, ["tickets/*"], clock=world.clock).attenuate(
        fake, Identity.generate("agent:sub"), ["tickets/*"], on_behalf_of="user:carol",
        clock=world.clock,
    )  # fmt: skip
    proxy = proxy_mod.GuardedProxy(make_guard(world), [])
    assert proxy._form_approver(proxy_mod.Caller(via_fake.serialize())) == "agent:sub"


def test_the_mcp_form_is_not_offered_for_a_request_it_cannot_show(world: World) -> None:
    """No Approve button over a one-line stub: a request that cannot be read goes out of band."""
    proxy_mod = pytest.importorskip("agentguard_mcp.proxy")
    proxy = proxy_mod.GuardedProxy(make_guard(world), [])
    pending = ApprovalPending("pending", request_id="apr_missing")
    assert proxy._approval_form(pending) is None
