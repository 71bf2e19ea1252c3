"""Store and record faults injected for real (issue 13, items 2 to 8 and the store timeout).

Each test breaks a real SQLite file the way an operator's bad day would: a
file size limit (``RLIMIT_FSIZE``) standing in for a full disk, a read-only
file, a lock held by another process, a garbage file, a file deleted or
replaced under a running guard, a crash between two writes, clocks stepped
or skewed, eight processes racing on one approval. Processes are real; they
are released together through a stdin barrier, never by sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agentguard.approval import QueueChannel
from agentguard.audit import AuditLog
from agentguard.clock import ManualClock
from agentguard.errors import ApprovalPending, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store import MemoryStore, SQLiteStore
from agentguard.testing import RecordingTool, World

TOOL = "tickets/comment"
APPROVAL_TOOL = "admin/reset"
ARGS: dict[str, Any] = {"ticket": 7, "text": "on it"}
NOW = 1_800_000_000.0
AGENTGUARD = Path(sys.executable).with_name("agentguard")


def _child(script: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """A Python child that prints ``ready`` once set up (and may wait for ``go``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"child did not start: {line!r} {err}")
    return proc


def _finish(proc: subprocess.Popen[str], send: str = "go\n") -> str:
    try:
        out, err = proc.communicate(send, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out


# -- 13.8 and 13.7: start-up and write failures name their cause --------------------------


def test_a_garbage_file_is_refused_as_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"these are not the bytes of a database\n" * 100)
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    message = str(info.value)
    assert "not an agentguard database" in message
    assert "restore it from a backup" in message


def test_a_corrupt_page_after_a_valid_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # keep the header, wreck every page
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreError, match="corrupt or not an agentguard database"):
        SQLiteStore(path)


@pytest.mark.parametrize("version", ["x1", "", "1.5", "-1", "\uff11"])
def test_a_schema_version_that_is_not_a_number_is_a_store_error(
    tmp_path: Path, version: str
) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    raw.close()
    with pytest.raises(StoreError) as info:
        SQLiteStore(path)
    assert "schema version" in str(info.value)
    assert "not a number" in str(info.value)


def test_a_schema_version_from_the_future_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreError, match="upgrade agentguard"):
        SQLiteStore(path)


@pytest.mark.parametrize("damage", ["garbage", "schema"])
def test_the_cli_reports_a_broken_store_in_one_line(tmp_path: Path, damage: str) -> None:
    """``agentguard audit verify`` over a broken state file: exit 1, the cause, no traceback."""
    home = tmp_path / ".agentguard"
    path = home / "state.db"
    env = {**os.environ, "AGENTGUARD_HOME": str(home)}
    env.pop("AGENTGUARD_DEBUG", None)
    init = subprocess.run(
        [str(AGENTGUARD), "init", "--org", "org:acme"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    SQLiteStore(path).close()
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    if damage == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        raw = sqlite3.connect(path)
        with raw:
            raw.execute("UPDATE meta SET value = 'x1' WHERE key = 'schema_version'")
        raw.close()
    done = subprocess.run(
        [str(AGENTGUARD), "audit", "verify"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert "unexpected" not in output
    assert str(path) in output
    assert ("not a number" if damage == "schema" else "not an agentguard database") in output


_FILL = """
import resource, signal, sys
from agentguard.errors import StoreError
from agentguard.store.sqlite import SQLiteStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = SQLiteStore(sys.argv[1])
store.audit_append({"warm": 1}, at=1.8e9)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    for n in range(100000):
        store.audit_append({"n": n, "pad": "x" * 4000}, at=1.8e9)
except StoreError as exc:
    print("ready", flush=True)
    print(exc)
else:
    print("never full")
"""


def test_a_file_size_limit_is_named_not_a_rollback_error(tmp_path: Path) -> None:
    """``RLIMIT_FSIZE`` makes every write past 256 KiB fail: the refusal names the limit."""
    proc = subprocess.run(
        [sys.executable, "-c", _FILL, str(tmp_path / "state.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ready", proc.stdout
    message = lines[1]
    assert "no transaction is active" not in message
    assert "file size limit" in message
    assert "RLIMIT_FSIZE" in message
    # What was committed before the limit is intact and readable.
    store = SQLiteStore(tmp_path / "state.db")
    try:
        entries = store.audit_entries()
        assert entries
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    finally:
        store.close()


_READ_ONLY = """
import os, sys
from agentguard.errors import StoreError
from agentguard.store.sqlite import SQLiteStore
if len(sys.argv) > 2:
    os.setgid(65534)
    os.setuid(65534)
try:
    store = SQLiteStore(sys.argv[1])
    store.revoke("link", "L1", reason="r", at=1.8e9)
except StoreError as exc:
    print(exc)
else:
    print("written")
"""


def test_a_read_only_file_is_named_with_what_to_do() -> None:
    """A state file the process may not write: the refusal says read-only and how to fix it.

    As root, permissions do not bind, so the child drops to ``nobody`` first.
    """
    directory = Path(tempfile.mkdtemp())
    try:
        path = directory / "state.db"
        SQLiteStore(path).close()
        directory.chmod(0o555)
        for file in directory.iterdir():
            file.chmod(0o444)
        drop = ("drop",) if os.geteuid() == 0 else ()
        done = subprocess.run(
            [sys.executable, "-c", _READ_ONLY, str(path), *drop],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        message = done.stdout.strip()
        assert "read-only" in message
        assert "write access" in message
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO meta (key, value) VALUES ('held', '1')")
print("ready", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


def test_a_lock_held_by_another_process_says_how_long_it_waited(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, busy_timeout=0.25)
    assert store.busy_timeout == 0.25
    locker = _child(_LOCKER, str(path))
    try:
        with pytest.raises(StoreError) as info:
            store.consume("k", NOW + 60, now=NOW)
        message = str(info.value)
        assert "locked" in message
        assert "0.25 s" in message
        assert "storage.busy_timeout" in message
    finally:
        _finish(locker, "\n")
    assert store.consume("k", NOW + 60, now=NOW) is True  # released: works again
    store.close()


def test_the_busy_timeout_comes_from_the_policy(tmp_path: Path) -> None:
    world = World(clock=ManualClock(NOW))
    guard = world.guard(home=tmp_path / "home", storage={"busy_timeout": "2s"})
    try:
        assert isinstance(guard.store, SQLiteStore)
        assert guard.store.busy_timeout == 2.0
    finally:
        guard.close()
    default = world.guard(home=tmp_path / "home2")
    try:
        assert isinstance(default.store, SQLiteStore)
        assert default.store.busy_timeout == 5.0
    finally:
        default.close()


@pytest.mark.parametrize("bad", [-1, "forever", 7200])
def test_a_busy_timeout_out_of_range_is_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore(tmp_path / "s.db", busy_timeout=bad)


def test_a_guard_call_under_a_held_lock_is_refused_naming_the_lock(tmp_path: Path) -> None:
    world = World(clock=ManualClock(NOW))
    home = tmp_path / "home"
    guard = world.guard(home=home, storage={"busy_timeout": 0.25})
    locker = _child(_LOCKER, str(home / "state.db"))
    tool = RecordingTool()
    try:
        with pytest.raises(DeniedError) as info:
            guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
        assert info.value.reason in ("store_error", "audit_error")
        assert "locked for 0.25 s" in info.value.explanation
        assert not tool.ran
    finally:
        _finish(locker, "\n")
        guard.close()


# -- 13.2: the state file deleted or replaced under a running guard -------------------------


def _state_files(home: Path) -> list[Path]:
    return [home / name for name in ("state.db", "state.db-wal", "state.db-shm")]


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_state_file_gone_under_a_running_guard_refuses_every_call(
    tmp_path: Path, how: str
) -> None:
    """The running guard refuses; a fresh guard over the new file refuses too, and the
    call token spent before never runs again."""
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    guard = world.guard(home=home)
    token = world.delegation.mint_call_token(world.bot, TOOL, ARGS)
    tool = RecordingTool()
    guard.call(world.delegation, TOOL, ARGS, tool, call_token=token)
    assert len(tool.calls) == 1
    guard.audit.flush()
    for path in _state_files(home):
        path.unlink(missing_ok=True)
    if how == "replaced":
        SQLiteStore(home / "state.db").close()  # an empty database at the same path
    for attempt in range(2):  # refused every time, not once
        with pytest.raises(DeniedError) as info:
            guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
        assert info.value.reason in ("store_error", "audit_error"), attempt
        assert "while this process was using it" in info.value.explanation
        assert "restore the file" in info.value.explanation
    with pytest.raises(DeniedError):
        guard.call(world.delegation, TOOL, ARGS, tool, call_token=token)
    assert len(tool.calls) == 1
    guard.close()
    # A fresh process's guard finds a database younger than the signed head it knows.
    fresh = world.guard(home=home)
    try:
        with pytest.raises(DeniedError) as info:
            fresh.call(world.delegation, TOOL, ARGS, tool, call_token=token)
        assert "does not hold" in info.value.explanation
        with pytest.raises(DeniedError):
            fresh.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
        assert len(tool.calls) == 1
        # ``audit verify`` does not call the new database intact.
        problem = fresh.audit.verify()
        assert problem is not None
        assert problem.kind in ("truncated", "unsynced")
        assert "restore the database from a backup" in info.value.explanation
    finally:
        fresh.close()
    env = {**os.environ, "AGENTGUARD_HOME": str(home)}
    done = subprocess.run(
        [str(AGENTGUARD), "audit", "verify"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "intact" not in done.stdout
    assert "unsynced" in done.stdout + done.stderr or "truncated" in done.stdout + done.stderr


_RUNNING = """
import json, sys
from pathlib import Path
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
home, policy, chain, key, tool = sys.argv[1:6]
guard = Guard(policy=Path(policy), home=Path(home))
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))
ran = []
guard.call(delegation, tool, {"n": 0}, lambda **kw: ran.append(kw), holder=holder)
guard.audit.flush()
print("ready", flush=True)
sys.stdin.readline()
outcomes = []
for n in range(1, 4):
    try:
        guard.call(delegation, tool, {"n": n}, lambda **kw: ran.append(kw), holder=holder)
        outcomes.append("ran")
    except DeniedError as exc:
        outcomes.append(exc.reason + ": " + exc.explanation)
print(json.dumps({"outcomes": outcomes, "ran": len(ran)}), flush=True)
"""


def test_a_state_file_deleted_under_another_process_stops_that_process(tmp_path: Path) -> None:
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    chain = tmp_path / "chain.txt"
    chain.write_text(world.delegation.serialize())
    key = tmp_path / "bot.key"
    world.bot.save(key)
    proc = _child(_RUNNING, str(home), str(policy), str(chain), str(key), TOOL)
    for path in _state_files(home):
        path.unlink(missing_ok=True)
    result = json.loads(_finish(proc).splitlines()[-1])
    assert result["ran"] == 1
    assert len(result["outcomes"]) == 3
    for outcome in result["outcomes"]:
        assert outcome.startswith(("store_error", "audit_error"))
        assert "was deleted" in outcome


# -- 13.6: no clock step undoes replay protection ------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_clock_stepped_forward_then_back_cannot_replay_a_spent_token(
    tmp_path: Path, kind: str
) -> None:
    """+1 h, 512 calls (a purge), clock back: the spent token is refused as expired."""
    clock = ManualClock(time.time())
    world = World(clock=clock)
    if kind == "memory":
        guard = world.guard(store=MemoryStore())
    else:
        guard = world.guard(home=tmp_path / "home")
    token = world.delegation.mint_call_token(world.bot, TOOL, ARGS)
    tool = RecordingTool()
    try:
        guard.call(world.delegation, TOOL, ARGS, tool, call_token=token)
        clock.advance(3600)
        for n in range(512):
            guard.call(world.delegation, TOOL, {"n": n}, tool, holder=world.bot)
        clock.advance(-3600)
        with pytest.raises(DeniedError) as info:
            guard.call(world.delegation, TOOL, ARGS, tool, call_token=token)
        assert info.value.reason == "call_token_expired"
        assert "watermark" in info.value.explanation
        assert len(tool.calls) == 513
        # Tokens minted now, after the step back, are refused too (fail closed) ...
        with pytest.raises(DeniedError, match="watermark"):
            guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
        # ... until the clock passes the watermark again.
        clock.advance(3600 + 1)
        guard.call(world.delegation, TOOL, ARGS, tool, holder=world.bot)
    finally:
        guard.close()


def test_two_stores_with_skewed_clocks_share_one_watermark(tmp_path: Path) -> None:
    """A store whose clock runs an hour ahead purges; the other cannot replay what it spent."""
    path = tmp_path / "state.db"
    right, ahead = SQLiteStore(path), SQLiteStore(path)
    try:
        assert right.nonce_watermark() is None
        assert right.consume("agent:bot/spent", NOW + 30, now=NOW) is True
        for n in range(512):  # the 512th consume purges, by the skewed clock
            ahead.consume(f"agent:bot/{n}", NOW + 3600 + 30, now=NOW + 3600)
        assert right.nonce_watermark() == NOW + 3600
        with pytest.raises(DeniedError) as info:
            right.consume("agent:bot/spent", NOW + 30, now=NOW + 1)
        assert info.value.reason == "call_token_expired"
        # A key never seen before but expiring before the watermark: refused the same way.
        with pytest.raises(DeniedError, match="watermark"):
            right.consume("agent:bot/new", NOW + 60, now=NOW + 1)
        assert right.consume("agent:bot/later", NOW + 3600 + 60, now=NOW + 1) is True
    finally:
        right.close()
        ahead.close()


def test_a_damaged_watermark_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("INSERT INTO meta (key, value) VALUES ('nonce_watermark', 'soon')")
    raw.close()
    store = SQLiteStore(path)
    try:
        with pytest.raises(StoreError, match="damaged nonce watermark"):
            store.consume("k", NOW + 30, now=NOW)
    finally:
        store.close()


# -- 13.3: a checkpoint that fails after its record committed ------------------------------


def _failing_checkpoint_log(tmp_path: Path) -> AuditLog:
    """A log whose next checkpoint write fails inside SQLite (a trigger raises)."""
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    log = AuditLog(store, Identity.generate("service:guard"), checkpoint_every=2)
    log.append({"type": "decision", "outcome": "deny", "decision_id": "d1"}, at=NOW)
    raw = sqlite3.connect(path)
    with raw:
        raw.execute(
            "CREATE TRIGGER no_checkpoints BEFORE INSERT ON audit_checkpoints "
            "BEGIN SELECT RAISE(FAIL, 'injected checkpoint failure'); END"
        )
    raw.close()
    return log


def test_a_failed_checkpoint_leaves_no_record_behind(tmp_path: Path) -> None:
    """The record and its checkpoint are one transaction: the caller is refused and the
    log holds no allowed decision that did not run."""
    log = _failing_checkpoint_log(tmp_path)
    allow = {"type": "decision", "outcome": "allow", "decision_id": "d2", "tool": TOOL}
    with pytest.raises(StoreError, match="injected checkpoint failure"):
        log.append(allow, at=NOW)
    assert [r["decision_id"] for r in log.tail(5)] == ["d1"]
    assert log.store.checkpoints() == []
    report = log.report()
    assert report.problem is None
    assert report.not_known_to_have_run == ()
    log.store.close()


def _side_file_fails(tmp_path: Path, *, completions_fail: bool) -> AuditLog:
    """A ``durability: full`` log whose side file cannot be written after a commit."""
    path = tmp_path / "state.db"
    side = tmp_path / "audit-checkpoints.jsonl"
    store = SQLiteStore(path, durability="full")
    log = AuditLog(store, Identity.generate("service:guard"), side_file=side)
    log.append({"type": "decision", "outcome": "deny", "decision_id": "d1"}, at=NOW)
    side.mkdir()  # a directory where the side file goes: replacing it fails
    if completions_fail:
        raw = sqlite3.connect(path)
        with raw:
            raw.execute(
                "CREATE TRIGGER no_completions BEFORE INSERT ON audit "
                "WHEN NEW.body LIKE '%not_run%' "
                "BEGIN SELECT RAISE(FAIL, 'injected: no room left'); END"
            )
        raw.close()
    return log


def test_a_side_file_failure_after_the_commit_records_that_the_tool_did_not_run(
    tmp_path: Path,
) -> None:
    log = _side_file_fails(tmp_path, completions_fail=False)
    allow = {"type": "decision", "outcome": "allow", "decision_id": "d2", "tool": TOOL}
    with pytest.raises(StoreError, match="side file"):
        log.append(allow, at=NOW)
    records = log.tail(5)
    assert [(r["type"], r["decision_id"]) for r in records] == [
        ("decision", "d1"),
        ("decision", "d2"),
        ("completion", "d2"),
    ]
    assert records[-1]["status"] == "not_run"
    assert log.report().not_known_to_have_run == ()
    log.store.close()


def test_with_no_room_to_say_more_the_decision_is_not_known_to_have_run(tmp_path: Path) -> None:
    log = _side_file_fails(tmp_path, completions_fail=True)
    allow = {"type": "decision", "outcome": "allow", "decision_id": "d2", "tool": TOOL}
    with pytest.raises(StoreError, match="side file"):
        log.append(allow, at=NOW)
    assert [d.decision_id for d in log.report().not_known_to_have_run] == ["d2"]
    log.store.close()


# -- 13.5: racing processes file one approval request -------------------------------------

_APPROVAL_RACER = """
import json, sys
from pathlib import Path
from agentguard.approval import QueueChannel
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
home, policy, chain, key, tool, rounds = sys.argv[1:7]
guard = Guard(policy=Path(policy), home=Path(home), approver=QueueChannel(),
              approval_mode="raise")
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))
print("ready", flush=True)
sys.stdin.readline()
ids = []
for _ in range(int(rounds)):
    try:
        guard.call(delegation, tool, {"ticket": 7}, lambda **kw: None, holder=holder)
        ids.append("ran")
    except ApprovalPending as exc:
        ids.append(exc.request_id)
    except DeniedError as exc:
        ids.append(exc.reason)
guard.close()
print(json.dumps(ids), flush=True)
"""


def test_eight_processes_racing_on_one_approval_file_one_request(tmp_path: Path) -> None:
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(tmp_path / "agentguard.yaml", approval={"channel": "queue"})
    chain = tmp_path / "chain.txt"
    chain.write_text(world.delegation.serialize())
    key = tmp_path / "bot.key"
    world.bot.save(key)
    Guard(policy=policy, home=home).close()  # the home exists before the race
    racers = [
        _child(_APPROVAL_RACER, str(home), str(policy), str(chain), str(key), APPROVAL_TOOL, "6")
        for _ in range(8)
    ]
    for proc in racers:  # released together: each waits for "go" on stdin
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    ids: list[str] = []
    for proc in racers:
        ids += json.loads(_finish(proc, "").splitlines()[-1])
    assert len(ids) == 48
    assert len(set(ids)) == 1, sorted(set(ids))
    assert ids[0].startswith("apr_")
    store = SQLiteStore(home / "state.db")
    try:
        assert [row.id for row in store.approval_list("pending")] == [ids[0]]
    finally:
        store.close()
    listed = subprocess.run(
        [str(AGENTGUARD), "approvals", "list"],
        cwd=tmp_path,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("apr_") == 1
    assert ids[0] in listed.stdout


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_filing_joins_a_pending_request_until_its_deadline(tmp_path: Path, kind: str) -> None:
    from agentguard.store.base import ApprovalRow

    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")

    def row(request_id: str, at: float) -> ApprovalRow:
        return ApprovalRow(request_id, at, at + 60, "pending", "digest", {"id": request_id})

    try:
        assert store.approval_file(row("apr_a", NOW)).id == "apr_a"
        assert store.approval_file(row("apr_b", NOW + 1)).id == "apr_a"
        assert store.approval_get("apr_b") is None
        # Past the first one's deadline, a new request is filed.
        assert store.approval_file(row("apr_c", NOW + 61)).id == "apr_c"
        # Another call is never joined to this one.
        other = ApprovalRow("apr_d", NOW + 2, NOW + 62, "pending", "other", {})
        assert store.approval_file(other).id == "apr_d"
    finally:
        store.close()


# -- 13.4: a crash between burning a receipt and recording the decision --------------------

_CRASHER = """
import os, sys
from pathlib import Path
from agentguard import audit
from agentguard.approval import QueueChannel
from agentguard.delegation import Delegation
from agentguard.guard import Guard
from agentguard.keys import Identity
home, policy, chain, key, tool, where = sys.argv[1:7]
guard = Guard(policy=Path(policy), home=Path(home), approver=QueueChannel(),
              approval_mode="raise")
delegation = Delegation.parse(Path(chain).read_text())
holder = Identity.load(Path(key))

def crash(*args, **kwargs):
    os._exit(9)

# "sign": inside the decision's transaction (the head is signed before it commits);
# "publish": right after it committed.
target = "_sign" if where == "sign" else "_publish"
setattr(audit.AuditLog, target, crash)
print("ready", flush=True)
sys.stdin.readline()
guard.call(delegation, tool, {"ticket": 7}, lambda **kw: None, holder=holder)
print("survived", flush=True)
"""


@pytest.mark.parametrize("where", ["sign", "publish"])
def test_a_crash_burns_the_receipt_and_records_the_decision_together_or_neither(
    tmp_path: Path, where: str
) -> None:
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(tmp_path / "agentguard.yaml", approval={"channel": "queue"})
    chain = tmp_path / "chain.txt"
    chain.write_text(world.delegation.serialize())
    key = tmp_path / "bot.key"
    world.bot.save(key)
    guard = Guard(policy=policy, home=home, approver=QueueChannel(), approval_mode="raise")
    try:
        with pytest.raises(ApprovalPending) as info:
            guard.call(
                world.delegation, APPROVAL_TOOL, {"ticket": 7}, RecordingTool(), holder=world.bot
            )
        request_id = info.value.request_id
        guard.approvals.approve(request_id, world.carol)
    finally:
        guard.close()
    proc = _child(_CRASHER, str(home), str(policy), str(chain), str(key), APPROVAL_TOOL, where)
    out, _ = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 9, out
    store = SQLiteStore(home / "state.db")
    try:
        row = store.approval_get(request_id)
        assert row is not None
        allowed = [
            json.loads(e.body)
            for e in store.audit_entries()
            if json.loads(e.body).get("approval_request_id") == request_id
            and json.loads(e.body).get("outcome") == "allow"
        ]
        burned = row.status == "used"
        assert burned == bool(allowed), (row.status, allowed)
        assert burned == (where == "publish")
    finally:
        store.close()
    if not burned:  # the approval is still there: the call can be made again, and runs
        again = Guard(policy=policy, home=home, approver=QueueChannel(), approval_mode="raise")
        tool = RecordingTool()
        try:
            again.call(world.delegation, APPROVAL_TOOL, {"ticket": 7}, tool, holder=world.bot)
        finally:
            again.close()
        assert tool.ran
