"""``agentguard check``: a dry run of one call through the guard, with the explanation.

Exit codes: 0 allow, 3 deny, 4 approval required (deny beats approval).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from agentguard.cli._common import (
    EXIT_APPROVAL,
    EXIT_DENIED,
    EXIT_OK,
    READ_MAX_LINKS,
    HomeOption,
    JsonOption,
    PolicyOption,
    note,
    out,
    print_json,
    read_delegation,
    workspace,
)
from agentguard.decision import Decision
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError
from agentguard.keys import Identity, validate_principal_id
from agentguard.tokens import MAX_CALL_TTL, mint_call_token

__all__ = ["check_command", "exit_code", "render_decision"]

_STYLE = {"allow": "bold green", "deny": "bold red", "approval_required": "bold yellow"}


def exit_code(decision: Decision) -> int:
    """0 allow, 3 deny, 4 approval required."""
    if decision.outcome == "allow":
        return EXIT_OK
    if decision.outcome == "approval_required":
        return EXIT_APPROVAL
    return EXIT_DENIED


def render_decision(decision: Decision) -> Text:
    """A decision for people: outcome, reason, explanation, path and id."""
    text = Text(decision.outcome.upper().replace("_", " "), style=_STYLE.get(decision.outcome, ""))
    text.append(f"  {decision.tool}  ({decision.reason})\n")
    text.append(f"  {decision.explanation}\n")
    if decision.path:
        text.append("  path: " + " -> ".join(decision.path) + "\n")
    dry = " (dry run)" if decision.dry_run else ""
    text.append(f"  decision {decision.id}{dry}", style="dim")
    return text


def _parse_args(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise typer.BadParameter("is not valid JSON", param_hint="ARGS_JSON") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="ARGS_JSON")
    return value


def check_command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The delegation ('-' = stdin).")],
    tool: Annotated[str, typer.Argument(metavar="TOOL", help="namespace/tool")],
    args_json: Annotated[
        str | None, typer.Argument(metavar="[ARGS_JSON]", help="Arguments as a JSON object.")
    ] = None,
    as_id: Annotated[
        str | None,
        typer.Option("--as", metavar="ID", help="Sign the call token as ID (default: the holder)."),
    ] = None,
    request_approval: Annotated[
        bool,
        typer.Option(
            "--request-approval", help="File a pending approval request if one is needed."
        ),
    ] = False,
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Decide whether the holder may call TOOL with ARGS_JSON, without running anything."""
    args = _parse_args(args_json)
    if as_id is not None:
        validate_principal_id(as_id)
    text = read_delegation(file)
    ws = workspace(ctx, home, policy)
    with ws.guard() as guard:
        try:
            delegation: Delegation | None = Delegation.parse(text, max_links=READ_MAX_LINKS)
        except AgentGuardError:
            delegation = None  # the guard refuses it and records why
        signer: Identity | None = None
        signer_id = as_id or (delegation.holder if delegation is not None else None)
        if signer_id is not None and (as_id is not None or ws.keyring.has_private(signer_id)):
            signer = ws.keyring.identity(signer_id)
        elif delegation is not None:
            note(
                f"note: no private key for the holder {signer_id} here, so no call token "
                "can be signed (pass --as ID)"
            )
        token: str | None = None
        if signer is not None and delegation is not None:
            try:
                token = mint_call_token(
                    signer,
                    leaf_link_id=delegation.leaf.link_id,
                    tool=tool,
                    args=args,
                    now=guard.clock.now(),
                    ttl=min(guard.policy.limits.call_token_ttl, MAX_CALL_TTL),
                )
            except (AgentGuardError, ValueError):
                token = None  # a bad tool address: the guard explains it
        decision = guard.check(
            text, tool, args, call_token=token, request_approval=request_approval
        )
    if json_output:
        print_json(decision.as_dict())
    else:
        console = out()
        console.print(render_decision(decision))
        if decision.outcome == "approval_required" and decision.approval_request_id:
            rid = decision.approval_request_id
            console.print(
                Text(
                    f"approval request {rid}; answer it with "
                    f"'agentguard approvals approve {rid} --as USER'"
                )
            )
        elif decision.outcome == "approval_required":
            console.print(Text("file an approval request with --request-approval"))
    raise typer.Exit(exit_code(decision))
