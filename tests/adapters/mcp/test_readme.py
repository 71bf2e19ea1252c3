"""The README's ready-made configurations work as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentguard_mcp import META_DECISION, load_config
from mcp import Client, StdioServerParameters

from agentguard.delegation import Delegation
from agentguard.keys import Keyring
from tests.adapters.mcp.mcp_support import BIN, HERE, Setup, text_of

pytestmark = pytest.mark.anyio

README = HERE.parents[2] / "adapters" / "mcp" / "README.md"
MAIN_README = HERE.parents[2] / "README.md"
PLACEHOLDER = "/home/me/project"


def _main_readme_commands() -> list[list[str]]:
    """The shell block that opens the main README's "MCP proxy" guide, one argv per line."""
    section = MAIN_README.read_text(encoding="utf-8").split("### MCP proxy", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.parametrize("trusted", [True, False], ids=["as-written", "without-trusted"])
async def test_main_readme_proxy_command_runs_as_written(tmp_path: Path, trusted: bool) -> None:
    """The README's setup, then its proxy command served to a real MCP client, verbatim.

    Without ``--trusted`` (the README says) the call needs approval instead.
    """
    *setup_lines, proxy = _main_readme_commands()
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for argv in setup_lines:
        assert argv[0] == "agentguard"
        done = subprocess.run(
            [str(BIN / "agentguard"), *argv[1:]],
            cwd=tmp_path,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (argv, done.stderr)
    assert proxy[:3] == ["agentguard", "mcp", "proxy"]
    assert "--trusted" in proxy
    args = proxy[1:] if trusted else [a for a in proxy[1:] if a != "--trusted"]
    agentguard = str(BIN / "agentguard")
    params = StdioServerParameters(command=agentguard, args=args, env=env, cwd=tmp_path)
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["convert_time", "get_current_time"]
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
    if trusted:
        assert not result.is_error, text_of(result)
        assert json.loads(text_of(result))["timezone"] == "UTC"
    else:
        # Needs approval: filed and pending, or refused at once because the
        # policy `agentguard init` writes names nobody who could approve it.
        assert result.is_error
        reason = (result.meta or {})[META_DECISION]["reason"]
        assert reason in ("approval_pending", "no_approver"), text_of(result)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)


async def test_mcp_servers_entry_runs_as_written(setup: Setup, tmp_path: Path) -> None:
    """The Claude-Desktop-style entry, with its paths moved into a temporary project."""
    entry = json.loads(_blocks("json")[-1])["mcpServers"]["time"]
    project = tmp_path / "project"
    home = project / ".agentguard"
    keyring = Keyring(home / "keys")
    org, bot = keyring.create("org:acme"), keyring.create("agent:support-bot")
    (project / "agentguard.yaml").write_text(
        json.dumps({"trusted_roots": [{"id": org.id, "key_file": ".agentguard/keys/org_acme.pub"}]})
    )
    delegation = Delegation.issue(org, bot.principal, ["time/get_current_time"], ttl="1h")
    (project / "support-bot.delegation").write_text(delegation.serialize())

    def local(arg: str) -> str:
        arg = arg.replace(PLACEHOLDER, str(project))
        return str(BIN / arg) if arg in ("agentguard", "mcp-server-time") else arg

    params = StdioServerParameters(
        command=local(entry["command"]), args=[local(a) for a in entry["args"]]
    )
    with anyio.fail_after(30):
        async with Client(params, mode="legacy") as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["get_current_time"]
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not result.is_error, text_of(result)


def test_config_example_loads(tmp_path: Path) -> None:
    """The --config example is a valid configuration."""
    [example] = [b for b in _blocks("yaml") if "upstreams:" in b]
    path = tmp_path / "proxy.yaml"
    path.write_text(example)
    config = load_config(path)
    assert config.namespaces == ("time", "notes", "tickets")
    by_name: dict[str, Any] = {u.namespace: u for u in config.upstreams}
    assert by_name["time"].trusted
    assert by_name["time"].timeout == 30
    assert by_name["notes"].max_result_bytes == 1 << 20
    assert config.store_timeout == 3
    assert by_name["notes"].agentguard
    assert by_name["tickets"].url == "http://127.0.0.1:9000/mcp"
    assert config.home == str(tmp_path / ".agentguard")
