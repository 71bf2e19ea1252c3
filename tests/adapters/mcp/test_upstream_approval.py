"""An agentguard-aware upstream checks the approval a link demands (receipt in ``_meta``)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import (
    META_APPROVAL,
    META_CALL,
    META_DELEGATION,
    Caller,
    GuardedProxy,
    Upstream,
    UpstreamSpec,
)
from agentguard_mcp.verify import DelegationVerifier, current_authority
from mcp import Client
from mcp.server import Server
from mcp.server.context import ServerRequestContext

from agentguard import _jws
from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel, QueueChannel
from agentguard.clock import ManualClock
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity, Principal
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from agentguard.tokens import TYP_APPROVAL
from tests.adapters.mcp.mcp_support import (
    Setup,
    notes_command,
    proxy_params,
    records,
    serve_in_process,
    text_of,
    write_config,
)

ARGS = {"target": "db1"}


def _receipt(world: World, args: dict[str, Any] = ARGS) -> str:
    """A real receipt from a guard's queue for ``admin/reset`` with ``args``."""
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", args, RecordingTool(), holder=world.bot)
    return guard.approvals.approve(info.value.request_id, world.carol)


def _params(world: World, receipt: str | None, args: dict[str, Any] = ARGS) -> dict[str, Any]:
    token = world.delegation.mint_call_token(world.bot, "admin/reset", args, clock=world.clock)
    meta = {META_DELEGATION: world.delegation.serialize(), META_CALL: token}
    if receipt is not None:
        meta[META_APPROVAL] = receipt
    return {"name": "reset", "arguments": args, "_meta": meta}


def _verifier(world: World, *keys: Principal, **kwargs: Any) -> DelegationVerifier:
    return DelegationVerifier(
        "admin",
        trusted_roots=[world.org.principal],
        revocations=MemoryStore(),
        clock=world.clock,
        approval_keys=keys or [world.carol.principal],
        **kwargs,
    )


def _reason(verifier: DelegationVerifier, params: dict[str, Any]) -> str:
    with pytest.raises(DeniedError) as info:
        verifier.check(params)
    return info.value.reason


def test_receipt_signed_by_the_approver_is_accepted_once(world: World) -> None:
    """The approver's own signature, bound to this call; a second presentation is refused."""
    receipt = _receipt(world)
    verifier = _verifier(world)
    authority = verifier.check(_params(world, receipt))
    assert authority.approval is not None
    assert authority.approval.approver == "user:carol"
    assert authority.approval.assurance == "signed"
    # A fresh call token of the holder's does not make the receipt usable again.
    assert _reason(verifier, _params(world, receipt)) == "approval_replayed"


def test_reusable_receipts_are_single_use_per_call_token(world: World) -> None:
    """With reusable_receipts the pair (receipt, call token) is single use."""
    receipt = _receipt(world)
    verifier = _verifier(world, reusable_receipts=True)
    verifier.check(_params(world, receipt))
    verifier.check(_params(world, receipt))
    params = _params(world, receipt)
    verifier.check(params)
    assert _reason(verifier, params) == "call_token_replayed"


def test_missing_receipt_is_refused(world: World) -> None:
    """The holder calls the aware upstream directly, skipping the proxy's step-up.

    Refused whether or not the upstream trusts an approver's key: the call carries no receipt.
    """
    params = _params(world, None)
    no_keys = DelegationVerifier(
        "admin", trusted_roots=[world.org.principal], revocations=MemoryStore(), clock=world.clock
    )
    assert _reason(no_keys, params) == "approval_required"
    assert _reason(_verifier(world), params) == "approval_required"


def test_receipt_for_other_arguments_is_refused(world: World) -> None:
    """A receipt approving target=db2 does not authorise target=db1."""
    receipt = _receipt(world, {"target": "db2"})
    verifier = _verifier(world)
    assert _reason(verifier, _params(world, receipt)) == "approval_mismatch"
    # Nothing was burned by the refusal: the right call still goes through.
    verifier.check(_params(world, receipt, {"target": "db2"}))


def test_receipt_for_another_delegation_is_refused(world: World) -> None:
    """Bound to the leaf link: the same call through another delegation is not approved."""
    receipt = _receipt(world)
    world.delegation = world.chain(world.bot)
    assert _reason(_verifier(world), _params(world, receipt)) == "approval_mismatch"


def test_receipt_signed_by_an_untrusted_key_is_refused(world: World) -> None:
    """Carol's receipt when only another key is trusted; and a forgery under her name."""
    receipt = _receipt(world)
    dave = Identity.generate("user:dave")
    assert _reason(_verifier(world, dave.principal), _params(world, receipt)) == "approval_invalid"
    # The same claims signed by another key calling itself user:carol.
    _, claims = _jws.peek(receipt, TYP_APPROVAL)
    forged = _jws.sign(claims, Identity.generate("user:carol"), TYP_APPROVAL)
    assert _reason(_verifier(world), _params(world, forged)) == "approval_invalid"
    # Carol's header (her kid) over the forged payload and signature.
    spliced = receipt.split(".")[0] + "." + forged.split(".", 1)[1]
    assert _reason(_verifier(world), _params(world, spliced)) == "approval_invalid"


def test_no_approval_keys_fails_closed(world: World) -> None:
    receipt = _receipt(world)
    verifier = DelegationVerifier(
        "admin", trusted_roots=[world.org.principal], revocations=MemoryStore(), clock=world.clock
    )
    with pytest.raises(DeniedError) as info:
        verifier.check(_params(world, receipt))
    assert info.value.reason == "approval_required"
    assert "trusts no approval keys" in info.value.explanation


def test_expired_receipts_are_refused(world: World) -> None:
    receipt = _receipt(world)
    assert isinstance(world.clock, ManualClock)
    world.clock.advance(700)  # RECEIPT_TTL is 600 s
    assert _reason(_verifier(world), _params(world, receipt)) == "approval_expired"


def test_receipts_for_edited_arguments_are_refused(world: World) -> None:
    """The digest binds the original arguments: neither those nor the edited ones pass."""
    guard = world.guard(
        approver=QueueChannel(), approval_mode="raise", approval={"channel": "queue"}
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", ARGS, RecordingTool(), holder=world.bot)
    edited = guard.approvals.approve(
        info.value.request_id, world.carol, edited_args={"target": "db3"}
    )
    verifier = _verifier(world)
    assert _reason(verifier, _params(world, edited)) == "approval_mismatch"
    assert _reason(verifier, _params(world, edited, {"target": "db3"})) == "approval_mismatch"


def test_approver_acting_in_the_chain_is_refused(world: World) -> None:
    """A receipt 'approved' by the holder itself (its key trusted by mistake)."""
    _, claims = _jws.peek(_receipt(world), TYP_APPROVAL)
    claims.update(iss=world.bot.id, approver=world.bot.id)
    own = _jws.sign(claims, world.bot, TYP_APPROVAL)
    verifier = _verifier(world, world.bot.principal)
    assert _reason(verifier, _params(world, own)) == "separation_of_duties"


def test_guard_attested_answers_meet_only_their_assurance(world: World) -> None:
    """A channel's answer signed by the guard key carries the assurance it states."""
    store = MemoryStore()
    guard = world.guard(
        store=store,
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue", "grant_rule_assurance": "local"},
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", ARGS, RecordingTool(), holder=world.bot)
    receipt = guard.approvals.answer(
        info.value.request_id,
        approver="user:carol",
        approve=True,
        channel="terminal",
        assurance="local",
    )
    keys = [guard.approvals.guard_identity.principal]
    assert _reason(_verifier(world, *keys), _params(world, receipt)) == "approval_assurance"
    authority = _verifier(world, *keys, min_assurance="local").check(_params(world, receipt))
    assert authority.approval is not None
    assert authority.approval.assurance == "local"
    assert authority.approval.signer == guard.approvals.guard_identity.id


def test_calls_without_an_approval_rule_need_no_receipt(world: World) -> None:
    token = world.delegation.mint_call_token(world.bot, "tickets/list", {}, clock=world.clock)
    verifier = DelegationVerifier(
        "tickets", trusted_roots=[world.org.principal], revocations=MemoryStore(), clock=world.clock
    )
    params = {
        "name": "list",
        "arguments": {},
        "_meta": {META_DELEGATION: world.delegation.serialize(), META_CALL: token},
    }
    assert verifier.check(params).approval is None


# -- end to end through the real proxy ---------------------------------------------------


def _proxy(setup: Setup, tmp_path: Path, *keys: str) -> tuple[Any, Path, Path]:
    aware, plain = tmp_path / "aware.jsonl", tmp_path / "plain.jsonl"
    verify = ["--verify", "aware", "--root-key", str(setup.home / "keys" / "org_acme.pub")]
    for key in keys:
        verify += ["--approval-key", str(setup.home / "keys" / key)]
    delegation = setup.delegation(
        [
            {"tool": "aware/delete_note", "approval": True},
            "aware/read_note",
            {"tool": "plain/delete_note", "approval": True},
        ]
    )
    config = write_config(
        setup,
        {
            "aware": {
                "command": notes_command(aware, *verify),
                "trusted": True,
                "agentguard": True,
            },
            "plain": {"command": notes_command(plain), "trusted": True},
        },
        delegation=str(setup.delegation_file(delegation)),
        **{"as": setup.agent.id},
    )
    return proxy_params(["proxy", "--config", str(config)]), aware, plain


async def _approved_call(setup: Setup, client: Client, name: str, args: dict[str, Any]) -> Any:
    """Call, approve the pending request with alice's own key out of band, call again."""
    first = await client.call_tool(name, args)
    assert first.is_error
    request_id = (first.meta or {})["io.agentguard/decision"]["approval_request_id"]
    approver = Guard(setup.policy_file, home=setup.home)
    try:
        approver.approvals.approve(request_id, setup.alice)
    finally:
        approver.close()
    return await client.call_tool(name, args)


@pytest.mark.anyio
async def test_receipt_is_forwarded_to_aware_upstreams_only(setup: Setup, tmp_path: Path) -> None:
    """The aware upstream gets the receipt and accepts it; the plain one never sees it."""
    params, aware, plain = _proxy(setup, tmp_path, "user_alice.pub")
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            done = await _approved_call(setup, client, "aware__delete_note", {"id": "n1"})
            assert not done.is_error, text_of(done)
            assert text_of(done) == "delete_note n1 done"
            read = await client.call_tool("aware__read_note", {"id": "n1"})
            assert not read.is_error, text_of(read)
            other = await _approved_call(setup, client, "plain__delete_note", {"id": "n2"})
            assert not other.is_error, text_of(other)
    deleted, read_entry = records(aware)
    assert deleted["approver"] == setup.alice.id
    receipt = deleted["meta"][META_APPROVAL]
    _, claims = _jws.peek(receipt, TYP_APPROVAL)
    assert claims["iss"] == claims["approver"] == setup.alice.id
    assert META_APPROVAL not in read_entry["meta"]
    assert read_entry["approver"] is None
    [entry] = records(plain)
    assert [k for k in entry["meta"] if k.startswith("io.agentguard/")] == []
    assert receipt not in str(entry)


@pytest.mark.anyio
async def test_aware_upstream_without_approval_keys_refuses_approved_calls(
    setup: Setup, tmp_path: Path
) -> None:
    """The proxy approved, but the upstream trusts no approval keys: it fails closed."""
    params, aware, _ = _proxy(setup, tmp_path)
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            done = await _approved_call(setup, client, "aware__delete_note", {"id": "n1"})
            assert done.is_error
            assert "approval_required" in text_of(done)
            read = await client.call_tool("aware__read_note", {"id": "n1"})
            assert not read.is_error, text_of(read)
    assert [r["name"] for r in records(aware)] == ["read_note"]


@pytest.mark.anyio
async def test_receipt_found_when_the_guard_waited_for_the_answer(setup: Setup) -> None:
    """approval_mode="block": the request is filed and answered inside the guard's run."""
    seen: list[str | None] = []
    tool = types.Tool(
        name="wipe",
        input_schema={"type": "object"},
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        authority = current_authority()
        seen.append(authority.approval.approver if authority and authority.approval else None)
        return types.CallToolResult(content=[types.TextContent(text="wiped")])

    upstream: Server[Any] = Server("vault", on_list_tools=list_tools, on_call_tool=call_tool)
    upstream.middleware.append(
        DelegationVerifier(
            "vault",
            trusted_roots=[setup.org.principal],
            revocations=MemoryStore(),
            approval_keys=[setup.alice.principal],
        )
    )

    def approve(request: ApprovalRequest, book: ApprovalBook) -> None:
        book.approve(request.id, setup.alice)

    guard = Guard(
        setup.policy_file,
        home=setup.home,
        approver=CallbackChannel(approve),
        approval_mode="block",
    )
    delegation = setup.delegation([{"tool": "vault/wipe", "approval": True}])
    try:
        with anyio.fail_after(30):
            async with (
                serve_in_process(upstream.streamable_http_app()) as base,
                AsyncExitStack() as stack,
            ):
                spec = UpstreamSpec(
                    namespace="vault", url=f"{base}/mcp", trusted=True, agentguard=True
                )
                proxy = GuardedProxy(
                    guard,
                    [Upstream(spec)],
                    caller=Caller(delegation.serialize(), holder=setup.agent),
                )
                await proxy.start(stack)
                async with Client(proxy.server, mode="legacy") as client:
                    result = await client.call_tool("wipe", {})
    finally:
        guard.close()
    assert not result.is_error, text_of(result)
    assert seen == [setup.alice.id]
