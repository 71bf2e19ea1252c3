"""A passkey receipt travels through the real MCP proxy to an aware upstream, which checks it.

The upstream (the recording notes server, its own process) knows alice's
enrolled credential and no approval key: the call runs only because her
passkey signed the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentguard_mcp import META_APPROVAL
from mcp import Client

from agentguard.guard import Guard
from agentguard.passkeys import RECEIPT_PREFIX, write_passkey
from tests.adapters.mcp.mcp_support import (
    Setup,
    notes_command,
    proxy_params,
    records,
    text_of,
    write_config,
)
from tests.passkey_support import ORIGIN, RP_ID, SoftKey


def _proxy(setup: Setup, tmp_path: Path, passkey: dict[str, str] | None) -> tuple[Any, Path]:
    aware = tmp_path / "aware.jsonl"
    verify = ["--verify", "aware", "--root-key", str(setup.home / "keys" / "org_acme.pub")]
    if passkey is not None:
        known = tmp_path / "alice.passkey.json"
        known.write_text(json.dumps({"id": setup.alice.id, "passkey": passkey}))
        verify += ["--passkey", str(known)]
    delegation = setup.delegation([{"tool": "aware/delete_note", "approval": True}])
    config = write_config(
        setup,
        {"aware": {"command": notes_command(aware, *verify), "trusted": True, "agentguard": True}},
        delegation=str(setup.delegation_file(delegation)),
        **{"as": setup.agent.id},
    )
    return proxy_params(["proxy", "--config", str(config)]), aware


async def _answered_with_passkey(setup: Setup, client: Client, key: SoftKey) -> Any:
    first = await client.call_tool("delete_note", {"id": "n1"})
    assert first.is_error
    request_id = (first.meta or {})["io.agentguard/decision"]["approval_request_id"]
    approver = Guard(setup.policy_file, home=setup.home)
    try:
        book = approver.approvals
        statement = book.passkey_statement(request_id, approver=setup.alice.id, approve=True)
        book.record_passkey_answer(statement, key.receipt(statement).assertion)
    finally:
        approver.close()
    return await client.call_tool("delete_note", {"id": "n1"})


def _enrol(setup: Setup, key: SoftKey) -> dict[str, str]:
    passkey = {
        "credential_id": key.credential_id,
        "public_key": key.cose(),
        "rp_id": RP_ID,
        "origin": ORIGIN,
    }
    write_passkey(setup.policy_file, setup.alice.id, passkey)
    return passkey


@pytest.mark.anyio
async def test_a_passkey_receipt_is_forwarded_and_verified_upstream(
    setup: Setup, tmp_path: Path
) -> None:
    key = SoftKey()
    params, aware = _proxy(setup, tmp_path, _enrol(setup, key))
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            done = await _answered_with_passkey(setup, client, key)
            assert not done.is_error, text_of(done)
            assert text_of(done) == "delete_note n1 done"
    [deleted] = records(aware)
    assert deleted["approver"] == setup.alice.id
    assert deleted["meta"][META_APPROVAL].startswith(RECEIPT_PREFIX)


@pytest.mark.anyio
async def test_an_upstream_that_does_not_know_the_passkey_refuses(
    setup: Setup, tmp_path: Path
) -> None:
    key = SoftKey()
    _enrol(setup, key)
    params, aware = _proxy(setup, tmp_path, None)
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            done = await _answered_with_passkey(setup, client, key)
            assert done.is_error
            assert "approval_required" in text_of(done)
    assert records(aware) == []
