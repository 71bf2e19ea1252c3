"""Helpers for the MCP proxy tests: a state directory with keys, a policy, delegations."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mcp_types as types
import yaml
from agentguard_mcp.testing import serve_app
from mcp import StdioServerParameters

from agentguard.delegation import Delegation
from agentguard.keys import Identity, Keyring

BIN = Path(sys.executable).parent
TIME_SERVER = str(BIN / "mcp-server-time")
HERE = Path(__file__).parent


@dataclass
class Setup:
    """A state directory holding the org root, an agent and an approver, plus a policy file."""

    home: Path
    org: Identity
    agent: Identity
    alice: Identity

    @property
    def policy_file(self) -> Path:
        return self.home / "agentguard.yaml"

    def write_policy(self, **extra: Any) -> Path:
        policy: dict[str, Any] = {
            "trusted_roots": [{"id": self.org.id, "key_file": "keys/org_acme.pub"}],
            "approvers": [{"id": self.alice.id, "min_assurance": "agent"}],
        }
        policy.update(extra)
        self.policy_file.write_text(yaml.safe_dump(policy))
        return self.policy_file

    def delegation(self, scope: Sequence[Any], **kwargs: Any) -> Delegation:
        # The agent works for a team, so alice (the approver) is not in the chain:
        # separation of duties would refuse her approving what her own agent asks.
        kwargs.setdefault("on_behalf_of", "team:notes")
        return Delegation.issue(self.org, self.agent.principal, scope, ttl="1h", **kwargs)

    def delegation_file(self, delegation: Delegation, name: str = "agent.delegation") -> Path:
        path = self.home / name
        path.write_text(delegation.serialize())
        return path


def make_setup(tmp_path: Path) -> Setup:
    home = tmp_path / "state"
    keyring = Keyring(home / "keys")
    org = keyring.create("org:acme")
    agent = keyring.create("agent:bot")
    alice = keyring.create("user:alice")
    result = Setup(home=home, org=org, agent=agent, alice=alice)
    result.write_policy()
    return result


def proxy_params(
    args: Sequence[str], *, env: dict[str, str] | None = None
) -> StdioServerParameters:
    """Launch ``agentguard mcp ...`` (through ``python -m agentguard_mcp``) as a stdio server."""
    return StdioServerParameters(
        command=sys.executable, args=["-m", "agentguard_mcp", *args], env=env
    )


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


NOTES_SERVER = str(HERE / "notes_server.py")


def notes_command(record: Path, *extra: str) -> list[str]:
    """argv of the recording notes server."""
    return [sys.executable, NOTES_SERVER, "--record", str(record), *extra]


def write_config(setup: Setup, upstreams: dict[str, Any], **top: Any) -> Path:
    """A proxy configuration file in the state directory."""
    data = {"home": str(setup.home), "policy": str(setup.policy_file), "upstreams": upstreams}
    data.update(top)
    path = setup.home / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def records(path: Path) -> list[dict[str, Any]]:
    """What the notes server recorded, one dict per tools/call."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: Serve an ASGI app on loopback inside the test's event loop (yields the base URL).
serve_in_process = serve_app


def text_of(result: types.CallToolResult) -> str:
    """The text of a result's first content block."""
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text
