"""The audit log: a clean log verifies; edits, deletions, reordering and truncation are found."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agentguard import _jws
from agentguard.audit import REDACTED, TYP_CHECKPOINT, AuditLog, redact, verify_log
from agentguard.keys import Identity
from agentguard.store.base import Checkpoint
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0


def filled_log(tmp_path: Path, n: int = 7, *, every: int = 3) -> tuple[AuditLog, Path]:
    """A SQLite-backed log with ``n`` records and a checkpoint every ``every`` records."""
    db = tmp_path / "state.db"
    log = AuditLog(
        SQLiteStore(db),
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
    assert (problem.seq, problem.kind) == (4, "edited")
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
    log, db = filled_log(tmp_path, 7, every=3)
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
