"""Policy budgets on federated callers: one count per person and client, not per derivation.

The guard derives a federated caller's root link itself, with a fresh ``iat`` and
``jti`` each time: on every token exchange, after the derived-chain cache lets it
go, after a restart, on another replica. Counting ``per: chain`` by that link's id
gave each derivation a budget of its own (security review, session 26, F1); the
count now follows the authority the link states: the provider, the person and
the client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentguard.budgets import FEDERATION_EVIDENCE_KEY
from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.federation import EVIDENCE_KEY, Derived, Federation
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World, audit_records
from tests.test_federation import BEARER, GUARD_ID, ISSUER, SECTION, _claims

TOOL = "time/now"


def daily(per: str, calls: int = 1) -> list[dict[str, Any]]:
    return [{"tools": ["time/*"], "window": "1d", "calls": calls, "per": per}]


class Harness:
    """A guard with the federation section and ``budgets``, and its federation."""

    def __init__(self, world: World, budgets: list[dict[str, Any]], **guard: Any) -> None:
        self.world = world
        self.key = Identity.generate(GUARD_ID)
        self.guard = Guard(
            world.policy(federation=SECTION, budgets=budgets),
            clock=world.clock,
            guard_identity=self.key,
            **guard,
        )
        self.federation = Federation.from_policy(self.guard.policy, guard_key=self.key.principal)

    def derive(self, **claims: Any) -> Derived:
        """The chain the proxy derives for a token with these claims (a new link each time)."""
        provider = self.federation.provider_for(ISSUER)
        assert provider is not None
        now = self.world.clock.now()
        return self.federation.derive(
            _claims(**claims), provider, signer=self.key, now=now, token=BEARER
        )

    def call(self, delegation: Delegation, holder: Identity | None) -> str:
        try:
            self.guard.call(delegation, TOOL, {}, RecordingTool("12:00"), holder=holder)
        except DeniedError as exc:
            return str(exc.reason)
        return "ran"

    def call_derived(self, **claims: Any) -> str:
        derived = self.derive(**claims)
        self.world.clock.advance(1)
        return self.call(derived.delegation, derived.holder)


@pytest.fixture
def world() -> World:
    return World(clock=ManualClock(START))


def test_the_evidence_key_is_the_federations() -> None:
    assert FEDERATION_EVIDENCE_KEY == EVIDENCE_KEY


def test_a_chain_budget_is_not_reset_by_deriving_the_same_token_again(world: World) -> None:
    """The reviewer's repro: four derivations of one token's claims under one call a day.

    Before the fix all four ran (each derived root link was a count of its own).
    """
    harness = Harness(world, daily("chain"))
    roots = []
    outcomes = []
    for _ in range(4):
        derived = harness.derive()
        roots.append(derived.delegation.root.link_id)
        world.clock.advance(1)
        outcomes.append(harness.call(derived.delegation, derived.holder))
    assert len(set(roots)) == 4  # four different root links ...
    assert outcomes == ["ran", *[Reason.BUDGET_EXHAUSTED] * 3]  # ... one count


def test_a_new_token_for_the_same_person_and_client_shares_the_count(world: World) -> None:
    """Another access token (new jti, other groups) is the same authority: same count."""
    harness = Harness(world, daily("chain", calls=2))
    assert harness.call_derived(jti="tok-1") == "ran"
    assert harness.call_derived(jti="tok-2", groups=["incident-response"]) == "ran"
    assert harness.call_derived(jti="tok-3") == Reason.BUDGET_EXHAUSTED


def test_other_people_and_other_clients_have_counts_of_their_own(world: World) -> None:
    harness = Harness(world, daily("chain"))
    assert harness.call_derived() == "ran"
    assert harness.call_derived(sub="bob") == "ran"
    assert harness.call_derived(client_id="cli") == "ran"
    assert harness.call_derived(sub="bob", client_id="cli") == "ran"
    assert harness.call_derived() == Reason.BUDGET_EXHAUSTED
    assert harness.call_derived(sub="bob", client_id="cli") == Reason.BUDGET_EXHAUSTED


def test_the_count_survives_a_restart_on_the_same_store(world: World, tmp_path: Path) -> None:
    """A new guard process (new derived links, new cache) on the same SQLite file."""
    first = Harness(world, daily("chain"), store=SQLiteStore(tmp_path / "s.db"))
    assert first.call_derived() == "ran"
    first.guard.close()
    second = Harness(world, daily("chain"), store=SQLiteStore(tmp_path / "s.db"))
    assert second.call_derived() == Reason.BUDGET_EXHAUSTED
    second.guard.close()


def test_the_record_names_one_key_for_every_derivation(world: World) -> None:
    harness = Harness(world, daily("chain", calls=3))
    for _ in range(2):
        assert harness.call_derived() == "ran"
    keys = {
        r["budget"][0]["key"]
        for r in audit_records(harness.guard)
        if r["type"] == "decision" and r["outcome"] == "allow"
    }
    (key,) = keys
    assert "/federated/" in key
    assert "alice" not in key  # a digest: no person's id in the counter's key


def test_a_root_signed_by_another_key_cannot_claim_a_federated_count(world: World) -> None:
    """An org grant that copies a derived link's evidence counts per its own link id."""
    harness = Harness(world, daily("chain"))
    derived = harness.derive()
    assert harness.call(derived.delegation, derived.holder) == "ran"
    root = derived.delegation.root
    client = world.identity(root.subject)  # the same client id, the same person, evidence
    copied = Delegation.issue(
        world.org,
        client,
        [TOOL],
        ttl="1h",
        clock=world.clock,
        on_behalf_of=root.on_behalf_of,
        meta=root.meta,
    )
    assert harness.call(copied, client) == "ran"  # not alice's spent count
    assert harness.call(copied, client) == Reason.BUDGET_EXHAUSTED


def test_a_sub_agent_of_a_federated_caller_shares_its_count(world: World) -> None:
    section = [{**SECTION[0], "max_depth": 1}]
    harness = Harness(world, daily("chain", calls=2))
    harness.guard = Guard(
        world.policy(federation=section, budgets=daily("chain", calls=2)),
        clock=world.clock,
        guard_identity=harness.key,
    )
    harness.federation = Federation.from_policy(
        harness.guard.policy, guard_key=harness.key.principal
    )
    derived = harness.derive()
    assert derived.holder is not None
    sub = world.identity("agent:sub")
    child = derived.delegation.attenuate(derived.holder, sub, [TOOL], clock=world.clock)
    assert harness.call(child, sub) == "ran"
    again = harness.derive()
    assert harness.call(again.delegation, again.holder) == "ran"
    assert harness.call(child, sub) == Reason.BUDGET_EXHAUSTED


@pytest.mark.parametrize("per", ["holder", "global"])
def test_holder_and_global_budgets_hold_across_derivations(world: World, per: str) -> None:
    """The holder of a derived chain is the client's principal id: stable, like ``global``."""
    harness = Harness(world, daily(per))
    assert harness.call_derived() == "ran"
    assert harness.call_derived(jti="tok-2") == Reason.BUDGET_EXHAUSTED


def test_a_derived_link_carries_no_rule_budget(world: World) -> None:
    """Federation rules have no budgets, so no count is keyed by a derived link's id."""
    harness = Harness(world, [])
    root = harness.derive().delegation.root
    assert all(rule.budget is None for rule in root.scope)
