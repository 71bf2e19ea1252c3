"""examples/langchain_agent.py runs from any directory, exits 0 and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "langchain_agent.py"


def test_example_runs_from_an_empty_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGUARD_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "call-1 lookup  success" in out
    assert "call-2 refund  error    denied by agentguard (predicate_failed" in out
    assert "call-3 wipe    success  wiped cart-cache" in out
    assert "approved by user:bob" in out
    assert "audit log verifies" in out
    assert list(tmp_path.iterdir()) == []
