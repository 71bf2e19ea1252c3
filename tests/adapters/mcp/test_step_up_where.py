"""When no form in the client can count, the caller learns where to approve instead.

A real proxy process and a real upstream: the pending result names the request,
who can answer it and the ways whose answer would count; the approval page's
address when one is configured and its answers would count, offered to a
client that supports it as a URL-mode elicitation (never a form).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp.config import config_from_mapping
from mcp import Client

from agentguard.errors import ConfigError
from agentguard.guard import Guard
from tests.adapters.mcp.mcp_support import Setup, notes_command, proxy_params, records, write_config

pytestmark = pytest.mark.anyio

PAGE = "http://127.0.0.1:8780/"


class Elicitations:
    """An elicitation callback that records what it was offered and declines it."""

    def __init__(self) -> None:
        self.forms: list[types.ElicitRequestFormParams] = []
        self.urls: list[types.ElicitRequestURLParams] = []

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if isinstance(params, types.ElicitRequestURLParams):
            self.urls.append(params)
            return types.ElicitResult(action="accept")
        assert isinstance(params, types.ElicitRequestFormParams)
        self.forms.append(params)
        return types.ElicitResult(action="accept", content={"approve": True})


def _proxy(setup: Setup, record: Path, **top: Any) -> Any:
    """Alice approves at 'agent' or more; forms would be hers, but the rule needs more."""
    config = write_config(
        setup,
        {"notes": {"command": notes_command(record), "trusted": True}},
        delegation=str(setup.delegation_file(setup.delegation(["notes/*"]))),
        elicitation_approver=setup.alice.id,
        **{"as": setup.agent.id},
        **top,
    )
    return proxy_params(["proxy", "--config", str(config)])


def _text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def _request_id(result: types.CallToolResult) -> str:
    request_id = (result.meta or {})["io.agentguard/decision"]["approval_request_id"]
    assert isinstance(request_id, str)
    return request_id


async def test_no_form_and_the_page_offered_by_url_where_its_answer_counts(
    setup: Setup, tmp_path: Path
) -> None:
    """The rule needs 'local': a form ('agent') would not count, the page ('authenticated')
    would. The legacy client is sent to the page by URL-mode elicitation; nothing runs."""
    record = tmp_path / "calls.jsonl"
    offered = Elicitations()
    params = _proxy(setup, record, approval_page=PAGE, annotation_assurance="local")
    with anyio.fail_after(30):
        async with Client(params, mode="legacy", elicitation_callback=offered) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
            assert records(record) == []  # opening the page approved nothing
            # Alice approves on the page (what it records, from another process).
            page = Guard(setup.policy_file, home=setup.home)
            try:
                page.approvals.answer(
                    _request_id(result), approver=setup.alice.id, approve=True,
                    channel="web", assurance="authenticated",
                )  # fmt: skip
            finally:
                page.close()
            again = await client.call_tool("delete_note", {"id": "n1"})
            assert not again.is_error, _text(again)
    assert [r["name"] for r in records(record)] == ["delete_note"]
    assert result.is_error
    request_id = _request_id(result)
    text = _text(result)
    assert text.startswith(f"approval pending, id={request_id}")
    assert "a person must approve it (user:alice can)" in text
    assert "approvals approve" not in text  # never a command the agent could run
    assert f"approval page: {PAGE}" in text
    assert "MCP client" not in text  # a form here would not count: not named as a way
    assert offered.forms == []
    (url,) = offered.urls
    assert url.url == PAGE
    assert url.elicitation_id == request_id
    assert request_id in url.message


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_signed_rule_names_no_page_and_sends_no_url(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    record = tmp_path / "calls.jsonl"
    offered = Elicitations()
    params = _proxy(setup, record, approval_page=PAGE, annotation_assurance="signed")
    with anyio.fail_after(30):
        async with Client(params, mode=mode, elicitation_callback=offered) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
    text = _text(result)
    assert "a person must approve it (user:alice can)" in text
    assert "approvals approve" not in text
    assert PAGE not in text  # the page's answers would not count
    assert "approval page" not in text
    assert offered.forms == []
    assert offered.urls == []
    assert records(record) == []


async def test_a_client_without_elicitation_still_gets_the_page(
    setup: Setup, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    params = _proxy(setup, record, approval_page=PAGE, annotation_assurance="authenticated")
    with anyio.fail_after(30):
        async with Client(params, mode="auto") as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
    text = _text(result)
    assert text.startswith(f"approval pending, id={_request_id(result)}")
    assert f"approval page: {PAGE}" in text
    assert (result.meta or {})["io.agentguard/decision"]["approval_page"] == PAGE
    assert records(record) == []


async def test_without_a_page_the_pending_result_still_says_who(
    setup: Setup, tmp_path: Path
) -> None:
    record = tmp_path / "calls.jsonl"
    offered = Elicitations()
    params = _proxy(setup, record, annotation_assurance="local")
    with anyio.fail_after(30):
        async with Client(params, mode="legacy", elicitation_callback=offered) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
    text = _text(result)
    assert "a person must approve it (user:alice can)" in text
    assert "agentguard" not in text.split(":", 1)[1]  # no command: the page's address is unknown
    assert offered.urls == []
    assert offered.forms == []


@pytest.mark.parametrize(
    "page",
    [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://user:secret@127.0.0.1:8780/",
        "http://127.0.0.1:8780/\nSet-Cookie: x",
        "http://127.0.0.1:8780/\u202e",
        "https://",
        7,
        "http://" + "a" * 3000,
    ],
)
def test_a_hostile_approval_page_address_is_refused(page: object, tmp_path: Path) -> None:
    data = {"upstreams": {"notes": {"command": ["true"]}}, "approval_page": page}
    with pytest.raises(ConfigError, match="approval_page"):
        config_from_mapping(data, base=tmp_path)


def test_an_approval_page_address_is_kept_as_given(tmp_path: Path) -> None:
    data = {"upstreams": {"notes": {"command": ["true"]}}, "approval_page": PAGE}
    assert config_from_mapping(data, base=tmp_path).approval_page == PAGE


class ApproveOnThePage(Elicitations):
    """Sent to the page, alice approves there (what the page records), then the client
    replies "accept": the same tools/call then runs."""

    def __init__(self, setup: Setup, *, approve: bool = True) -> None:
        super().__init__()
        self.setup = setup
        self.approve = approve

    async def __call__(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        answer = await super().__call__(context, params)
        if isinstance(params, types.ElicitRequestURLParams) and self.approve:
            # The 2026-07-28 era carries no elicitation id: the message names the request.
            named = re.search(r"apr_[A-Za-z0-9_-]+", params.message)
            assert named is not None
            page = Guard(self.setup.policy_file, home=self.setup.home)
            try:
                page.approvals.answer(
                    named.group(0), approver=self.setup.alice.id, approve=True,
                    channel="web", assurance="authenticated",
                )  # fmt: skip
            finally:
                page.close()
        return answer


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_approved_on_the_page_while_the_url_is_open_the_call_runs(
    setup: Setup, tmp_path: Path, mode: str
) -> None:
    record = tmp_path / "calls.jsonl"
    offered = ApproveOnThePage(setup)
    params = _proxy(setup, record, approval_page=PAGE, annotation_assurance="local")
    with anyio.fail_after(30):
        async with Client(params, mode=mode, elicitation_callback=offered) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
    assert not result.is_error, _text(result)
    assert _text(result) == "delete_note n1 done"
    assert len(offered.urls) == 1
    assert offered.forms == []
    assert [r["name"] for r in records(record)] == ["delete_note"]


async def test_a_modern_client_back_from_the_page_without_an_approval_is_still_pending(
    setup: Setup, tmp_path: Path
) -> None:
    """The reply to a URL request records nothing: "accept" alone runs nothing."""
    record = tmp_path / "calls.jsonl"
    offered = ApproveOnThePage(setup, approve=False)
    params = _proxy(setup, record, approval_page=PAGE, annotation_assurance="local")
    with anyio.fail_after(30):
        async with Client(params, mode="2026-07-28", elicitation_callback=offered) as client:
            result = await client.call_tool("delete_note", {"id": "n1"})
    assert result.is_error
    assert _text(result).startswith(f"approval pending, id={_request_id(result)}")
    assert f"approval page: {PAGE}" in _text(result)
    assert len(offered.urls) == 1
    assert records(record) == []
