"""The OAuth gate's per-token cache and revocation, with a real provider and a real proxy.

A token's derived chain is cached so later requests are warm, but every request through the
gate is checked against the revocation list: a revoked person or client is refused at the
gate (``initialize`` included), not only at ``tools/call``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import httpx2
import jwt
import pytest
from agentguard_mcp import GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.oauth import Authenticated
from agentguard_mcp.proxy import Caller
from agentguard_mcp.serve import FederationMapping, http_app, policy_federation
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentguard.keys import Identity
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of
from tests.adapters.mcp.test_oauth import INIT, MCP_HEADERS, serve_on
from tests.oidc.harness import PUBLIC_CLIENT, IdentityProvider, running_provider

pytestmark = pytest.mark.anyio

USERS = {"alice": ["incident-response"], "bob": ["incident-response"]}


def _federation(setup: Setup, idp: IdentityProvider, resource: str) -> None:
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [{"claim": "groups", "equals": "incident-response", "tools": ["notes/*"]}],
            }
        ]
    )


async def _initialize(resource: str, token: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.post(
            resource, json=INIT, headers={**MCP_HEADERS, "authorization": f"Bearer {token}"}
        )


@pytest.mark.parametrize("revoke", ["person", "client"])
async def test_a_revoked_principal_is_refused_at_the_gate_though_its_chain_is_cached(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path, revoke: str
) -> None:
    """``initialize`` with a cached token after revoking its person (or client): 403 revoked.

    The token is derived once (the later requests are warm), and bob's token, which shares
    nothing revoked with alice's (a person revoked), still passes.
    """
    _federation(setup, idp, resource)
    alice, bob = await idp.user_token("alice"), await idp.user_token("bob")
    derivations: list[str] = []
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            guard = build_guard(setup.home, str(setup.policy_file))
            stack.callback(guard.close)
            spec = UpstreamSpec(
                namespace="notes",
                command=tuple(notes_command(tmp_path / "n.jsonl")),
                trusted=True,
            )
            proxy = GuardedProxy(guard, [Upstream(spec)])
            await proxy.start(stack)
            federated = policy_federation(proxy)
            assert federated is not None
            oauth, mapping = federated
            await stack.enter_async_context(oauth)

            async def derive(authenticated: Authenticated, token: str) -> Caller | None:
                derivations.append(authenticated.digest)
                return await mapping(authenticated, token)

            app = http_app(proxy, oauth=oauth, federate=derive)
            await stack.enter_async_context(serve_on(port, app))

            for _ in range(2):
                assert (await _initialize(resource, alice)).status_code == 200
            assert len(derivations) == 1  # the second request used the cached chain

            principal = "user:corp.alice" if revoke == "person" else f"agent:corp.{PUBLIC_CLIENT}"
            guard.revoke("principal", principal)
            refused = await _initialize(resource, alice)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "revoked"
            assert "revoked" in refused.json()["message"]
            # No challenge to sign in again: a new token for the same person is revoked too.
            assert "insufficient_scope" not in refused.headers.get("www-authenticate", "")
            again = await _initialize(resource, alice)
            assert (again.status_code, again.json()["error"]) == (403, "revoked")

            other = await _initialize(resource, bob)
            if revoke == "person":
                assert other.status_code == 200, other.text
            else:  # bob signed in through the same client
                assert (other.status_code, other.json()["error"]) == (403, "revoked")


async def test_a_nested_claim_in_a_real_token_selects_the_tools(
    setup: Setup, port: int, resource: str, tmp_path: Path
) -> None:
    """Realm roles as Keycloak nests them (``realm_access.roles``) in the provider's tokens."""
    async with running_provider(tmp_path, resource, USERS, roles={"alice": ["responder"]}) as idp:
        setup.write_policy(
            federation=[
                {
                    "issuer": idp.issuer,
                    "audience": resource,
                    "alias": "corp",
                    "rules": [
                        {
                            "claim": "realm_access.roles",
                            "equals": "responder",
                            "tools": ["notes/read_note"],
                        }
                    ],
                }
            ]
        )
        alice, bob = await idp.user_token("alice"), await idp.user_token("bob")
        claims = jwt.decode(alice, options={"verify_signature": False})
        assert claims["realm_access"] == {"roles": ["responder"]}
        assert "realm_access" not in jwt.decode(bob, options={"verify_signature": False})
        record = tmp_path / "n.jsonl"
        with anyio.fail_after(60):
            async with AsyncExitStack() as stack:
                guard = build_guard(setup.home, str(setup.policy_file))
                stack.callback(guard.close)
                spec = UpstreamSpec(
                    namespace="notes", command=tuple(notes_command(record)), trusted=True
                )
                proxy = GuardedProxy(guard, [Upstream(spec)])
                await proxy.start(stack)
                federated = policy_federation(proxy)
                assert federated is not None
                oauth, federate = federated
                await stack.enter_async_context(oauth)
                app = http_app(proxy, oauth=oauth, federate=federate)
                await stack.enter_async_context(serve_on(port, app))
                http = await stack.enter_async_context(
                    httpx2.AsyncClient(headers={"authorization": f"Bearer {alice}"})
                )
                client = await stack.enter_async_context(
                    Client(streamable_http_client(resource, http_client=http))
                )
                assert [t.name for t in (await client.list_tools()).tools] == ["read_note"]
                ran = await client.call_tool("read_note", {"id": "n1"})
                assert not ran.is_error, text_of(ran)
                nothing = await _initialize(resource, bob)
                assert (nothing.status_code, nothing.json()["error"]) == (403, "insufficient_scope")
    assert [r["name"] for r in records(record)] == ["read_note"]


async def test_a_proxy_whose_key_may_no_longer_sign_answers_503_not_500(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """A replica whose federation key stops being valid while it runs (retired in the
    policy it loaded) refuses with a clear 503 at the gate and at token exchange."""
    _federation(setup, idp, resource)
    alice = await idp.user_token("alice")
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            guard = build_guard(setup.home, str(setup.policy_file))
            stack.callback(guard.close)
            spec = UpstreamSpec(
                namespace="notes", command=tuple(notes_command(tmp_path / "n.jsonl")), trusted=True
            )
            proxy = GuardedProxy(guard, [Upstream(spec)])
            await proxy.start(stack)
            federated = policy_federation(proxy)
            assert federated is not None
            oauth, mapping = federated
            await stack.enter_async_context(oauth)
            # The same mapping, signing with a key the policy does not list: as after the
            # replica's own key was retired.
            unlisted = FederationMapping(
                mapping.federation, Identity.generate("service:agentguard")
            )
            app = http_app(proxy, oauth=oauth, federate=unlisted)
            await stack.enter_async_context(serve_on(port, app))
            refused = await _initialize(resource, alice)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "config_error"
            assert "cannot sign chains" in refused.json()["message"]
