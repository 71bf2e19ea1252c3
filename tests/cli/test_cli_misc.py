"""The demo, error hygiene, the installed entry point and adapter plugins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import agentguard.cli
from agentguard.cli import app, plugin_commands

from .cli_support import CLI, one_line_error


def test_demo_runs_the_core_tour(cli: CLI) -> None:
    result = cli.ok("demo")
    out = result.stdout
    assert "ALLOWED" in out
    assert "DENIED (out_of_scope): link 2" in out
    assert "rule 1 does not admit these arguments" in out
    assert "DENIED (revoked)" in out
    assert "audit log intact" in out
    assert "make demo" in out
    assert not (cli.root / ".agentguard").exists()  # nothing left behind here
    used = re.search(r"temporary state in (\S+),", out)
    assert used is not None
    assert not Path(used.group(1)).exists()  # nor there: keys and state are gone


def test_garbage_and_bad_input_never_print_a_traceback(cli: CLI) -> None:
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    Path("garbage.dlg").write_text("not-a.jws~at all")
    Path("binary.dlg").write_bytes(b"\xff\xfe\x00garbage")
    inspected = cli("inspect", "garbage.dlg")
    assert inspected.exit_code == 3
    one_line_error(inspected, "malformed")
    assert cli("inspect", "binary.dlg").exit_code == 3
    checked = cli("check", "garbage.dlg", "tickets/read", "--json")
    assert checked.exit_code == 3  # refused and recorded as a dry run
    assert '"malformed_token"' in checked.stdout
    attenuated = cli(
        "grant", "--from", "agent:bot", "--to", "agent:bot", "--tool", "a/b",
        "--ttl", "1h", "--parent", "garbage.dlg",
    )  # fmt: skip
    assert attenuated.exit_code == 3
    one_line_error(attenuated, "malformed")
    bad_json = cli("check", "garbage.dlg", "tickets/read", "{not json")
    assert bad_json.exit_code == 2
    one_line_error(bad_json, "ARGS_JSON", "not valid JSON")
    one_line_error(cli("check", "garbage.dlg", "tickets/read", "[1, 2]"), "JSON object")
    bad_id = cli("identity", "new", "alice")
    assert bad_id.exit_code == 1
    one_line_error(bad_id, "invalid principal id 'alice'")
    bad_from = ("--from", "Org:x", "--to", "user:a", "--tool", "a/b", "--ttl", "1h")
    one_line_error(cli("grant", *bad_from), "invalid principal id")
    missing = cli("inspect", "nowhere.dlg")
    assert missing.exit_code == 1
    one_line_error(missing, "nowhere.dlg")
    ghost = cli("check", "garbage.dlg", "tickets/read", "--as", "user:ghost")
    one_line_error(ghost, "no private key")
    assert cli("check").exit_code == 2


def test_commands_need_a_state_directory(cli: CLI) -> None:
    result = cli("audit", "verify")
    assert result.exit_code == 1
    one_line_error(result, "no agentguard state directory", "agentguard init")


def test_home_option_before_or_after_the_command(cli: CLI, tmp_path: Path) -> None:
    elsewhere = tmp_path / "state"
    cli.ok("--home", str(elsewhere), "identity", "new", "user:alice")
    cli.ok("identity", "new", "user:bob", "--home", str(elsewhere))
    assert sorted(p.name for p in (elsewhere / "keys").glob("*.key")) == [
        "user_alice.key",
        "user_bob.key",
    ]
    assert not (cli.home / "keys").exists()


def test_the_installed_entry_point_runs(tmp_path: Path) -> None:
    """A real subprocess through the console script, with its exit codes."""
    exe = Path(sys.executable).with_name("agentguard")
    env = {**os.environ, "AGENTGUARD_HOME": str(tmp_path / ".agentguard")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    assert run("init", "--org", "org:acme").returncode == 0
    assert run("policy", "validate").returncode == 0
    (tmp_path / "bad.dlg").write_text("garbage")
    bad = run("check", "bad.dlg", "tickets/read")
    assert bad.returncode == 3
    assert "Traceback" not in bad.stderr + bad.stdout
    usage = run("grant", "--bogus")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr


def test_a_broken_plugin_is_skipped_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    entries = [
        EntryPoint(name="broken", value="agentguard_no_such_module:app", group="agentguard.cli"),
        EntryPoint(name="notyper", value="agentguard.cli:main", group="agentguard.cli"),
        EntryPoint(name="grant", value="agentguard.cli.policy:app", group="agentguard.cli"),
        EntryPoint(name="extra", value="agentguard.cli.policy:app", group="agentguard.cli"),
    ]
    loaded = plugin_commands(entries)
    assert [name for name, _ in loaded] == ["extra"]
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 3
    assert all(line.startswith("warning: skipping CLI plugin") for line in warnings)


def test_plugins_are_added_under_their_entry_point_name(
    cli: CLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [
        EntryPoint(name="extra", value="agentguard.cli.policy:app", group="agentguard.cli"),
        EntryPoint(name="broken", value="agentguard_no_such_module:app", group="agentguard.cli"),
    ]
    monkeypatch.setattr(agentguard.cli, "entry_points", lambda group: entries)
    result = cli("extra", "schema")
    assert result.exit_code == 0
    assert '"trusted_roots"' in result.stdout
    assert "warning: skipping CLI plugin 'broken'" in result.stderr
    assert cli("identity", "list").exit_code == 0  # the core still works
    assert app is agentguard.cli.app


def test_policy_validate_lists_every_problem_with_its_line(cli: CLI) -> None:
    """Each problem on its own line with file:line, the nearest known key for a misspelt one."""
    Path("bad.yaml").write_text(
        "version: 1\n"
        "approver:\n"
        "  - id: user:alice\n"
        "limits:\n"
        "  max_link_tl: 1h\n"
        "  max_chain_length: 0\n"
        "step_up:\n"
        "  - tools: [billing/refund]\n"
        "    wher: {amount: {'>': 100}}\n"
        "zzz: 1\n"
    )
    result = cli("policy", "validate", "bad.yaml")
    assert result.exit_code == 1
    one_line_error(result, "bad.yaml", "5 problems")
    problems = [line for line in result.stderr.splitlines() if not line.startswith("error:")]
    assert problems == [
        "bad.yaml:2: approver: unknown key (did you mean 'approvers'?)",
        "bad.yaml:5: limits.max_link_tl: unknown key (did you mean 'max_link_ttl'?)",
        "bad.yaml:6: limits.max_chain_length: Input should be greater than or equal to 1",
        "bad.yaml:9: step_up[0].wher: unknown key (did you mean 'where'?)",
        "bad.yaml:10: zzz: unknown key",
    ]
