"""Crash consistency: SIGKILL in the middle of audit writes leaves a log that verifies.

A child process appends records through :class:`AuditLog` over a
:class:`SQLiteStore` (durability ``normal``, WAL) with frequent signed
checkpoints and a signed head over every allowed decision (in the database
and the side file), printing each acknowledged sequence number. The parent kills it
with SIGKILL after a random number of acknowledgements, many times over the
same file, then checks that the log verifies and holds every acknowledged
record. ``make hardening`` (``AGENTGUARD_HARDENING=1``) runs 200 kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentguard.audit import AuditLog
from agentguard.keys import Identity
from agentguard.store.sqlite import SQLiteStore

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"

WRITER = """
import sys
from pathlib import Path
from agentguard.audit import AuditLog
from agentguard.keys import Identity
from agentguard.store.sqlite import SQLiteStore

db, key, side, durability, run = sys.argv[1:6]
store = SQLiteStore(Path(db), durability=durability)
log = AuditLog(store, Identity.load(Path(key)), checkpoint_every=7, side_file=Path(side))
n = 0
while True:
    # Allowed decisions are anchored (a signed head in the same transaction, then
    # the side file); completions are not. Both are killed in flight.
    record = {"type": "decision", "outcome": "allow", "decision_id": f"d{run}-{n // 2}"}
    if n % 2:
        record = {"type": "completion", "decision_id": f"d{run}-{n // 2}"}
    entry = log.append({**record, "run": int(run), "n": n, "pad": "x" * (n % 300)},
                       link_ids=[f"link-{n % 5}"], at=1.8e9 + n)
    print(entry.seq, flush=True)
    n += 1
"""


def _kill_runs(tmp_path: Path, runs: int, durability: str = "normal") -> None:
    db, side, key = tmp_path / "state.db", tmp_path / "side.jsonl", tmp_path / "guard.key"
    signer = Identity.generate("service:guard")
    signer.save(key)
    # Kill points only need to vary, reproducibly: not a security use of randomness.
    rng = random.Random(os.environ.get("AGENTGUARD_CRASH_SEED", "agentguard"))  # noqa: S311
    acknowledged: list[int] = []
    for run in range(runs):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(key), str(side), durability, str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        target = rng.randint(1, 60)
        try:
            for _ in range(target):
                line = proc.stdout.readline()
                if not line:
                    break
                acknowledged.append(int(line))
        finally:
            # Killed while the next append (and maybe a checkpoint) is in flight.
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        acknowledged += [int(x) for x in out.split()]  # printed before the kill landed
        assert proc.returncode == -signal.SIGKILL, err
    store = SQLiteStore(db, durability=durability)
    try:
        log = AuditLog(store, signer, side_file=side)
        report = log.report()
        assert report.problem is None, report.problem
        # The side file may trail the database (killed before writing it), never lead.
        assert report.anchored is not None
        assert report.side_file is not None
        assert report.side_file <= report.records
        present = {e.seq for e in store.audit_entries()}
        missing = sorted(set(acknowledged) - present)
        assert not missing, f"acknowledged records lost: {missing[:10]}"
        assert len(acknowledged) == len(set(acknowledged)), "a sequence number was reused"
        assert max(present) >= max(acknowledged)
        # The log is still writable after all those crashes.
        entry = log.append({"type": "decision", "after": "crashes"}, at=1.8e9)
        assert entry.seq == max(present) + 1
        assert log.verify() is None
    finally:
        store.close()


def test_sigkill_during_audit_appends_short(tmp_path: Path) -> None:
    """Five SIGKILLs at random points: the log verifies and no acknowledged record is lost."""
    _kill_runs(tmp_path, 5)


@pytest.mark.slow
def test_sigkill_during_audit_appends_many(tmp_path: Path) -> None:
    """The long loop (200 kills under ``make hardening``; 5 otherwise), durability normal."""
    _kill_runs(tmp_path, 200 if HARDENING else 5)


@pytest.mark.slow
def test_sigkill_during_audit_appends_full_durability(tmp_path: Path) -> None:
    """The same with ``durability: full`` (50 kills under ``make hardening``; 3 otherwise)."""
    _kill_runs(tmp_path, 50 if HARDENING else 3, durability="full")
