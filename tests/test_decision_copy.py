"""``with_audit_seq``: the guard's copy of a decision is ``dataclasses.replace``'s."""

from __future__ import annotations

import dataclasses

from agentguard.decision import Decision, Outcome, Reason, with_audit_seq


def _full() -> Decision:
    """A decision with every field set to something other than its default."""
    return Decision(
        id="dec_1",
        outcome=Outcome.ALLOW,
        reason=Reason.APPROVED,
        explanation="approved by user:carol",
        tool="tickets/read",
        path=("org:acme", "agent:bot"),
        link_ids=("a", "b"),
        link=1,
        rule=0,
        approval_rules=("link 1 rule 0 (x)",),
        approval_request_id="apr_1",
        approver="user:carol",
        call_id="call-1",
        shadow=True,
        dry_run=True,
        audit_seq=None,
        claimed_path=("org:other",),
        approval_receipt="receipt",
    )


def test_with_audit_seq_equals_replace_field_by_field() -> None:
    decision = _full()
    copy = with_audit_seq(decision, 42)
    assert copy == dataclasses.replace(decision, audit_seq=42)
    assert dataclasses.asdict(copy) == {**dataclasses.asdict(decision), "audit_seq": 42}
    # The original is untouched and the copy is still frozen.
    assert decision.audit_seq is None
    assert copy is not decision
    try:
        copy.audit_seq = 7  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("the copy must stay frozen")


def test_every_field_is_covered_by_the_instance_dictionary() -> None:
    """Were Decision to gain slots or a __post_init__, the shortcut would be wrong."""
    decision = _full()
    assert set(vars(decision)) == {f.name for f in dataclasses.fields(Decision)}
    assert not hasattr(Decision, "__post_init__")
    assert not hasattr(Decision, "__slots__")
