"""Attack tests from the security review against the MCP adapter; each names the attack.

The review's other tests live with the modules they exercise (test_guard,
test_approval, test_audit, test_trust_predicates). These four belong in
tests/adapters/mcp and move there with the adapter's next change.
"""

from __future__ import annotations

import pytest

from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.testing import World


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


def test_agent_cannot_name_the_elicitation_approver_by_attenuating(world: World) -> None:
    """The agent attenuates its delegation with on_behalf_of=<an approver> to speak for them.

    A form's answer is the holder's own (at ``agent`` assurance), never a sponsor's."""
    proxy_mod = pytest.importorskip("agentguard_mcp.proxy")
    sub = Identity.generate("agent:sub")
    child = world.delegation.attenuate(
        world.bot, sub, ["tickets/*"], on_behalf_of="user:carol", clock=world.clock
    )
    proxy = proxy_mod.GuardedProxy(world.guard(), [])
    approver = proxy._form_approver(proxy_mod.Caller(child.serialize()))
    assert approver == "agent:sub"


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
    proxy = proxy_mod.GuardedProxy(world.guard(), [])
    assert proxy._form_approver(proxy_mod.Caller(via_fake.serialize())) == "agent:sub"


def test_the_mcp_form_is_not_offered_for_a_request_it_cannot_show(world: World) -> None:
    """No Approve button over a one-line stub: a request that cannot be read goes out of band."""
    proxy_mod = pytest.importorskip("agentguard_mcp.proxy")
    proxy = proxy_mod.GuardedProxy(world.guard(), [])
    pending = ApprovalPending("pending", request_id="apr_missing")
    assert proxy._approval_form(pending) is None
