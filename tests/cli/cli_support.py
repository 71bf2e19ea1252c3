"""Helpers for the CLI tests: an in-process runner and checks on error output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from typer.testing import CliRunner, Result

from agentguard.cli import app


class CLI:
    """Runs ``agentguard`` commands in a test's working directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / ".agentguard"
        self._runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self._runner.invoke(app, list(args), input=input, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        """Run and insist on exit 0."""
        result = self(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result


def one_line_error(result: Result, *fragments: str) -> str:
    """The single stderr line of a failed command, checked to contain ``fragments``."""
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def add_approver(cli: CLI, principal_id: str) -> None:
    """List ``principal_id`` as an approver of every tool in the policy ``init`` wrote
    (without approvers, a request is refused at once with ``no_approver``)."""
    path = cli.root / "agentguard.yaml"
    text = path.read_text()
    assert "approvers: []" in text
    path.write_text(text.replace("approvers: []", f"approvers:\n  - id: {principal_id}", 1))


def grant(cli: CLI, *args: str, out: str, parent: str | None = None) -> Result:
    """``agentguard grant ... -o out`` (with ``--parent``), insisting on success."""
    extra: Sequence[str] = ("--parent", parent) if parent else ()
    return cli.ok("grant", *args, *extra, "-o", out)
