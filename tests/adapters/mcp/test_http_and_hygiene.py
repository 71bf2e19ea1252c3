"""Several upstreams over streamable HTTP, what reaches upstreams, and the verifier middleware."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from agentguard_mcp import META_CALL, META_DECISION, META_DELEGATION, GuardedClient
from anyio.abc import Process
from mcp import Client, StdioServerParameters

from agentguard.delegation import Delegation
from agentguard.store.sqlite import SQLiteStore
from agentguard.tokens import mint_call_token
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, write_config

TOOLS_HINT = r"use its \.tools"

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def _process(argv: list[str], ready: str, *, stderr: bool) -> AsyncIterator[Process]:
    """Start a process and wait (bounded) until it prints ``ready`` on stdout or stderr."""
    process = await anyio.open_process(argv)
    try:
        stream = process.stderr if stderr else process.stdout
        assert stream is not None
        seen = b""
        with anyio.fail_after(20):
            while ready.encode() not in seen:
                chunk = await stream.receive()
                seen += chunk
        yield process
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.aclose()


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


async def test_http_proxy_with_several_upstreams(setup: Setup, tmp_path: Path) -> None:
    """Bearer delegation + signed call token; nothing of ours reaches plain upstreams."""
    plain, aware, web = (tmp_path / f"{n}.jsonl" for n in ("plain", "aware", "web"))
    web_port, proxy_port = _free_port(), _free_port()
    config = write_config(
        setup,
        {
            "plain": {"command": notes_command(plain), "trusted": True},
            "aware": {
                "command": notes_command(
                    aware,
                    "--verify",
                    "aware",
                    "--root-key",
                    str(setup.home / "keys" / "org_acme.pub"),
                    "--revocations",
                    str(setup.home / "state.db"),
                ),
                "trusted": True,
                "agentguard": True,
            },
            "web": {"url": f"http://127.0.0.1:{web_port}/mcp", "trusted": True},
        },
    )
    delegation = setup.delegation(["plain/*", "aware/read_note", "web/read_note"])
    web_argv = notes_command(web, "--http", f"127.0.0.1:{web_port}")
    proxy_argv = [
        sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config),
        "--http", f"127.0.0.1:{proxy_port}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{proxy_port}/mcp"
    async with (
        _process(web_argv, "ready", stderr=False),
        _process(proxy_argv, "listening on", stderr=True),
    ):
        with anyio.fail_after(30):
            async with GuardedClient(url, delegation, setup.agent) as client:
                listed = await client.list_tools()
                assert isinstance(listed, types.ListToolsResult)  # as mcp.Client returns
                names = sorted(t.name for t in listed.tools)
                assert names == [
                    "aware__read_note",
                    "plain__delete_note",
                    "plain__read_note",
                    "plain__write_note",
                    "web__read_note",
                ]
                # The list the old API returned still works for a release, and warns.
                with pytest.warns(DeprecationWarning, match=TOOLS_HINT):
                    assert sorted(t.name for t in listed) == names
                with pytest.warns(DeprecationWarning, match=TOOLS_HINT):
                    assert len(listed) == 5
                with pytest.warns(DeprecationWarning, match=TOOLS_HINT):
                    assert listed[0] is listed.tools[0]
                with pytest.warns(DeprecationWarning, match=TOOLS_HINT):
                    assert listed[1:] == listed.tools[1:]
                # Unknown to the proxy, or not reached by this delegation: refused the
                # way the proxy refuses an unknown name, not a KeyError.
                for unlisted in ("plain__no_such_tool", "aware__write_note"):
                    refused = await client.call_tool(unlisted, {"id": "n1"})
                    assert refused.is_error
                    assert _text(refused) == "denied by agentguard (unknown_tool)"
                    assert (refused.meta or {})[META_DECISION] == {"reason": "unknown_tool"}
                secret = {"traceparent": TRACEPARENT, "io.agentguard/secret": "CANARY", "x": "y"}
                for name in ("plain__read_note", "aware__read_note", "web__read_note"):
                    result = await client.call_tool(name, {"id": "n1"}, meta=secret)
                    assert not result.is_error, _text(result)

                # The delegation alone is not enough: no call token, no call.
                bare = await client.client.call_tool("plain__read_note", {"id": "n1"})
                assert bare.is_error
                assert "missing_call_token" in _text(bare)

            async with httpx2.AsyncClient() as http:
                body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
                nobody = await http.post(url, json=body)
                assert nobody.status_code == 401
                elsewhere = setup.delegation(["other/*"]).serialize()
                wrong = await http.post(
                    url, json=body, headers={"Authorization": f"Bearer {elsewhere}"}
                )
                assert wrong.status_code == 403
                assert wrong.json()["error"] == "out_of_scope"

    for path in (plain, web):
        [entry] = records(path)
        ours = [k for k in entry["meta"] if k.startswith("io.agentguard/")]
        assert ours == []
        assert set(entry["meta"]) <= {"traceparent", "tracestate"} | {
            k for k in entry["meta"] if k.startswith("io.modelcontextprotocol/")
        }
        assert "CANARY" not in str(entry)
        assert delegation.serialize() not in str(entry)
    headers = records(web)[0]["headers"]
    assert headers is not None
    assert "authorization" not in {k.lower() for k in headers}
    [forwarded] = records(aware)
    assert forwarded["holder"] == setup.agent.id
    assert forwarded["meta"][META_DELEGATION] == delegation.serialize()
    assert "CANARY" not in str(forwarded)


async def test_verifier_middleware_rejects_replay_audience_and_revocation(
    setup: Setup, tmp_path: Path
) -> None:
    """An agentguard-aware server checks delegation and call token from _meta itself."""
    record = tmp_path / "aware.jsonl"
    revocations = tmp_path / "revocations.db"
    argv = notes_command(
        record,
        "--verify",
        "aware",
        "--root-key",
        str(setup.home / "keys" / "org_acme.pub"),
        "--revocations",
        str(revocations),
    )
    delegation = setup.delegation(["aware/read_note"])
    args = {"id": "n1"}

    def meta(token: str, chain: Delegation = delegation) -> dict[str, Any]:
        return {META_DELEGATION: chain.serialize(), META_CALL: token}

    good = delegation.mint_call_token(setup.agent, "aware/read_note", args)
    elsewhere = mint_call_token(
        setup.agent,
        leaf_link_id=delegation.leaf.link_id,
        tool="aware/read_note",
        args=args,
        now=time.time(),
        audience="other",
    )
    params = StdioServerParameters(command=argv[0], args=argv[1:])
    with anyio.fail_after(30):
        async with Client(params) as client:
            ok = await client.call_tool("read_note", args, meta=meta(good))  # type: ignore[arg-type]
            assert not ok.is_error
            replay = await client.call_tool("read_note", args, meta=meta(good))  # type: ignore[arg-type]
            assert "call_token_replayed" in _text(replay)
            wrong = await client.call_tool("read_note", args, meta=meta(elsewhere))  # type: ignore[arg-type]
            assert "call_token_mismatch" in _text(wrong)
            other_args = delegation.mint_call_token(setup.agent, "aware/read_note", {"id": "n2"})
            moved = await client.call_tool("read_note", args, meta=meta(other_args))  # type: ignore[arg-type]
            assert "call_token_mismatch" in _text(moved)
            missing = await client.call_tool("read_note", args)
            assert "no_credentials" in _text(missing)

            store = SQLiteStore(revocations)
            try:
                store.revoke("link", delegation.root.link_id, reason="test", at=time.time())
            finally:
                store.close()
            fresh = delegation.mint_call_token(setup.agent, "aware/read_note", args)
            revoked = await client.call_tool("read_note", args, meta=meta(fresh))  # type: ignore[arg-type]
            assert "revoked" in _text(revoked)
    assert len(records(record)) == 1
