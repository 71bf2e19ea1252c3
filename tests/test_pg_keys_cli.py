"""``agentguard keys list|add|retire``: the policy's trusted guard keys, edited safely.

Only the top-level ``guard_keys`` block changes; the rest of the file (comments
included) is kept byte for byte, the result is loaded and compared before it
replaces the old file, and a file that cannot be edited that way is refused and
left as it was.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentguard.clock import ManualClock
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring
from agentguard.policy import load_policy
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World

from .cli.cli_support import CLI, one_line_error

GUARD_ID = "service:agentguard"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


def _listed(cli: CLI) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(cli.ok("keys", "list", "--json").stdout)
    return rows


def test_add_list_retire_keep_the_rest_of_the_file(cli: CLI) -> None:
    cli.ok("init")
    policy = cli.root / "agentguard.yaml"
    assert "no guard_keys" in cli.ok("keys", "list").stdout
    own = Keyring(cli.home / "keys").principal(GUARD_ID)
    other = Keyring(cli.root / "b" / "keys").create(GUARD_ID)
    # A later top-level key after an existing guard_keys block, and a comment.
    text = policy.read_text().replace("shadow: false\n", "")
    policy.write_text(text + "guard_keys: []\n# kept comment\nshadow: false\n")
    before = policy.read_text()

    added = cli.ok("keys", "add", "--note", "replica a")
    assert own.kid in added.stdout
    assert "add each replica's key" in added.stderr
    pub = Keyring(cli.root / "b" / "keys").public_path(GUARD_ID)
    cli.ok("keys", "add", "--public-key", str(pub), "--not-before", "2026-01-01T00:00:00Z")
    rows = _listed(cli)
    assert [r["kid"] for r in rows] == [own.kid, other.kid]
    assert rows[0]["note"] == "replica a"
    assert rows[1]["not_before"] == "2026-01-01T00:00:00Z"
    assert [r["valid_now"] for r in rows] == [True, True]

    cli.ok("keys", "retire", own.kid, "--at", "2027-01-31T12:00:00Z")
    rows = _listed(cli)
    assert rows[0]["retired_at"] == "2027-01-31T12:00:00Z"
    assert rows[1]["retired_at"] is None
    after = policy.read_text()
    # Everything but the guard_keys block is as it was, comments included.
    head, _, _ = before.partition("guard_keys: []\n")
    assert after.startswith(head + "guard_keys:\n- public_key:")
    assert after.endswith("# kept comment\nshadow: false\n")
    loaded = load_policy(policy)
    assert loaded.guard_keys[0].retired_at == datetime(2027, 1, 31, 12, tzinfo=UTC)
    assert [p.name for p in cli.root.iterdir() if p.name.endswith(".tmp")] == []

    one_line_error(cli("keys", "add"), "already listed")
    one_line_error(cli("keys", "retire", "no-such-kid"), "no guard key no-such-kid")
    one_line_error(cli("keys", "retire", own.kid, "--at", "2028-01-01T00:00:00Z"), "already")
    one_line_error(cli("keys", "retire", other.kid, "--at", "last tuesday"), "ISO 8601")
    # Retiring before it became valid would make an invalid policy: refused, file kept.
    kept = policy.read_text()
    one_line_error(
        cli("keys", "retire", other.kid, "--at", "2025-01-01T00:00:00Z"),
        "retired_at must come after not_before",
    )
    assert policy.read_text() == kept


def test_a_file_that_cannot_be_edited_safely_is_refused_and_kept(cli: CLI) -> None:
    """Hostile layouts: the whole policy as one JSON line, and a guard_keys block the
    edit could not find; neither is rewritten."""
    cli.ok("init")
    policy = cli.root / "agentguard.yaml"
    doc = load_policy(policy).model_dump(mode="json", exclude_none=True)
    policy.write_text(json.dumps(doc))
    one_line_error(cli("keys", "add"), "cannot edit", "by hand")
    assert policy.read_text() == json.dumps(doc)
    # A policy that does not load is refused before anything is written.
    policy.write_text("version: 1\nguard_keys: [{}]\n")
    one_line_error(cli("keys", "list"), "exactly one of public_key or key_file")
    one_line_error(cli("keys", "add"), "exactly one of public_key or key_file")
    assert policy.read_text() == "version: 1\nguard_keys: [{}]\n"
    policy.write_text("version: 1\n")
    one_line_error(cli("keys", "add", "--public-key", str(cli.root / "none.pub")), "does not")
    (cli.root / "bad.pub").write_text("{not json")
    one_line_error(cli("keys", "add", "--public-key", str(cli.root / "bad.pub")), "cannot")
    assert policy.read_text() == "version: 1\n"


def test_rotation_with_the_cli_then_audit_verify_follows_it(cli: CLI) -> None:
    """A guard rotates its key: the old one is retired, a new one added; the log
    verifies with heads from both, and a head the old key signs later is refused."""
    world = World(clock=ManualClock(START))
    world.write_policy(cli.root / "agentguard.yaml")
    old = Keyring(cli.home / "keys").create(GUARD_ID)
    cli.ok("keys", "add")

    def run(identity: Identity) -> Guard:
        guard = Guard(
            cli.root / "agentguard.yaml",
            home=cli.home,
            store=SQLiteStore(cli.home / "state.db"),
            clock=world.clock,
            guard_identity=identity,
        )
        tool = RecordingTool()
        guard.call(world.delegation, "tickets/read", {"id": 1}, tool, holder=world.bot)
        assert tool.ran
        assert guard.audit.checkpoint(at=world.clock.now()) is not None
        return guard

    run(old).close()
    new = Identity.generate(GUARD_ID)
    (cli.root / "new.pub").write_text(
        json.dumps({"id": GUARD_ID, "jwk": new.principal.public_jwk()})
    )
    world.clock.advance(10)
    retire_at = datetime.fromtimestamp(world.clock.now(), tz=UTC).isoformat()
    cli.ok("keys", "add", "--public-key", "new.pub")
    cli.ok("keys", "retire", old.kid, "--at", retire_at)
    world.clock.advance(10)
    guard = run(new)
    assert guard.audit.report().problem is None
    guard.close()
    assert "intact" in cli.ok("audit", "verify").stdout
    world.clock.advance(10)
    stolen = run(old)  # the retired key signs after its retirement
    problem = stolen.audit.report().problem
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    assert "was not valid when" in problem.detail
    stolen.close()
    one_line_error(cli("audit", "verify"), "NOT intact", "was not valid when")


def test_a_key_file_entry_is_read_relative_to_the_policy(cli: CLI) -> None:
    world = World(clock=ManualClock(START))
    replica = Keyring(cli.root / "b" / "keys").create(GUARD_ID)
    pub = Keyring(cli.root / "b" / "keys").public_path(GUARD_ID)
    world.write_policy(
        cli.root / "agentguard.yaml",
        guard_keys=[{"key_file": str(pub.relative_to(cli.root)), "not_before": START + 60}],
    )
    rows = _listed(cli)
    assert [r["kid"] for r in rows] == [replica.kid]
    keys = load_policy(cli.root / "agentguard.yaml").listed_guard_keys()
    assert keys[0].principal.kid == replica.kid
    assert not keys[0].valid_at(START)
    assert keys[0].valid_at(START + 60)


def test_list_as_a_table_and_retire_now(cli: CLI) -> None:
    cli.ok("init")
    own = Keyring(cli.home / "keys").principal(GUARD_ID)
    cli.ok("keys", "add", "--note", "replica a", "--not-before", "2026-01-01T00:00:00")
    table = cli.ok("keys", "list").stdout
    assert own.kid in table
    assert "replica a" in table
    assert "yes" in table
    before = datetime.now(UTC).replace(microsecond=0)
    cli.ok("keys", "retire", own.kid)  # default: now
    [row] = _listed(cli)
    retired = datetime.fromisoformat(str(row["retired_at"]))
    assert before <= retired <= datetime.now(UTC)
    assert row["valid_now"] is False
    assert "│ no " in cli.ok("keys", "list").stdout  # the valid-now column


def test_policy_validate_loads_every_guard_key(cli: CLI) -> None:
    world = World()
    world.write_policy(cli.root / "agentguard.yaml", guard_keys=[{"key_file": "gone.pub"}])
    one_line_error(cli("policy", "validate"), "guard_keys[0]", "does not exist")
    key = Identity.generate(GUARD_ID)
    (cli.root / "gone.pub").write_text(
        json.dumps({"id": GUARD_ID, "jwk": key.principal.public_jwk()})
    )
    assert "valid" in cli.ok("policy", "validate").stdout
