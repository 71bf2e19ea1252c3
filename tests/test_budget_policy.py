"""Policy-level budgets: the ``budgets:`` list caps tools whatever the delegations say."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import ConfigError, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.policy import load_policy, policy_schema
from agentguard.testing import RecordingTool, World, audit_records

REFUND = "billing/refund"
SCOPE = [REFUND, "billing/read"]


def cap(**entry: Any) -> dict[str, Any]:
    """One ``budgets:`` entry: refunds, a day, with ``entry`` on top."""
    return {"tools": ["billing/refund"], "window": "1d", **entry}


def spend(guard: Guard, delegation: Delegation, holder: Identity, args: dict[str, Any]) -> str:
    try:
        guard.call(delegation, REFUND, args, RecordingTool(), holder=holder)
    except DeniedError as exc:
        return str(exc.reason)
    return "ran"


@pytest.mark.parametrize(
    "entry",
    [
        cap(calls=5, per="global"),
        cap(sum={"amount": 100}, per="chain", where={"currency": "EUR"}),
        cap(sum={"amount": "12.5"}, calls=3, per="holder"),
        {"tools": ["billing/*"], "window": 3600, "calls": 1, "per": "global"},
    ],
)
def test_valid_budgets_load_and_match_the_schema(entry: dict[str, Any]) -> None:
    doc = {"version": 1, "budgets": [entry]}
    assert load_policy(doc).budgets[0].per == entry["per"]
    assert list(jsonschema.Draft202012Validator(policy_schema()).iter_errors(doc)) == []


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (cap(calls=5), "per"),
        (cap(calls=5, per="team"), "per"),
        ({"window": "1d", "calls": 5, "per": "global"}, "tools"),
        (cap(per="global"), "calls or sum"),
        (cap(calls=0, per="global"), "calls"),
        (cap(calls=-1, per="global"), "calls"),
        (cap(calls="5", per="global"), "calls"),
        (cap(calls=True, per="global"), "calls"),
        (cap(calls=5.0, per="global"), "calls"),
        (cap(calls=10**30, per="global"), "calls"),
        (cap(sum={"amount": 0}, per="global"), "positive"),
        (cap(sum={"amount": -1}, per="global"), "positive"),
        (cap(sum={"amount": "NaN"}, per="global"), "finite"),
        (cap(sum={"amount": ".inf"}, per="global"), "decimal"),
        (cap(sum={"amount": float("inf")}, per="global"), "finite"),
        (cap(sum={"amount": "1e400"}, per="global"), "above"),
        (cap(sum={"amount": True}, per="global"), "sum"),
        (cap(sum={"amount": [1]}, per="global"), "sum"),
        (cap(sum=[1], per="global"), "sum"),
        (cap(calls=5, per="global", window="0s"), "window"),
        (cap(calls=5, per="global", window="400d"), "window"),
        (cap(calls=5, per="global", window=1.5), "window"),
        (cap(calls=5, per="global", extra=1), "extra"),
        (cap(calls=5, per="global", where={"amount": {"~": 1}}), "where"),
    ],
)
def test_hostile_budgets_are_refused_when_the_policy_loads(
    entry: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        load_policy({"version": 1, "budgets": [entry]})


def test_a_global_budget_caps_every_chain_together(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=3, per="global")])
    a = world.chain(world.bot, scope=SCOPE)
    other = world.identity("agent:other")
    b = world.chain(other, scope=SCOPE)
    outcomes = [spend(guard, d, h, {"amount": 1}) for d, h in [(a, world.bot), (b, other)] * 2]
    assert outcomes == ["ran", "ran", "ran", Reason.BUDGET_EXHAUSTED]
    assert last_refusal(guard)["budget"][0]["budget"] == "policy budget 0"


def test_a_holder_budget_counts_each_holder(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=1, per="holder")])
    a = world.chain(world.bot, scope=SCOPE)
    other = world.identity("agent:other")
    b = world.chain(other, scope=SCOPE)
    assert spend(guard, a, world.bot, {}) == "ran"
    assert spend(guard, b, other, {}) == "ran"
    assert spend(guard, a, world.bot, {}) == Reason.BUDGET_EXHAUSTED


def test_a_holder_budget_caps_each_agent_not_its_sub_agents_together(world: World) -> None:
    """What the README says of ``per: holder``: each new sub-agent name has its own count;
    ``per: chain`` caps the holder and its sub-agents together."""
    holder_capped = world.guard(budgets=[cap(calls=1, per="holder")])
    chain_capped = world.guard(budgets=[cap(calls=1, per="chain")])
    parent = world.chain(world.bot, scope=SCOPE)
    assert spend(holder_capped, parent, world.bot, {}) == "ran"
    assert spend(holder_capped, parent, world.bot, {}) == Reason.BUDGET_EXHAUSTED
    assert spend(chain_capped, parent, world.bot, {}) == "ran"
    for name in ("agent:bot-1", "agent:bot-2"):
        sub = world.identity(name)
        child = parent.attenuate(world.bot, sub, SCOPE, clock=world.clock)
        assert spend(holder_capped, child, sub, {}) == "ran"
        assert spend(chain_capped, child, sub, {}) == Reason.BUDGET_EXHAUSTED


def test_a_chain_budget_is_shared_below_its_root_grant(world: World) -> None:
    """Delegating further does not reset a per-chain budget: it counts per root grant."""
    guard = world.guard(budgets=[cap(sum={"amount": 100}, per="chain")])
    parent = world.chain(world.bot, scope=SCOPE)
    sub = world.identity("agent:sub")
    child = parent.attenuate(world.bot, sub, SCOPE, clock=world.clock)
    assert spend(guard, parent, world.bot, {"amount": 60}) == "ran"
    assert spend(guard, child, sub, {"amount": 41}) == Reason.BUDGET_EXHAUSTED
    assert spend(guard, child, sub, {"amount": 40}) == "ran"
    fresh = world.chain(world.bot, scope=SCOPE)  # another root grant: another count
    assert spend(guard, fresh, world.bot, {"amount": 100}) == "ran"


def test_a_policy_budget_restricts_unless_its_predicate_is_false(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=1, per="global", where={"currency": "EUR"})])
    delegation = world.chain(world.bot, scope=SCOPE)
    assert spend(guard, delegation, world.bot, {"currency": "USD"}) == "ran"
    assert spend(guard, delegation, world.bot, {"currency": "USD"}) == "ran"
    assert spend(guard, delegation, world.bot, {"currency": "EUR"}) == "ran"
    assert spend(guard, delegation, world.bot, {}) == Reason.BUDGET_EXHAUSTED


def test_a_policy_sum_refuses_an_unmeasurable_amount(world: World) -> None:
    guard = world.guard(budgets=[cap(sum={"amount": 100}, per="global")])
    delegation = world.chain(world.bot, scope=SCOPE)
    assert spend(guard, delegation, world.bot, {"amount": "50"}) == Reason.BUDGET_UNMEASURABLE
    assert last_refusal(guard)["explanation"].startswith("policy budget 0:")


def test_policy_and_rule_budgets_are_both_charged(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=2, per="global")])
    root = Delegation.issue(
        world.org,
        world.bot,
        [{"tool": REFUND, "budget": {"window": "1d", "calls": 5}}],
        ttl="1h",
        clock=world.clock,
    )
    assert [spend(guard, root, world.bot, {}) for _ in range(3)] == [
        "ran",
        "ran",
        Reason.BUDGET_EXHAUSTED,
    ]
    charged = next(r for r in reversed(audit_records(guard)) if r.get("outcome") == "allow")
    assert [b["budget"] for b in charged["budget"]] == ["link 0 rule 0", "policy budget 0"]


def test_a_changed_policy_budget_starts_a_new_count(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=1, per="global")])
    delegation = world.chain(world.bot, scope=SCOPE)
    assert spend(guard, delegation, world.bot, {}) == "ran"
    widened = world.guard(store=guard.store, budgets=[cap(calls=2, per="global")])
    assert spend(widened, delegation, world.bot, {}) == "ran"
    assert spend(widened, delegation, world.bot, {}) == "ran"
    assert spend(widened, delegation, world.bot, {}) == Reason.BUDGET_EXHAUSTED


def test_other_tools_are_not_charged(world: World) -> None:
    guard = world.guard(budgets=[cap(calls=1, per="global")])
    delegation = world.chain(world.bot, scope=SCOPE)
    for _ in range(3):
        guard.call(delegation, "billing/read", {}, RecordingTool(), holder=world.bot)
    assert spend(guard, delegation, world.bot, {}) == "ran"


def last_refusal(guard: Guard) -> dict[str, Any]:
    return next(r for r in reversed(audit_records(guard)) if r.get("outcome") == "deny")


def test_the_readme_policy_budgets_load() -> None:
    """The README's ``budgets:`` example is a valid policy section, per the loader and schema."""
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "budgets:" in b]
    doc = {"version": 1, **yaml.safe_load(re.sub(r"(?m)^  ", "", block))}
    policy = load_policy(doc)
    assert [(b.per, b.tools) for b in policy.budgets] == [
        ("global", ["billing/refund"]),
        ("holder", ["search/*"]),
    ]
    assert list(jsonschema.Draft202012Validator(policy_schema()).iter_errors(doc)) == []
