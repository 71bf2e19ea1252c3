"""Races: exactly-once call tokens and approval receipts, and revocations during verification.

Contenders run as threads of one process and as threads of two real Python
processes sharing one SQLite-backed guard home. Processes are released together
through a stdin barrier (each prints ``ready`` and waits for ``go``); nothing
sleeps. Revocation ordering uses a monotonic ticket counter: a call whose ticket
is drawn after ``revoke()`` returned must be refused.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentguard.clock import ManualClock
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.store.base import RevocationKind
from agentguard.testing import World

THREADS = 6
TOOL = "tickets/comment"
APPROVAL_TOOL = "admin/reset"
ARGS: dict[str, Any] = {"ticket": 7, "text": "on it"}

#: A contender process: loads the guard, says ``ready``, waits for ``go``, then
#: races THREADS threads through one job and prints each outcome as JSON.
CONTENDER = """
import json, sys, threading
from pathlib import Path
from agentguard.approval import QueueChannel
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity

home, policy, chain, key, job, threads = sys.argv[1:7]
extra = sys.argv[7:]
guard = Guard(policy=Path(policy), home=Path(home), approver=QueueChannel(), approval_mode="raise")
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))
outcomes = []
barrier = threading.Barrier(int(threads))

def attempt():
    barrier.wait(timeout=30)
    try:
        if job == "token":
            guard.call(delegation, extra[0], json.loads(extra[1]), lambda **kw: None,
                       call_token=extra[2])
        elif job == "receipt":
            guard.call(delegation, extra[0], json.loads(extra[1]), lambda **kw: None,
                       holder=holder)
        elif job == "revoke":
            guard.revoke(extra[0], extra[1], reason="race test")
            outcomes.append("revoked")
            return
        outcomes.append("ran")
    except DeniedError as exc:
        outcomes.append(exc.reason)

print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"
workers = [threading.Thread(target=attempt) for _ in range(int(threads))]
for w in workers:
    w.start()
for w in workers:
    w.join()
guard.close()
print(json.dumps(outcomes), flush=True)
"""


@dataclass
class Home:
    """A guard home on disk shared by this process and its children."""

    world: World
    home: Path
    policy: Path
    chain: Path
    key: Path
    guards: list[Guard] = field(default_factory=list)

    def guard(self) -> Guard:
        """A guard over the shared home (closed at teardown)."""
        from agentguard.approval import QueueChannel

        guard = Guard(
            policy=self.policy, home=self.home, approver=QueueChannel(), approval_mode="raise"
        )
        self.guards.append(guard)
        return guard

    def spawn(self, job: str, *extra: str, threads: int = THREADS) -> subprocess.Popen[str]:
        """Start a contender process and wait until it is ready."""
        proc = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-c",
                    CONTENDER,
                    str(self.home),
                    str(self.policy),
                    str(self.chain),
                ),
                *(str(self.key), job, str(threads), *extra),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"contender did not start: {line!r} {err}")
        return proc


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Home]:
    """A SQLite-backed home, a policy with a queue approval channel, the bot's key on disk."""
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(tmp_path / "agentguard.yaml", approval={"channel": "queue"})
    chain = tmp_path / "chain.txt"
    chain.write_text(world.delegation.serialize())
    key = tmp_path / "bot.key"
    world.bot.save(key)
    state = Home(world, home, policy, chain, key)
    yield state
    for guard in state.guards:
        guard.close()


def release(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Send ``go`` to every ready process; collect their outcomes."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes: list[str] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outcomes


def race_threads(n: int, attempt: Callable[[], str]) -> list[str]:
    """Run ``attempt`` in ``n`` threads released together; return their outcomes."""
    barrier = threading.Barrier(n)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(attempt())
        except DeniedError as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == n
    return outcomes


# -- one external call token ------------------------------------------------------------


def test_one_call_token_runs_once_across_threads(shared: Home) -> None:
    """Eight threads submit the same external call token: one call runs, seven are replays."""
    guard = shared.guard()
    world = shared.world
    token = world.delegation.mint_call_token(world.bot, TOOL, ARGS)
    ran: list[int] = []

    def attempt() -> str:
        guard.call(world.delegation, TOOL, ARGS, lambda **kw: ran.append(1), call_token=token)
        return "ran"

    outcomes = race_threads(8, attempt)
    assert outcomes.count("ran") == 1 == len(ran)
    assert sorted(set(outcomes)) == ["call_token_replayed", "ran"]


def test_one_call_token_runs_once_across_two_processes(shared: Home) -> None:
    """Two processes of six threads each submit one call token: exactly one runs."""
    world = shared.world
    token = world.delegation.mint_call_token(world.bot, TOOL, ARGS)
    procs = [shared.spawn("token", TOOL, json.dumps(ARGS), token) for _ in range(2)]
    outcomes = release(procs)
    assert len(outcomes) == 2 * THREADS
    assert outcomes.count("ran") == 1
    assert set(outcomes) == {"ran", "call_token_replayed"}
    ran = [
        r
        for r in _audit(shared)
        if r["type"] == "decision" and r["outcome"] == "allow" and r["call_token"] == token
    ]
    assert len(ran) == 1


# -- one approval receipt ------------------------------------------------------------------


def _approved(shared: Home) -> str:
    """File the approval-needing call and approve it as carol; return the request id."""
    guard = shared.guard()
    world = shared.world
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, APPROVAL_TOOL, ARGS, lambda **kw: None, holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    return info.value.request_id


def test_one_receipt_burns_once_across_threads(shared: Home) -> None:
    """Eight threads present the same approved call: the receipt is used exactly once."""
    request_id = _approved(shared)
    guard = shared.guard()
    world = shared.world

    def attempt() -> str:
        guard.call(world.delegation, APPROVAL_TOOL, ARGS, lambda **kw: None, holder=world.bot)
        return "ran"

    outcomes = race_threads(8, attempt)
    assert outcomes.count("ran") == 1
    assert set(outcomes) - {"ran"} <= {"approval_replayed", "approval_pending"}
    row = guard.store.approval_get(request_id)
    assert row is not None
    assert (row.status, row.uses) == ("used", 1)


def test_one_receipt_burns_once_across_two_processes(shared: Home) -> None:
    """Two processes of six threads each race one approved call: exactly one runs."""
    request_id = _approved(shared)
    procs = [shared.spawn("receipt", APPROVAL_TOOL, json.dumps(ARGS)) for _ in range(2)]
    outcomes = release(procs)
    assert len(outcomes) == 2 * THREADS
    assert outcomes.count("ran") == 1
    assert set(outcomes) - {"ran"} <= {"approval_replayed", "approval_pending"}
    row = shared.guard().store.approval_get(request_id)
    assert row is not None
    assert (row.status, row.uses) == ("used", 1)
    allowed = [
        r
        for r in _audit(shared)
        if r["type"] == "decision" and r["outcome"] == "allow" and r["tool"] == APPROVAL_TOOL
    ]
    assert len(allowed) == 1


# -- revocation during verification -----------------------------------------------------------


@dataclass
class _Ledger:
    """Calls made by the workers, each with the ticket drawn when it started."""

    tickets: Iterator[int] = field(default_factory=itertools.count)
    calls: list[tuple[int, str]] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    boundary: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _revocation_target(world: World, kind: str) -> str:
    targets: dict[str, str] = {
        "link": world.delegation.link_ids[0],
        "key": world.bot.kid,
        "principal": world.alice.id,
    }
    return targets[kind]


def _hammer(guard: Guard, world: World, ledger: _Ledger, *, after: int = 15) -> None:
    """Call the tool until ``after`` calls have started past the revocation boundary."""
    past = 0
    for _ in range(5000):  # a hard cap: the test fails rather than hangs
        ticket = next(ledger.tickets)
        try:
            guard.call(world.delegation, TOOL, ARGS, lambda **kw: None, holder=world.bot)
            outcome = "ran"
        except DeniedError as exc:
            outcome = exc.reason
        with ledger.lock:
            ledger.calls.append((ticket, outcome))
            if len(ledger.calls) >= 3 * THREADS:
                ledger.started.set()
            boundary = ledger.boundary
        if boundary is not None and ticket > boundary:
            past += 1
            if past >= after:
                return


@pytest.mark.parametrize(
    ("kind", "revoker"),
    [("link", "thread"), ("principal", "thread"), ("key", "process"), ("link", "process")],
)
def test_revocation_is_effective_for_every_call_starting_after_it(
    shared: Home, kind: RevocationKind, revoker: str
) -> None:
    """Workers call while a revocation lands; every call that starts after it returns is refused."""
    world = shared.world
    guard = shared.guard()
    value = _revocation_target(world, kind)
    proc = shared.spawn("revoke", kind, value, threads=1) if revoker == "process" else None
    ledger = _Ledger()
    workers = [
        threading.Thread(target=_hammer, args=(guard, world, ledger)) for _ in range(THREADS)
    ]
    for worker in workers:
        worker.start()
    try:
        assert ledger.started.wait(timeout=60)
        if proc is None:
            shared.guard().revoke(kind, value, reason="race test")
        else:
            assert release([proc]) == ["revoked"]
        # Drawn after revoke() returned: every later ticket belongs to a later call.
        boundary = next(ledger.tickets)
        with ledger.lock:
            ledger.boundary = boundary
    finally:
        for worker in workers:
            worker.join(timeout=120)
    assert not any(worker.is_alive() for worker in workers)
    before = [o for t, o in ledger.calls if t < boundary]
    after = [o for t, o in ledger.calls if t > boundary]
    assert "ran" in before
    assert len(after) >= THREADS * 15
    assert set(after) == {"revoked"}, sorted(set(after))


def _audit(shared: Home) -> list[dict[str, Any]]:
    guard = shared.guard()
    return [json.loads(e.body) for e in guard.store.audit_entries()]
