"""The example notebooks run top to bottom on a real kernel (nbclient), as a reader runs them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Run first in the executed copy only: which interpreter and directory the kernel uses.
PROBE = "import os, sys\nprint('KERNEL', sys.executable)\nprint('CWD', os.getcwd())"


def _text(outputs: list[Any]) -> str:
    parts = []
    for output in outputs:
        parts.append(output.get("text", ""))
        parts.extend(str(value) for value in output.get("data", {}).values())
    return "".join(parts)


def _cell(notebook: Any, marker: str) -> Any:
    """The first code cell whose source contains ``marker``."""
    for cell in notebook.cells:
        if cell.cell_type == "code" and marker in cell.source:
            return cell
    raise AssertionError(f"no code cell contains {marker!r}")


def _execute(name: str, tmp_path: Path) -> tuple[Any, str]:
    """Run a copy of ``examples/name`` with the kernel in an empty temporary directory.

    Returns the executed notebook and the text of all its outputs.
    """
    from nbclient import NotebookClient

    # nbformat's functions are unannotated.
    notebook = nbformat.read(EXAMPLES / name, as_version=4)  # type: ignore[no-untyped-call]
    code = [c for c in notebook.cells if c.cell_type == "code"]
    # Stored without outputs so that the repository stays small and diffs readable.
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name} has outputs"
    notebook.cells.insert(0, nbformat.v4.new_code_cell(PROBE))  # type: ignore[no-untyped-call]
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = NotebookClient(
        notebook,
        kernel_name="python3",  # the kernelspec installed in the venv runs this interpreter
        timeout=60,
        startup_timeout=60,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()

    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    probe = _text(notebook.cells[0].outputs)
    assert f"KERNEL {sys.executable}" in probe  # the venv's own ipykernel
    assert f"CWD {workdir}" in probe
    assert not list(workdir.iterdir()), "the notebook wrote files"
    return notebook, _text([o for c in notebook.cells for o in c.get("outputs", [])])


def _card_status(notebook: Any) -> str:
    """The widget state saved with the executed notebook (what the card finally showed)."""
    return json.dumps(notebook.metadata.get("widgets", {}))


@pytest.fixture(autouse=True)
def _nothing_left_in_the_checkout() -> Any:
    """The notebooks keep their state in memory: no state directory appears in examples/."""
    before = (EXAMPLES / ".agentguard").exists()
    yield
    assert (EXAMPLES / ".agentguard").exists() == before


def test_quickstart_notebook_runs(tmp_path: Path) -> None:
    """Delegation as boxes, allow and deny decisions, a clicked approval card, the audit log."""
    notebook, out = _execute("quickstart.ipynb", tmp_path)

    chain = _text(_cell(notebook, "delegation = team.attenuate(").outputs)
    assert "trusted root" in chain
    assert "<b>user:alice</b>" in chain
    assert "<b>agent:support-bot</b>" in chain
    assert "tickets/refund where amount &lt;= 100" in chain

    assert "ticket 7: the printer is on fire" in out  # the allowed call ran
    assert ">ALLOW</b> tickets/refund" in out
    assert ">DENY</b> tickets/refund <code>predicate_failed</code>" in out
    assert ">DENY</b> kb/search <code>out_of_scope</code>" in out
    assert "refused: predicate_failed" in out
    assert ">APPROVAL_REQUIRED</b> tickets/delete" in out
    assert "refused: approval_unavailable" in out  # the blocking call failed fast

    approval = _cell(notebook, "await guard.acall(").outputs
    assert any(WIDGET_VIEW in o.get("data", {}) for o in approval), "no approval card shown"
    assert "deleted ticket 7" in _text(approval)
    assert "Approved</b> by user:carol" in _card_status(notebook)
    assert "tickets/delete  used by user:carol: ok, ticket 7 is a duplicate" in out

    table = _text(_cell(notebook, "audit_table(guard)").outputs)
    assert "<td>approved</td>" in table
    assert "<td>user:carol</td>" in table
    assert "<td>predicate_failed</td>" in table
    assert "audit log intact" in out


def test_langchain_notebook_runs(tmp_path: Path) -> None:
    """create_agent with guarded tools: allowed, denied, and approved on a card while awaiting."""
    notebook, out = _execute("langchain_notebook.ipynb", tmp_path)

    assert "<b>agent:support-bot</b>" in _text(_cell(notebook, "Delegation.issue(").outputs)
    assert ">DENY</b> shop/refund <code>predicate_failed</code>" in out

    run = _cell(notebook, "await agent.ainvoke(").outputs
    assert any(WIDGET_VIEW in o.get("data", {}) for o in run), "no approval card shown"
    assert "Approved</b> by user:bob" in _card_status(notebook)

    outcomes = _text(_cell(notebook, "isinstance(message, ToolMessage)").outputs)
    assert "call-1  lookup  success  order A-17: shipped" in outcomes
    assert "call-2  refund  error    denied by agentguard (predicate_failed" in outcomes
    assert "call-3  wipe    success  wiped cart-cache" in outcomes
    assert "500" not in outcomes.split("call-2")[1].split("\n")[0]  # no argument values
    assert "final answer: Looked up A-17" in outcomes

    table = _text(_cell(notebook, "audit_table(guard)").outputs)
    assert "<td>call-3</td><td>shop/wipe</td><td>allow</td><td>approved</td>" in table
    assert "<td>user:bob</td>" in table
    assert "audit log intact" in out
