"""mcp-server-time (a real server from PyPI) behind the stdio proxy, driven by a real client."""

from __future__ import annotations

import anyio
import pytest
from agentguard_mcp import META_APPROVAL, META_TOOL
from mcp import Client

from agentguard.store.sqlite import SQLiteStore
from tests.adapters.mcp.mcp_support import TIME_SERVER, Setup, proxy_params

pytestmark = pytest.mark.anyio


def _proxy(setup: Setup, scope: list[object], *extra: str) -> object:
    delegation = setup.delegation(scope)
    path = setup.delegation_file(delegation)
    return proxy_params(
        [
            "proxy",
            "--delegation",
            str(path),
            "--as",
            setup.agent.id,
            "--home",
            str(setup.home),
            "--policy",
            str(setup.policy_file),
            "--namespace",
            "time",
            *extra,
            "--",
            TIME_SERVER,
            "--local-timezone",
            "UTC",
        ]
    )


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_list_is_filtered_and_calls_are_gated(setup: Setup, mode: str) -> None:
    """Only the granted tool is listed; an allowed call runs, a predicate-failing one is refused."""
    params = _proxy(
        setup,
        [
            {
                "tool": "time/get_current_time",
                "where": {"timezone": {"in": ["UTC", "Europe/Paris"]}},
            }
        ],
        "--trusted",
    )
    with anyio.fail_after(30):
        async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
            listed = (await client.list_tools()).tools
            assert [t.name for t in listed] == ["get_current_time"]
            assert (listed[0].meta or {})[META_TOOL] == "time/get_current_time"
            assert META_APPROVAL not in (listed[0].meta or {})

            ok = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert not ok.is_error
            assert ok.structured_content is not None
            assert ok.structured_content["timezone"] == "UTC"

            denied = await client.call_tool("get_current_time", {"timezone": "Asia/Tokyo"})
            assert denied.is_error
            text = denied.content[0].text  # type: ignore[union-attr]
            assert "predicate_failed" in text
            assert "decision dec_" in text
            assert "Asia/Tokyo" not in text

            hidden = await client.call_tool("convert_time", {})
            assert hidden.is_error
            assert "out_of_scope" in hidden.content[0].text  # type: ignore[union-attr]

    store = SQLiteStore(setup.home / "state.db")
    try:
        outcomes = [e.body for e in store.audit_entries()]
    finally:
        store.close()
    assert any('"outcome":"allow"' in body for body in outcomes)
    assert any('"predicate_failed"' in body for body in outcomes)


async def test_untrusted_annotations_mean_step_up(setup: Setup) -> None:
    """Without --trusted every tool counts as destructive: listed as needing approval, pending."""
    params = _proxy(setup, ["time/*"])
    with anyio.fail_after(30):
        async with Client(params, mode="legacy") as client:  # type: ignore[arg-type]
            listed = (await client.list_tools()).tools
            assert sorted(t.name for t in listed) == ["convert_time", "get_current_time"]
            assert all((t.meta or {}).get(META_APPROVAL) == "required" for t in listed)
            assert all(t.annotations is None for t in listed)
            result = await client.call_tool("get_current_time", {"timezone": "UTC"})
            assert result.is_error
            assert "approval pending, id=apr_" in result.content[0].text  # type: ignore[union-attr]


async def test_upstream_error_answer_is_audited_as_a_tool_error(setup: Setup) -> None:
    """An allowed call the upstream answers with isError is a tool_error completion."""
    params = _proxy(setup, [{"tool": "time/get_current_time"}], "--trusted")
    with anyio.fail_after(30):
        async with Client(params, mode="legacy") as client:  # type: ignore[arg-type]
            result = await client.call_tool("get_current_time", {"timezone": "Not/AZone"})
            assert result.is_error
    store = SQLiteStore(setup.home / "state.db")
    try:
        completions = [e.body for e in store.audit_entries() if '"type":"completion"' in e.body]
    finally:
        store.close()
    assert len(completions) == 1
    assert '"status":"tool_error"' in completions[0]
