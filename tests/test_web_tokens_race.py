"""Approver login tokens issued and revoked by several processes at once all take effect.

``agentguard approvals token --for ID`` (issue, replacing the earlier token) and
``--revoke`` rewrite one JSON file; each rewrite holds an exclusive lock on a
sibling file from reading it to replacing it, so a revocation is never undone
by another process's write of what it read before.
"""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

import pytest

from agentguard.errors import ConfigError
from agentguard.web import ApproverTokens

ROUNDS = 30


def _issue(path: str, approver: str, barrier: Any, results: Any) -> None:
    """Child: wait for every sibling, then issue ``ROUNDS`` tokens; report the last."""
    tokens = ApproverTokens(path)
    barrier.wait(timeout=120)
    last = ""
    for _ in range(ROUNDS):
        last = tokens.issue(approver)
    results.put((approver, last))


def _revoke(path: str, gone: list[str], barrier: Any, results: Any) -> None:
    """Child: wait for every sibling, then revoke each of ``gone``; report whether each had one."""
    tokens = ApproverTokens(path)
    barrier.wait(timeout=120)
    results.put(("revoked", [tokens.revoke(approver) for approver in gone]))


def test_tokens_issued_and_revoked_by_processes_at_once_all_count(tmp_path: Path) -> None:
    path = tmp_path / "approver-tokens.json"
    tokens = ApproverTokens(path)
    gone = {f"user:gone-{n}": tokens.issue(f"user:gone-{n}") for n in range(ROUNDS)}
    people = ["user:alice", "user:bob", "user:carol", "user:dave"]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(people) + 1)
    results = context.Queue()
    children = [
        context.Process(target=_issue, args=(str(path), p, barrier, results)) for p in people
    ]
    children.append(context.Process(target=_revoke, args=(str(path), list(gone), barrier, results)))
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [c.exitcode for c in children] == [0] * len(children)
    reported = dict(results.get(timeout=10) for _ in children)
    assert reported["revoked"] == [True] * ROUNDS
    for token in gone.values():
        assert tokens.identify(token) is None  # every revocation stands
    for person in people:
        assert tokens.identify(reported[person]) == person  # each one's last token counts
    assert tokens.approvers() == people
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _hold_lock(path: str, held: Any, release: Any) -> None:
    """Hold the token file's lock (as a stuck program would) until told to let go."""
    from agentguard.policy_file import exclusive_lock

    with exclusive_lock(Path(path)):
        held.set()
        release.wait(60)


def test_a_stuck_holder_of_the_lock_makes_a_change_fail_clearly_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "web-tokens.json"
    tokens = ApproverTokens(path)
    tokens.issue("user:carol")
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(path), held, release))
    holder.start()
    try:
        assert held.wait(60)
        tokens.lock_wait = 0.2
        with pytest.raises(ConfigError, match="another program is editing"):
            tokens.revoke("user:carol")
    finally:
        release.set()
        holder.join(60)
    assert tokens.revoke("user:carol")  # the lock is free again: the change goes through
