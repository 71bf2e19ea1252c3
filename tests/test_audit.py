"""The audit log: a clean log verifies; edits, deletions, reordering and truncation are found."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from agentguard import _jws
from agentguard.audit import REDACTED, TYP_CHECKPOINT, AuditLog, redact, verify_log
from agentguard.errors import DeniedError, StoreError
from agentguard.keys import Identity
from agentguard.store.base import Checkpoint
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World

T0 = 1_800_000_000.0


def filled_log(
    tmp_path: Path, n: int = 7, *, every: int = 3, durability: str = "normal"
) -> tuple[AuditLog, Path]:
    """A SQLite-backed log with ``n`` records and a checkpoint every ``every`` records."""
    db = tmp_path / "state.db"
    log = AuditLog(
        SQLiteStore(db, durability=durability),
        Identity.generate("service:agentguard"),
        checkpoint_every=every,
        side_file=tmp_path / "audit-checkpoints.jsonl",
    )
    for i in range(1, n + 1):
        log.append({"type": "decision", "n": i, "tool": "tickets/read"}, at=T0 + i)
    return log, db


def tamper(db: Path, *statements: str) -> None:
    """Change the database behind the store's back, as an attacker with file access would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def test_clean_log_verifies(tmp_path: Path) -> None:
    log, _ = filled_log(tmp_path)
    assert log.verify() is None
    assert [c.seq for c in log.store.checkpoints()] == [3, 6]
    assert [r["n"] for r in log.tail(3)] == [5, 6, 7]


def test_empty_log_verifies() -> None:
    log = AuditLog(MemoryStore(), Identity.generate("service:agentguard"))
    assert log.verify() is None
    assert log.checkpoint(at=T0) is None


def test_edited_record_is_found(tmp_path: Path) -> None:
    log, db = filled_log(tmp_path)
    tamper(db, "UPDATE audit SET body = replace(body, '\"n\":4', '\"n\":40') WHERE seq = 4")
    problem = log.verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (4, "edited")
    assert str(problem).startswith("record 4: edited:")


def test_edit_with_recomputed_hashes_is_caught_by_the_checkpoint(tmp_path: Path) -> None:
    """Rewriting a record and re-hashing the rest of the chain still contradicts the signature."""
    from agentguard.store.base import GENESIS_HASH, entry_hash

    log, db = filled_log(tmp_path, 4, every=4)
    conn = sqlite3.connect(db, isolation_level=None)
    rows = conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, body in rows:
        if seq == 2:
            body = body.replace('"n":2', '"n":20')
        digest = entry_hash(prev, body)
        conn.execute(
            "UPDATE audit SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, digest, seq)
        )
        prev = digest
    conn.close()
    problem = log.verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (4, "rewritten")
    assert "signed checkpoint" in problem.detail


def test_deleted_record_is_found(tmp_path: Path) -> None:
    log, db = filled_log(tmp_path)
    tamper(db, "DELETE FROM audit WHERE seq = 3")
    problem = log.verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (3, "deleted")


def test_reordered_records_are_found(tmp_path: Path) -> None:
    log, db = filled_log(tmp_path)
    tamper(
        db,
        "UPDATE audit SET seq = -2 WHERE seq = 2",
        "UPDATE audit SET seq = 2 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = -2",
    )
    problem = log.verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (2, "reordered")


def test_truncation_after_a_checkpoint_is_found(tmp_path: Path) -> None:
    log, db = filled_log(tmp_path, 7, every=3)
    tamper(db, "DELETE FROM audit WHERE seq >= 5")
    problem = log.verify()
    assert problem is not None
    assert problem.kind == "truncated"
    assert problem.seq == 5


def test_truncation_that_also_drops_stored_checkpoints_is_found_by_the_side_file(
    tmp_path: Path,
) -> None:
    """At durability full the side file's checkpoint was written after its records were synced."""
    log, db = filled_log(tmp_path, 7, every=3, durability="full")
    tamper(db, "DELETE FROM audit WHERE seq >= 5", "DELETE FROM audit_checkpoints WHERE seq > 4")
    problem = log.verify()
    assert problem is not None
    assert problem.kind == "truncated"


def test_forged_checkpoint_signature_is_found(tmp_path: Path) -> None:
    log, _ = filled_log(tmp_path, 3, every=0)
    head = log.store.audit_tail(1)[0]
    forger = Identity.generate("service:agentguard")
    token = _jws.sign(
        {"ver": 1, "iss": forger.id, "seq": head.seq, "head": head.hash, "iat": int(T0)},
        forger,
        TYP_CHECKPOINT,
    )
    log.store.add_checkpoint(Checkpoint(head.seq, head.hash, T0, token))
    problem = log.verify()
    assert problem is not None
    assert problem.kind == "bad_checkpoint"


def test_tampered_checkpoint_token_is_found(tmp_path: Path) -> None:
    log, db = filled_log(tmp_path, 3, every=3)
    (token,) = [c.token for c in log.store.checkpoints()]
    header, payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    tamper(db, f"UPDATE audit_checkpoints SET token = '{header}.{payload}.{flipped}'")  # noqa: S608 - test data
    problem = log.verify()
    assert problem is not None
    assert problem.kind == "bad_checkpoint"


def test_verify_log_against_another_guard_key_fails(tmp_path: Path) -> None:
    log, _ = filled_log(tmp_path, 3, every=3)
    other = Identity.generate("service:agentguard").principal
    problem = verify_log(log.store.audit_entries(), log.store.checkpoints(), other)
    assert problem is not None
    assert problem.kind == "bad_checkpoint"


def test_audit_write_failure_is_a_store_error() -> None:
    from agentguard.errors import StoreError

    class Broken(MemoryStore):
        def audit_append(self, *args: Any, **kwargs: Any) -> Any:
            raise OSError("disk full")

    log = AuditLog(Broken(), Identity.generate("service:agentguard"))
    with pytest.raises(StoreError, match="audit write failed: OSError"):
        log.append({"type": "decision"}, at=T0)


def test_redact_masks_named_fields_at_any_depth_case_insensitively() -> None:
    value = {
        "Password": "hunter2",
        "user": {"name": "ann", "API_KEY": "k-123", "deeper": {"secret": {"x": 1}}},
        "items": [{"token": "t1", "id": 1}, {"id": 2}, "plain"],
        "count": 3,
    }
    out = redact(value, ["password", "api_key", "secret", "token"])
    assert out == {
        "Password": REDACTED,
        "user": {"name": "ann", "API_KEY": REDACTED, "deeper": {"secret": REDACTED}},
        "items": [{"token": REDACTED, "id": 1}, {"id": 2}, "plain"],
        "count": 3,
    }
    assert value["Password"] == "hunter2"  # a copy, not an in-place edit


def test_redact_with_upper_case_field_names() -> None:
    assert redact({"password": "x"}, ["PASSWORD"]) == {"password": REDACTED}


def test_redact_bounds_size_and_depth() -> None:
    deep: object = "bottom"
    for _ in range(40):
        deep = {"k": deep}
    out = redact({"long": "x" * 5000, "deep": deep, "many": list(range(1000))}, [])
    assert out["long"].endswith("...[truncated]")
    assert len(out["long"]) < 1100
    assert "[too deep]" in repr(out["deep"])
    assert len(out["many"]) == 200


def test_redact_tuples_and_scalars() -> None:
    assert redact(({"secret": 1}, 2), ["secret"]) == [{"secret": REDACTED}, 2]
    assert redact(5, ["secret"]) == 5


# --- the end of the log is anchored (issue 12, item 4) -------------------------------------


def anchored_log(
    tmp_path: Path, n: int, *, durability: str = "normal", every: int = 100
) -> tuple[AuditLog, Path]:
    """A SQLite-backed guard log of ``n`` allowed decisions, each followed by its completion."""
    db = tmp_path / "state.db"
    log = AuditLog(
        SQLiteStore(db, durability=durability),
        Identity.generate("service:agentguard"),
        checkpoint_every=every,
        side_file=tmp_path / "audit-checkpoints.jsonl",
    )
    for i in range(1, n + 1):
        allow(log, i)
    return log, db


def allow(log: AuditLog, i: int, *, complete: bool = True) -> None:
    """Append an allowed decision ``dec_i`` (it lets a tool run) and, unless told not to,
    its completion."""
    log.append(
        {"type": "decision", "decision_id": f"dec_{i}", "outcome": "allow", "tool": "tickets/read"},
        at=T0 + i,
    )
    if complete:
        log.append(
            {"type": "completion", "decision_id": f"dec_{i}", "status": "success"}, at=T0 + i
        )


def reopen(log: AuditLog, tmp_path: Path, *, durability: str = "normal") -> AuditLog:
    """The same log as a later process (``agentguard audit verify``) sees it."""
    log.close()
    log.store.close()
    return AuditLog(
        SQLiteStore(tmp_path / "state.db", durability=durability),
        log.signer,
        side_file=tmp_path / "audit-checkpoints.jsonl",
    )


def rehash(db: Path, first: int, edit: dict[str, str]) -> None:
    """Rewrite records from ``first`` on (replacing text per ``edit``) and recompute every
    hash after them, so that the chain itself is consistent again."""
    from agentguard.store.base import GENESIS_HASH, entry_hash

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        rows = conn.execute("SELECT seq, body, prev FROM audit ORDER BY seq").fetchall()
        prev = GENESIS_HASH
        for seq, body, _ in rows:
            if seq >= first:
                for old, new in edit.items():
                    body = body.replace(old, new)
            digest = entry_hash(prev, body)
            conn.execute(
                "UPDATE audit SET body = ?, prev = ?, hash = ? WHERE seq = ?",
                (body, prev, digest, seq),
            )
            prev = digest
    finally:
        conn.close()


def power_loss(db: Path, snapshot: Path) -> None:
    """Put back the database as it was at ``snapshot``: what a power failure leaves when the
    newest commits were never synced (the side file written after them survived)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    snapshot.replace(db)


def snapshot_of(db: Path, to: Path) -> Path:
    """A consistent copy of the committed database (SQLite's backup API)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return to


def test_cutting_the_last_three_records_is_found(tmp_path: Path) -> None:
    """DELETE FROM audit WHERE seq > max-3 after the last checkpoint: truncated."""
    log, db = anchored_log(tmp_path, 60, every=100)  # 120 records, checkpoint at 100
    tamper(db, "DELETE FROM audit WHERE seq > 117")
    problem = reopen(log, tmp_path).verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (118, "truncated")
    assert "119" in problem.detail  # the newest signed head covers the last decision


def test_rewriting_the_tail_with_recomputed_hashes_is_found(tmp_path: Path) -> None:
    """Records after the last checkpoint edited and every hash recomputed: rewritten."""
    log, db = anchored_log(tmp_path, 60, every=100)
    rehash(db, 115, {'"outcome":"allow"': '"outcome":"deny"'})
    problem = reopen(log, tmp_path).verify()
    assert problem is not None
    assert problem.kind == "rewritten"
    assert problem.seq == 119


def test_a_short_log_without_checkpoints_is_anchored_too(tmp_path: Path) -> None:
    """Below 100 records there is no checkpoint; cutting or rewriting the end is still found."""
    log, db = anchored_log(tmp_path, 3)
    assert log.store.checkpoints() == []
    log = reopen(log, tmp_path)
    assert log.verify() is None
    tamper(db, "DELETE FROM audit WHERE seq >= 5")
    cut = log.verify()
    assert cut is not None
    assert (cut.seq, cut.kind) == (5, "truncated")

    log2, db2 = anchored_log(tmp_path / "b", 3)
    rehash(db2, 5, {"dec_3": "dec_9"})
    rewritten = reopen(log2, tmp_path / "b").verify()
    assert rewritten is not None
    assert rewritten.kind == "rewritten"


def test_a_cut_that_also_rolls_back_the_database_head_is_found_by_the_side_file(
    tmp_path: Path,
) -> None:
    """The attacker cuts the tail and puts back an older signed head: the side file says more."""
    log, db = anchored_log(tmp_path, 5, durability="full")
    old = snapshot_of(db, tmp_path / "old.db")
    allow(log, 6)
    allow(log, 7)
    log = reopen(log, tmp_path, durability="full")
    tamper(db, "DELETE FROM audit WHERE seq > 10", "DELETE FROM audit_head")
    tamper(db, f"ATTACH '{old}' AS old", "INSERT INTO audit_head SELECT * FROM old.audit_head")
    problem = log.verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (11, "truncated")
    assert "side file" in problem.detail


def test_side_file_ahead_at_normal_durability_is_reported_as_possible_power_loss(
    tmp_path: Path,
) -> None:
    """At durability normal the last commits may never reach the disk: not called tampering."""
    log, db = anchored_log(tmp_path, 5)
    snapshot = snapshot_of(db, tmp_path / "synced.db")
    allow(log, 6)
    log.close()
    log.store.close()
    power_loss(db, snapshot)
    log = reopen(log, tmp_path)
    problem = log.verify()
    assert problem is not None
    assert problem.kind == "unsynced"
    assert "power" in problem.detail
    assert "truncated" not in str(problem)


def test_side_file_ahead_at_full_durability_is_truncation(tmp_path: Path) -> None:
    """At durability full every record was synced before its head reached the side file."""
    log, db = anchored_log(tmp_path, 5, durability="full")
    snapshot = snapshot_of(db, tmp_path / "old.db")
    allow(log, 6)
    log.close()
    log.store.close()
    power_loss(db, snapshot)
    problem = reopen(log, tmp_path, durability="full").verify()
    assert problem is not None
    assert (problem.seq, problem.kind) == (11, "truncated")


def test_a_guard_refuses_to_append_to_a_database_older_than_its_side_file(
    tmp_path: Path,
) -> None:
    """An older copy of the database put back under the side file: nothing more is appended
    (it would start a second history), and verify still finds the cut."""
    log, db = anchored_log(tmp_path, 5, durability="full")
    old = snapshot_of(db, tmp_path / "old.db")
    allow(log, 6)
    log.close()
    log.store.close()
    power_loss(db, old)  # the attacker puts back an older copy of the whole database
    log = reopen(log, tmp_path, durability="full")
    before = len(log.store.audit_entries())
    for attempt in (7, 8):  # refused every time, not only once
        with pytest.raises(StoreError, match="does not hold") as info:
            allow(log, attempt)
        assert "restore the database from a backup" in str(info.value)
    assert len(log.store.audit_entries()) == before
    problem = reopen(log, tmp_path, durability="full").verify()
    assert problem is not None
    assert problem.kind == "truncated"


def test_after_power_loss_appends_are_refused_and_the_loss_stays_reported(
    tmp_path: Path,
) -> None:
    """After a power failure at normal the side file is ahead: appends are refused
    (fail closed) and verify reports the records as possibly lost."""
    log, db = anchored_log(tmp_path, 5)
    snapshot = snapshot_of(db, tmp_path / "synced.db")
    allow(log, 6)
    log.close()
    log.store.close()
    power_loss(db, snapshot)
    log = reopen(log, tmp_path)
    with pytest.raises(StoreError, match="deleted, replaced or rolled back"):
        allow(log, 7)
    problem = reopen(log, tmp_path).verify()
    assert problem is not None
    assert problem.kind == "unsynced"


def test_a_decision_without_completion_is_not_known_to_have_run(tmp_path: Path) -> None:
    """An allowed decision with no completion is information, not a break."""
    log, db = anchored_log(tmp_path, 3)
    allow(log, 4, complete=False)
    allow(log, 5)
    tamper(db, "DELETE FROM audit WHERE seq = 9")  # the last completion: no head covers it
    report = reopen(log, tmp_path).report()
    assert report.problem is None
    assert [(d.seq, d.decision_id) for d in report.not_known_to_have_run] == [
        (7, "dec_4"),
        (8, "dec_5"),
    ]


def test_only_decisions_that_let_a_tool_run_move_the_signed_head(tmp_path: Path) -> None:
    """Denials, dry runs and completions are covered by the next anchored decision."""
    log, _ = anchored_log(tmp_path, 1)
    log.append({"type": "decision", "outcome": "deny"}, at=T0)
    log.append({"type": "decision", "outcome": "allow", "dry_run": True}, at=T0)
    assert log.report().anchored == 1
    log.append({"type": "decision", "outcome": "deny", "shadow": True}, at=T0)  # runs anyway
    report = log.report()
    assert report.anchored == 5
    assert report.side_file == 5


def test_the_side_file_holds_only_the_newest_head_at_full_durability(tmp_path: Path) -> None:
    """At durability full the head is in the side file when append returns."""
    anchored_log(tmp_path, 3, durability="full")
    lines = (tmp_path / "audit-checkpoints.jsonl").read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["seq"] == 5
    assert sorted(p.name for p in tmp_path.iterdir() if "audit-checkpoints" in p.name) == [
        "audit-checkpoints.jsonl",
        "audit-checkpoints.jsonl.lock",
    ]


def test_a_memory_log_has_no_anchor() -> None:
    """An in-memory log dies with the process: nothing to cut, nothing signed per record."""
    log = AuditLog(MemoryStore(), Identity.generate("service:agentguard"))
    log.append({"type": "decision", "outcome": "allow"}, at=T0)
    assert log.report().anchored is None
    assert log.verify() is None


_APPENDER = """
import sys
from pathlib import Path
from agentguard.audit import AuditLog
from agentguard.keys import Identity
from agentguard.store.sqlite import SQLiteStore

home, key, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = SQLiteStore(home / "state.db")
log = AuditLog(store, Identity.load(key), checkpoint_every=7,
               side_file=home / "audit-checkpoints.jsonl")
print("ready", flush=True)
sys.stdin.readline()
for n in range(150):
    log.append({"type": "decision", "outcome": "allow", "decision_id": f"{name}{n}"}, at=1.8e9)
log.close()
store.close()
"""


def test_two_processes_append_one_anchored_chain(tmp_path: Path) -> None:
    """Two processes append anchored decisions at once: one chain, verified, newest head out."""
    import subprocess

    signer = Identity.generate("service:agentguard")
    signer.save(tmp_path / "guard.key")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(tmp_path), str(tmp_path / "guard.key"), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
    store = SQLiteStore(tmp_path / "state.db")
    try:
        log = AuditLog(store, signer, side_file=tmp_path / "audit-checkpoints.jsonl")
        report = log.report()
        assert report.problem is None
        assert report.records == 300
        assert report.anchored == report.side_file == 300
    finally:
        store.close()


# --- what the README's "What `agentguard audit verify` detects" says -----------------------


def _readme_table() -> dict[str, tuple[str, str]]:
    """The README's detection table: what happened -> (cell at normal, cell at full)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### What `agentguard audit verify` detects", 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("|"))
    rows = {}
    for line in table.splitlines()[2:]:
        what, normal, full = (cell.strip() for cell in line.strip("|").split("|"))
        rows[what] = (normal, full)
    return rows


def _scenario(name: str, tmp_path: Path, durability: str) -> list[str]:
    """Do to a log what the README's row ``name`` says; the problem kinds verify reports."""
    log, db = anchored_log(tmp_path, 5, durability=durability)
    if name == "a record edited, deleted or moved":
        kinds = []
        for n, statement in enumerate(
            [
                "UPDATE audit SET body = replace(body, 'dec_2', 'dec_9') WHERE seq = 3",
                "DELETE FROM audit WHERE seq = 3",
                "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;"
                " UPDATE audit SET seq = 3 WHERE seq = -2",
            ]
        ):
            copy, copy_db = anchored_log(tmp_path / str(n), 5, durability=durability)
            tamper(copy_db, *statement.split(";"))
            problem = reopen(copy, tmp_path / str(n), durability=durability).verify()
            kinds.append(problem.kind if problem else "not detected")
        return kinds
    earlier = snapshot_of(db, tmp_path / "earlier.db")
    side = tmp_path / "audit-checkpoints.jsonl"
    log.flush()
    earlier_side = side.read_bytes()
    allow(log, 6)
    allow(log, 7)
    log.close()
    log.store.close()
    if name == "the last records deleted":
        tamper(db, "DELETE FROM audit WHERE seq > 11")
    elif name == "the last records deleted, with the database's signed head and the side file":
        tamper(db, "DELETE FROM audit WHERE seq > 11", "DELETE FROM audit_head")
        side.unlink()
    elif name == "the last records rewritten, hashes recomputed":
        rehash(db, 12, {"dec_7": "dec_8"})
    elif (
        name == "the last records deleted and the database's signed head put back to an earlier one"
    ):
        tamper(db, "DELETE FROM audit WHERE seq > 10", "DELETE FROM audit_head")
        tamper(
            db, f"ATTACH '{earlier}' AS old", "INSERT INTO audit_head SELECT * FROM old.audit_head"
        )
    elif name == "a power failure lost the newest commits":
        power_loss(db, earlier)
    elif name == "an earlier copy of both the database and the side file put back":
        power_loss(db, earlier)
        side.write_bytes(earlier_side)
    else:
        raise AssertionError(f"no scenario for the README row {name!r}")
    problem = reopen(log, tmp_path, durability=durability).verify()
    return [problem.kind if problem else "not detected"]


def test_readme_detection_table_is_what_verify_reports(tmp_path: Path) -> None:
    """Every row of the README's audit detection table, at both durabilities, as written."""
    rows = _readme_table()
    assert len(rows) == 7
    for name, cells in rows.items():
        for durability, cell in zip(("normal", "full"), cells, strict=True):
            if cell.startswith("—"):  # cannot happen at this durability
                continue
            place = tmp_path / f"{len(name)}-{durability}"
            kinds = _scenario(name, place, durability)
            assert " / ".join(f"`{k}`" if k != "not detected" else k for k in kinds) == cell, (
                name,
                durability,
            )


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_signed_head_covers_an_allowed_call_before_its_tool_runs(
    tmp_path: Path, durability: str
) -> None:
    """Inside the tool, the database's signed head (at full, the side file too) covers it."""
    world = World()
    guard = world.guard(home=tmp_path, storage={"durability": durability})
    seen: list[tuple[int | None, int | None]] = []

    def tool(**kwargs: Any) -> None:
        head = guard.store.audit_head()
        side = guard.audit.side_checkpoints() if durability == "full" else []
        seen.append((head.seq if head else None, max((c.seq for c in side), default=None)))

    text = world.delegation.serialize()
    guard.call(text, "tickets/read", {"ticket": 1}, tool, holder=world.bot)
    guard.call(text, "tickets/read", {"ticket": 2}, tool, holder=world.bot)
    expected = [(1, 1), (3, 3)] if durability == "full" else [(1, None), (3, None)]
    assert seen == expected
    assert guard.audit.report().side_file == 3  # at normal, written right after
    guard.close()


def test_records_after_the_newest_signed_head_can_be_deleted_unnoticed(tmp_path: Path) -> None:
    """A denial and a completion written after the newest head: cut without a trace."""
    log, db = anchored_log(tmp_path, 2)
    log.append({"type": "decision", "decision_id": "dec_x", "outcome": "deny"}, at=T0)
    tamper(db, "DELETE FROM audit WHERE seq >= 4")
    report = reopen(log, tmp_path).report()
    assert report.problem is None
    assert [d.decision_id for d in report.not_known_to_have_run] == ["dec_2"]


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_cut_with_the_head_row_and_side_file_deleted_is_found(
    tmp_path: Path, durability: str
) -> None:
    """Deleting the signed head and the side file along with the tail does not hide the cut."""
    world = World()
    guard = world.guard(home=tmp_path, storage={"durability": durability})
    for ticket in range(4):
        guard.call(world.delegation, "tickets/read", {"ticket": ticket}, lambda **_: None,
                   holder=world.bot)  # fmt: skip
    guard.close()
    db = tmp_path / "state.db"
    side = next(tmp_path.glob("*.jsonl"))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM audit WHERE seq > 4")
        conn.execute("DELETE FROM audit_head")
    conn.close()
    side.unlink()
    reopened = world.guard(home=tmp_path, storage={"durability": durability})
    problem = reopened.audit.verify()
    reopened.close()
    assert problem is not None
    assert problem.kind == "truncated", problem


def test_an_argument_named_anchored_does_not_raise_a_false_alarm(tmp_path: Path) -> None:
    """Only the log's own marker counts: a denied call's argument named "anchored" does not."""
    world = World()
    guard = world.guard(home=tmp_path)
    guard.check(world.delegation, "nowhere/x", {"anchored": True}, holder=world.bot)
    assert guard.audit.verify() is None
    guard.close()


def test_an_unreadable_side_file_is_reported_not_a_crash(tmp_path: Path) -> None:
    """Bytes that are not UTF-8, or a directory in its place: a finding, not a traceback."""
    world = World()
    guard = world.guard(home=tmp_path, storage={"durability": "full"})
    guard.call(world.delegation, "tickets/read", {}, lambda **_: None, holder=world.bot)
    side = guard.audit.side_file
    assert side is not None
    side.write_bytes(b"\xff\xfe garbage\n")
    problem = guard.audit.verify()
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    side.unlink()
    side.mkdir()
    problem = guard.audit.verify()
    assert problem is not None
    assert "cannot be read" in problem.detail
    guard.close()


def test_a_failing_side_file_refuses_every_later_call_until_it_is_fixed(tmp_path: Path) -> None:
    """At normal, a background write failure is not forgotten after one refusal."""
    from agentguard.errors import DeniedError

    world = World()
    guard = world.guard(home=tmp_path)
    guard.call(world.delegation, "tickets/read", {}, lambda **_: None, holder=world.bot)
    guard.audit.flush()
    side = guard.audit.side_file
    assert side is not None
    side.unlink()
    side.mkdir()  # the next replace fails: a directory is in the way
    guard.call(world.delegation, "tickets/read", {}, lambda **_: None, holder=world.bot)
    guard.audit.flush()
    for _ in range(3):  # decisions and completions alike keep failing
        tool = RecordingTool()
        with pytest.raises(DeniedError) as info:
            guard.call(world.delegation, "tickets/read", {}, tool, holder=world.bot)
        assert info.value.reason == "audit_error"
        assert not tool.ran
    side.rmdir()
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {}, tool, holder=world.bot)
    assert tool.ran
    guard.close()


def test_checkpoint_write_failure_is_an_audit_error_not_a_raw_exception(
    world: World, tmp_path: Path
) -> None:
    """Attack: an unwritable side file at durability full is an audit error: the tool does not run.

    (At durability normal the side file is written after the commit, off the call's
    path; the signed head in the database still anchors the record.)
    """
    guard = world.guard(home=tmp_path, storage={"durability": "full"})
    guard.audit.checkpoint_every = 1
    side = guard.audit.side_file
    assert side is not None
    side.mkdir()  # opening it for appending now fails with IsADirectoryError
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/list", {}, fn, holder=world.bot)
    assert info.value.reason == "audit_error"
    assert not fn.ran
