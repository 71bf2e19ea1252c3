"""``agentguard grant``: issue a root grant or attenuate a delegation, and record it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from agentguard.addresses import pattern_covers, patterns_overlap
from agentguard.budgets import Budget
from agentguard.cli._common import (
    EXIT_DENIED,
    HomeOption,
    PolicyOption,
    fail,
    note,
    parse_duration_option,
    read_delegation,
    relative,
    workspace,
    write_private,
)
from agentguard.cli.inspect import verify_here
from agentguard.delegation import Delegation, budget_warnings, scope_warnings
from agentguard.errors import InvalidAddressError, PredicateError
from agentguard.keys import validate_principal_id
from agentguard.predicates import compile_predicate, narrows
from agentguard.tokens import Rule

__all__ = ["build_rules", "grant_command", "parse_predicate", "wider_than_parent"]


#: Where --where errors send the reader: the predicate reference.
_REFERENCE = " (operators and rules: README, 'Argument predicates')"


def parse_predicate(text: str) -> Any:
    """A predicate written as JSON or YAML flow (``{amount: {"<=": 100}}``).

    Raises:
        typer.BadParameter: neither parses.
    """
    return _flow(text, "--where", f"predicate {text[:60]!r}", _REFERENCE)


def _part_covers(broad: str, narrow: str) -> bool:
    """Whether every name the glob ``narrow`` matches is matched by ``broad`` (sound, partial)."""
    if broad == narrow or broad == "*":
        return True
    plain = "*" not in broad[:-1] and "?" not in broad
    return plain and broad.endswith("*") and narrow.startswith(broad[:-1])


def _covers(broad: str, narrow: str) -> bool:
    if pattern_covers(broad, narrow):
        return True
    b_ns, _, b_tool = broad.partition("/")
    n_ns, _, n_tool = narrow.partition("/")
    return _part_covers(b_ns, n_ns) and _part_covers(b_tool, n_tool)


def _inside(rule: Rule, parent: Rule) -> bool:
    """Whether ``rule`` provably admits no call ``parent`` does not."""
    if not _covers(parent.tool, rule.tool):
        return False
    if parent.where is None:
        return True
    return rule.where is not None and narrows(list(rule.where), list(parent.where))


def wider_than_parent(parent: Delegation, rules: list[Rule]) -> list[str]:
    """Warnings for child rules that reach beyond every rule of the parent link.

    Scope is conjunctive, so such a rule is never wider in effect; but it reads
    wider than it is. Each warning names the rule and its effective scope: the
    part of each parent rule it overlaps.
    """
    leaf = parent.leaf
    warnings = []
    for index, rule in enumerate(rules):
        if any(_inside(rule, p) for p in leaf.scope):
            continue
        parts = []
        for p_index, p in enumerate(leaf.scope):
            if not patterns_overlap(rule.tool, p.tool):
                continue
            if _covers(p.tool, rule.tool):
                tools = rule.tool
            elif _covers(rule.tool, p.tool):
                tools = p.tool
            else:
                tools = f"what both {rule.tool} and {p.tool} name"
            extra = f" as parent rule {p_index} ({p.describe()}) allows" if p.where else ""
            parts.append(tools + extra)
        warnings.append(
            f"rule {index} ({rule.describe()}) reaches beyond every rule of the parent link "
            f"({', '.join(p.describe() for p in leaf.scope)}); scope is conjunctive, so its "
            f"effective scope is only: {'; '.join(parts)}"
        )
    return warnings


def _per_pattern(items: list[str], tools: list[str], option: str, what: str) -> dict[str, str]:
    """``PATTERN=TEXT`` options (``--where``, ``--budget``) as pattern -> text: each
    pattern one of the ``--tool`` patterns, and given at most once.

    Raises:
        typer.BadParameter: an item is malformed, names another pattern or repeats one.
    """
    found: dict[str, str] = {}
    for item in items:
        pattern, sep, text = item.partition("=")
        pattern = pattern.strip()
        if not sep or not pattern or not text.strip():
            raise typer.BadParameter(
                f"expected PATTERN={what.upper()}, got {item[:60]!r}", param_hint=option
            )
        if pattern not in tools:
            raise typer.BadParameter(
                f"{pattern!r} is not one of this command's --tool patterns", param_hint=option
            )
        if pattern in found:
            raise typer.BadParameter(
                f"give one {what} per pattern ({pattern!r} has two)", param_hint=option
            )
        found[pattern] = text
    return found


def _parse_budgets(items: list[str], tools: list[str]) -> dict[str, Budget]:
    budgets: dict[str, Budget] = {}
    for pattern, text in _per_pattern(items, tools, "--budget", "budget").items():
        try:
            budgets[pattern] = Budget.parse(_flow(text, "--budget", f"budget {text[:60]!r}"))
        except ValueError as exc:
            raise typer.BadParameter(f"{pattern}: {exc}", param_hint="--budget") from None
    return budgets


def _flow(text: str, option: str, what: str, reference: str = "") -> Any:
    """``text`` read as JSON, else as YAML flow (``{window: 1d, calls: 10}``).

    Raises:
        typer.BadParameter: neither parses.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise typer.BadParameter(
            f"cannot parse {what} as JSON or YAML{reference}", param_hint=option
        ) from None


def build_rules(
    tools: list[str],
    wheres: list[str],
    approvals: list[str],
    budgets: list[str] | None = None,
) -> list[Rule]:
    """Rules from ``--tool``, ``--where PATTERN=PREDICATE``, ``--approval PATTERN``
    and ``--budget PATTERN=BUDGET``.

    Raises:
        typer.BadParameter: a pattern, predicate or option combination is invalid.
    """
    if len(set(tools)) != len(tools):
        raise typer.BadParameter("each tool pattern may be given once", param_hint="--tool")
    predicates: dict[str, Any] = {}
    for pattern, text in _per_pattern(wheres, tools, "--where", "predicate").items():
        try:
            predicates[pattern] = compile_predicate(parse_predicate(text))
        except PredicateError as exc:
            raise typer.BadParameter(
                f"{pattern}: {exc}{_REFERENCE}", param_hint="--where"
            ) from None
    for pattern in approvals:
        if pattern not in tools:
            raise typer.BadParameter(
                f"{pattern!r} is not one of this command's --tool patterns",
                param_hint="--approval",
            )
    limits = _parse_budgets(budgets or [], tools)
    rules = []
    for pattern in tools:
        try:
            rules.append(
                Rule(pattern, predicates.get(pattern), pattern in approvals, limits.get(pattern))
            )
        except InvalidAddressError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tool") from None
    return rules


def grant_command(
    ctx: typer.Context,
    from_id: Annotated[
        str, typer.Option("--from", metavar="ID", help="Who grants (signs); key must be here.")
    ],
    to_id: Annotated[str, typer.Option("--to", metavar="ID", help="Who receives the grant.")],
    tool: Annotated[
        list[str],
        typer.Option(
            "--tool", metavar="PATTERN", help="Tool pattern (repeatable), e.g. 'tickets/*'."
        ),
    ],
    ttl: Annotated[str, typer.Option("--ttl", metavar="DURATION", help="Lifetime, e.g. 8h.")],
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            metavar="PATTERN=PREDICATE",
            help=(
                "Argument predicate for one --tool pattern (JSON or YAML flow), e.g. "
                "'billing/refund={amount: {\"<=\": 100}}'. It admits a call only when "
                "definitely true: a missing or wrongly typed argument is refused. "
                "Operators and rules: README, 'Argument predicates'."
            ),
        ),
    ] = None,
    approval: Annotated[
        list[str] | None,
        typer.Option("--approval", metavar="PATTERN", help="This --tool rule needs approval."),
    ] = None,
    budget: Annotated[
        list[str] | None,
        typer.Option(
            "--budget",
            metavar="PATTERN=BUDGET",
            help=(
                "A budget for one --tool pattern (JSON or YAML flow), e.g. "
                "'billing/refund={window: 1d, calls: 10, sum: {amount: 500}}': at most "
                "10 calls and a total amount of 500 per fixed day (UTC). Every budget "
                "along the chain is charged. Rules: README, 'Budgets'."
            ),
        ),
    ] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", metavar="TEXT")] = None,
    on_behalf_of: Annotated[
        str | None, typer.Option("--on-behalf-of", metavar="ID", help="The sponsor.")
    ] = None,
    max_depth: Annotated[
        int | None,
        typer.Option("--max-depth", min=0, help="Further delegations allowed below this one."),
    ] = None,
    parent: Annotated[
        Path | None,
        typer.Option("--parent", metavar="FILE", help="Attenuate this delegation instead."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="FILE", help="Write here (mode 0600), not stdout."),
    ] = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Issue a root grant (--from is a trusted root) or attenuate --parent to --to."""
    validate_principal_id(from_id)
    validate_principal_id(to_id)
    if on_behalf_of is not None:
        validate_principal_id(on_behalf_of)
    ttl_seconds = parse_duration_option(ttl, "--ttl")
    rules = build_rules(tool, where or [], approval or [], budget or [])
    ws = workspace(ctx, home, policy)
    keyring = ws.keyring
    with ws.guard() as guard:
        issuer = keyring.identity(from_id)
        subject = keyring.principal(to_id)
        options: dict[str, Any] = {"ttl": ttl_seconds, "purpose": purpose}
        if on_behalf_of is not None:
            options["on_behalf_of"] = on_behalf_of
        if max_depth is not None:
            options["max_depth"] = max_depth
        if parent is None:
            root_kids = {k.principal.kid for k in guard.verifier.root_keys(from_id)}
            if issuer.kid not in root_kids:
                note(
                    f"warning: {from_id} is not a trusted root in {ws.policy_path} "
                    "(or its key differs); this grant will not verify here"
                )
            delegation = guard.issue(issuer, subject, rules, **options)
        else:
            parent_chain = Delegation.parse(
                read_delegation(parent), max_links=guard.policy.limits.max_chain_length
            )
            verification = verify_here(guard, parent_chain)
            if not verification.ok:
                if verification.reason != "untrusted_root":
                    fail(
                        f"the parent delegation in {parent} does not verify "
                        f"({verification.reason}): {verification.explanation}",
                        EXIT_DENIED,
                    )
                note(f"warning: the parent delegation's root is not trusted in {ws.policy_path}")
            delegation = guard.attenuate(parent_chain, issuer, subject, rules, **options)
            for warning in wider_than_parent(parent_chain, rules):
                note(f"warning: {warning}")
        now = guard.clock.now()
    leaf = delegation.leaf
    for warning in [*scope_warnings(leaf.scope), *budget_warnings(delegation)]:
        note(f"warning: {warning}")
    text = delegation.serialize()
    if output is not None:
        write_private(output, text + "\n")
    else:
        typer.echo(text)
    where_to = f" -> {output}" if output is not None else ""
    note(
        f"granted {leaf.issuer} -> {leaf.subject}: {len(leaf.scope)} rule(s), "
        f"expires {relative(leaf.expires_at, now)}, link {leaf.link_id[:12]}, "
        f"chain of {len(delegation)}{where_to}"
    )
