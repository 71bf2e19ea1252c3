"""The guard's decisions are what the dataclass builds: ``with_audit_seq`` is
``dataclasses.replace``, and the pipeline's own construction is ``Decision(...)``."""

from __future__ import annotations

import dataclasses

import pytest

from agentguard import Delegation, Guard, Identity, Verifier
from agentguard._pipeline import CallRequest, _State
from agentguard.decision import Decision, Outcome, Reason, with_audit_seq
from agentguard.store import MemoryStore
from agentguard.verify import VerifiedChain


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


# -- the pipeline's decision: built without the dataclass's __init__, equal to it ----------


def _verified_chain() -> VerifiedChain:
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    delegation = Delegation.issue(org, bot, ["kb/*"], ttl="1h")
    store = MemoryStore()
    return Verifier([org.principal], revocations=store, replay=store).verify_chain(delegation)


@pytest.mark.parametrize("verified", [True, False], ids=["chain", "no-chain"])
@pytest.mark.parametrize("shadow", [False, True])
def test_the_pipelines_decision_is_the_dataclasss(verified: bool, shadow: bool) -> None:
    """Every field set (or left at its default) as ``Decision(...)`` sets it."""
    chain = _verified_chain() if verified else None
    request = CallRequest(
        "unused", "kb/search", {}, call_id="call-7", enforce=False, request_approval=True
    )
    state = _State(request=request, id="dec_7", args={}, now=1.0)
    state.chain = chain
    state.decide(
        Outcome.APPROVAL_REQUIRED,
        Reason.APPROVAL_REQUIRED,
        "needs approval",
        approval_request_id="apr_7",
        approver="user:carol",
    )
    state.link, state.rule = 1, 0
    state.approval_rules, state.claimed_path = ("link 1 rule 0 (x)",), ("org:other",)
    state.approval_receipt = "receipt"
    expected = Decision(
        id="dec_7",
        outcome=Outcome.APPROVAL_REQUIRED,
        reason=Reason.APPROVAL_REQUIRED,
        explanation="needs approval",
        tool="kb/search",
        path=chain.path if chain is not None else (),
        link_ids=chain.delegation.link_ids if chain is not None else (),
        link=1,
        rule=0,
        approval_rules=("link 1 rule 0 (x)",),
        approval_request_id="apr_7",
        approver="user:carol",
        call_id="call-7",
        shadow=shadow,
        dry_run=True,
        claimed_path=("org:other",),
        approval_receipt="receipt",
    )
    built = state.decision(shadow=shadow)
    assert type(built) is Decision
    assert vars(built) == vars(expected)
    assert built == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.audit_seq = 7  # type: ignore[misc]
    # Defaults come from the dataclass: a fresh state leaves them as Decision leaves them.
    plain = _State(request=request, id="dec_8", args={}, now=1.0).decision()
    defaults = Decision(id="dec_8", outcome=Outcome.DENY, reason=Reason.DENIED, explanation="",
                        tool="kb/search", call_id="call-7", dry_run=True)  # fmt: skip
    assert vars(plain) == vars(defaults)


def test_an_allowed_calls_decision_carries_its_audit_seq() -> None:
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    delegation = Delegation.issue(org, bot, ["kb/*"], ttl="1h")
    guard = Guard({"version": 1}, store=MemoryStore(), trusted_roots=[org.principal])
    first, _ = guard.authorize(delegation, "kb/search", {"q": "x"}, holder=bot)
    second, _ = guard.authorize(delegation, "kb/search", {"q": "y"}, holder=bot)
    assert (first.audit_seq, second.audit_seq) == (1, 2)
    assert first.allowed
    assert first.path == ("org:acme", "agent:bot")
