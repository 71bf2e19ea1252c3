"""``Guard.in_memory``: nothing on disk is read or written, wherever it runs.

A bare ``Guard()`` picks up ``./.agentguard`` and ``./agentguard.yaml`` from
the working directory (the CLI's layout); ``Guard.in_memory`` never does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agentguard import Delegation, Guard, Identity, MemoryStore, Policy


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory laid out as ``agentguard init`` leaves it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    (tmp_path / ".agentguard").mkdir()
    # A policy that denies everything under tickets/: a guard that read it would refuse.
    (tmp_path / "agentguard.yaml").write_text(
        "version: 1\ndeny:\n  - tools: ['tickets/*']\n    reason: read from the working directory\n"
    )
    return tmp_path


def test_a_bare_guard_uses_the_working_directory(cli_project: Path) -> None:
    guard = Guard()
    try:
        assert guard.home == cli_project / ".agentguard"
        assert guard.policy.deny  # ./agentguard.yaml was read
        assert "home " in guard.describe()
        assert "state.db" in guard.describe()
    finally:
        guard.close()
    assert (cli_project / ".agentguard" / "state.db").exists()


def test_in_memory_reads_and_writes_nothing_on_disk(cli_project: Path) -> None:
    before = _snapshot(cli_project)
    org, bot = Identity.generate("org:acme"), Identity.generate("agent:bot")
    guard = Guard.in_memory(trusted_roots=[org.principal])
    grant = Delegation.issue(org, bot, ["tickets/*"], ttl="1h")
    try:
        assert guard.home is None
        assert guard.keyring is None
        assert isinstance(guard.store, MemoryStore)
        assert not guard.policy.deny  # ./agentguard.yaml was not read
        assert guard.call(grant, "tickets/read", {"id": 1}, lambda id: id, holder=bot) == 1
        assert "no home" in guard.describe()
        assert "nothing persists" in guard.describe()
    finally:
        guard.close()
    assert _snapshot(cli_project) == before


def test_in_memory_ignores_the_policys_home_and_the_environment(
    cli_project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("AGENTGUARD_HOME", str(elsewhere))
    policy = Policy.model_validate({"storage": {"home": str(elsewhere / "from-policy")}})
    guard = Guard.in_memory(policy)
    guard.close()
    assert list(elsewhere.iterdir()) == []
    assert policy.storage.home is not None  # the caller's policy object is untouched


def test_in_memory_takes_no_home_or_store(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="no home or store"):
        Guard.in_memory(home=tmp_path)
    with pytest.raises(TypeError, match="no home or store"):
        Guard.in_memory(store=MemoryStore())


def test_every_guard_logs_where_its_state_lives(
    cli_project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agentguard"):
        Guard().close()
        Guard.in_memory().close()
    said = [r.getMessage() for r in caplog.records if "guard using" in r.getMessage()]
    assert len(said) == 2
    assert str(cli_project / ".agentguard") in said[0]
    assert "agentguard.yaml" in said[0] or str(cli_project) in said[0]
    assert "no home" in said[1]
    assert "embedded default policy" in said[1]
