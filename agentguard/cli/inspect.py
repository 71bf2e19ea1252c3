"""``agentguard inspect``: a delegation as a tree, checked against this home's trusted roots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text
from rich.tree import Tree

from agentguard.budgets import describe_usage, rule_usage
from agentguard.cli._common import (
    EXIT_DENIED,
    HomeOption,
    JsonOption,
    PolicyOption,
    out,
    print_json,
    read_delegation,
    relative,
    stamp,
    workspace,
)
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError, StoreError
from agentguard.guard import Guard, check_limits
from agentguard.store.base import Revocation
from agentguard.tokens import Grant
from agentguard.verify import revoked_link

__all__ = [
    "PolicyUsage",
    "Usage",
    "Verification",
    "budget_usage",
    "chain_json",
    "chain_tree",
    "inspect_command",
    "policy_budget_text",
    "policy_budget_usage",
    "verify_here",
]


@dataclass(frozen=True)
class Verification:
    """Whether a delegation verifies now against a guard's trusted roots, and if not why.

    ``revoked_from`` is the first link revoked in its own right (by link id, key,
    issuer, subject or sponsor); it and every link below it are revoked.
    """

    ok: bool
    reason: str | None = None
    explanation: str | None = None
    revoked_from: int | None = None
    revoked_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {
            "verified": self.ok,
            "reason": self.reason,
            "explanation": self.explanation,
            "revoked_from": self.revoked_from,
        }

    def revoked(self, index: int) -> bool:
        """Whether link ``index`` is revoked (itself or through a link above it)."""
        return self.revoked_from is not None and index >= self.revoked_from


def verify_here(guard: Guard, delegation: Delegation) -> Verification:
    """Verify trust, signatures, windows, depth, revocation and policy limits, now."""
    # Looked up apart from verification: a chain refused for another reason first
    # (expired, untrusted) must still show which of its links are revoked.
    found = revoked_link(guard.store, delegation.grants)
    revoked_from, revoked_by = (None, None) if found is None else (found[0], _cause(found[1]))
    try:
        chain = guard.verifier.verify_chain(delegation)
        check_limits(guard.policy, chain.delegation)
    except DeniedError as exc:
        return Verification(False, exc.reason, exc.explanation, revoked_from, revoked_by)
    return Verification(True, revoked_from=revoked_from, revoked_by=revoked_by)


def _cause(revocation: Revocation) -> str:
    value = revocation.value if revocation.kind == "principal" else revocation.value[:12]
    return f"{revocation.kind} {value}"


def _revoked_state(index: int, verification: Verification) -> str:
    first = verification.revoked_from
    if index == first:
        return f"revoked ({verification.revoked_by})"
    return f"revoked (through link {first})"


def _state(grant: Grant, now: float) -> tuple[str, str]:
    if now < grant.not_before:
        return f"starts {relative(grant.not_before, now)}", "yellow"
    if now >= grant.expires_at:
        return f"expired {relative(grant.expires_at, now)}", "red"
    return f"valid, expires {relative(grant.expires_at, now)}", "green"


#: Budget usage by ``(link, rule)`` (see :func:`agentguard.budgets.rule_usage`).
Usage = dict[tuple[int, int], dict[str, Any]] | None


def budget_usage(guard: Guard, delegation: Delegation, now: float) -> Usage:
    """What each budgeted rule of ``delegation`` has used in its current window, from
    the guard's store (``None``: the store keeps no budget counters or cannot be read)."""
    read = getattr(guard.store, "budget_states", None)
    if read is None:
        return None
    try:
        return rule_usage(delegation.grants, read, now)
    except StoreError:
        return None


#: The policy's ``budgets:`` as a chain's calls are charged to them, each in the audit
#: record's form with its ``tools`` and ``per``; ``None``: they cannot be read.
PolicyUsage = Sequence[dict[str, Any]] | None


def policy_budget_usage(guard: Guard, delegation: Delegation, now: float) -> PolicyUsage:
    """What each of the policy's ``budgets:`` has used in its current window for calls
    under ``delegation``: the counters the guard charges them to
    (:meth:`agentguard.policy.Policy.budget_counters`), read with the store's
    ``budget_states`` (nothing charged). Empty when the policy has none; ``None``
    when the store keeps no budget counters or they cannot be read."""
    budgets = guard.policy.budgets
    if not budgets:
        return []
    read = getattr(guard.store, "budget_states", None)
    if read is None:
        return None
    try:
        states = read(guard.policy.budget_counters(delegation), now)
    except StoreError:
        return None
    return [
        {**state.as_record(charged=False), "tools": list(b.tools), "per": b.per}
        for b, state in zip(budgets, states, strict=True)
    ]


def policy_budget_text(view: dict[str, Any], sep: str = ", ") -> str:
    """``policy budget 0 (billing/*, per chain): 2/10 calls used (8 left), resets …``."""
    head = f"{view['budget']} ({', '.join(view['tools'])}, per {view['per']})"
    return f"{head}:{' ' if sep == ', ' else sep}{describe_usage(view, sep)}"


#: What is shown when the policy's budgets cannot be read.
CANNOT_TELL = (
    "cannot tell what the policy's budgets have used (the store keeps no budget counters, "
    "or they cannot be read)"
)


def chain_tree(
    delegation: Delegation,
    now: float,
    verification: Verification | None,
    usage: Usage = None,
    policy_usage: PolicyUsage = (),
) -> Tree:
    """The chain as a Rich tree: each link nested under the one that delegated to it.

    With ``usage`` each budgeted rule also shows what its window has used; with
    ``policy_usage`` (:func:`policy_budget_usage`), the policy's budgets follow.
    """
    title = Text(" -> ".join(delegation.path), style="bold")
    title.append(f"  ({len(delegation)} link{'s' if len(delegation) != 1 else ''})", style="dim")
    if verification is not None:
        if verification.ok:
            title.append("  verifies against the trusted roots", style="bold green")
        else:
            title.append(
                f"  DOES NOT VERIFY ({verification.reason}): {verification.explanation}",
                style="bold red",
            )
    root = Tree(title)
    node = root
    for index, grant in enumerate(delegation):
        state, colour = _state(grant, now)
        if verification is not None and verification.revoked(index):
            state, colour = _revoked_state(index, verification), "bold red"
        label = Text(f"[{index}] ", style="dim")
        label.append(f"{grant.issuer} -> {grant.subject}", style="bold")
        label.append(f"  {state}", style=colour)
        label.append(f"  link {grant.link_id[:12]}", style="dim")
        branch = node.add(label)
        branch.add(
            Text(
                f"window {stamp(grant.not_before)} .. {stamp(grant.expires_at)}"
                f"  max_depth {grant.max_depth}"
            )
        )
        if grant.purpose:
            branch.add(Text(f"purpose: {grant.purpose}"))
        if grant.on_behalf_of:
            branch.add(Text(f"on behalf of: {grant.on_behalf_of}"))
        rules = branch.add(Text("rules"))
        for r_index, rule in enumerate(grant.scope):
            shown = rules.add(Text(f"rule {r_index}: {rule.describe()}"))
            used = (usage or {}).get((index, r_index))
            if used is not None:
                shown.add(Text(f"budget {describe_usage(used)}", style="cyan"))
        node = branch
    if policy_usage is None:
        root.add(Text(CANNOT_TELL, style="yellow"))
    elif policy_usage:
        policy = root.add(Text("policy budgets (this chain's counts)"))
        for view in policy_usage:
            policy.add(Text(policy_budget_text(view), style="cyan"))
    return root


def chain_json(
    delegation: Delegation,
    now: float,
    verification: Verification | None,
    usage: Usage = None,
    policy_usage: PolicyUsage = (),
) -> dict[str, Any]:
    """The chain as JSON (no token material); with ``usage``, each budgeted rule's
    ``budget_used`` (the audit record's form); ``policy_budgets``: ``policy_usage``
    (``null`` when it cannot be read)."""
    links = []
    for index, grant in enumerate(delegation):
        if verification is not None and verification.revoked(index):
            state = _revoked_state(index, verification)
        else:
            state = _state(grant, now)[0]
        links.append(
            {
                "index": index,
                "link_id": grant.link_id,
                "parent": grant.parent,
                "issuer": grant.issuer,
                "subject": grant.subject,
                "subject_kid": grant.subject_key.kid,
                "issued_at": grant.issued_at,
                "not_before": grant.not_before,
                "expires_at": grant.expires_at,
                "state": state,
                "revoked": verification is not None and verification.revoked(index),
                "purpose": grant.purpose,
                "on_behalf_of": grant.on_behalf_of,
                "max_depth": grant.max_depth,
                "rules": [
                    {
                        **rule.to_claim(),
                        "text": rule.describe(),
                        **_used(usage, index, r_index),
                    }
                    for r_index, rule in enumerate(grant.scope)
                ],
            }
        )
    doc: dict[str, Any] = {
        "holder": delegation.holder,
        "path": list(delegation.path),
        "expires_at": delegation.expires_at,
        "links": links,
        "policy_budgets": None if policy_usage is None else list(policy_usage),
    }
    if verification is not None:
        doc.update(verification.as_dict())
    return doc


def _used(usage: Usage, link: int, rule: int) -> dict[str, Any]:
    used = (usage or {}).get((link, rule))
    return {} if used is None else {"budget_used": used}


def inspect_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A delegation file ('-' = stdin).")],
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Show a delegation chain and whether it verifies here now (exit 3 if it does not)."""
    text = read_delegation(file)
    ws = workspace(ctx, home, policy)
    with ws.read_guard(require_home=False) as guard:
        delegation = Delegation.parse(text, max_links=max(guard.policy.limits.max_chain_length, 8))
        verification = verify_here(guard, delegation)
        now = guard.clock.now()
        usage = budget_usage(guard, delegation, now)
        policy_usage = policy_budget_usage(guard, delegation, now)
    if json_output:
        print_json(chain_json(delegation, now, verification, usage, policy_usage))
    else:
        out().print(chain_tree(delegation, now, verification, usage, policy_usage))
    if not verification.ok:
        raise typer.Exit(EXIT_DENIED)
