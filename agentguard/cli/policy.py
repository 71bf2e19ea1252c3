"""``agentguard policy validate|schema``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentguard.cli._common import PolicyOption, fail, note, print_json, say, workspace
from agentguard.policy import PolicyError, load_policy, policy_schema

__all__ = ["app"]

app = typer.Typer(help="Validate the policy file or print its JSON Schema.")


@app.command("validate")
def validate(
    ctx: typer.Context,
    file: Annotated[
        Path | None,
        typer.Argument(metavar="[FILE]", help="Policy file (default ./agentguard.yaml)."),
    ] = None,
    policy: PolicyOption = None,
) -> None:
    """Check a policy file, including that every trusted root's, guard and federation key loads.

    Every problem is listed on stderr as FILE:LINE: key.path: message, with the
    closest known key for an unknown one.
    """
    path = file or workspace(ctx, policy=policy).policy_path
    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        count = len(exc.problems)
        fail(f"{path} is not a valid policy: {count} problem{'s' if count != 1 else ''}")
    roots = loaded.root_principals()
    loaded.listed_guard_keys()  # every guard key loads too
    loaded.federation_keys()  # and every federation key, none of them ambiguous
    if loaded.limits.max_chain_length > 1:
        for index, budget in enumerate(loaded.budgets):
            if budget.per == "holder":
                note(
                    f"budgets[{index}]: per: holder counts each principal apart: a holder "
                    "that may delegate gives each sub-agent a count of its own (per: chain "
                    "caps a grant with everything delegated below it)"
                )
    say(
        f"{path}: valid ({len(roots)} trusted root(s), {len(loaded.approvers)} approver(s), "
        f"{len(loaded.step_up)} step-up and {len(loaded.deny)} deny rule(s), "
        f"approval channel {loaded.approval.channel})"
    )


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of agentguard.yaml."""
    print_json(policy_schema())
