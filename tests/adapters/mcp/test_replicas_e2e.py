"""Three HTTP MCP proxy processes sharing one PostgreSQL database, end to end.

Each proxy is a real ``agentguard mcp proxy --http`` process with its own state
directory and guard key (the policy lists all three under ``guard_keys``) and
its own recording upstream. Concurrent callers spread over the three; then an
approval is requested through one and used through another, the database
server is restarted under the proxies, and a revocation made at one replica
stops the others. At the end the upstreams' records and the one audit chain
in the database are compared with what the callers were told.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from agentguard_mcp import GuardedClient
from anyio.abc import Process

from agentguard.guard import Guard
from agentguard.keys import Keyring
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of
from tests.pg_support import Cluster

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPLICAS = 3
CLIENTS_PER_REPLICA = 2
#: ``make hardening`` (AGENTGUARD_HARDENING=1) runs ten times as many calls.
HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
CALLS_PER_CLIENT = 40 if HARDENING else 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _replica_config(setup: Setup, index: int, url: str) -> tuple[Path, Path]:
    """Replica ``index``'s state directory and proxy configuration (its own upstream)."""
    home = setup.home.parent / f"replica{index}"
    record = setup.home.parent / f"upstream{index}.jsonl"
    config = home / "proxy.yaml"
    config.write_text(
        json.dumps(
            {
                "home": str(home),
                "policy": str(setup.policy_file),
                "upstreams": {"notes": {"command": notes_command(record), "trusted": True}},
            }
        )
    )
    return config, record


async def _attempt(url: str, delegation: Any, setup: Setup, note: str) -> str:
    """One read_note call on a fresh connection: "ran", or how it was refused."""
    try:
        async with GuardedClient(url, delegation, setup.agent) as client:
            result = await client.call_tool("read_note", {"id": note})
    except Exception as exc:  # noqa: BLE001 - a refused connection (HTTP 503) is an answer
        return f"refused: {exc!r}"
    return "refused: " + text_of(result) if result.is_error else "ran"


async def _gate(url: str, delegation: Any) -> tuple[int, str]:
    """The HTTP status and error code the proxy answers a bare request with."""
    async with httpx2.AsyncClient() as http:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        bearer = {"Authorization": f"Bearer {delegation.serialize()}"}
        answer = await http.post(url, json=body, headers=bearer)
    try:
        error = str(answer.json().get("error"))
    except ValueError:
        error = answer.text[:200]
    return answer.status_code, error


def _ran(paths: list[Path]) -> list[tuple[str, str]]:
    """(tool, id) of every call the upstreams ran."""
    return [(r["name"], str(r["arguments"]["id"])) for p in paths for r in records(p)]


async def test_three_proxies_share_one_database(
    setup: Setup, pg_url: str, pg_cluster: Cluster
) -> None:
    homes = [setup.home.parent / f"replica{i}" for i in range(REPLICAS)]
    keys = [Keyring(home / "keys").create("service:agentguard") for home in homes]
    setup.write_policy(
        # Each replica has its own keyring: the approver's key is in the policy.
        approvers=[
            {
                "id": setup.alice.id,
                "min_assurance": "agent",
                "public_key": setup.alice.principal.public_jwk(),
            }
        ],
        storage={"url": pg_url, "busy_timeout": "2s"},
        guard_keys=[{"public_key": k.principal.public_jwk()} for k in keys],
    )
    configs = [_replica_config(setup, i, pg_url) for i in range(REPLICAS)]
    uploads = [record for _, record in configs]
    ports = [_free_port() for _ in range(REPLICAS)]
    urls = [f"http://127.0.0.1:{port}/mcp" for port in ports]
    delegation = setup.delegation(["notes/read_note", "notes/delete_note"])
    told: dict[str, str] = {}  # call id -> "ran" or the refusal

    async def caller(index: int, replica: int) -> None:
        async with GuardedClient(urls[replica], delegation, setup.agent) as client:
            for n in range(CALLS_PER_CLIENT):
                note = f"c{index}-{n}"
                result = await client.call_tool("read_note", {"id": note})
                told[note] = "error: " + text_of(result) if result.is_error else "ran"
            # Out of the delegation's scope: refused, never forwarded.
            refused = await client.call_tool("write_note", {"id": f"w{index}", "text": "x"})
            assert refused.is_error
            told[f"w{index}"] = text_of(refused)

    async with AsyncExitStack() as stack:
        for (config, _), port in zip(configs, ports, strict=True):
            argv = [
                sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config),
                "--http", f"127.0.0.1:{port}",
            ]  # fmt: skip
            await stack.enter_async_context(_proxy(argv))

        with anyio.fail_after(300 if HARDENING else 60):
            # Concurrent callers spread over the three replicas.
            async with anyio.create_task_group() as group:
                for index in range(REPLICAS * CLIENTS_PER_REPLICA):
                    group.start_soon(caller, index, index % REPLICAS)
            allowed = sorted(k for k, v in told.items() if v == "ran")
            assert len(allowed) == REPLICAS * CLIENTS_PER_REPLICA * CALLS_PER_CLIENT, told
            assert sorted(_ran(uploads)) == sorted(("read_note", k) for k in allowed)

            # An approval requested through replica 0, answered (alice's own key) by
            # another process, used through replica 2: the call runs once there.
            async with GuardedClient(urls[0], delegation, setup.agent) as client:
                first = await client.call_tool("delete_note", {"id": "d1"})
                assert first.is_error
                assert "approval pending, id=apr_" in text_of(first)
                request_id = (first.meta or {})["io.agentguard/decision"]["approval_request_id"]
            answering = Guard(setup.policy_file, home=homes[1])
            answering.approvals.approve(request_id, setup.alice)
            answering.close()
            answering.store.close()
            async with GuardedClient(urls[2], delegation, setup.agent) as client:
                used = await client.call_tool("delete_note", {"id": "d1"})
                assert not used.is_error, text_of(used)
            assert _ran(uploads).count(("delete_note", "d1")) == 1

            # The database restarts under the proxies: refused meanwhile, then back.
            pg_cluster.stop()
            try:
                assert not (await _attempt(urls[1], delegation, setup, "down")).startswith("ran")
                assert (await _gate(urls[1], delegation)) == (503, "store_error")
            finally:
                pg_cluster.start()
            back = 0
            while (await _attempt(urls[1], delegation, setup, f"back{back}")) != "ran":
                back += 1
                await anyio.sleep(0.2)
            ran = _ran(uploads)
            assert ("read_note", "down") not in ran
            assert [k for t, k in ran if k.startswith("back")] == [f"back{back}"]

            # A revocation made at replica 0 stops the agent at every replica.
            revoking = Guard(setup.policy_file, home=homes[0])
            revoking.revoke("principal", setup.agent.id, reason="end to end")
            revoking.close()
            revoking.store.close()
            for url in urls:
                refused = await _attempt(url, delegation, setup, "after-revoke")
                assert refused.startswith("refused"), refused
                # The gate refuses the revoked caller before the MCP layer.
                assert (await _gate(url, delegation)) == (403, "revoked")
            assert ("read_note", "after-revoke") not in _ran(uploads)

    # Refused calls never reached an upstream.
    assert not [k for t, k in _ran(uploads) if k.startswith("w")]
    # One chain holds every call exactly once, and verifies from any replica.
    for home in homes:
        reader = Guard(setup.policy_file, home=home)
        report = reader.audit.report()
        assert report.problem is None, report.problem
        if home == homes[0]:
            bodies = [json.loads(e.body) for e in reader.store.audit_entries()]
        reader.close()
        reader.store.close()
    decisions = [b for b in bodies if b.get("type") == "decision" and b.get("outcome") == "allow"]
    assert len({b["decision_id"] for b in decisions}) == len(decisions)
    ran = _ran(uploads)
    assert len(decisions) == len(ran)
    completions = [b for b in bodies if b.get("type") == "completion"]
    assert sorted(b["decision_id"] for b in completions) == sorted(
        b["decision_id"] for b in decisions
    )
