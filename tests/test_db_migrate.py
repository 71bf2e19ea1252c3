"""``agentguard db migrate --from PATH/state.db``: a real guard's SQLite state into PostgreSQL.

The source is filled by a real guard (allowed calls, a refused one, an
approval request, a revocation, a checkpoint); the command copies it into an
empty database of the session's cluster, verifying the chain before and
after; a guard on the database then continues the same chain.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from agentguard.cli import app
from agentguard.errors import ApprovalPending, StoreError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.store import migrate as migrate_module
from agentguard.store.postgres import DATABASE_URL_ENV, PostgresStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World


def _run(tmp_path: Path, url: str, *args: str) -> Result:
    return CliRunner().invoke(
        app,
        ["--policy", str(tmp_path / "agentguard.yaml"), "db", "migrate", *args],
        env={DATABASE_URL_ENV: url, "COLUMNS": "400"},
        catch_exceptions=False,
    )


def _filled(tmp_path: Path, world: World) -> Path:
    """A SQLite home a real guard used; returns its state.db."""
    world.write_policy(
        tmp_path / "agentguard.yaml",
        approval={"channel": "queue", "grant_rule_assurance": "local"},
    )
    home = tmp_path / "old"
    guard = Guard(tmp_path / "agentguard.yaml", home=home, clock=world.clock, approval_mode="raise")
    for n in range(3):
        tool = RecordingTool()
        guard.call(world.delegation, "tickets/read", {"id": n}, tool, holder=world.bot)
        assert tool.ran
    assert guard.audit.checkpoint(at=world.clock.now()) is not None
    with pytest.raises(ApprovalPending):
        guard.call(
            world.delegation, "admin/reset", {"target": "db1"}, RecordingTool(), holder=world.bot
        )
    guard.revoke("principal", "agent:mallory", reason="left")
    guard.call(world.delegation, "tickets/read", {"id": 9}, RecordingTool(), holder=world.bot)
    guard.close()
    pins = SQLiteStore(home / "state.db")
    pins.pin_tools({"notes/read_note": "f" * 64, "notes/delete_note": "e" * 64})
    pins.close()
    return home / "state.db"


def test_migrate_copies_everything_and_a_guard_on_the_database_continues_the_chain(
    pg_url: str, tmp_path: Path
) -> None:
    world = World()
    source = _filled(tmp_path, world)
    old = SQLiteStore(source)
    entries, checkpoints, head = old.audit_entries(), old.checkpoints(), old.audit_head()
    approvals, revocations = old.approval_list(), old.revocations()
    old.close()

    before = source.read_bytes()
    result = _run(tmp_path, pg_url, "--from", str(source))
    assert result.exit_code == 0, result.stderr
    assert source.read_bytes() == before  # only read
    assert "the audit chain verifies before and after" in result.stdout
    assert f"audit: {len(entries)}/{len(entries)}" in result.stderr  # progress lines

    pg = PostgresStore(pg_url)
    assert pg.audit_entries() == entries
    assert pg.checkpoints() == checkpoints
    assert pg.audit_head() == head
    assert pg.approval_list() == approvals
    assert pg.revocations() == revocations
    assert pg.pin_tools({"notes/read_note": "0" * 64}) == {"notes/read_note": "f" * 64}
    pg.close()

    # The same guard key and side file, now on the database: the chain goes on.
    guard = Guard(
        tmp_path / "agentguard.yaml",
        home=tmp_path / "old",
        store=PostgresStore(pg_url),
        clock=world.clock,
        approval_mode="raise",
    )
    assert guard.audit.report().problem is None
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {"id": 10}, tool, holder=world.bot)
    assert tool.ran
    report = guard.audit.report()
    assert report.problem is None
    assert report.records == len(entries) + 2  # decision and completion
    # The pending request filed on SQLite is the one the database now knows.
    with pytest.raises(ApprovalPending) as raised:
        guard.call(
            world.delegation, "admin/reset", {"target": "db1"}, RecordingTool(), holder=world.bot
        )
    assert raised.value.request_id == approvals[0].id
    guard.close()
    guard.store.close()

    # A second run changes nothing and says so.
    again = _run(tmp_path, pg_url, "--from", str(source), "--json")
    assert again.exit_code == 0, again.stderr
    shown = json.loads(again.stdout)
    assert shown["already"] is True
    assert shown["copied"] == {name: 0 for name in shown["copied"]}


def test_a_database_holding_other_state_is_refused_and_left_alone(
    pg_url: str, tmp_path: Path
) -> None:
    world = World()
    source = _filled(tmp_path, world)
    other = Guard(World().policy(), store=PostgresStore(pg_url), clock=world.clock)
    other.revoke("principal", "agent:someone", reason="other history")
    other.close()
    other.store.close()
    result = _run(tmp_path, pg_url, "--from", str(source))
    assert result.exit_code != 0
    assert "already holds state (revocations 1)" in result.stderr
    assert "mix two histories" in result.stderr
    pg = PostgresStore(pg_url)
    assert pg.audit_entries() == []
    assert len(pg.revocations()) == 1
    pg.close()


def test_a_tampered_source_is_refused_before_anything_is_written(
    pg_url: str, tmp_path: Path
) -> None:
    """Attack: a record edited in the SQLite file (hash left alone) is not carried over."""
    world = World()
    source = _filled(tmp_path, world)
    with sqlite3.connect(source) as db:
        db.execute(
            "UPDATE audit SET body = replace(body, 'tickets/read', 'tickets/rea_') WHERE seq = 1"
        )
    result = _run(tmp_path, pg_url, "--from", str(source))
    assert result.exit_code != 0
    assert "does not verify" in result.stderr
    assert "record 1" in result.stderr
    pg = PostgresStore(pg_url)
    assert pg.audit_entries() == []
    assert pg.revocations() == []
    pg.close()


def test_a_copy_that_does_not_verify_commits_nothing(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after the copy runs inside its transaction: fail it, and nothing stays."""
    world = World()
    source = _filled(tmp_path, world)
    real = migrate_module._check
    seen: list[str] = []

    def second_fails(where: str, *args: object) -> None:
        seen.append(where)
        if len(seen) == 2:
            raise StoreError("injected: the copy does not verify")
        real(where, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate_module, "_check", second_fails)
    result = _run(tmp_path, pg_url, "--from", str(source))
    assert result.exit_code != 0
    assert "injected" in result.stderr
    pg = PostgresStore(pg_url)
    assert pg.audit_entries() == []
    assert pg.approval_list() == []
    pg.close()


def test_hostile_or_missing_sources_and_keys(pg_url: str, tmp_path: Path) -> None:
    world = World()
    world.write_policy(tmp_path / "agentguard.yaml")
    (tmp_path / "s" / "keys").mkdir(parents=True)
    Keyring(tmp_path / "s" / "keys").create("service:agentguard")
    missing = _run(tmp_path, pg_url, "--from", str(tmp_path / "s" / "state.db"))
    assert missing.exit_code != 0
    assert "no SQLite state file" in missing.stderr
    (tmp_path / "s" / "state.db").write_bytes(b"not a database at all" * 100)
    garbage = _run(tmp_path, pg_url, "--from", str(tmp_path / "s" / "state.db"))
    assert garbage.exit_code != 0
    assert "not an agentguard state file" in garbage.stderr
    (tmp_path / "s" / "state.db").unlink()
    with sqlite3.connect(tmp_path / "s" / "state.db") as db:
        db.execute("CREATE TABLE audit (seq INTEGER)")
    partial = _run(tmp_path, pg_url, "--from", str(tmp_path / "s" / "state.db"))
    assert partial.exit_code != 0
    assert "not an agentguard state file (no revocations" in partial.stderr
    # No guard key next to the file and none in the policy: the heads cannot be checked.
    (tmp_path / "k").mkdir()
    source = _filled(tmp_path / "k", World())
    for path in (source.parent / "keys").glob("service_agentguard.*"):
        path.unlink()
    keyless = _run(tmp_path / "k", pg_url, "--from", str(source))
    assert keyless.exit_code != 0
    assert "cannot be checked" in keyless.stderr


def test_a_file_from_before_tool_pins_is_copied(pg_url: str, tmp_path: Path) -> None:
    source = _filled(tmp_path, World())
    with sqlite3.connect(source) as db:
        db.execute("DROP TABLE tool_pins")
    result = _run(tmp_path, pg_url, "--from", str(source), "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["copied"]["tool_pins"] == 0
    assert shown["copied"]["audit"] == shown["records"] > 0
