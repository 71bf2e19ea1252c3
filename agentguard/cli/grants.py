"""``agentguard grants list``: the issuer-side inventory with status and last use."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentguard.budgets import describe_usage
from agentguard.cli._common import (
    READ_MAX_LINKS,
    HomeOption,
    JsonOption,
    PolicyOption,
    note,
    out,
    parse_duration_option,
    print_json,
    relative,
    workspace,
)
from agentguard.cli.inspect import (
    CANNOT_TELL,
    PolicyUsage,
    budget_usage,
    policy_budget_text,
    policy_budget_usage,
)
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError
from agentguard.guard import Guard
from agentguard.keys import validate_principal_id
from agentguard.store.base import GrantRecord
from agentguard.verify import revoked_link

__all__ = ["app", "effective_status", "link_budgets", "link_policy_budgets"]

app = typer.Typer(help="The grant inventory: who granted what to whom, and is it still used.")


def effective_status(guard: Guard, record: GrantRecord, now: float) -> str:
    """``revoked`` (also through an ancestor, key or sponsor), ``expired``, ``pending``, ``active``.

    A link is revoked when it or any link above it is (see
    :func:`agentguard.verify.revoked_link`).
    """
    status = record.status(now)
    if status == "revoked":
        return status
    try:
        chain = Delegation.parse(record.chain, max_links=READ_MAX_LINKS)
    except AgentGuardError:
        return status
    # The recorded chain ends at this link: it holds the link and its ancestors only.
    if revoked_link(guard.store, chain.grants) is not None:
        return "revoked"
    return status


def link_budgets(guard: Guard, record: GrantRecord, now: float) -> list[dict[str, Any]]:
    """What each budgeted rule of the recorded link has used in its current window.

    Each entry is the audit record's form with ``rule`` (the rule's index);
    empty when the link has no budget or the store keeps no counters.
    """
    try:
        chain = Delegation.parse(record.chain, max_links=READ_MAX_LINKS)
    except AgentGuardError:
        return []
    usage = budget_usage(guard, chain, now) or {}
    last = len(chain) - 1
    return [{"rule": r, **view} for (link, r), view in sorted(usage.items()) if link == last]


def link_policy_budgets(guard: Guard, record: GrantRecord, now: float) -> PolicyUsage:
    """What each of the policy's ``budgets:`` has used for calls under the recorded link
    (its holder being the link's subject); see :func:`agentguard.cli.inspect.policy_budget_usage`.

    Empty when the policy has none or the recorded chain cannot be read; ``None``
    when the store's counters cannot be read.
    """
    try:
        chain = Delegation.parse(record.chain, max_links=READ_MAX_LINKS)
    except AgentGuardError:
        return []
    return policy_budget_usage(guard, chain, now)


def _budget_text(budgets: list[dict[str, Any]], policy_budgets: PolicyUsage) -> str:
    lines = []
    for budget in budgets:
        lines.append(f"rule {budget['rule']}:")
        lines.append(describe_usage(budget, sep="\n"))
    if policy_budgets is None:
        lines.append(CANNOT_TELL)
    for view in policy_budgets or ():
        lines.append(policy_budget_text(view, sep="\n"))
    return "\n".join(lines)


@app.command("list")
def list_grants(
    ctx: typer.Context,
    expiring: Annotated[
        str | None,
        typer.Option("--expiring", metavar="DURATION", help="Active grants expiring within this."),
    ] = None,
    stale: Annotated[
        str | None,
        typer.Option("--stale", metavar="DURATION", help="Active grants unused for this long."),
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal", metavar="ID", help="Grants this principal gave, got or sponsors."
        ),
    ] = None,
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """List recorded grants with status (active/expired/revoked/pending) and last use."""
    expiring_s = parse_duration_option(expiring, "--expiring") if expiring else None
    stale_s = parse_duration_option(stale, "--stale") if stale else None
    if principal is not None:
        validate_principal_id(principal)
    ws = workspace(ctx, home, policy)
    rows: list[tuple[GrantRecord, str, list[dict[str, Any]], PolicyUsage]] = []
    with ws.read_guard() as guard:
        now = guard.clock.now()
        for record in guard.grants():
            if principal is not None and principal not in (
                record.issuer,
                record.subject,
                record.on_behalf_of,
            ):
                continue
            status = effective_status(guard, record, now)
            if expiring_s is not None and not (
                status == "active" and record.expires_at - now <= expiring_s
            ):
                continue
            if stale_s is not None:
                last = record.last_used if record.last_used is not None else record.issued_at
                if not (status == "active" and now - last >= stale_s):
                    continue
            rows.append(
                (
                    record,
                    status,
                    link_budgets(guard, record, now),
                    link_policy_budgets(guard, record, now),
                )
            )
    if json_output:
        print_json(
            [
                {
                    **record.as_dict(now),
                    "status": status,
                    "budgets": budgets,
                    "policy_budgets": None if policies is None else list(policies),
                }
                for record, status, budgets, policies in rows
            ]
        )
        return
    if not rows:
        note("no grants match")
        return
    columns = ["link", "issuer -> subject", "rules", "status", "expires", "last used", "purpose"]
    with_budgets = any(budgets or policies != [] for _, _, budgets, policies in rows)
    table = Table(*columns, *(["budget (this window)"] if with_budgets else []))
    colour = {"active": "green", "expired": "dim", "revoked": "red", "pending": "yellow"}
    for record, status, budgets, policies in rows:
        extra = [Text(_budget_text(budgets, policies))] if with_budgets else []
        table.add_row(
            Text(record.link_id[:12]),
            Text(f"{record.issuer} -> {record.subject}"),
            Text("\n".join(record.rules)),
            Text(status, style=colour[status]),
            Text(relative(record.expires_at, now)),
            Text(relative(record.last_used, now)),
            Text(record.purpose or ""),
            *extra,
        )
    out().print(table)
