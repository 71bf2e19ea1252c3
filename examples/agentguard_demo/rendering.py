"""What the operator sees: one decision per line, the delegation tree, the decisions, the trace.

Everything here reads the audit records, the grant inventory or the finished spans and
returns a Rich renderable; nothing here decides anything.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agentguard.cli.grants import effective_status
from agentguard.guard import Guard

OUTCOME_STYLE = {"allow": "bold green", "deny": "bold red", "approval_required": "bold yellow"}


def holder_of(record: Mapping[str, Any]) -> str:
    """The holder a decision names; a chain refused before verification names none."""
    path = record.get("path") or []
    return str(path[-1]) if path else "(unverified chain)"


def decision_line(record: Mapping[str, Any]) -> Text:
    """One decision as the operator sees it: outcome, tool, holder, reason and explanation."""
    outcome = str(record["outcome"])
    label = {"allow": "ALLOWED", "deny": "DENIED", "approval_required": "NEEDS APPROVAL"}.get(
        outcome, outcome.upper()
    )
    where = record.get("enforcement_point", "?")
    holder = holder_of(record)
    line = Text("  ")
    line.append(f"{label:<14}", style=OUTCOME_STYLE.get(outcome, "bold"))
    line.append(f" {record['tool']}", style="cyan")
    line.append(f"  by {holder} via {where}", style="dim")
    if record.get("dry_run"):
        line.append("  (dry run)", style="dim")
    if outcome != "allow":
        line.append(f"\n                 {record['reason']}: {record['explanation']}")
    elif record.get("approval"):
        approval = record["approval"]
        line.append(
            f"\n                 approved by {approval['approver']} "
            f"({approval['channel']}, assurance {approval['assurance']})"
        )
    return line


def delegation_tree(guard: Guard) -> Tree:
    """Every recorded grant as a tree from the trusted root, with status and rules.

    A revoked link (by id, key, issuer, subject or sponsor) and everything below it
    show ``[revoked]``.
    """
    now = guard.clock.now()
    records = guard.grants()
    children: dict[str | None, list[Any]] = {}
    for record in records:
        children.setdefault(record.parent, []).append(record)
    colour = {"active": "green", "expired": "dim", "revoked": "red", "pending": "yellow"}
    tree = Tree(Text("org:acme (trusted root)", style="bold"))

    def add(node: Tree, parent: str | None, parent_revoked: bool = False) -> None:
        for record in sorted(children.get(parent, []), key=lambda r: r.issued_at):
            status = "revoked" if parent_revoked else effective_status(guard, record, now)
            label = Text(record.subject, style="bold")
            label.append(f"  [{status}]", style=colour.get(status, ""))
            label.append(f"  link {record.link_id[:10]}", style="dim")
            if record.on_behalf_of:
                label.append(f"  for {record.on_behalf_of}", style="magenta")
            if record.purpose:
                label.append(f"  “{record.purpose}”", style="italic")
            branch = node.add(label)
            for rule in record.rules:
                branch.add(Text(rule, style="cyan"))
            add(branch, record.link_id, status == "revoked")

    add(tree, None)
    return tree


def decisions_table(decisions: Sequence[tuple[int, Mapping[str, Any]]]) -> Table:
    """Every decision of the run (sequence number and record), whichever process took it."""
    table = Table(
        title="Decisions (one audit log, written by this process and by the MCP proxy process)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right")
    table.add_column("point", no_wrap=True)
    table.add_column("holder", overflow="fold")
    table.add_column("tool", no_wrap=True)
    table.add_column("outcome / reason", overflow="fold", min_width=17)
    table.add_column("link/rule", no_wrap=True)
    table.add_column("decision", no_wrap=True, min_width=20)
    for seq, record in decisions:
        outcome = str(record["outcome"])
        where = "-"
        if record.get("link") is not None:
            where = f"link {record['link']}"
            if record.get("rule") is not None:
                where += f" rule {record['rule']}"
        elif record.get("approval_rules"):
            where = "step-up"
        verdict = Text(outcome, style=OUTCOME_STYLE.get(outcome, ""))
        if record["reason"] not in ("allowed", outcome):
            verdict.append(f"\n{record['reason']}", style="dim")
        table.add_row(
            str(seq),
            str(record.get("enforcement_point", "")),
            holder_of(record),
            str(record["tool"]),
            verdict,
            where,
            str(record["decision_id"]),
        )
    return table


SPAN_KEYS = (
    ("agentguard.enforcement.point", "at"),
    ("agentguard.decision.outcome", "outcome"),
    ("agentguard.decision.reason", "reason"),
    ("agentguard.approval.outcome", "approval"),
    ("agentguard.decision.id", "decision"),
)


def trace_tree(spans: Sequence[ReadableSpan], decisions: Sequence[Mapping[str, Any]]) -> Group:
    """Spans as trees by parent id; decisions the proxy process recorded hang off their span."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(span)
    remote: dict[str, list[Mapping[str, Any]]] = {}
    for record in decisions:
        if record.get("enforcement_point") == "mcp_proxy" and record.get("span_id"):
            remote.setdefault(str(record["span_id"]), []).append(record)

    def label(span: ReadableSpan) -> Text:
        attrs = span.attributes or {}
        text = Text(span.name, style="bold" if span.parent is None else "")
        keys = SPAN_KEYS[1:4] if span.name.startswith("agentguard.") else SPAN_KEYS
        extras = [short + "=" + str(attrs[key]) for key, short in keys if key in attrs]
        if extras:
            text.append("  " + " ".join(extras), style="dim")
        if span.status.status_code.name == "ERROR":
            text.append("  ERROR", style="red")
        return text

    def add(node: Tree, span: ReadableSpan) -> None:
        branch = node.add(label(span))
        for child in sorted(children.get(span.context.span_id, []), key=_start):
            add(branch, child)
        for record in remote.get(trace.format_span_id(span.context.span_id), []):
            outcome = str(record["outcome"])
            text = Text("proxy process: ", style="magenta")
            text.append(f"agentguard decision {record['tool']} ")
            text.append(outcome, style=OUTCOME_STYLE.get(outcome, ""))
            text.append(f" reason={record['reason']} decision={record['decision_id']}", style="dim")
            text.append(f"  chain {' -> '.join(record.get('path', []))}", style="dim")
            branch.add(text)

    trees = []
    for root in sorted(children.get(None, []), key=_start):
        if not root.name.startswith("scenario"):
            continue
        trace_id = trace.format_trace_id(root.context.trace_id)
        tree = Tree(Text(f"trace {trace_id[:16]}…", style="dim"))
        add(tree, root)
        trees.append(tree)
    return Group(*trees)


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def explore(console: Console, home: Path | None, policy_name: str) -> None:
    """The commands to look further, pointing at the kept state when there is one."""
    where = shlex.quote(str(home)) if home is not None else "DIR"
    opts = f"--home {where} --policy {where}/{policy_name}"
    lines = [
        (f"agentguard inspect {opts} {where}/log-collector.delegation", "the sub-agent's chain"),
        (f"agentguard inspect {opts} {where}/partner-events.delegation", "revoked: exit 3"),
        (f"agentguard grants list {opts} --stale 1h", "unused grants"),
        (f"agentguard audit tail {opts}", "the last records"),
        (f"agentguard audit verify {opts}", "the hash chain"),
        (f"agentguard approvals list --all {opts}", "alice's answer"),
    ]
    console.print()
    if home is None:
        console.print(
            Text(
                "Explore further: keep the state with '.venv/bin/python examples/demo.py "
                "--keep DIR', then:"
            )
        )
    else:
        console.print(Text(f"Explore further (state kept in {home}):"))
    # make demo installs agentguard into .venv/ and puts nothing on PATH.
    console.print(
        Text(
            "  (the agentguard command is in .venv/bin/: run '. .venv/bin/activate' first, "
            "or write .venv/bin/agentguard)",
            style="dim",
        )
    )
    for line, why in lines:
        text = Text("  " + line, style="cyan") + Text(f"  # {why}", style="dim")
        console.print(text, soft_wrap=True)
