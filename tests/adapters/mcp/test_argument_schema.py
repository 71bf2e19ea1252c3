"""The proxy checks arguments against the tool's ``inputSchema`` before the guard decides.

The report: in front of a typed server with ``transfer(to: str, amount: int)``
and a step-up on ``amount > 1000``, ``{"amount": "5000"}`` was judged on the
string while the server ran with the integer. Each call below goes through a
real proxy process to a real server process (``bank_server.py``, whose
pydantic-validated tools coerce such values); a non-conforming call is
refused with ``invalid_arguments`` before any decision, nothing is filed for
approval and nothing reaches the upstream.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agentguard.store.sqlite import SQLiteStore
from tests.adapters.mcp.mcp_support import HERE, Setup, proxy_params, records, text_of, write_config

pytestmark = pytest.mark.anyio

BANK_SERVER = str(HERE / "bank_server.py")
STEP_UP = [
    {"tools": ["bank/transfer"], "where": {"amount": {">": 1000}}},
    {"tools": ["bank/purge"], "where": {"force": {"==": True}}, "if_missing": "skip"},
]
DENY = [{"tools": ["bank/read_files"], "where": {"paths": {"any": {"within": "/etc"}}}}]


def _proxy(setup: Setup, record: Path, scope: list[Any]) -> Any:
    setup.write_policy(step_up=STEP_UP, deny=DENY)
    config = write_config(
        setup,
        {"bank": {"command": [sys.executable, BANK_SERVER, "--record", str(record)]}},
        delegation=str(setup.delegation_file(setup.delegation(scope))),
        annotation_step_up=False,  # only the policy's rules ask for approval here
        **{"as": setup.agent.id},
    )
    return proxy_params(["proxy", "--config", str(config)])


def _pending_requests(setup: Setup) -> int:
    store = SQLiteStore(setup.home / "state.db")
    try:
        return len(store.approval_list())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("tool", "conforming", "slippery", "problem"),
    [
        (
            "transfer",
            {"to": "eve", "amount": 5000},
            {"to": "eve", "amount": "5000"},
            "$.amount: expected integer, got string",
        ),
        (
            "purge",
            {"target": "prod", "force": True},
            {"target": "prod", "force": "true"},
            "$.force: expected boolean, got string",
        ),
        (
            "read_files",
            {"paths": ["/etc/shadow"]},
            {"paths": '["/etc/shadow"]'},
            "$.paths: expected array, got string",
        ),
    ],
    ids=["amount-as-string", "force-as-string", "paths-as-json-string"],
)
async def test_a_value_the_upstream_would_coerce_is_refused_before_deciding(
    setup: Setup, tmp_path: Path, tool: str, conforming: dict[str, Any], slippery: Any, problem: str
) -> None:
    """The conforming call meets the policy rule; the coercible one is refused, unseen upstream."""
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with Client(_proxy(setup, record, ["bank/*"]), mode="legacy") as client:
            ruled = await client.call_tool(tool, conforming)
            assert ruled.is_error
            assert "approval pending" in text_of(ruled) or "policy_denied" in text_of(ruled)
            before = _pending_requests(setup)

            refused = await client.call_tool(tool, slippery)
            assert refused.is_error
            text = text_of(refused)
            assert text.startswith("denied by agentguard (invalid_arguments: "), text
            assert problem in text
            assert "etc/shadow" not in text
            assert "5000" not in text
            assert (refused.meta or {})["io.agentguard/decision"]["reason"] == "invalid_arguments"
            assert _pending_requests(setup) == before  # nothing filed for approval
    assert records(record) == []


async def test_undeclared_argument_is_refused_and_declared_ones_run(
    setup: Setup, tmp_path: Path
) -> None:
    """An extra name (``amt``) is refused; the same call without it runs as decided."""
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with Client(_proxy(setup, record, ["bank/*"]), mode="legacy") as client:
            extra = await client.call_tool("transfer", {"to": "eve", "amount": 50, "amt": 5000})
            assert extra.is_error
            assert 'unexpected argument "amt"' in text_of(extra)
            ok = await client.call_tool("transfer", {"to": "eve", "amount": 50})
            assert not ok.is_error, text_of(ok)
            assert text_of(ok) == "sent 50 to eve"
    assert [r["arguments"] for r in records(record)] == [{"to": "eve", "amount": 50}]


async def test_a_caller_out_of_scope_gets_the_scope_refusal_not_the_schema(
    setup: Setup, tmp_path: Path
) -> None:
    """For a tool its delegation does not reach, the refusal is ``out_of_scope``, audited."""
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with Client(_proxy(setup, record, ["bank/read_files"]), mode="legacy") as client:
            refused = await client.call_tool("transfer", {"to": "eve", "amount": "5000"})
            assert refused.is_error
            assert "out_of_scope" in text_of(refused)
            assert "amount" not in text_of(refused)
    store = SQLiteStore(setup.home / "state.db")
    try:
        bodies = [e.body for e in store.audit_entries()]
    finally:
        store.close()
    assert any('"out_of_scope"' in body for body in bodies)
    assert records(record) == []
