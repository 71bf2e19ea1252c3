"""``agentguard approvals list|show|approve|deny|token|enroll|serve``: the approval queue.

Answers given here are signed with the approver's own key from the keyring
(assurance ``signed``); the guard checks the receipt again before any tool runs.
``token`` and ``serve`` run the approval web page (:mod:`agentguard.web`);
``enroll`` prints a one-time link where an approver enrols a passkey, whose
answers on the page then count as ``signed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentguard.approval import ApprovalRequest, receipt_check, visible_text
from agentguard.cli._common import (
    HomeOption,
    JsonOption,
    PolicyOption,
    fail,
    note,
    out,
    print_json,
    relative,
    say,
    stamp,
    workspace,
)
from agentguard.clock import parse_duration
from agentguard.errors import ConfigError
from agentguard.keys import validate_principal_id

__all__ = ["SERVE_PORT", "app"]

#: The approval page's default port: apart from the MCP proxy's ``--http`` examples (8765).
SERVE_PORT = 8780

app = typer.Typer(help="List, show, approve and deny step-up approval requests.")

AsOption = Annotated[
    str, typer.Option("--as", metavar="ID", help="The approver; their key signs the answer.")
]
MessageOption = Annotated[
    str | None, typer.Option("--message", metavar="TEXT", help="Sent back to the caller.")
]


def _as_dict(request: ApprovalRequest, now: float) -> dict[str, Any]:
    return {
        "id": request.id,
        "status": request.state(now),
        "tool": request.tool,
        "args": request.args_display,
        "path": list(request.path),
        "requester": request.requester,
        "on_behalf_of": request.on_behalf_of,
        "purpose": request.purpose,
        "rules": list(request.rules),
        "min_assurance": request.min_assurance,
        "created_at": request.created_at,
        "deadline": request.deadline,
        "reusable_until": request.reusable_until,
        "approver": request.approver,
        "message": request.message,
        "decision_id": request.decision_id,
        "links": None if request.links is None else [link.to_json() for link in request.links],
    }


@app.command("list")
def list_requests(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Answered and expired requests too.")] = False,
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """List pending approval requests (every request with --all)."""
    with workspace(ctx, home, policy).read_guard() as guard:
        book = guard.approvals
        requests = book.all() if all_ else book.pending()
        now = guard.clock.now()
    if json_output:
        print_json([_as_dict(r, now) for r in requests])
        return
    if not requests:
        note("no pending approval requests" if not all_ else "no approval requests")
        return
    table = Table("id", "status", "tool", "requester", "path", "deadline", "reusable", "approver")
    for r in requests:
        state = r.state(now)
        reusable = relative(r.reusable_until, now) if r.reusable_until else "-"
        table.add_row(
            Text(r.id),
            Text(state),
            Text(r.tool),
            Text(r.requester),
            Text(" -> ".join(r.path)),
            Text(relative(r.deadline, now) if state == "pending" else stamp(r.deadline)),
            Text(reusable),
            Text(r.approver or "-"),
        )
    out().print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    full: Annotated[
        bool, typer.Option("--full", help="Show long names and values whole, not folded.")
    ] = False,
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Show one request: who wants to call what, with which arguments, and why it asks.

    Every argument is shown (redacted where the policy says), with control and
    bidi characters escaped; long values are folded unless ``--full``.
    """
    with workspace(ctx, home, policy).read_guard() as guard:
        request = guard.approvals.get(request_id)
        now = guard.clock.now()
        checked = receipt_check(guard.approvals, request_id)
    if json_output:
        print_json({**_as_dict(request, now), "receipt": checked})
        return
    lines = [f"{request.id}  [{request.state(now)}]", request.describe(now, full=full)]
    if request.approver:
        lines.append(f"  answered by {request.approver}")
    if checked is not None:
        lines.append(f"  receipt: {checked}")
    if request.message:
        lines.append(f"  message: {visible_text(request.message)}")
    # Plain echo, not Rich: a full value must not be wrapped or re-flowed, and
    # the text is escaped already.
    typer.echo("\n".join(lines))


def _answer(
    ctx: typer.Context,
    request_id: str,
    approver_id: str,
    message: str | None,
    home: Path | None,
    policy: Path | None,
    *,
    approve: bool,
) -> None:
    validate_principal_id(approver_id)
    ws = workspace(ctx, home, policy)
    with ws.guard() as guard:
        # Up front, before the key is even looked for: an answer that would not count is
        # refused with who could give one instead (and how).
        guard.approvals.check_answerer(
            request_id, approver=approver_id, assurance="signed", approving=approve
        )
        approver = ws.keyring.identity(approver_id)
        if approve:
            guard.approvals.approve(request_id, approver, message=message)
        else:
            guard.approvals.deny(request_id, approver, message=message)
    verb = "approved" if approve else "denied"
    say(f"{verb} {request_id} as {approver_id} (signed with {approver_id}'s key)")


@app.command("approve")
def approve(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    as_id: AsOption,
    message: MessageOption = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Approve a pending request, signing the receipt with your own key."""
    _answer(ctx, request_id, as_id, message, home, policy, approve=True)


@app.command("deny")
def deny(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(metavar="ID")],
    as_id: AsOption,
    message: MessageOption = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Deny a pending request; the message goes back to the caller."""
    _answer(ctx, request_id, as_id, message, home, policy, approve=False)


@app.command("token")
def token(
    ctx: typer.Context,
    approver_id: Annotated[
        str, typer.Option("--for", metavar="ID", help="The approver the login token is for.")
    ],
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Issue a login token for the approval web page (replaces the approver's previous one)."""
    from agentguard.web import ApproverTokens

    validate_principal_id(approver_id)
    ws = workspace(ctx, home, policy)
    state = ws.require_home()
    if ws.policy().approver(approver_id) is None:
        note(f"warning: {approver_id} is not an approver in {ws.policy_path} yet")
    typer.echo(ApproverTokens.in_home(state).issue(approver_id))
    note(f"login token for {approver_id} (shown once); use it on 'agentguard approvals serve'")


@app.command("enroll")
def enroll(
    ctx: typer.Context,
    approver_id: Annotated[str, typer.Argument(metavar="ID", help="The approver.")],
    url: Annotated[
        str,
        typer.Option(
            "--url",
            help="Where the approval page is opened (its origin must fit the page's rp id).",
        ),
    ] = f"http://localhost:{SERVE_PORT}",
    ttl: Annotated[str, typer.Option("--ttl", help="How long the link works.")] = "10m",
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Print a one-time link where ID enrols a passkey on the approval page.

    The page registers the passkey and writes its public key into ID's entry in
    the policy file; answers ID then gives on the page are signed by the passkey
    and count as 'signed'. The link works once, for --ttl.
    """
    from agentguard.passkeys import PasskeyEnrolments

    validate_principal_id(approver_id)
    ws = workspace(ctx, home, policy)
    if not ws.has_policy_file:
        fail(f"no policy file at {ws.policy_path} (the passkey is written there)")
    if ws.policy().approver(approver_id) is None:
        fail(f"{approver_id} is not an approver in {ws.policy_path}; add them first")
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        fail(f"--ttl: {exc}", code=2)
    if not 0 < seconds <= 24 * 3600:
        fail("--ttl must be between 1s and 24h", code=2)
    token = PasskeyEnrolments.in_home(ws.require_home()).issue(approver_id, ttl=seconds)
    # In the fragment: a browser never sends it, so it reaches no server log.
    typer.echo(f"{url.rstrip('/')}/enroll#{token}")
    note(
        f"one-time passkey enrolment link for {approver_id} (valid {ttl}); open it on the "
        "approval page ('agentguard approvals serve') on the approver's device"
    )


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = SERVE_PORT,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="NAME",
            help="A host name browsers use for the page, besides loopback and --host "
            "(repeatable); requests naming any other host are refused.",
        ),
    ] = None,
    rp_id: Annotated[
        str,
        typer.Option(
            "--rp-id",
            metavar="NAME",
            help="Passkey relying-party id: localhost (open the page as "
            "http://localhost:PORT) or the host name the page is served under over HTTPS.",
        ),
    ] = "localhost",
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Serve the approval web page (the 'web' extra) until interrupted.

    The policy file is read again on every request: approvers added or removed
    count at once; a policy that no longer loads refuses every answer until fixed.
    """
    from agentguard import web
    from agentguard.passkeys import PasskeyEnrolments, check_rp_id

    web._require_web()  # before anything is said as if serving
    try:
        rp_id = check_rp_id(rp_id)
    except ConfigError as exc:
        fail(str(exc), code=2)
    ws = workspace(ctx, home, policy)
    with ws.guard() as guard:
        note(f"approval page on http://{host}:{port}/ (Ctrl-C to stop)")
        web.serve(
            guard.approvals,
            web.ApproverTokens.in_home(ws.require_home()),
            host=host,
            port=port,
            allowed_hosts=allow_host or (),
            policy_file=ws.policy_path if ws.has_policy_file else None,
            rp_id=rp_id,
            enrolments=PasskeyEnrolments.in_home(ws.require_home()),
        )
