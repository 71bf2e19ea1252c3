"""examples/demo.py (``make demo``): each scenario's outcome, nothing left behind, ``--keep``;
the ``agentguard_demo`` package it runs also starts with ``python -m``."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEMO = EXAMPLES / "demo.py"
BIN = Path(sys.executable).parent

# Caches that interpreters and tools write anyway; the demo's own state must go elsewhere.
_IGNORED = {
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".benchmarks",
    "node_modules",
}

OUTCOMES = [
    "✔ scenario 1: in-unit ticket and KB search allowed; out-of-unit ticket DENIED by "
    "link 1 rule 0 (predicate_failed)",
    "✔ scenario 2: sub-agent collected logs; ticket outside its delegation DENIED; quarantine "
    "APPROVED by user:alice and run through the MCP proxy",
    "✔ scenario 3: release sha256:9f2c4e7a1b deployed; release sha256:5d01b8c3e2 DENIED",
    "✔ scenario 4: partner-events and event-enricher submitted events; after revoking their "
    "sponsor team:partnerships both are DENIED (revoked)",
    "✔ scenario 5: grants list shows service:legacy-backup expired and "
    "agent:quarterly-report stale",
    "✔ scenario 6: refunds of 200 and 250 paid; a third of 80 DENIED: the daily 500 is spent "
    "(budget_exhausted)",
]


def _checkout_paths() -> set[Path]:
    found: set[Path] = set()
    for base, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _IGNORED and not d.endswith(".egg-info")]
        found.update(Path(base, name) for name in [*dirs, *files])
    return found


def _run_demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run(cwd, [sys.executable, str(DEMO), *args])


def _run(cwd: Path, argv: list[str], **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTGUARD_", "OTEL_"))}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(env_extra)
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
        check=False,
    )


def _flat(text: str) -> str:
    """The output with Rich's line wrapping undone (wrapped lines rejoin with one space)."""
    return re.sub(r"\s*\n\s*", " ", text)


def test_demo_tells_every_scenario_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _checkout_paths()
    done = _run_demo(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = _flat(done.stdout)
    for line in OUTCOMES:
        assert line in out, line
    assert "approval queue: apr_" in out
    assert "[simulated] user:alice" in out
    assert "via mcp_proxy" in out
    assert "proxy process: agentguard decision" in out
    assert re.search(r"audit verify: intact, \d+ records", out)
    assert re.search(r"demo finished in \d+\.\d s", out)
    # The tree after scenario 4: the sponsored link and everything below it are revoked.
    tree_now = done.stdout.split("The delegation tree now", 1)[1].split("Decisions", 1)[0]
    for subject in ("org:partner-co", "service:partner-events", "agent:event-enricher"):
        line = next(x for x in tree_now.splitlines() if subject in x)
        assert "[revoked]" in line, line
    assert "[revoked]" not in next(x for x in tree_now.splitlines() if "service:ci" in x)
    state = re.search(r"state in (/\S+) \(temporary", out)
    assert state is not None
    assert not Path(state.group(1)).exists()
    assert list(tmp_path.iterdir()) == []
    assert _checkout_paths() - before == set()


def test_keep_leaves_state_the_printed_commands_can_read(tmp_path: Path) -> None:
    """With --keep DIR the printed commands work; audit verify agrees the log is intact."""
    kept = tmp_path / "state"
    done = _run_demo(tmp_path, "--keep", str(kept))
    assert done.returncode == 0, done.stdout + done.stderr
    commands = [
        line.strip() for line in done.stdout.splitlines() if line.strip().startswith("agentguard ")
    ]
    verify = next(c for c in commands if c.startswith("agentguard audit verify"))
    assert str(kept) in verify
    # As printed: after '. .venv/bin/activate', the command verbatim in a shell.
    assert "run '. .venv/bin/activate' first, or write .venv/bin/agentguard" in _flat(done.stdout)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTGUARD_", "OTEL_"))}
    env["PATH"] = "/usr/bin:/bin"  # no agentguard on PATH until activated
    checked = subprocess.run(
        ["/bin/sh", "-c", f". {shlex.quote(str(BIN / 'activate'))} && {verify}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "audit log intact" in checked.stdout + checked.stderr
    grants = next(c for c in commands if c.startswith("agentguard grants list"))
    argv = shlex.split(grants, comments=True)
    listed = subprocess.run(
        [str(BIN / argv[0]), *argv[1:], "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "agent:quarterly-report" in listed.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_package_runs_as_a_module_with_the_options_of_demo_py(tmp_path: Path) -> None:
    """``python -m agentguard_demo`` imports the whole story and offers what demo.py offers."""
    as_module = _run(
        tmp_path, [sys.executable, "-m", "agentguard_demo", "--help"], PYTHONPATH=str(EXAMPLES)
    )
    as_script = _run_demo(tmp_path, "--help")
    assert as_module.returncode == 0, as_module.stderr
    assert as_script.returncode == 0, as_script.stderr
    assert as_module.stdout.startswith("usage: python -m agentguard_demo [-h] [--interactive]")
    assert as_script.stdout.startswith("usage: demo.py [-h] [--interactive]")
    assert as_module.stdout.split("\n", 1)[1] == as_script.stdout.split("\n", 1)[1]
    assert list(tmp_path.iterdir()) == []
