"""Edits of the policy file by programs (``agentguard keys``, passkey enrolment) take turns.

Each edit holds the file's lock from reading it to replacing it, so edits made
at the same time by separate processes all survive (none reads a text another
is about to replace); an edit by hand during a program's edit makes that edit
fail rather than overwrite it; the new file keeps the old one's mode; the
temporary and lock files are never links followed.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentguard.errors import ConfigError
from agentguard.keys import Identity, Keyring
from agentguard.passkeys import write_passkey
from agentguard.policy import load_policy
from agentguard.policy_file import editing_policy, rewrite_policy_section
from tests.passkey_support import ORIGIN, RP_ID, SoftKey

ROOT = "org:acme"
ROUNDS = 6


def _passkey() -> dict[str, str]:
    key = SoftKey()
    return {
        "credential_id": key.credential_id,
        "public_key": key.cose(),
        "rp_id": RP_ID,
        "origin": ORIGIN,
    }


def _policy(path: Path, approvers: list[str]) -> Identity:
    """A policy with a trusted root, ``approvers`` and no guard keys, mode 0600."""
    org = Identity.generate(ROOT)
    doc = {
        "version": 1,
        "trusted_roots": [{"id": ROOT, "public_key": org.principal.public_jwk()}],
        "approvers": [{"id": a} for a in approvers],
        "guard_keys": [],
    }
    path.write_text("# the organisation's policy\n" + yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o600)
    return org


def _worker(kind: str, policy: str, args: list[str], barrier: Any, results: Any) -> None:
    """Child process: wait for every sibling, then edit the policy ``ROUNDS`` times
    (``retire``: once), reporting what it did."""
    from typer.testing import CliRunner

    from agentguard.cli import app

    def cli(*argv: str) -> int:
        result = CliRunner().invoke(app, [*argv, "--policy", policy], catch_exceptions=True)
        if result.exit_code != 0:
            results.put(("failed", kind, argv, result.stderr, repr(result.exception)))
        return result.exit_code

    barrier.wait(timeout=120)
    try:
        if kind == "add":
            for key_file in args:
                cli("keys", "add", "--public-key", key_file)
        elif kind == "retire":
            cli("keys", "retire", args[0], "--root", ROOT, "--at", "2026-01-01T00:00:00Z")
        else:  # enrol: the approver's last passkey is the one that must be in the file
            last = ""
            for _ in range(ROUNDS):
                entry = _passkey()
                write_passkey(policy, args[0], entry)
                last = entry["credential_id"]
            results.put(("enrolled", args[0], last))
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
        results.put(("failed", kind, args, "", repr(exc)))


def test_concurrent_edits_by_processes_all_survive(tmp_path: Path) -> None:
    """Two processes adding guard keys, two enrolling passkeys and one retiring the
    root's key, all at once: every key added is listed, each approver holds the
    last passkey written for them, the root key is retired, nothing failed, and
    the file is still 0600 with its comment (before the lock, most were lost)."""
    path = tmp_path / "agentguard.yaml"
    approvers = ["user:alice", "user:bob"]
    org = _policy(path, approvers)
    keyring = Keyring(tmp_path / "keys")
    batches: list[list[str]] = []
    kids: set[str] = set()
    for w in range(2):
        batch = []
        for r in range(ROUNDS):
            guard = keyring.create(f"service:replica-{w}-{r}")
            kids.add(guard.principal.kid)
            batch.append(str(keyring.public_path(guard.id)))
        batches.append(batch)
    jobs = [("add", batches[0]), ("add", batches[1])]
    jobs += [("enrol", [a]) for a in approvers]
    jobs.append(("retire", [org.principal.kid]))

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(jobs))
    results = context.Queue()
    children = [
        context.Process(target=_worker, args=(kind, str(path), args, barrier, results))
        for kind, args in jobs
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    reports = []
    while not results.empty():
        reports.append(results.get())
    assert [c.exitcode for c in children] == [0] * len(jobs)
    assert [r for r in reports if r[0] == "failed"] == []

    policy = load_policy(path)
    assert {k.principal.kid for k in policy.listed_guard_keys()} == kids
    last = {r[1]: r[2] for r in reports if r[0] == "enrolled"}
    assert set(last) == set(approvers)
    for approver in policy.approvers:
        assert approver.passkey is not None
        assert approver.passkey.credential_id == last[approver.id]
    assert policy.trusted_roots[0].retired_at is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("# the organisation's policy\n")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_an_edit_keeps_the_files_mode_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    os.chmod(path, mode)
    old = os.umask(0o022 if mode == 0o600 else 0o077)
    try:
        write_passkey(path, "user:alice", _passkey())
        assert stat.S_IMODE(path.stat().st_mode) == mode
        rewrite_policy_section(path, "guard_keys", [])
        assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        os.umask(old)


def test_an_edit_by_hand_during_a_programs_edit_is_not_overwritten(tmp_path: Path) -> None:
    """Someone saves the file (without the lock) after the program read it: the
    program's edit is refused and the hand edit stays."""
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    by_hand = path.read_text() + "# saved by hand\n"

    def meanwhile(_: Any) -> bool:
        path.write_text(by_hand)
        return True

    with pytest.raises(ConfigError, match="changed by someone else"):
        rewrite_policy_section(path, "guard_keys", [], check=meanwhile)
    assert path.read_text() == by_hand
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_edit_waits_for_the_lock_and_says_so_when_it_cannot_have_it(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    before = path.read_text()
    lock = os.open(tmp_path / ".agentguard.yaml.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another program's edit, under way
        with (
            pytest.raises(ConfigError, match="another program is editing"),
            editing_policy(path, wait=0),
        ):
            pass  # pragma: no cover - never entered
    finally:
        os.close(lock)
    assert path.read_text() == before
    with editing_policy(path, wait=0) as edit:  # free again
        edit.rewrite("guard_keys", [])
        with pytest.raises(ConfigError, match="one rewrite per edit"):
            edit.rewrite("guard_keys", [])


def test_planted_links_at_the_lock_or_temporary_file_are_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link where the lock file or the next temporary file goes is refused; the
    file it points at is not written."""
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    before = path.read_text()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    monkeypatch.setattr("agentguard.policy_file.secrets.token_hex", lambda _: "fixed")
    tmp = tmp_path / ".agentguard.yaml.fixed.tmp"
    tmp.symlink_to(victim)
    with pytest.raises(ConfigError, match="cannot write"):
        write_passkey(path, "user:alice", _passkey())
    assert victim.read_text() == "untouched"
    assert path.read_text() == before
    tmp.unlink()

    lock = tmp_path / ".agentguard.yaml.lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    with pytest.raises(ConfigError, match="cannot lock"):
        rewrite_policy_section(path, "guard_keys", [])
    assert victim.read_text() == "untouched"
    assert path.read_text() == before


def test_what_is_not_a_policy_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    fifo = tmp_path / "agentguard.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        rewrite_policy_section(fifo, "guard_keys", [])
    garbage = tmp_path / "other.yaml"
    garbage.write_bytes(b"\xff\xfe not yaml: [")
    with pytest.raises(ConfigError):
        rewrite_policy_section(garbage, "guard_keys", [])
    assert garbage.read_bytes() == b"\xff\xfe not yaml: ["
    fresh = tmp_path / "fresh.yaml"
    _policy(fresh, ["user:alice"])
    before = fresh.read_text()
    with pytest.raises(ConfigError, match="not an approver"):
        write_passkey(fresh, "user:nobody", _passkey())
    assert fresh.read_text() == before


def test_an_edit_waits_while_another_holds_the_lock_then_goes_ahead(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    lock = os.open(tmp_path / ".agentguard.yaml.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    done: list[object] = []
    waiting = threading.Thread(
        target=lambda: done.append(rewrite_policy_section(path, "guard_keys", []))
    )
    waiting.start()
    try:
        assert done == []  # it cannot have written: the lock is held
    finally:
        os.close(lock)  # the other edit ends
    waiting.join(timeout=60)
    assert len(done) == 1
    assert "guard_keys: []" in path.read_text()


def test_a_change_the_check_refuses_or_a_file_changed_while_read_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agentguard.yaml"
    _policy(path, ["user:alice"])
    before = path.read_text()
    with pytest.raises(ConfigError, match="edit guard_keys by hand"):
        rewrite_policy_section(path, "guard_keys", [], check=lambda _: False)
    assert path.read_text() == before

    def saved_meanwhile(source: Path) -> Any:
        loaded = load_policy(source)
        path.write_text(before + "# saved by hand\n")
        return loaded

    monkeypatch.setattr("agentguard.policy_file.load_policy", saved_meanwhile)
    with pytest.raises(ConfigError, match="changed while it was read"):
        rewrite_policy_section(path, "guard_keys", [])
    assert path.read_text() == before + "# saved by hand\n"
