"""Token exchange (RFC 8693) at the proxy, with a real provider (issue 16 part 3).

An agentguard-aware agent trades the person's access token (subject token) and an actor
token signed with its own key for a delegation to that key under the same federation
mapping, then calls through the proxy with ``GuardedClient`` like any other delegation.
"""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import EXCHANGE_PATH, FederationMapping, http_app, policy_federation

from agentguard import _jws
from agentguard.delegation import Delegation
from agentguard.federation import (
    ACCESS_TOKEN_TYPE,
    ACTOR_TOKEN_TYPE,
    DELEGATION_TOKEN_TYPE,
    EVIDENCE_KEY,
    TOKEN_EXCHANGE,
    TYP_ACTOR,
    actor_token,
    token_sha256,
)
from agentguard.keys import Identity, Principal
from agentguard.tokens import Rule
from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of
from tests.adapters.mcp.test_oauth import serve_on
from tests.oidc.harness import PUBLIC_CLIENT, IdentityProvider

pytestmark = pytest.mark.anyio

USERS = {"alice": ["incident-response"], "bob": ["finance"], "carol": ["visitors"]}


def _federation(setup: Setup, idp: IdentityProvider, resource: str) -> None:
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [
                    {
                        "claim": "groups",
                        "equals": "incident-response",
                        "tools": ["notes/read_note"],
                    },
                    # A rule for a server this proxy does not have: reaches none of its tools.
                    {"claim": "groups", "equals": "finance", "tools": ["billing/*"]},
                ],
            }
        ]
    )


def _form(subject: str, actor: str, **changes: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor,
        "actor_token_type": ACTOR_TOKEN_TYPE,
        "requested_token_type": DELEGATION_TOKEN_TYPE,
    }
    form.update(changes)
    return {k: v for k, v in form.items() if v is not None}


async def _running(
    setup: Setup, port: int, tmp_path: Path, stack: AsyncExitStack
) -> tuple[GuardedProxy, str]:
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
    base = await stack.enter_async_context(
        serve_on(port, http_app(proxy, oauth=oauth, federate=mapping))
    )
    return proxy, base


async def test_an_agent_exchanges_the_persons_token_for_a_delegation_to_its_key(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Discovered from the metadata; the chain is the mapping's, held by the agent's key."""
    _federation(setup, idp, resource)
    token = await idp.user_token("alice")
    key = Identity.generate("agent:laptop")
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, base = await _running(setup, port, tmp_path, stack)
            http = await stack.enter_async_context(httpx2.AsyncClient())
            metadata = (await http.get(f"{base}/.well-known/oauth-protected-resource/mcp")).json()
            endpoint = metadata["agentguard_token_exchange_endpoint"]
            assert endpoint == f"{base}{EXCHANGE_PATH}"
            actor = actor_token(key, endpoint, now=time.time())
            reply = await http.post(endpoint, data=_form(token, actor))
            assert reply.status_code == 200, reply.text
            assert reply.headers["cache-control"] == "no-store"
            answer = reply.json()
            assert answer["issued_token_type"] == DELEGATION_TOKEN_TYPE
            assert answer["token_type"] == "N_A"
            assert 0 < answer["expires_in"] <= 600
            delegation = Delegation.parse(answer["access_token"])
            leaf = delegation.leaf
            assert leaf.subject == f"agent:corp.{PUBLIC_CLIENT}"
            assert leaf.on_behalf_of == "user:corp.alice"
            assert leaf.subject_key.kid == key.kid  # granted to the agent's own key
            # The chain the proxy derives for the token itself: same rules, expiry, depth.
            assert len(delegation) == 1
            assert leaf.scope == (Rule("notes/read_note"),)
            assert leaf.expires_at <= jwt.decode(token, options={"verify_signature": False})["exp"]
            assert leaf.max_depth == 0
            assert leaf.meta is not None
            assert leaf.meta[EVIDENCE_KEY]["token_sha256"] == token_sha256(token)
            assert token not in json.dumps(answer)

            holder = Identity(Principal(leaf.subject, key.principal.public_key), key.private_key)
            client = await stack.enter_async_context(GuardedClient(resource, delegation, holder))
            assert [t.name for t in (await client.list_tools()).tools] == ["read_note"]
            ran = await client.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)
            refused = await client.call_tool("write_note", {"id": "n1", "text": "x"})
            assert text_of(refused) == "denied by agentguard (unknown_tool)"  # not listed
    assert [r["name"] for r in records(tmp_path / "n.jsonl")] == ["read_note"]


def _forged_actor(key: Identity, endpoint: str, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "aud": endpoint,
        "iat": now,
        "exp": now + 60,
        "jti": "j",
        "jwk": key.principal.public_jwk(),
    }
    body.update(claims)
    return _jws.sign({k: v for k, v in body.items() if v is not None}, key, TYP_ACTOR)


async def test_exchange_requests_that_must_be_refused(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Each one with the OAuth error and agentguard's reason; none issues a delegation."""
    _federation(setup, idp, resource)
    alice, bob = await idp.user_token("alice"), await idp.user_token("bob")
    carol = await idp.user_token("carol")
    key, other = Identity.generate("agent:laptop"), Identity.generate("agent:thief")
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            proxy, base = await _running(setup, port, tmp_path, stack)
            endpoint = f"{base}{EXCHANGE_PATH}"
            good = actor_token(key, endpoint, now=time.time())
            # The thief's signature over a body naming the laptop's key.
            stolen = _forged_actor(other, endpoint, jwk=key.principal.public_jwk())
            swapped = good.rsplit(".", 1)[0] + "." + stolen.rsplit(".", 1)[1]
            cases: dict[str, tuple[dict[str, str], int, str, str | None]] = {
                "wrong grant": (_form(alice, good, grant_type="client_credentials"), 400,
                                "unsupported_grant_type", None),
                "no subject": (_form(alice, good, subject_token=None), 400,
                               "invalid_request", None),
                "subject type": (_form(alice, good, subject_token_type="urn:x"), 400,
                                 "invalid_request", None),
                "actor type": (_form(alice, good, actor_token_type=ACCESS_TOKEN_TYPE), 400,
                               "invalid_request", None),
                "requested type": (_form(alice, good, requested_token_type=ACCESS_TOKEN_TYPE),
                                   400, "invalid_request", None),
                "no actor": (_form(alice, good, actor_token=None), 400, "invalid_request", None),
                "a scope to narrow": (_form(alice, good, scope="tools.read"), 400,
                                      "invalid_scope", None),
                "other resource": (_form(alice, good, resource="https://other.example/mcp"),
                                   400, "invalid_target", None),
                "garbage subject": (_form("not.a.jwt", good), 400, "invalid_request",
                                    "malformed_token"),
                "forged subject": (_form(idp.forge({}, key=_stranger()), good), 400,
                                   "invalid_request", "unknown_key"),
                "kid not the key": (_form(alice, stolen), 400, "invalid_request",
                                    "bad_signature"),
                "signature swapped": (_form(alice, swapped), 400, "invalid_request",
                                      "bad_signature"),
                "actor for another endpoint": (
                    _form(alice, _forged_actor(key, "https://other.example/x")), 400,
                    "invalid_request", "untrusted_root"),
                "actor expired": (_form(alice, _forged_actor(key, endpoint, iat=1, exp=61)),
                                  400, "invalid_request", "link_expired"),
                "actor lives too long": (
                    _form(alice, _forged_actor(key, endpoint, exp=int(time.time()) + 3600)),
                    400, "invalid_request", "link_expired"),
                "actor without exp": (_form(alice, _forged_actor(key, endpoint, exp=None)),
                                      400, "invalid_request", "malformed_token"),
                "actor exp not a number": (
                    _form(alice, _forged_actor(key, endpoint, exp=True)), 400,
                    "invalid_request", "malformed_token"),
                "actor without key": (_form(alice, _forged_actor(key, endpoint, jwk=None)),
                                      400, "invalid_request", "malformed_token"),
                "actor not a JWS": (_form(alice, "x.y"), 400, "invalid_request",
                                    "malformed_token"),
                "meets no rule": (_form(carol, good), 400, "invalid_scope", "out_of_scope"),
                "reaches no server here": (_form(bob, good), 400, "invalid_scope",
                                           "out_of_scope"),
            }  # fmt: skip
            async with httpx2.AsyncClient() as http:
                for name, (form, status, error, reason) in cases.items():
                    reply = await http.post(endpoint, data=form)
                    assert reply.status_code == status, (name, reply.text)
                    body = reply.json()
                    assert body["error"] == error, (name, body)
                    assert body.get("agentguard_reason") == reason, (name, body)
                    assert "access_token" not in body

                raw: list[tuple[str, bytes, dict[str, str]]] = [
                    ("json body", json.dumps(_form(alice, good)).encode(),
                     {"content-type": "application/json"}),
                    ("repeated parameter",
                     b"grant_type=a&grant_type=" + TOKEN_EXCHANGE.encode(),
                     {"content-type": "application/x-www-form-urlencoded"}),
                    ("not a form", b"\xff\xfe=&&==",
                     {"content-type": "application/x-www-form-urlencoded"}),
                    ("empty", b"", {"content-type": "application/x-www-form-urlencoded"}),
                ]  # fmt: skip
                for name, content, headers in raw:
                    reply = await http.post(endpoint, content=content, headers=headers)
                    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request"), (
                        name
                    )
                huge = await http.post(endpoint, data={"grant_type": "x" * 70_000})
                assert huge.status_code == 413
                assert (await http.get(endpoint)).status_code == 405

                # A revoked person gets nothing for a fresh token either.
                proxy.guard.revoke("principal", "user:corp.alice")
                reply = await http.post(endpoint, data=_form(alice, good))
                assert reply.status_code == 400
                assert (reply.json()["error"], reply.json()["agentguard_reason"]) == (
                    "invalid_grant",
                    "revoked",
                )

                # Whether the chain is revoked cannot be told: refused, and said to be ours.
                (setup.home / "state.db").unlink()
                reply = await http.post(endpoint, data=_form(carol, good))
                assert reply.status_code == 400  # meets no rule: refused before the store
                reply = await http.post(endpoint, data=_form(bob, good))
                assert reply.status_code == 503
                assert (reply.json()["error"], reply.json()["agentguard_reason"]) == (
                    "temporarily_unavailable",
                    "store_error",
                )


def _stranger() -> Any:
    from tests.oidc.harness import SigningKey

    return SigningKey.generate()


async def test_without_a_federation_mapping_there_is_no_exchange(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """A gate given only a resource server (no federation section) serves no exchange."""
    from agentguard_mcp.oauth import Provider, ResourceServer

    guard = build_guard(setup.home, str(setup.policy_file))
    proxy = GuardedProxy(guard, [])
    try:
        async with (
            ResourceServer(resource, [Provider(idp.issuer, resource)]) as oauth,
            serve_on(port, http_app(proxy, oauth=oauth)) as base,
            httpx2.AsyncClient() as http,
        ):
            with anyio.fail_after(30):
                metadata = await http.get(f"{base}/.well-known/oauth-protected-resource")
                assert "agentguard_token_exchange_endpoint" not in metadata.json()
                reply = await http.post(f"{base}{EXCHANGE_PATH}", data={"grant_type": "x"})
                assert reply.status_code == 401  # just another request without credentials
    finally:
        guard.close()


async def test_an_exchange_at_a_proxy_whose_key_may_no_longer_sign_is_a_clear_503(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The proxy's federation key stopped being listed (retired) while it runs: the
    exchange says it is temporarily unavailable, no traceback, no delegation."""
    _federation(setup, idp, resource)
    token = await idp.user_token("alice")
    key = Identity.generate("agent:laptop")
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
            stranger = Identity.generate("service:agentguard")  # not the key the policy lists
            unlisted = FederationMapping(mapping.federation, stranger)
            base = await stack.enter_async_context(
                serve_on(port, http_app(proxy, oauth=oauth, federate=unlisted))
            )
            http = await stack.enter_async_context(httpx2.AsyncClient())
            endpoint = f"{base}{EXCHANGE_PATH}"
            reply = await http.post(
                endpoint, data=_form(token, actor_token(key, endpoint, now=time.time()))
            )
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"] == "temporarily_unavailable"
            assert "cannot sign chains" in reply.json()["error_description"]
            assert "access_token" not in reply.json()
