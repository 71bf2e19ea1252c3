"""Revoking a sponsor kills every chain that names it as ``on_behalf_of`` in any link.

DESIGN §3 step 4: no link id, key or principal in the chain — and no principal
named as a link's sponsor — may be revoked. Authority must not outlive the
sponsor it was delegated for, even when the sponsor never signed anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.cli.grants import effective_status
from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.keys import Identity
from agentguard.store.base import Store
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World
from agentguard.verify import Verifier, revoked_link
from tests.test_verify_attacks import denial


def _sponsored(
    org: Identity, alice: Identity, bot: Identity, clock: ManualClock, *, at: int
) -> Delegation:
    """``org -> alice -> bot`` with ``team:ir`` as the sponsor of link ``at`` only."""
    root = Delegation.issue(
        org,
        alice,
        ["tickets/*"],
        ttl="1d",
        on_behalf_of="team:ir" if at == 0 else "user:alice",
        clock=clock,
    )
    return root.attenuate(
        alice,
        bot,
        ["tickets/*"],
        ttl="1h",
        on_behalf_of="team:ir" if at == 1 else None,
        clock=clock,
    )


@pytest.mark.parametrize("at", [0, 1])
def test_revoking_the_sponsor_kills_the_chain_at_the_link_naming_it(
    org: Identity,
    alice: Identity,
    bot: Identity,
    clock: ManualClock,
    store: MemoryStore,
    verifier: Verifier,
    at: int,
) -> None:
    """team:ir signs nothing and holds nothing; revoking it still refuses the chain."""
    chain = _sponsored(org, alice, bot, clock, at=at)
    assert "team:ir" not in chain.path
    verifier.verify_chain(chain)
    store.revoke("principal", "team:ir", reason="team dissolved", at=START)
    error = denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")
    assert error.link == at
    assert "team:ir" in error.explanation


def test_revoking_another_principal_leaves_a_sponsored_chain_alone(
    org: Identity,
    alice: Identity,
    bot: Identity,
    clock: ManualClock,
    store: MemoryStore,
    verifier: Verifier,
) -> None:
    """Only the sponsor named in the chain matters."""
    chain = _sponsored(org, alice, bot, clock, at=0)
    store.revoke("principal", "team:other", reason="", at=START)
    assert verifier.verify_chain(chain).holder == bot.principal


def test_guard_does_not_run_a_tool_for_a_revoked_sponsor() -> None:
    """Through Guard.call: allowed before, denied (revoked) after ``revoke principal``."""
    world = World()
    guard = world.guard()
    chain = world.chain(world.bot, sponsor="team:ir")
    tool = RecordingTool()
    guard.call(chain, "tickets/read", {"id": 1}, tool, holder=world.bot)
    guard.revoke("principal", "team:ir", reason="team dissolved")
    with pytest.raises(DeniedError) as info:
        guard.call(chain, "tickets/read", {"id": 2}, tool, holder=world.bot)
    assert info.value.reason == "revoked"
    assert len(tool.calls) == 1


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_inventory_marks_the_sponsored_grant_revoked(tmp_path: Path, kind: str) -> None:
    """Both stores: the grant made on behalf of a revoked sponsor is ``revoked`` itself."""
    store: Store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "state.db")
    world = World()
    guard = world.guard(store=store)
    chain = world.chain(world.bot, sponsor="team:ir")
    guard.record(chain)
    guard.revoke("principal", "team:ir")
    now = world.clock.now()
    own = {r.subject: r.status(now) for r in guard.grants()}
    assert own["user:alice"] == "revoked"
    # grants list: the child is revoked through its parent.
    assert {r.subject: effective_status(guard, r, now) for r in guard.grants()} == {
        "user:alice": "revoked",
        "agent:bot": "revoked",
    }
    found = revoked_link(store, chain.grants)
    assert found is not None
    assert found[0] == 0
    assert found[1].value == "team:ir"


def test_revoked_link_is_the_first_revoked_and_none_when_clean(
    chain: Delegation, store: MemoryStore
) -> None:
    """The earliest link hit wins, whichever revocation was recorded first."""
    assert revoked_link(store, chain.grants) is None
    store.revoke("link", chain.grants[2].link_id, reason="", at=START)
    store.revoke("principal", "team:ir", reason="", at=START + 1)  # subject of link 0
    found = revoked_link(store, chain.grants)
    assert found is not None
    assert found[0] == 0


_POOL = ["team:a", "team:b", "user:x"]


@given(
    st.lists(st.sampled_from([*_POOL, None]), min_size=1, max_size=4),
    st.sampled_from(_POOL),
)
@settings(max_examples=25, deadline=None)
def test_a_chain_dies_exactly_when_some_link_names_the_revoked_sponsor(
    sponsors: list[str | None], revoked: str
) -> None:
    """For random sponsors per link: denied iff a link names it, at the first such link."""
    clock = ManualClock(START)
    holders = [Identity.generate("org:acme")] + [
        Identity.generate(f"agent:a{i}") for i in range(len(sponsors))
    ]
    chain = Delegation.issue(
        holders[0],
        holders[1],
        ["t/*"],
        ttl="1d",
        max_depth=5,
        on_behalf_of=sponsors[0],
        clock=clock,
    )
    for i, sponsor in enumerate(sponsors[1:], start=1):
        chain = chain.attenuate(
            holders[i], holders[i + 1], ["t/*"], ttl="1h", on_behalf_of=sponsor, clock=clock
        )
    store = MemoryStore()
    store.revoke("principal", revoked, reason="", at=START)
    verifier = Verifier([holders[0].principal], revocations=store, clock=clock)
    named = [i for i, sponsor in enumerate(sponsors) if sponsor == revoked]
    if not named:
        assert verifier.verify_chain(chain).delegation.holder == holders[-1].id
        return
    with pytest.raises(DeniedError) as info:
        verifier.verify_chain(chain)
    assert info.value.reason == "revoked"
    assert info.value.link == named[0]


def test_the_refusal_names_a_revoked_sponsor_in_full() -> None:
    """A principal id is shown whole (it used to be cut to 16 characters)."""
    clock = ManualClock(START)
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    chain = Delegation.issue(
        org, bot, ["tickets/*"], ttl="1h", on_behalf_of="team:partnerships", clock=clock
    )
    store = MemoryStore()
    store.revoke("principal", "team:partnerships", reason="", at=clock.now())
    verifier = Verifier([org.principal], revocations=store, replay=store, clock=clock)
    with pytest.raises(DeniedError, match="principal sponsor team:partnerships is revoked"):
        verifier.verify_chain(chain.serialize())
