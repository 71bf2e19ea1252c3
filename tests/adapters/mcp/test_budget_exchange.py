"""A ``per: chain`` policy budget holds across token exchanges at the MCP proxy (issue 19).

Each exchange of the person's access token gets a delegation with a new root link;
before the fix each one was a fresh count (security review, session 26, F1). Here
a real identity provider, the proxy's exchange endpoint and a real upstream.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
import pytest
from agentguard_mcp import GuardedClient
from agentguard_mcp.serve import EXCHANGE_PATH

from agentguard.delegation import Delegation
from agentguard.federation import actor_token
from agentguard.keys import Identity, Principal
from tests.adapters.mcp.mcp_support import Setup, records, text_of
from tests.adapters.mcp.test_oauth_exchange import USERS as EXCHANGE_USERS
from tests.adapters.mcp.test_oauth_exchange import _form, _running
from tests.oidc.harness import IdentityProvider

#: The people of the real provider (the conftest's ``idp`` reads this name).
USERS = EXCHANGE_USERS

pytestmark = pytest.mark.anyio


async def test_exchanging_the_token_again_does_not_reset_a_chain_budget(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Two exchanges of alice's token (two agent keys): one call a day between them."""
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [{"claim": "groups", "equals": "incident-response", "tools": ["notes/*"]}],
            }
        ],
        budgets=[{"tools": ["notes/read_note"], "window": "1d", "calls": 1, "per": "chain"}],
    )
    token = await idp.user_token("alice")
    outcomes = []
    roots = []
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            _, base = await _running(setup, port, tmp_path, stack)
            http = await stack.enter_async_context(httpx2.AsyncClient())
            endpoint = f"{base}{EXCHANGE_PATH}"
            for name in ("agent:laptop", "agent:desktop"):
                key = Identity.generate(name)
                actor = actor_token(key, endpoint, now=time.time())
                reply = await http.post(endpoint, data=_form(token, actor))
                assert reply.status_code == 200, reply.text
                delegation = Delegation.parse(reply.json()["access_token"])
                roots.append(delegation.root.link_id)
                leaf = delegation.leaf
                holder = Identity(
                    Principal(leaf.subject, key.principal.public_key), key.private_key
                )
                async with GuardedClient(resource, delegation, holder) as client:
                    ran = await client.call_tool("read_note", {"id": "n1"})
                    outcomes.append(text_of(ran) if ran.is_error else "ran")
    assert roots[0] != roots[1]
    assert outcomes[0] == "ran"
    assert outcomes[1].startswith("denied by agentguard (budget_exhausted, decision dec_")
    assert [r["name"] for r in records(tmp_path / "n.jsonl")] == ["read_note"]
