"""The MCP proxy's sealed input-required state under a key its replicas share.

A 2026-07-28 client answers a step-up form by calling the tool again with the
sealed ``requestState`` the proxy gave it. Behind a load balancer that retry may
reach another proxy process: it must accept the state when it shares the key
file (``request-state.key`` in the state directory), and refuse it otherwise.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from agentguard.errors import IdentityError
from agentguard.keys import b64url_encode, secret_keys
from tests.adapters.mcp.mcp_support import (
    Setup,
    make_setup,
    notes_command,
    proxy_params,
    records,
    write_config,
)

pytestmark = pytest.mark.anyio

APPROVE = {"agentguard_approval": types.ElicitResult(action="accept", content={"approve": True})}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _params(setup: Setup, record: Path) -> Any:
    delegation = setup.delegation(["notes/*"])
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(delegation)),
        elicitation_approver=setup.alice.id,
        annotation_assurance="agent",
        **{"as": setup.agent.id},
    )
    return proxy_params(["proxy", "--config", str(config)])


async def _approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    # Advertises form support; in the 2026-07-28 era the proxy never calls it.
    raise AssertionError("no elicitation request expected in the 2026-07-28 era")


async def _sealed_state(params: Any, note: str) -> str:
    """Ask one proxy process for a step-up; return the sealed state it hands out."""
    async with Client(params, mode="2026-07-28", elicitation_callback=_approve) as client:
        await client.list_tools()
        first = await client.session.call_tool(
            "delete_note", {"id": note}, allow_input_required=True
        )
        assert isinstance(first, types.InputRequiredResult)
        assert first.request_state is not None
        return first.request_state


async def _answer(params: Any, note: str, state: str) -> types.CallToolResult | str:
    """Another proxy process receives the retry with the answer and the state;
    the protocol error's message when it refuses the state."""
    async with Client(params, mode="2026-07-28", elicitation_callback=_approve) as client:
        await client.list_tools()
        try:
            result = await client.session.call_tool(
                "delete_note",
                {"id": note},
                input_responses=APPROVE,  # type: ignore[arg-type]
                request_state=state,
                allow_input_required=True,
            )
        except MCPError as exc:
            return str(exc)
        assert isinstance(result, types.CallToolResult)
        return result


async def test_state_sealed_by_one_proxy_is_accepted_by_another_sharing_the_key(
    tmp_path: Path,
) -> None:
    setup = make_setup(tmp_path)
    record = tmp_path / "calls.jsonl"
    params = _params(setup, record)
    with anyio.fail_after(60):
        state = await _sealed_state(params, "n1")
        key_file = setup.home / "request-state.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        done = await _answer(params, "n1", state)  # a second process, same key file
    assert isinstance(done, types.CallToolResult)
    assert not done.is_error
    assert [r["name"] for r in records(record)] == ["delete_note"]


async def test_state_sealed_under_another_key_is_refused(tmp_path: Path) -> None:
    """Attack: a replica configured with a different key (or a forged state) gets
    nothing through: the retry is refused before the guard, and nothing runs."""
    setup = make_setup(tmp_path)
    record = tmp_path / "calls.jsonl"
    params = _params(setup, record)
    with anyio.fail_after(60):
        state = await _sealed_state(params, "n2")
        key_file = setup.home / "request-state.key"
        key_file.unlink()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"keys": [b64url_encode(os.urandom(32))]}))
        refused = await _answer(params, "n2", state)
    assert refused == "Invalid or expired requestState"
    assert records(record) == []


async def test_a_rotated_ring_still_opens_state_sealed_under_the_old_key(tmp_path: Path) -> None:
    """Rotation: ``{"keys": [new, old]}`` seals with the new key and opens the old one's."""
    setup = make_setup(tmp_path)
    record = tmp_path / "calls.jsonl"
    params = _params(setup, record)
    with anyio.fail_after(60):
        state = await _sealed_state(params, "n3")
        key_file = setup.home / "request-state.key"
        old = json.loads(key_file.read_text())["keys"]
        key_file.write_text(json.dumps({"keys": [b64url_encode(os.urandom(32)), *old]}))
        done = await _answer(params, "n3", state)
    assert isinstance(done, types.CallToolResult)
    assert not done.is_error
    assert [r["name"] for r in records(record)] == ["delete_note"]


def test_the_key_file_is_made_once_and_hostile_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "home" / "request-state.key"
    first = secret_keys(path)
    assert secret_keys(path) == first
    assert len(first) == 1
    assert len(first[0]) == 32
    with pytest.raises(IdentityError, match="cannot open"):
        secret_keys(tmp_path / "none.key", create=False)
    hostile: list[tuple[str, str]] = [
        ("[]", "not a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"keys": []}', "1 to 8 keys"),
        ('{"keys": "abc"}', "1 to 8 keys"),
        (json.dumps({"keys": [b64url_encode(b"x" * 31)]}), "not 32 bytes"),
        ('{"keys": ["!!!!"]}', "not 32 bytes"),
        ('{"keys": [7]}', "not 32 bytes"),
        (json.dumps({"keys": [b64url_encode(b"k" * 32)] * 9}), "1 to 8 keys"),
    ]
    for text, says in hostile:
        path.write_text(text)
        with pytest.raises(IdentityError, match=says):
            secret_keys(path)
    path.write_text(json.dumps({"keys": [b64url_encode(b"k" * 32)]}))
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="group or others"):
        secret_keys(path)
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(IdentityError, match="cannot open"):
        secret_keys(link)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)
    with pytest.raises(IdentityError, match="not a regular file"):
        secret_keys(fifo, create=False)
