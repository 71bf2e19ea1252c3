"""Token exchange at one proxy replica, the delegation used through another (issue 16 x 15).

Two real ``agentguard mcp proxy --http`` processes, each with its own state directory
and guard key, share one PostgreSQL database; the policy lists both keys under
``guard_keys`` and names a real identity provider (npm ``oidc-provider``) in its
``federation:`` section. An agent exchanges the person's token at replica A and calls
through replica B with ``GuardedClient``: the call runs once, and revoking the person
at A stops the agent at B.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import EXCHANGE_PATH, policy_federation
from anyio.abc import Process

from agentguard.delegation import Delegation
from agentguard.errors import ConfigError
from agentguard.federation import ACCESS_TOKEN_TYPE, ACTOR_TOKEN_TYPE, TOKEN_EXCHANGE, actor_token
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring, Principal
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of
from tests.oidc.harness import PUBLIC_CLIENT, IdentityProvider, free_port, running_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USERS = {"alice": ["incident-response"]}


@asynccontextmanager
async def _proxy(argv: list[str]) -> AsyncIterator[Process]:
    """A proxy process, once it says it is listening (bounded wait)."""
    process = await anyio.open_process(argv)
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while b"listening on" not in seen:
                seen += await process.stderr.receive()
        yield process
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.aclose()


def _replica(setup: Setup, name: str) -> tuple[Path, Path, Path]:
    """Replica ``name``'s state directory, proxy configuration and upstream record."""
    home = setup.home.parent / f"replica-{name}"
    record = setup.home.parent / f"upstream-{name}.jsonl"
    config = setup.home.parent / f"proxy-{name}.json"
    config.write_text(
        json.dumps(
            {
                "home": str(home),
                "policy": str(setup.policy_file),
                "upstreams": {"notes": {"command": notes_command(record), "trusted": True}},
            }
        )
    )
    return home, config, record


async def _attempt(url: str, delegation: Delegation, holder: Identity, note: str) -> str:
    """One read_note call on a fresh connection: "ran", or how it was refused."""
    try:
        async with GuardedClient(url, delegation, holder) as client:
            result = await client.call_tool("read_note", {"id": note})
    except Exception as exc:  # noqa: BLE001 - a refused connection (HTTP 403) is an answer
        return f"refused: {exc!r}"
    return "refused: " + text_of(result) if result.is_error else "ran"


async def _gate(url: str, delegation: Delegation) -> tuple[int, str]:
    """The HTTP status and error code the proxy answers a bare request with."""
    async with httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        bearer = {"Authorization": f"Bearer {delegation.serialize()}"}
        answer = await http.post(url, json=body, headers=bearer)
    return answer.status_code, str(answer.json().get("error"))


def _ran(*paths: Path) -> list[str]:
    return [str(r["arguments"]["id"]) for p in paths if p.exists() for r in records(p)]


async def test_a_delegation_exchanged_at_one_replica_is_used_through_another(
    setup: Setup, pg_url: str, tmp_path: Path
) -> None:
    port_a, port_b = free_port(), free_port()
    # The resource URI the load balancer would answer; here replica A's address.
    resource = f"http://127.0.0.1:{port_a}/mcp"
    url_b = f"http://127.0.0.1:{port_b}/mcp"
    home_a, config_a, record_a = _replica(setup, "a")
    home_b, config_b, record_b = _replica(setup, "b")
    keys = [Keyring(home / "keys").create("service:agentguard") for home in (home_a, home_b)]
    assert keys[0].kid != keys[1].kid
    async with AsyncExitStack() as stack:
        idp: IdentityProvider = await stack.enter_async_context(
            running_provider(tmp_path, resource, USERS)
        )
        setup.write_policy(
            storage={"url": pg_url, "busy_timeout": "2s"},
            guard_keys=[{"public_key": k.principal.public_jwk()} for k in keys],
            federation=[
                {
                    "issuer": idp.issuer,
                    "audience": resource,
                    "alias": "corp",
                    "rules": [
                        {
                            "claim": "groups",
                            "equals": "incident-response",
                            "tools": ["notes/read_note"],
                        }
                    ],
                }
            ],
        )
        for config, port in ((config_a, port_a), (config_b, port_b)):
            argv = [
                sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config),
                "--http", f"127.0.0.1:{port}",
            ]  # fmt: skip
            await stack.enter_async_context(_proxy(argv))
        token = await idp.user_token("alice")
        agent = Identity.generate("agent:laptop")
        with anyio.fail_after(90):
            # The exchange at replica A: a delegation to the agent's key, signed by A's key.
            endpoint = f"http://127.0.0.1:{port_a}{EXCHANGE_PATH}"
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "actor_token": actor_token(agent, endpoint, now=time.time()),
                "actor_token_type": ACTOR_TOKEN_TYPE,
            }
            async with httpx2.AsyncClient() as http:
                reply = await http.post(endpoint, data=form)
            assert reply.status_code == 200, reply.text
            delegation = Delegation.parse(reply.json()["access_token"])
            assert delegation.root.issuer == "service:agentguard"
            assert delegation.root.kid == keys[0].kid
            assert delegation.root.on_behalf_of == "user:corp.alice"
            holder = Identity(
                Principal(f"agent:corp.{PUBLIC_CLIENT}", agent.principal.public_key),
                agent.private_key,
            )

            # Used through replica B: listed, runs once, out-of-scope refused.
            async with GuardedClient(url_b, delegation, holder) as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["read_note"]
                ran = await client.call_tool("read_note", {"id": "via-b"})
                assert not ran.is_error, text_of(ran)
                refused = await client.call_tool("write_note", {"id": "w", "text": "x"})
                assert refused.is_error
            assert _ran(record_a, record_b) == ["via-b"]
            assert _ran(record_b) == ["via-b"]

            # The person is revoked at replica A: B refuses the agent at once.
            revoking = Guard(setup.policy_file, home=home_a)
            try:
                revoking.revoke("principal", "user:corp.alice", reason="left the company")
            finally:
                revoking.close()
                revoking.store.close()
            for url in (url_b, resource):
                refused_now = await _attempt(url, delegation, holder, "after-revoke")
                assert refused_now.startswith("refused"), refused_now
                # The gate refuses the revoked person's chain before the MCP layer.
                assert await _gate(url, delegation) == (403, "revoked")
            assert _ran(record_a, record_b) == ["via-b"]

    # One audit chain in the shared database: B's decision names A's derived chain.
    reader = Guard(setup.policy_file, home=home_b)
    try:
        assert reader.audit.report().problem is None
        bodies = [json.loads(e.body) for e in reader.store.audit_entries()]
    finally:
        reader.close()
        reader.store.close()
    allowed = [b for b in bodies if b.get("type") == "decision" and b.get("outcome") == "allow"]
    assert [(b["tool"], b["path"]) for b in allowed] == [
        ("notes/read_note", ["service:agentguard", f"agent:corp.{PUBLIC_CLIENT}"])
    ]
    assert not any(token in json.dumps(b) for b in bodies)


def test_a_replica_whose_key_is_not_listed_does_not_serve_federation(setup: Setup) -> None:
    """Nothing it derived would verify anywhere: the proxy refuses to start instead."""
    listed = Identity.generate("service:agentguard")
    provider = {
        "issuer": "https://login.example.com",
        "audience": "https://mcp.example.com/mcp",
        "alias": "corp",
        "rules": [{"claim": "groups", "equals": "x", "tools": ["notes/read_note"]}],
    }
    setup.write_policy(
        guard_keys=[{"public_key": listed.principal.public_jwk()}], federation=[provider]
    )
    guard = build_guard(setup.home, str(setup.policy_file))
    try:
        with pytest.raises(ConfigError, match="is not one of them"):
            policy_federation(GuardedProxy(guard, []))
        own = guard.guard_identity
        assert own is not None
    finally:
        guard.close()
    # Listed, but retired: what it derived would be refused from now on.
    retired = {"public_key": own.principal.public_jwk(), "retired_at": int(time.time()) - 60}
    setup.write_policy(guard_keys=[retired], federation=[provider])
    guard = build_guard(setup.home, str(setup.policy_file))
    try:
        with pytest.raises(ConfigError, match="not valid now"):
            policy_federation(GuardedProxy(guard, []))
    finally:
        guard.close()
