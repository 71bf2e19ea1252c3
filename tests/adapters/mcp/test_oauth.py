"""The HTTP proxy as an OAuth 2.1 protected resource, against a real OpenID Provider.

The provider is ``oidc-provider`` (npm) run on loopback by ``tests/oidc``; tokens are the
provider's own (client credentials, or the authorization code flow with PKCE and a scripted
login), or forged with its private key / another key for the attack tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from agentguard_mcp.oauth import Provider, ResourceServer, TokenRefused
from agentguard_mcp.serve import STATE_FEDERATED, DelegationGate
from cryptography.hazmat.primitives import serialization
from starlette.types import Receive, Scope, Send

from tests.adapters.mcp.mcp_support import Setup
from tests.oidc.harness import IdentityProvider, SigningKey, free_port, running_provider

pytestmark = pytest.mark.anyio

USERS = {"alice": ["incident-response"], "bob": ["finance"]}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


@pytest.fixture
def port() -> int:
    """The proxy's port, chosen before anything starts: the resource URI names it."""
    return free_port()


@pytest.fixture
def resource(port: int) -> str:
    return f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
async def idp(tmp_path: Path, resource: str) -> AsyncIterator[IdentityProvider]:
    async with running_provider(tmp_path, resource, USERS) as provider:
        yield provider


def resource_server(idp: IdentityProvider, **kwargs: Any) -> ResourceServer:
    return ResourceServer(idp.resource, [Provider(idp.issuer, idp.resource)], **kwargs)


@asynccontextmanager
async def serve_on(port: int, app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:``port`` (the port the resource URI names)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


class Recorder:
    """An ASGI app standing for the MCP layer: records what the gate lets through."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()), ""])


# -- metadata and challenges --------------------------------------------------------------


async def test_metadata_at_both_paths_and_challenges_name_it(
    setup: Setup, idp: IdentityProvider, port: int, resource: str
) -> None:
    """RFC 9728 metadata; 401 without a token and with a bad one, each naming the metadata."""
    async with (
        resource_server(idp) as oauth,
        serve_on(port, DelegationGate(Recorder(), proxy=None, oauth=oauth)) as base,  # type: ignore[arg-type]
        httpx2.AsyncClient() as http,
    ):
        with anyio.fail_after(30):
            suffixed = f"{base}/.well-known/oauth-protected-resource/mcp"
            for url in (f"{base}/.well-known/oauth-protected-resource", suffixed):
                reply = await http.get(url)
                assert reply.status_code == 200
                assert reply.json()["resource"] == resource
                assert reply.json()["authorization_servers"] == [idp.issuer]
                assert reply.json()["bearer_methods_supported"] == ["header"]
            assert (await http.post(suffixed)).status_code == 405

            nobody = await http.post(f"{base}/mcp", json=INIT)
            assert nobody.status_code == 401
            assert nobody.json()["error"] == "no_credentials"
            assert nobody.headers["www-authenticate"] == f'Bearer resource_metadata="{suffixed}"'

            garbage = await http.post(
                f"{base}/mcp", json=INIT, headers={"authorization": "Bearer not.a.jwt"}
            )
            assert garbage.status_code == 401
            assert garbage.json()["error"] == "malformed_token"
            challenge = garbage.headers["www-authenticate"]
            assert challenge.startswith(f'Bearer resource_metadata="{suffixed}", ')
            assert 'error="invalid_token"' in challenge


async def test_real_token_passes_with_claims_and_without_the_header(
    idp: IdentityProvider, port: int
) -> None:
    """A token from the provider's code flow reaches the MCP layer as claims only."""
    recorder = Recorder()
    token = await idp.user_token("alice")
    async with (
        resource_server(idp) as oauth,
        serve_on(port, DelegationGate(recorder, proxy=None, oauth=oauth)) as base,  # type: ignore[arg-type]
        httpx2.AsyncClient() as http,
    ):
        with anyio.fail_after(30):
            reply = await http.post(
                f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {token}"}
            )
    assert reply.status_code == 200
    [scope] = recorder.scopes
    assert [k for k, _ in scope["headers"] if k.lower() == b"authorization"] == []
    assert token.encode() not in b"".join(v for _, v in scope["headers"])
    authenticated = scope["state"][STATE_FEDERATED]
    assert authenticated.claims["sub"] == "alice"
    assert authenticated.claims["groups"] == ["incident-response"]
    assert authenticated.claims["client_id"] == "mcp-test-client"
    assert authenticated.provider.issuer == idp.issuer
    assert token not in repr(authenticated)


async def test_insufficient_scope_is_a_403_challenge(idp: IdentityProvider, port: int) -> None:
    narrow = await idp.service_token("tools.read")
    wide = await idp.service_token("tools.read tools.call")
    async with (
        resource_server(idp, required_scopes=["tools.call"]) as oauth,
        serve_on(port, DelegationGate(Recorder(), proxy=None, oauth=oauth)) as base,  # type: ignore[arg-type]
        httpx2.AsyncClient() as http,
    ):
        with anyio.fail_after(30):
            refused = await http.post(
                f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {narrow}"}
            )
            allowed = await http.post(
                f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {wide}"}
            )
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="tools.call"' in challenge
    assert "resource_metadata=" in challenge
    assert allowed.status_code == 200


# -- attacks ------------------------------------------------------------------------------


def _attacks(idp: IdentityProvider) -> dict[str, tuple[str, str]]:
    """Forged or altered tokens, each with the reason it must be refused with."""
    t = int(time.time())
    stranger = SigningKey.generate()
    public_pem = (
        idp.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs256 = _hs256_with_public_key(idp, public_pem, t)
    good = idp.forge({})
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = "mallory"
    tampered = ".".join([head, _b64(json.dumps(claims).encode()), sig])
    return {
        "expired": (idp.forge({"exp": t - 120, "iat": t - 900}), "token_expired"),
        "not_yet_valid": (idp.forge({"nbf": t + 600}), "token_not_yet_valid"),
        "wrong_audience": (idp.forge({"aud": "http://127.0.0.1:1/other"}), "wrong_audience"),
        "wrong_issuer": (idp.forge({"iss": "http://127.0.0.1:2"}), "wrong_issuer"),
        "alg_none": (
            _unsigned(
                {"iss": idp.issuer, "aud": idp.resource, "sub": "alice", "exp": t + 300},
                {"alg": "none", "typ": "at+jwt", "kid": idp.keys[0].kid},
            ),
            "algorithm_not_allowed",
        ),
        "hs256_public_key": (hs256, "algorithm_not_allowed"),
        "unknown_kid": (idp.forge({}, key=stranger), "unknown_key"),
        "stranger_key_known_kid": (
            idp.forge({}, key=stranger, headers={"kid": idp.keys[0].kid}),
            "bad_signature",
        ),
        "tampered": (tampered, "bad_signature"),
        "no_typ": (idp.forge({}, headers={"typ": "JWT"}), "wrong_token_type"),
        "no_exp": (idp.forge({"exp": None}), "missing_claim"),
        "no_kid": (idp.forge({}, headers={"kid": None}), "unknown_key"),
    }


def _hs256_with_public_key(idp: IdentityProvider, public_pem: bytes, t: int) -> str:
    """HS256 keyed with the provider's public key (PyJWT refuses to do this, so by hand)."""
    header = {"alg": "HS256", "typ": "at+jwt", "kid": idp.keys[0].kid}
    claims = {"iss": idp.issuer, "aud": idp.resource, "sub": "alice", "exp": t + 300}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def test_attack_tokens_are_refused_with_clear_reasons(idp: IdentityProvider) -> None:
    async with resource_server(idp) as oauth:
        # A real token verifies first: the refusals below are not a broken set-up.
        real = await oauth.authenticate(await idp.service_token())
        assert real.claims["sub"] == "service-client"
        for name, (token, reason) in _attacks(idp).items():
            with pytest.raises(TokenRefused) as refused:
                await oauth.authenticate(token)
            assert (name, refused.value.reason) == (name, reason)
            assert refused.value.status == 401
