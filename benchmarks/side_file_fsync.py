"""What the audit side file's fsyncs cost an allowed decision at ``durability: full``.

Appends the decision record of ``benchmarks/run.py`` through :class:`AuditLog`
to a real SQLite file (``PRAGMA synchronous=FULL``) with its side file, and
times it with the side file's two Python-level fsyncs (the new file's data,
then its directory after the rename) as shipped, with only the data one, and
with neither; ``durability: normal`` for reference. SQLite's own syncs are
made in C and are not touched. Each variant runs twice, alternating, in fresh
directories. Run ``.venv/bin/python benchmarks/side_file_fsync.py [--rounds N]``.

This measures only: skipping either fsync would weaken what the README says
``full`` guarantees (the side file is synced before the tool runs).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import stat
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentguard import Identity
from agentguard.audit import AuditLog
from agentguard.store import SQLiteStore

_DECISION: dict[str, Any] = {
    "type": "decision",
    "outcome": "allow",
    "reason": "allowed",
    "tool": "kb/search",
    "args": {"business_unit": "emea", "query": "vpn outage"},
    "path": ["org:acme", "team:ir", "agent:bot"],
    "call_token": "x" * 600,
}


@contextlib.contextmanager
def _fsyncs(*, files: bool, directories: bool, counts: dict[str, int]) -> Iterator[None]:
    """Let Python-level fsyncs of files and of directories through, or skip them; count both."""
    real = os.fsync

    def fsync(fd: Any) -> None:
        kind = "directories" if stat.S_ISDIR(os.fstat(fd).st_mode) else "files"
        counts[kind] += 1
        if files if kind == "files" else directories:
            real(fd)

    os.fsync = fsync
    try:
        yield
    finally:
        os.fsync = real


def _median_us(append: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        append()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _run(durability: str, files: bool, directories: bool, rounds: int) -> tuple[float, float]:
    """Median µs of an allowed decision's append, and side-file fsyncs per append."""
    signer = Identity.generate("service:bench-guard")
    counts = {"files": 0, "directories": 0}
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "audit.db", durability=durability)
        log = AuditLog(store, signer, side_file=Path(tmp) / "audit.jsonl")
        append = functools.partial(log.append, _DECISION, link_ids=["a", "b"], at=1.8e9)
        append()  # the first append checks the side file against the database
        with _fsyncs(files=files, directories=directories, counts=counts):
            us = _median_us(append, rounds)
        log.close()
        store.close()
    return us, (counts["files"] + counts["directories"]) / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    rounds = parser.parse_args().rounds
    variants = (
        ("full, as shipped (file + directory fsync)", "full", True, True),
        ("full, file fsync only", "full", True, False),
        ("full, no side-file fsync", "full", False, False),
        ("normal (side file from a thread)", "normal", True, True),
    )
    for repeat in (1, 2):
        for name, durability, files, directories in variants:
            us, per_append = _run(durability, files, directories, rounds)
            print(
                f"run {repeat}: {name:44} {us:7.0f} µs per allowed decision, "
                f"{per_append:.1f} side-file fsyncs per append in this thread"
            )


if __name__ == "__main__":
    main()
