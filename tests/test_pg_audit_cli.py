"""``agentguard audit verify|tail|export`` over the chain every replica shares in PostgreSQL.

With ``AGENTGUARD_DATABASE_URL`` (or ``storage.url``) the commands read the
shared database, read-only, from any host: no state directory is needed, none
is created, and a local SQLite file is not what they read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from agentguard.cli import app
from agentguard.errors import ApprovalPending
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring
from agentguard.store.postgres import DATABASE_URL_ENV, PostgresStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World
from tests.pg_support import Cluster

GUARD_ID = "service:agentguard"
REPLICAS = ("a", "b", "c")


def _entry(key: Identity) -> dict[str, Any]:
    return {"public_key": key.principal.public_jwk()}


def _replicas(world: World, root: Path, url: str) -> tuple[Path, list[Guard]]:
    """Three guards on one database, each with its own home and key, all keys listed."""
    keys = [Keyring(root / name / "keys").create(GUARD_ID) for name in REPLICAS]
    policy = world.write_policy(root / "agentguard.yaml", guard_keys=[_entry(k) for k in keys])
    guards = [
        Guard(policy, home=root / name, store=PostgresStore(url), clock=world.clock)
        for name in REPLICAS
    ]
    return policy, guards


def _call(guard: Guard, world: World, n: int) -> None:
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {"id": n}, tool, holder=world.bot)
    assert tool.ran
    world.clock.advance(1)


def _state(url: str) -> list[Any]:
    """Every agentguard table and its row count (what a read-only command must not change)."""
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        ]
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()  # noqa: S608 - names from the catalogue
            for t in tables
        ]
        meta = conn.execute("SELECT key, value FROM ag_meta ORDER BY key").fetchall()
    return [tables, counts, meta]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``agentguard`` in ``tmp_path/elsewhere`` (no state directory), in process."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in ("AGENTGUARD_HOME", "AGENTGUARD_POLICY", DATABASE_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def test_audit_commands_read_the_shared_chain_read_only(
    pg_url: str,
    pg_cluster: Cluster,
    tmp_path: Path,
    run: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = World()
    policy, guards = _replicas(world, tmp_path, pg_url)
    for n, guard in enumerate(guards * 2):
        _call(guard, world, n)
    for guard in guards:
        guard.close()
    # A local SQLite file with a chain of its own: not what the commands read.
    local = tmp_path / "elsewhere" / ".agentguard"
    local.mkdir()
    own = SQLiteStore(local / "state.db")
    own.audit_append({"seq": 1, "type": "local"}, at=world.clock.now())
    own.close()
    before = _state(pg_url)
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)

    verified = run("audit", "verify", "--policy", str(policy))
    assert verified.exit_code == 0, verified.output
    assert "audit log intact: 12 record(s)" in verified.stdout
    assert "signed head at record 11" in verified.stdout

    tail = run("audit", "tail", "-n", "3", "--json", "--policy", str(policy))
    assert tail.exit_code == 0, tail.output
    assert [r["seq"] for r in json.loads(tail.stdout)] == [10, 11, 12]
    assert [r["type"] for r in json.loads(tail.stdout)] == ["completion", "decision", "completion"]

    exported = run("audit", "export", "--policy", str(policy))
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [doc["seq"] for doc in lines] == list(range(1, 13))
    assert {doc["record"]["enforcement_point"] for doc in lines} == {"python"}

    for result in (verified, tail, exported):
        assert pg_cluster.password not in result.output
    assert _state(pg_url) == before  # nothing written, created or migrated
    assert sorted(p.name for p in local.iterdir()) == ["state.db"]  # no keys made here


def test_audit_verify_on_the_shared_chain_names_tampering(
    pg_url: str, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    policy, guards = _replicas(world, tmp_path, pg_url)
    for n, guard in enumerate(guards):
        _call(guard, world, n)
    for guard in guards:
        guard.close()
    with psycopg.connect(pg_url) as conn:
        conn.execute(
            "UPDATE ag_audit SET body = replace(body, '\"id\":1', '\"id\":9') WHERE seq = 3"
        )
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    result = run("audit", "verify", "--policy", str(policy))
    assert result.exit_code == 1
    assert "NOT intact" in result.stderr
    assert "record 3: edited" in result.stderr


def test_audit_verify_refuses_a_database_without_the_schema_and_creates_none(
    pg_url: str, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    for command in (("verify",), ("tail",), ("export",)):
        result = run("audit", *command, "--policy", str(policy))
        assert result.exit_code == 1
        assert "has no agentguard schema; run `agentguard db upgrade`" in result.stderr
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT to_regclass('ag_meta') IS NULL").fetchone()
    assert found == (True,)


def test_audit_verify_without_guard_keys_needs_the_guards_key(
    pg_url: str, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without guard_keys only the guard's own key checks the heads: elsewhere that key is
    missing, so verify refuses rather than check nothing; where the key is, it verifies."""
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    home = tmp_path / "replica"
    guard = Guard(policy, home=home, store=PostgresStore(pg_url), clock=world.clock)
    _call(guard, world, 1)
    guard.close()
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    missing = run("audit", "verify", "--policy", str(policy))
    assert missing.exit_code == 1
    assert "policy lists no guard_keys" in missing.stderr
    tail = run("audit", "tail", "--json", "--policy", str(policy))  # signs and checks nothing
    assert tail.exit_code == 0, tail.output
    assert len(json.loads(tail.stdout)) == 2
    here = run("audit", "verify", "--policy", str(policy), "--home", str(home))
    assert here.exit_code == 0, here.output
    assert "audit log intact: 2 record(s)" in here.stdout


def test_grants_inspect_and_approvals_read_the_shared_database(
    pg_url: str, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other read-only commands see what replicas wrote to the database: the grant
    inventory, a revocation (``inspect`` says the chain is revoked) and a pending request."""
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml", approval={"channel": "queue"})
    guard = Guard(
        policy,
        home=tmp_path / "replica",
        store=PostgresStore(pg_url),
        clock=world.clock,
        approval_mode="raise",
    )
    guard.record(world.delegation)
    with pytest.raises(ApprovalPending) as pending:
        guard.call(world.delegation, "admin/reset", {}, RecordingTool(), holder=world.bot)
    request_id = pending.value.request_id
    guard.revoke("principal", world.bot.id, reason="left")
    guard.close()
    chain = tmp_path / "elsewhere" / "chain.txt"
    chain.write_text(world.delegation.serialize())
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)

    grants = run("grants", "list", "--json", "--policy", str(policy))
    assert grants.exit_code == 0, grants.output
    assert sorted(g["subject"] for g in json.loads(grants.stdout)) == [world.bot.id, world.alice.id]
    inspected = run("inspect", "chain.txt", "--json", "--policy", str(policy))
    assert inspected.exit_code == 3, inspected.output
    assert "revoked" in inspected.stdout
    listed = run("approvals", "list", "--json", "--policy", str(policy))
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.stdout)] == [request_id]
    shown = run("approvals", "show", request_id, "--policy", str(policy))
    assert shown.exit_code == 0, shown.output
    assert "admin/reset" in shown.stdout
