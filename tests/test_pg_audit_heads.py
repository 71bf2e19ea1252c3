"""Each replica's head file, checked together: a cut of the shared chain is found
whichever replica wrote the records cut.

Three guards share one PostgreSQL database, each with its own state directory,
key (all three listed under ``guard_keys``) and side file. Someone with the
database password rolls the chain back, restoring a signed head that was once
the database's own: the database alone then looks intact, and only the head
files, kept outside it, tell.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

from agentguard.audit import AuditLog, head_files_in
from agentguard.cli import app
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring
from agentguard.store.postgres import DATABASE_URL_ENV, PostgresStore
from agentguard.testing import RecordingTool, World

GUARD_ID = "service:agentguard"
REPLICAS = ("a", "b", "c")
SIDE_FILE = "audit-checkpoints.jsonl"


def _entry(key: Identity) -> dict[str, Any]:
    return {"public_key": key.principal.public_jwk()}


class Replicas:
    """Three guards on one database; ``heads[seq]`` is the database's signed head row
    right after the call whose decision is record ``seq``."""

    def __init__(self, root: Path, url: str) -> None:
        self.world = World()
        self.root = root
        self.url = url
        keys = [Keyring(root / name / "keys").create(GUARD_ID) for name in REPLICAS]
        self.policy = self.world.write_policy(
            root / "agentguard.yaml", guard_keys=[_entry(k) for k in keys]
        )
        self.guards = {
            name: Guard(
                self.policy, home=root / name, store=PostgresStore(url), clock=self.world.clock
            )
            for name in REPLICAS
        }
        self.heads: dict[int, tuple[Any, ...]] = {}
        #: The record number of each replica's decisions, in order.
        self.wrote: dict[str, list[int]] = {name: [] for name in REPLICAS}

    def call(self, name: str) -> None:
        tool = RecordingTool()
        guard = self.guards[name]
        guard.call(self.world.delegation, "tickets/read", {"id": 1}, tool, holder=self.world.bot)
        assert tool.ran
        guard.audit.flush()
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT seq, head, signed_at, token FROM ag_audit_head").fetchone()
        assert row is not None
        self.heads[int(row[0])] = tuple(row)
        self.wrote[name].append(int(row[0]))
        self.world.clock.advance(1)

    def head_file(self, name: str) -> Path:
        return self.root / name / SIDE_FILE

    def close(self) -> None:
        for guard in self.guards.values():
            guard.close()

    def roll_back_to(self, keep: int) -> None:
        """What restoring a backup taken after record ``keep`` does: later records and
        checkpoints gone, the tip and the signed head as they were then."""
        anchored = max(seq for seq in self.heads if seq <= keep)
        with psycopg.connect(self.url) as conn:
            conn.execute("DELETE FROM ag_audit WHERE seq > %s", (keep,))
            conn.execute("DELETE FROM ag_audit_checkpoints WHERE seq > %s", (keep,))
            conn.execute(
                "UPDATE ag_audit_tip SET seq = a.seq, hash = a.hash FROM ag_audit a "
                "WHERE a.seq = %s",
                (keep,),
            )
            seq, head, signed_at, token = self.heads[anchored]
            conn.execute(
                "UPDATE ag_audit_head SET seq = %s, head = %s, signed_at = %s, token = %s",
                (seq, head, signed_at, token),
            )


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Any:
    group = Replicas(tmp_path, pg_url)
    yield group
    group.close()


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Any:
    """``agentguard`` in process, from a directory that is no replica's, on the database."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in ("AGENTGUARD_HOME", "AGENTGUARD_POLICY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(app, list(args), catch_exceptions=False)

    return invoke


def _verify(run: Any, replicas: Replicas, *heads: Path) -> Result:
    args = [a for h in heads for a in ("--head", str(h))]
    result: Result = run("audit", "verify", "--policy", str(replicas.policy), *args)
    return result


@pytest.mark.parametrize("victim", REPLICAS)
def test_a_cut_of_any_replicas_records_is_found_by_its_head_file(
    replicas: Replicas, run: Any, victim: str
) -> None:
    for name in REPLICAS * 2:
        replicas.call(name)
    files = [replicas.head_file(name) for name in REPLICAS]
    intact = _verify(run, replicas, *files)
    assert intact.exit_code == 0, intact.output
    assert "audit log intact: 12 record(s)" in intact.stdout
    for name in REPLICAS:
        newest = replicas.wrote[name][-1]
        assert f"head file {replicas.head_file(name)}: signed head at record {newest}" in (
            intact.stdout
        )

    # Cut the victim's last record and everything after it.
    keep = replicas.wrote[victim][-1] - 1
    replicas.roll_back_to(keep)
    # The database alone cannot tell: its signed head is a genuine older one.
    alone = _verify(run, replicas)
    assert alone.exit_code == 0, alone.output
    assert f"audit log intact: {keep} record(s)" in alone.stdout

    for name in REPLICAS:
        checked = _verify(run, replicas, replicas.head_file(name))
        if replicas.wrote[name][-1] > keep:  # this replica wrote records that were cut
            assert checked.exit_code == 1, (name, checked.output)
            assert "NOT intact" in checked.stderr
            assert f"record {keep + 1}: truncated" in checked.stderr
            assert f"head file {replicas.head_file(name)} covers record" in checked.stderr
        else:
            assert checked.exit_code == 0, (name, checked.output)
    together = _verify(run, replicas, *files)
    assert together.exit_code == 1
    assert f"record {keep + 1}: truncated" in together.stderr
    # A directory of the three files (as an operator collects them) does the same.
    collected = replicas.root / "collected"
    collected.mkdir()
    for name in REPLICAS:
        shutil.copy(replicas.head_file(name), collected / f"{name}.jsonl")
    from_dir = run("audit", "verify", "--policy", str(replicas.policy), "--head", str(collected))
    assert from_dir.exit_code == 1
    assert f"record {keep + 1}: truncated" in from_dir.stderr


def test_the_library_report_checks_head_files_too(replicas: Replicas) -> None:
    for name in REPLICAS:
        replicas.call(name)
    reader = replicas.guards["a"]
    files = [replicas.head_file(name) for name in REPLICAS]
    report = reader.audit.report(head_files=files)
    assert report.problem is None, report.problem
    assert report.head_files == tuple(zip(files, [1, 3, 5], strict=True))
    replicas.roll_back_to(4)
    problem = reader.audit.report(head_files=files).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (5, "truncated")
    assert str(replicas.head_file("c")) in problem.detail


def test_a_fresh_replica_with_no_side_file_verifies_the_shared_chain(
    replicas: Replicas,
) -> None:
    """On a shared store a replica's side file holds only its own heads: one that has
    signed nothing yet has none, and that is not a deleted side file."""
    replicas.call("a")
    replicas.call("a")
    assert not replicas.head_file("b").exists()
    report = replicas.guards["b"].audit.report()
    assert report.problem is None, report.problem


def test_hostile_head_files_are_problems_never_passes(
    replicas: Replicas, run: Any, tmp_path: Path
) -> None:
    for name in REPLICAS:
        replicas.call(name)
    good = replicas.head_file("a")
    line = good.read_text().splitlines()[0]
    token = json.loads(line)["token"]
    bad = tmp_path / "bad"
    bad.mkdir()
    cases: dict[str, tuple[str, str]] = {}

    def case(name: str, text: str, *expected: str) -> None:
        (bad / name).write_text(text)
        cases[name] = expected  # type: ignore[assignment]

    case("garbage.jsonl", "{not json\n", "line 1 of head file", "cannot be read")
    case("empty.jsonl", "", "holds no signed head")
    case("only-kept.jsonl", json.dumps({"seq": 1, "token": token, "kept": True}) + "\n", "holds no")
    case("no-token.jsonl", '{"seq": 1}\n', "cannot be read")
    # A head signed with a key nobody listed (a replica made up by whoever holds the
    # database password), claiming the chain is shorter than it is.
    store = replicas.guards["a"].store
    now = replicas.world.clock.now()
    signed = AuditLog(store, Identity.generate(GUARD_ID))._sign(1, replicas.heads[1][1], now)
    case("rogue.jsonl", json.dumps({"seq": 1, "token": signed.token}) + "\n", "not a trusted key")
    # A head signed by a listed replica's key over another chain (other hashes).
    a_key = Keyring(replicas.root / "a" / "keys").identity(GUARD_ID)
    forged = AuditLog(store, a_key)._sign(3, "0" * 64, now)
    case("other-chain.jsonl", json.dumps({"seq": 3, "token": forged.token}) + "\n", "rewritten")
    for name, expected in cases.items():
        result = _verify(run, replicas, good, bad / name)
        assert result.exit_code == 1, (name, result.output)
        assert "NOT intact" in result.stderr, (name, result.stderr)
        for fragment in expected:
            assert fragment in result.stderr, (name, fragment, result.stderr)
        assert "Traceback" not in result.output

    missing = _verify(run, replicas, good, tmp_path / "no-such.jsonl")
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    blocked = _verify(run, replicas, fifo)  # refused, never waited on
    assert blocked.exit_code == 1
    assert "the whole of head file" in blocked.stderr
    empty_dir = tmp_path / "none"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("x")
    nothing = _verify(run, replicas, empty_dir)
    assert nothing.exit_code == 1
    assert "holds no head file (*.jsonl)" in nothing.stderr
    with pytest.raises(ValueError, match="holds no head file"):
        head_files_in([empty_dir])
