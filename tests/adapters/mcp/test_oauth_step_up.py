"""Step-up on federated calls (issue 16 part 4), with a real provider and a real proxy.

A federation rule with ``approval: true`` files an approval request for the person's call;
an approver answers it from another process (the CLI) and the call runs once, with exactly
the arguments approved. The person on whose behalf the token acts may not approve their own
call (separation of duties); revoking them while a request is pending stops the approved call.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app, policy_federation
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from agentguard.federation import Federation
from agentguard.keys import Identity, Keyring, Principal
from tests.adapters.mcp.mcp_support import BIN, Setup, notes_command, records, text_of
from tests.adapters.mcp.test_oauth import serve_on
from tests.oidc.harness import IdentityProvider

pytestmark = pytest.mark.anyio

USERS = {"alice": ["incident-response"], "bob": ["finance"]}
CAROL = "user:carol"
ALICE = "user:corp.alice"


def _policy(setup: Setup, idp: IdentityProvider, resource: str, **extra: Any) -> None:
    """incident-response may read notes, each read approved by someone else."""
    keyring = Keyring(setup.home / "keys")
    for person in (CAROL, ALICE):
        keyring.create(person)
    setup.write_policy(
        approvers=[{"id": CAROL}, {"id": ALICE}],
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "max_depth": 1,
                "rules": [
                    {
                        "claim": "groups",
                        "equals": "incident-response",
                        "tools": ["notes/read_note"],
                        "approval": True,
                    }
                ],
            }
        ],
        **extra,
    )


async def _approvals(setup: Setup, verb: str, request_id: str, approver: str) -> tuple[int, str]:
    """``agentguard approvals VERB ID --as APPROVER`` in its own process."""
    argv = [str(BIN / "agentguard"), "approvals", verb, request_id, "--as", approver]
    argv += ["--home", str(setup.home), "--policy", str(setup.policy_file)]
    done = await anyio.run_process(argv, check=False)
    return done.returncode, (done.stdout + done.stderr).decode()


def _request_id(result: types.CallToolResult) -> str:
    assert text_of(result).startswith("approval pending, id=apr_"), text_of(result)
    request_id = (result.meta or {})["io.agentguard/decision"]["approval_request_id"]
    assert isinstance(request_id, str)
    return request_id


@asynccontextmanager
async def _proxy(
    setup: Setup, port: int, record: Path, stack: AsyncExitStack, page: str | None = None
) -> AsyncIterator[GuardedProxy]:
    guard = build_guard(setup.home, str(setup.policy_file))
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    proxy = GuardedProxy(guard, [Upstream(spec)], approval_page=page)
    await proxy.start(stack)
    federated = policy_federation(proxy)
    assert federated is not None
    oauth, federate = federated
    await stack.enter_async_context(oauth)
    await stack.enter_async_context(serve_on(port, http_app(proxy, oauth=oauth, federate=federate)))
    try:
        yield proxy
    finally:
        guard.close()


@asynccontextmanager
async def _person(resource: str, token: str, **options: Any) -> AsyncIterator[Client]:
    """A standard MCP client presenting the person's access token."""
    async with (
        httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(resource, http_client=http), **options) as client,
    ):
        yield client


async def test_a_federated_call_needing_approval_runs_once_when_someone_else_approves(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Pending; alice may not approve her own call; carol's approval runs it once, exactly."""
    _policy(setup, idp, resource)
    record = tmp_path / "calls.jsonl"
    token = await idp.user_token("alice")
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(_proxy(setup, port, record, stack))
            client = await stack.enter_async_context(_person(resource, token))
            listed = await client.list_tools()
            assert [t.name for t in listed.tools] == ["read_note"]

            pending = await client.call_tool("read_note", {"id": "n1"})
            request_id = _request_id(pending)
            # The person the token acts for is named nowhere as someone who can approve.
            assert f"{CAROL} can" in text_of(pending)
            assert ALICE not in text_of(pending)
            assert records(record) == []

            code, said = await _approvals(setup, "approve", request_id, ALICE)
            assert code != 0
            assert "is a subject or sponsor of the link that demanded this approval" in said, said
            still = await client.call_tool("read_note", {"id": "n1"})
            assert _request_id(still) == request_id  # the same request, still pending
            assert records(record) == []

            code, said = await _approvals(setup, "approve", request_id, CAROL)
            assert code == 0, said
            # Other arguments are another call: not approved, nothing runs.
            other = await client.call_tool("read_note", {"id": "n2"})
            assert _request_id(other) != request_id
            ran = await client.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)
            again = await client.call_tool("read_note", {"id": "n1"})
            assert again.is_error  # the approval was used up: a new request
            assert _request_id(again) not in (request_id, _request_id(other))
    assert [(r["name"], r["arguments"]) for r in records(record)] == [("read_note", {"id": "n1"})]
    audit = build_guard(setup.home, str(setup.policy_file))
    try:
        assert audit.audit.verify() is None
        bodies = [json.loads(e.body) for e in audit.store.audit_entries()]
    finally:
        audit.close()
    allowed = [d for d in bodies if d["type"] == "decision" and d["outcome"] == "allow"]
    [decision] = allowed
    assert decision["tool"] == "notes/read_note"
    assert decision["approval"]["approver"] == CAROL
    assert decision["approval"]["assurance"] == "signed"
    assert decision["path"][-1].startswith("agent:corp.")
    assert not any(token in json.dumps(b) for b in bodies)


async def test_revoking_the_person_while_a_request_is_pending_refuses_the_approved_call(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The approval was given, but the person was revoked meanwhile: the call never runs."""
    _policy(setup, idp, resource)
    record = tmp_path / "calls.jsonl"
    token = await idp.user_token("alice")
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(_proxy(setup, port, record, stack))
            client = await stack.enter_async_context(_person(resource, token))
            request_id = _request_id(await client.call_tool("read_note", {"id": "n1"}))
            code, said = await _approvals(setup, "approve", request_id, CAROL)
            assert code == 0, said
            argv = [str(BIN / "agentguard"), "revoke", "--principal", ALICE]
            argv += ["--home", str(setup.home), "--policy", str(setup.policy_file)]
            revoked = await anyio.run_process(argv, check=False)
            assert revoked.returncode == 0, revoked.stderr.decode()
            # The gate refuses the token's every request now, before the MCP layer.
            with pytest.raises(MCPError):
                await client.call_tool("read_note", {"id": "n1"})
    assert records(record) == []
    # The approval stands, unused: the revocation, not a missing answer, stopped the call.
    guard = build_guard(setup.home, str(setup.policy_file))
    try:
        row = guard.store.approval_get(request_id)
        assert row is not None
        assert (row.status, row.uses) == ("approved", 0)
    finally:
        guard.close()


async def test_a_grant_below_a_federated_root_demanding_approval(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """A chain derived for an agent's own key, extended by the agent with ``approval: true``.

    The demand comes from link 1 (the agent's): the person the root acts for may not
    approve it; carol may, and the call runs once.
    """
    _policy(setup, idp, resource)
    # The root rule needs no approval here: the demand is the sub-agent grant's own.
    setup.write_policy(
        approvers=[{"id": CAROL}, {"id": ALICE}],
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "max_depth": 1,
                "rules": [{"claim": "groups", "equals": "incident-response", "tools": ["notes/*"]}],
            }
        ],
    )
    record = tmp_path / "calls.jsonl"
    token = await idp.user_token("alice")
    keyring = Keyring(setup.home / "keys")
    worker = keyring.create("agent:worker")
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            proxy = await stack.enter_async_context(_proxy(setup, port, record, stack))
            guard = proxy.guard
            assert guard.guard_identity is not None
            federation = Federation.from_policy(
                guard.policy, guard_key=guard.guard_identity.principal
            )
            provider = federation.providers[0]
            oauth, _ = policy_federation(proxy) or (None, None)
            assert oauth is not None
            async with oauth:
                claims = (await oauth.authenticate(token)).claims
            agent_key = Ed25519PrivateKey.generate()
            derived = federation.derive(
                claims,
                provider,
                signer=guard.guard_identity,
                now=time.time(),
                holder_key=agent_key.public_key(),
                token=token,
            )
            assert derived.holder is None  # the agent keeps its private key
            root = derived.delegation
            # The token's client holds the root with its own key and delegates on.
            holder = Identity(Principal(root.leaf.subject, agent_key.public_key()), agent_key)
            chain = root.attenuate(
                holder, worker.principal, [{"tool": "notes/read_note", "approval": True}]
            )
            client = await stack.enter_async_context(GuardedClient(resource, chain, worker))
            pending = await client.call_tool("read_note", {"id": "n1"})
            request_id = _request_id(pending)
            code, said = await _approvals(setup, "approve", request_id, ALICE)
            assert code != 0
            assert "is a subject or sponsor of the link that demanded this approval" in said, said
            code, said = await _approvals(setup, "approve", request_id, CAROL)
            assert code == 0, said
            ran = await client.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)
    assert [(r["name"], r["arguments"]) for r in records(record)] == [("read_note", {"id": "n1"})]


async def test_a_client_with_url_elicitation_is_sent_to_the_approval_page(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Where the page's answers count, the federated caller is offered it (never a form)."""
    _policy(setup, idp, resource, approval={"grant_rule_assurance": "authenticated"})
    record = tmp_path / "calls.jsonl"
    token = await idp.user_token("alice")
    page = "http://127.0.0.1:8780/"
    offered: list[types.ElicitRequestParams] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        offered.append(params)
        return types.ElicitResult(action="accept")

    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(_proxy(setup, port, record, stack, page))
            client = await stack.enter_async_context(
                _person(resource, token, mode="legacy", elicitation_callback=elicit)
            )
            pending = await client.call_tool("read_note", {"id": "n1"})
            request_id = _request_id(pending)
            assert f"approval page: {page}" in text_of(pending)
            assert records(record) == []
            # Carol approves on the page (what it records, from another guard on the state).
            web = build_guard(setup.home, str(setup.policy_file))
            try:
                web.approvals.answer(
                    request_id, approver=CAROL, approve=True, channel="web",
                    assurance="authenticated",
                )  # fmt: skip
            finally:
                web.close()
            ran = await client.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)
    [url] = offered
    assert isinstance(url, types.ElicitRequestURLParams)
    assert (url.url, url.elicitation_id) == (page, request_id)
    assert [(r["name"], r["arguments"]) for r in records(record)] == [("read_note", {"id": "n1"})]


async def test_without_separation_of_duties_the_person_may_approve_their_own_call(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The refusal above is the policy's: with ``separation_of_duties: false`` alice may."""
    _policy(setup, idp, resource, approval={"separation_of_duties": False})
    record = tmp_path / "calls.jsonl"
    token = await idp.user_token("alice")
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(_proxy(setup, port, record, stack))
            client = await stack.enter_async_context(_person(resource, token))
            request_id = _request_id(await client.call_tool("read_note", {"id": "n1"}))
            code, said = await _approvals(setup, "approve", request_id, ALICE)
            assert code == 0, said
            ran = await client.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)
    assert [(r["name"], r["arguments"]) for r in records(record)] == [("read_note", {"id": "n1"})]
