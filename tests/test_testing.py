"""agentguard.testing: the world, the in-memory guard, the recorders, and the README's tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import agentguard.testing
from agentguard.approval import QueueChannel
from agentguard.clock import SystemClock
from agentguard.errors import (
    ApprovalPending,
    ApprovalRejected,
    ConfigError,
    DeniedError,
    IdentityError,
)
from agentguard.guard import Guard
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import (
    DEFAULT_SCOPE,
    START,
    ManualClock,
    RecordingTool,
    World,
    audit_records,
    capture_spans,
)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_all_is_sorted_and_importable() -> None:
    names = list(agentguard.testing.__all__)
    assert names == sorted(names)
    assert all(hasattr(agentguard.testing, name) for name in names)


def test_the_clock_is_the_library_manual_clock() -> None:
    from agentguard.clock import ManualClock as LibraryClock

    assert ManualClock is LibraryClock
    assert World().clock.now() == START


# -- the world -----------------------------------------------------------------------------


def test_the_cast_and_the_default_delegation() -> None:
    world = World()
    assert [world.org.id, world.alice.id, world.bot.id, world.carol.id] == [
        "org:acme", "user:alice", "agent:bot", "user:carol",
    ]  # fmt: skip
    assert world.delegation.path == ("org:acme", "user:alice", "agent:bot")
    root, leaf = world.delegation
    assert root.expires_at == START + 86400
    assert leaf.expires_at == START + 3600
    assert (root.purpose, root.on_behalf_of) == ("customer support", "user:alice")
    assert [rule.tool for rule in leaf.scope] == ["tickets/*", "billing/refund", "admin/*", "fs/*"]
    assert len(DEFAULT_SCOPE) == len(leaf.scope)


def test_identities_are_made_once_per_world_and_never_shared() -> None:
    world, other = World(), World()
    assert world.identity("agent:x") is world.identity("agent:x")
    assert world.identity("org:acme") is world.org
    assert world.org.kid != other.org.kid
    with pytest.raises(IdentityError):
        world.identity("nobody")


def test_a_world_can_run_on_a_given_clock() -> None:
    clock = ManualClock(2_000_000_000)
    world = World(clock=clock)
    assert world.clock is clock
    assert world.delegation.leaf.not_before == 2_000_000_000


def test_chain_options() -> None:
    world = World()
    other = world.chain(
        world.identity("agent:other"), scope=["fs/read"], root_ttl="2d", leaf_ttl="5m",
        purpose="backups", sponsor="user:dave",
    )  # fmt: skip
    assert other.path == ("org:acme", "user:alice", "agent:other")
    assert other.root.expires_at == START + 2 * 86400
    assert other.leaf.expires_at == START + 300
    assert (other.leaf.purpose, other.leaf.on_behalf_of) == ("backups", "user:dave")
    assert [rule.tool for rule in other.leaf.scope] == ["fs/read"]


@pytest.mark.parametrize("length", [1, 2, 4])
def test_delegate_builds_chains_of_any_length(length: int) -> None:
    """Each link is signed by the previous holder; the holder may still delegate once."""
    world = World()
    path = [f"agent:a{i}" for i in range(length)]
    delegation = world.delegate(*path, scope=["tickets/read"], ttl="10m")
    assert delegation.path == ("org:acme", *path)
    assert [grant.max_depth for grant in delegation] == list(range(length, 0, -1))
    assert {grant.expires_at for grant in delegation} == {START + 600}
    holder = world.identity(path[-1])
    assert world.guard().check(delegation, "tickets/read", {}, holder=holder).allowed
    delegation.attenuate(holder, world.identity("agent:next"), ["tickets/read"], clock=world.clock)


def test_delegate_takes_identities_and_needs_a_path() -> None:
    world = World()
    assert world.delegate(world.alice, world.bot).path == world.delegation.path
    with pytest.raises(ValueError, match="at least one"):
        world.delegate()


def test_policy_trusts_the_root_and_lists_carol_with_her_key() -> None:
    world = World()
    doc = world.policy(deny=[{"tools": ["tickets/delete"]}])
    assert doc["trusted_roots"] == [
        {"id": "org:acme", "public_key": world.org.principal.public_jwk()}
    ]
    (carol,) = doc["approvers"]
    assert carol["public_key"] == world.carol.principal.public_jwk()
    assert doc["deny"] == [{"tools": ["tickets/delete"]}]


# -- the guard -----------------------------------------------------------------------------


def test_the_guard_lives_in_memory_on_the_world_clock() -> None:
    world = World()
    guard = world.guard()
    assert isinstance(guard.store, MemoryStore)
    assert guard.clock is world.clock
    assert guard.enforcement_point == "python"
    assert guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed


def test_the_guard_trusts_only_its_own_world() -> None:
    """Another world's ``org:acme`` has another key: its signature does not verify here."""
    world, stranger = World(), World()
    decision = world.guard().check(stranger.delegation, "tickets/read", {}, holder=stranger.bot)
    assert decision.reason == "bad_signature"


def test_guard_keywords_are_policy_keys_or_guard_options(tmp_path: Path) -> None:
    world = World()
    guard = world.guard(deny=[{"tools": ["tickets/delete"]}], enforcement_point="tests")
    assert guard.check(world.delegation, "tickets/delete", {}).reason == "policy_denied"
    assert guard.enforcement_point == "tests"
    assert isinstance(world.guard(home=tmp_path).store, SQLiteStore)
    store = MemoryStore()
    assert world.guard(store=store).store is store
    with pytest.raises(ConfigError):
        world.guard(limits={"max_chain_length": "many"})


def test_the_guard_may_run_on_another_clock() -> None:
    world = World()
    wall = SystemClock()
    assert world.guard(clock=wall).clock is wall


def test_write_policy_is_the_policy_as_yaml(tmp_path: Path) -> None:
    world = World()
    path = world.write_policy(tmp_path / "agentguard.yaml", limits={"max_chain_length": 3})
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == world.policy(
        limits={"max_chain_length": 3}
    )
    guard = Guard(path, store=MemoryStore(), clock=world.clock)
    assert guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed


def test_without_an_approver_approval_is_unavailable() -> None:
    world = World()
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        world.guard().call(world.delegation, "admin/reset", {}, tool, holder=world.bot)
    assert info.value.reason == "approval_unavailable"
    assert not tool.ran


def test_carol_approves_or_rejects_with_her_own_key() -> None:
    world = World()
    tool = RecordingTool()
    guard = world.guard(approver=world.approver(message="ok"))
    assert guard.call(world.delegation, "admin/reset", {"host": "db1"}, tool, holder=world.bot)
    decision = audit_records(guard)[0]
    assert decision["reason"] == "approved"
    assert decision["approval"]["approver"] == "user:carol"
    assert decision["approval"]["assurance"] == "signed"
    assert decision["approval"]["message"] == "ok"
    refusing = world.guard(approver=world.approver(approve=False))
    with pytest.raises(ApprovalRejected):
        refusing.call(world.delegation, "admin/reset", {"host": "db2"}, tool, holder=world.bot)
    assert tool.calls == [{"host": "db1"}]


def test_a_queue_guard_raises_pending_until_carol_answers() -> None:
    world = World()
    guard = world.guard(approver=QueueChannel(), approval_mode="raise")
    tool = RecordingTool()
    with pytest.raises(ApprovalPending) as pending:
        guard.call(world.delegation, "admin/reset", {}, tool, holder=world.bot)
    guard.approvals.approve(pending.value.request_id, world.carol)
    guard.call(world.delegation, "admin/reset", {}, tool, holder=world.bot)
    assert tool.calls == [{}]


# -- recorders -----------------------------------------------------------------------------


def test_recording_tool_returns_its_result() -> None:
    tool = RecordingTool(result={"ok": True})
    assert not tool.ran
    assert tool(a=1) == {"ok": True}
    assert tool.ran
    assert tool.calls == [{"a": 1}]


def test_audit_records_are_the_decisions_and_completions_in_order() -> None:
    world = World()
    guard = world.guard()
    assert audit_records(guard) == []
    guard.call(world.delegation, "tickets/read", {"id": 7}, RecordingTool(), holder=world.bot)
    guard.check(world.delegation, "mail/send", {})
    decision, completion, dry_run = audit_records(guard)
    assert (decision["type"], decision["outcome"]) == ("decision", "allow")
    assert completion["decision_id"] == decision["decision_id"]
    assert (dry_run["outcome"], dry_run["reason"]) == ("deny", "out_of_scope")


def test_capture_spans_sees_only_the_spans_of_its_block() -> None:
    world = World()
    guard = world.guard()
    with capture_spans() as outer:
        guard.check(world.delegation, "tickets/read", {}, holder=world.bot)
        with capture_spans() as inner:
            guard.call(world.delegation, "tickets/list", {}, RecordingTool(), holder=world.bot)
    guard.check(world.delegation, "tickets/late", {}, holder=world.bot)
    assert [s.name for s in inner.get_finished_spans()] == [
        "agentguard.authorize tickets/list", "execute_tool tickets/list",
    ]  # fmt: skip
    assert [s.name for s in outer.get_finished_spans()] == [
        "agentguard.authorize tickets/read",
        "agentguard.authorize tickets/list",
        "execute_tool tickets/list",
    ]


def test_capture_spans_without_the_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("opentelemetry.sdk")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    with pytest.raises(ConfigError, match=r"agentguard\[telemetry\]"), capture_spans():
        pass  # pragma: no cover - never entered


def _fresh_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter, in an empty directory and without the OTEL_* and
    AGENTGUARD_* variables other tests or the developer's shell may have set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTGUARD_"))}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def test_capture_spans_installs_an_sdk_provider_when_none_is_set(tmp_path: Path) -> None:
    """In a fresh interpreter (OpenTelemetry's global provider can be set only once)."""
    proc = _fresh_python(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from agentguard.testing import World, capture_spans
        world = World()
        with capture_spans() as spans:
            world.guard().check(world.delegation, "tickets/read", {}, holder=world.bot)
        assert isinstance(trace.get_tracer_provider(), TracerProvider)
        print([s.name for s in spans.get_finished_spans()])
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['agentguard.authorize tickets/read']"


def test_capture_spans_refuses_a_foreign_tracer_provider(tmp_path: Path) -> None:
    proc = _fresh_python(
        """
        from opentelemetry import trace
        from agentguard.errors import ConfigError
        from agentguard.testing import capture_spans
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        try:
            with capture_spans():
                pass
        except ConfigError as exc:
            print(exc)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "the global one is a NoOpTracerProvider" in proc.stdout


# -- the README section ----------------------------------------------------------------------


def _readme_section() -> str:
    section = README.split("## Testing your agent with agentguard", 1)[1].split("\n## ", 1)[0]
    return section


def test_readme_tests_pass(tmp_path: Path) -> None:
    """The README's example test file passes under pytest, every test of it."""
    (block,) = re.findall(r"```python\n(.*?)```", _readme_section(), re.S)
    (tmp_path / "test_readme_agent.py").write_text(block, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = re.findall(r"^def (test_\w+)", block, re.M)
    assert len(tests) == 4
    assert f"{len(tests)} passed" in proc.stdout
