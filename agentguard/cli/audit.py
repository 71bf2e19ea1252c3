"""``agentguard audit tail|verify|export``: read and check the tamper-evident log."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentguard.audit import head_files_in
from agentguard.cli._common import (
    EXIT_ERROR,
    HomeOption,
    JsonOption,
    PolicyOption,
    fail,
    note,
    out,
    print_json,
    say,
    stamp,
    workspace,
)

__all__ = ["app"]

app = typer.Typer(help="Read, verify and export the tamper-evident audit log.")


class ExportFormat(StrEnum):
    """Formats ``audit export`` writes."""

    jsonl = "jsonl"


def _row(record: dict[str, Any]) -> list[Text]:
    kind = str(record.get("type", ""))
    if kind == "decision":
        outcome = str(record.get("outcome", ""))
        if record.get("dry_run"):
            outcome += " (dry run)"
        detail = str(record.get("reason", ""))
    else:
        outcome = str(record.get("status", ""))
        detail = f"{record.get('duration_ms', '')} ms" if "duration_ms" in record else ""
    colour = {"allow": "green", "deny": "red", "approval_required": "yellow"}
    return [
        Text(str(record.get("seq", ""))),
        Text(stamp(record.get("time"))),
        Text(kind),
        Text(outcome, style=colour.get(str(record.get("outcome")), "")),
        Text(detail),
        Text(str(record.get("tool", ""))),
        Text(" -> ".join(record.get("path") or [])),
        Text(str(record.get("decision_id", ""))),
    ]


@app.command("tail")
def tail(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", "--lines", min=1, help="How many records.")] = 20,
    json_output: JsonOption = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Show the last N audit records."""
    with workspace(ctx, home, policy).read_guard() as guard:
        records = guard.audit.tail(n)
    if json_output:
        print_json(records)
        return
    if not records:
        note("the audit log is empty")
        return
    table = Table("seq", "time", "type", "outcome", "reason", "tool", "path", "decision")
    for record in records:
        table.add_row(*_row(record))
    out().print(table)


@app.command("verify")
def verify(
    ctx: typer.Context,
    head: Annotated[
        list[Path] | None,
        typer.Option(
            "--head",
            help=(
                "A replica's head file (its state directory's audit-checkpoints.jsonl), "
                "or a directory of them (*.jsonl); repeatable. Each must exist and hold "
                "a signed head; the log is checked against every one."
            ),
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Check the hash chain and its signed heads; exit 1 naming the first problem.

    On a database several guards share, give each replica's head file with
    --head: a cut of the newest records is found whichever replica wrote them.
    """
    try:
        head_files = head_files_in(head or ())
    except (OSError, ValueError) as exc:
        fail(f"--head: {exc}")
    with workspace(ctx, home, policy).read_guard(need_key=True) as guard:
        report = guard.audit.report(head_files=head_files)
    problem = report.problem
    for decision in report.not_known_to_have_run[:_SHOWN]:
        note(
            f"note: decision {decision.decision_id} ({decision.tool}, record {decision.seq}) "
            "has no completion record: not known to have run"
        )
    if len(report.not_known_to_have_run) > _SHOWN:
        note(f"note: {len(report.not_known_to_have_run) - _SHOWN} more such decision(s)")
    if problem is not None and problem.tampering:
        fail(f"audit log is NOT intact: {problem}", EXIT_ERROR)
    if problem is not None:
        fail(f"audit log may have lost its newest records (not proven tampering): {problem}")
    anchored = "no signed head yet"
    if report.anchored is not None:
        anchored = f"signed head at record {report.anchored}"
    if report.side_file is not None:
        anchored += f" (side file: record {report.side_file})"
    say(
        f"audit log intact: {report.records} record(s), {report.checkpoints} signed "
        f"checkpoint(s), {anchored}"
    )
    for path, seq in report.head_files:
        typer.echo(f"head file {path}: signed head at record {seq}")


#: How many "not known to have run" decisions ``audit verify`` lists.
_SHOWN = 20


@app.command("export")
def export(
    ctx: typer.Context,
    format_: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.jsonl,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Write every record to stdout, one JSON object a line, with its chain hashes."""
    del format_  # jsonl is the only format so far; the option keeps room for others
    with workspace(ctx, home, policy).read_guard() as guard:
        after = 0
        while True:
            batch = guard.store.audit_entries(after=after, limit=1000)
            if not batch:
                break
            for entry in batch:
                doc: dict[str, Any] = {"seq": entry.seq, "prev": entry.prev, "hash": entry.hash}
                try:
                    doc["record"] = json.loads(entry.body)
                except ValueError:
                    doc["body"] = entry.body  # exported as stored; 'audit verify' names it
                typer.echo(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
            after = batch[-1].seq
