"""``agentguard audit verify`` on a log written by guarded calls: a cut or rewritten end of
the log, possible power loss and decisions not known to have run."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.store.base import GENESIS_HASH, entry_hash

from .cli_support import CLI, one_line_error


def guarded_calls(cli: CLI, n: int) -> None:
    """``n`` allowed calls of ``tickets/read`` by agent:bot: a decision and a completion each."""
    guard = Guard(policy=cli.root / "agentguard.yaml", home=cli.home)
    try:
        bot = Keyring(cli.home / "keys").identity("agent:bot")
        delegation = (cli.root / "bot.dlg").read_text().strip()
        for i in range(n):
            guard.call(delegation, "tickets/read", {"id": i}, _tool, holder=bot)
    finally:
        guard.close()


def _tool(**kwargs: Any) -> str:
    return "ok"


def sql(cli: CLI, *statements: str) -> None:
    """Change the database behind agentguard's back."""
    db = sqlite3.connect(cli.home / "state.db", isolation_level=None)
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


def test_verify_reports_the_signed_head(scenario: CLI) -> None:
    """An intact log names its record count and the newest signed head."""
    guarded_calls(scenario, 3)
    result = scenario.ok("audit", "verify")
    assert "audit log intact: 6 record(s)" in result.stdout
    assert "signed head at record 5 (side file: record 5)" in result.stdout


def test_verify_finds_the_last_three_records_cut(scenario: CLI) -> None:
    """DELETE FROM audit WHERE seq > max-3: truncated, exit 1."""
    guarded_calls(scenario, 4)
    sql(scenario, "DELETE FROM audit WHERE seq > 5")
    result = scenario("audit", "verify")
    assert result.exit_code == 1
    one_line_error(result, "audit log is NOT intact", "record 6: truncated", "were cut")


def test_verify_finds_a_rewritten_end(scenario: CLI) -> None:
    """The last records edited and every hash recomputed: rewritten, exit 1."""
    guarded_calls(scenario, 4)
    db = sqlite3.connect(scenario.home / "state.db", isolation_level=None)
    prev = GENESIS_HASH
    for seq, body in db.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall():
        if seq >= 7:
            body = body.replace('"tickets/read"', '"tickets/list"')
        digest = entry_hash(prev, body)
        db.execute(
            "UPDATE audit SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, digest, seq)
        )
        prev = digest
    db.close()
    result = scenario("audit", "verify")
    assert result.exit_code == 1
    one_line_error(result, "audit log is NOT intact", "record 7: rewritten")


def test_verify_reports_possible_power_loss_apart_from_tampering(
    scenario: CLI, tmp_path: Path
) -> None:
    """The side file ahead of the database at durability normal: its own wording, exit 1."""
    guarded_calls(scenario, 2)
    synced = tmp_path / "synced.db"
    src, dst = sqlite3.connect(scenario.home / "state.db"), sqlite3.connect(synced)
    src.backup(dst)
    src.close()
    dst.close()
    guarded_calls(scenario, 1)
    for suffix in ("-wal", "-shm"):
        Path(f"{scenario.home / 'state.db'}{suffix}").unlink(missing_ok=True)
    synced.replace(scenario.home / "state.db")
    result = scenario("audit", "verify")
    assert result.exit_code == 1
    line = one_line_error(result, "may have lost its newest records", "unsynced", "power failure")
    assert "NOT intact" not in line


def test_verify_names_a_decision_not_known_to_have_run(scenario: CLI) -> None:
    """A decision whose completion is missing is a note, and the log still verifies."""
    guarded_calls(scenario, 2)
    sql(scenario, "DELETE FROM audit WHERE seq = 4")
    result = scenario.ok("audit", "verify")
    assert "audit log intact: 3 record(s)" in result.stdout
    assert "(tickets/read, record 3) has no completion record: not known to have run" in (
        result.stderr
    )
