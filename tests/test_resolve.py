"""One resolver: the library, the CLI and the MCP proxy's CLI agree on the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentguard import Guard
from agentguard.cli._common import Workspace
from agentguard.errors import StoreError
from agentguard.policy import load_policy
from agentguard.resolve import open_store, resolve_home
from agentguard.store.memory import MemoryStore

mcp_cli = pytest.importorskip("agentguard_mcp.cli")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with a policy naming ``storage.home: from-policy``, as the cwd."""
    (tmp_path / "agentguard.yaml").write_text("storage:\n  home: from-policy\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    return tmp_path


def _everyone(explicit: Path | None, project: Path) -> list[Path | None]:
    """The state directory as the Guard, the CLI and the MCP CLI each resolve it."""
    policy_file = project / "agentguard.yaml"
    guard = Guard(policy_file, home=explicit)
    try:
        library = guard.home
    finally:
        guard.close()
    cli = Workspace(explicit, policy_file).home
    proxy = mcp_cli._home(str(explicit) if explicit else None, None, str(policy_file))
    return [library, cli, proxy]


def test_precedence_is_option_then_environment_then_policy(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _everyone(None, project) == [project / "from-policy"] * 3
    monkeypatch.setenv("AGENTGUARD_HOME", str(project / "from-env"))
    assert _everyone(None, project) == [project / "from-env"] * 3
    assert _everyone(project / "explicit", project) == [project / "explicit"] * 3


def test_without_a_policy_home_the_library_stays_in_memory_and_the_clis_name_a_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTGUARD_HOME", raising=False)
    policy = load_policy({})
    assert resolve_home(None, policy, only_existing_default=True) is None
    assert resolve_home(None, policy, only_existing_default=False) == tmp_path / ".agentguard"
    assert isinstance(open_store(None, policy), MemoryStore)
    (tmp_path / ".agentguard").mkdir()
    assert resolve_home(None, policy, only_existing_default=True) == tmp_path / ".agentguard"


def test_a_state_directory_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(StoreError, match="cannot create state directory"):
        open_store(blocker / "home", load_policy({}))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_spend_once_is_true_once_per_scope_and_key(kind: str, tmp_path: Path) -> None:
    guard = Guard(store=MemoryStore()) if kind == "memory" else Guard({}, home=tmp_path)
    try:
        assert not guard.was_spent("mcp-state", "n1")
        assert guard.spend_once("mcp-state", "n1", ttl=60)
        assert guard.was_spent("mcp-state", "n1")
        assert not guard.was_spent("langgraph-ran", "n1")
        assert not guard.spend_once("mcp-state", "n1", ttl=60)
        assert guard.spend_once("langgraph-ran", "n1", ttl=60)  # another scope
        with pytest.raises(ValueError, match="ttl"):
            guard.spend_once("short", "n3", ttl=0)
        for bad in ("", "a/b", "agent:x"):
            with pytest.raises(ValueError, match="scope"):
                guard.spend_once(bad, "n2", ttl=60)
            with pytest.raises(ValueError, match="scope"):
                guard.was_spent(bad, "n2")
    finally:
        guard.close()
