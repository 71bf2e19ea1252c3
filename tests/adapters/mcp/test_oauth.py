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
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
import uvicorn
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.oauth import Authenticated, Provider, ResourceServer, TokenRefused
from agentguard_mcp.proxy import Caller
from agentguard_mcp.serve import STATE_FEDERATED, DelegationGate, http_app, policy_federation
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from mcp.shared.exceptions import MCPError
from pydantic import AnyUrl
from starlette.types import Receive, Scope, Send

from agentguard.errors import ConfigError
from tests.adapters.mcp.mcp_support import (
    BIN,
    HERE,
    Setup,
    notes_command,
    text_of,
    write_config,
)
from tests.oidc.harness import (
    REDIRECT_URI,
    IdentityProvider,
    SigningKey,
    follow_to_callback,
    free_port,
)

pytestmark = pytest.mark.anyio

README = HERE.parents[2] / "README.md"
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
            head = await http.head(suffixed)
            assert (head.status_code, head.content) == (200, b"")

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
        "issuer_not_a_string": (
            _rs256({"iss": [idp.issuer], "aud": idp.resource, "sub": "a", "exp": t + 300}, idp),
            "wrong_issuer",
        ),
        "oversized": (idp.forge({"pad": "x" * 20_000}), "malformed_token"),
        "not_base64": ("%%%.@@@.!!!", "malformed_token"),
        "header_not_an_object": (f"{_b64(b'[1]')}.{_b64(b'{}')}.", "malformed_token"),
        "alg_does_not_fit_key": (
            _rs256(
                {"iss": idp.issuer, "aud": idp.resource, "sub": "a", "exp": t + 300},
                idp,
                alg="ES256",
            ),
            "algorithm_not_allowed",
        ),
    }


def _rs256(claims: dict[str, Any], idp: IdentityProvider, **header: Any) -> str:
    """Signed (RS256) by the provider's key by hand: PyJWT will not encode some hostile tokens."""
    header = {"alg": "RS256", "typ": "at+jwt", "kid": idp.keys[0].kid, **header}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    key = idp.keys[0].private
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


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
        # Clock skew within the 30 s leeway is tolerated, on both ends.
        t = int(time.time())
        for skewed in ({"exp": t - 10}, {"nbf": t + 10, "iat": t + 10}):
            assert (await oauth.authenticate(idp.forge(skewed))).claims["sub"] == "alice"
        for name, (token, reason) in _attacks(idp).items():
            with pytest.raises(TokenRefused) as refused:
                await oauth.authenticate(token)
            assert (name, refused.value.reason) == (name, reason)
            assert refused.value.status == 401


async def test_key_rotation_is_followed_and_a_retired_key_refused(idp: IdentityProvider) -> None:
    """The provider adds a key, then drops the old one: the proxy follows without a restart."""
    async with resource_server(idp, refetch_interval=0) as oauth:
        old = await idp.user_token("alice")
        assert (await oauth.authenticate(old)).claims["sub"] == "alice"

        added = await idp.rotate(keep_old=True)
        newer = await idp.user_token("alice")
        assert jwt.get_unverified_header(newer)["kid"] == added.kid
        assert (await oauth.authenticate(newer)).claims["sub"] == "alice"
        assert (await oauth.authenticate(old)).claims["sub"] == "alice"

        await idp.rotate(keep_old=False)
        newest = await idp.user_token("bob")
        assert (await oauth.authenticate(newest)).claims["groups"] == ["finance"]
        for retired in (old, newer):
            with pytest.raises(TokenRefused) as refused:
                await oauth.authenticate(retired)
            assert refused.value.reason == "unknown_key"


async def test_unknown_key_ids_refetch_at_most_once_per_interval(idp: IdentityProvider) -> None:
    """A flood of made-up ``kid`` values does not turn into a flood of JWKS fetches."""
    fetched: list[str] = []

    async def count(request: httpx2.Request) -> None:
        fetched.append(request.url.path)

    http = httpx2.AsyncClient(event_hooks={"request": [count]})
    async with resource_server(idp, refetch_interval=3600, http=http) as oauth:
        await oauth.authenticate(await idp.service_token())
        assert fetched == ["/.well-known/openid-configuration", "/jwks"]
        for _ in range(5):
            with pytest.raises(TokenRefused) as refused:
                await oauth.authenticate(idp.forge({}, key=SigningKey.generate()))
            assert refused.value.reason == "unknown_key"
        assert fetched == ["/.well-known/openid-configuration", "/jwks"]


async def test_provider_unreachable_fails_closed(idp: IdentityProvider) -> None:
    """Keys that cannot be fetched refuse the token (503: the provider's fault)."""
    token = await idp.service_token()
    await idp.stop()
    tried: list[str] = []

    async def count(request: httpx2.Request) -> None:
        tried.append(request.url.path)

    http = httpx2.AsyncClient(event_hooks={"request": [count]})
    async with resource_server(idp, refetch_interval=3600, http=http) as oauth:
        for _ in range(3):
            with pytest.raises(TokenRefused) as refused:
                await oauth.authenticate(token)
            assert (refused.value.reason, refused.value.status) == ("idp_unavailable", 503)
    # Tried once; the next requests within the interval are refused without waiting on it.
    assert tried == ["/.well-known/openid-configuration"]


class _Memory:
    """Token storage for the SDK's OAuth client (in memory, as a desktop client keeps it)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def test_standard_mcp_client_authenticates_through_the_provider(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The official SDK's OAuth client: discovery, dynamic registration, code flow with PKCE.

    Until the federation mapping turns the claims into a chain, an authenticated person
    reaches no tool (fail closed); a GuardedClient with a delegation works beside it.
    """
    record = tmp_path / "calls.jsonl"
    guard = build_guard(setup.home, str(setup.policy_file))
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    callback: dict[str, str] = {}

    async def login(url: str) -> None:
        # The person's browser: the provider's scripted login and consent, to the callback.
        async with httpx2.AsyncClient() as browser:
            callback.update(await follow_to_callback(browser, url))

    async def answer() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(
            code=callback["code"], state=callback.get("state"), iss=callback.get("iss")
        )

    storage = _Memory()
    auth = OAuthClientProvider(
        resource,
        OAuthClientMetadata(
            client_name="a standard MCP client",
            redirect_uris=[AnyUrl(REDIRECT_URI)],
            grant_types=["authorization_code"],
            response_types=["code"],
            token_endpoint_auth_method="none",
            scope="openid tools.read tools.call",
        ),
        storage,
        redirect_handler=login,
        callback_handler=answer,
    )
    with anyio.fail_after(60):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(guard, [Upstream(spec)])
            await proxy.start(stack)
            oauth = await stack.enter_async_context(resource_server(idp))
            await stack.enter_async_context(serve_on(port, http_app(proxy, oauth=oauth)))
            http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth))
            client = await stack.enter_async_context(
                Client(streamable_http_client(resource, http_client=http))
            )
            listed = await client.list_tools()
            assert listed.tools == []
            refused = await client.call_tool("read_note", {"id": "n1"})
            assert refused.is_error
            assert text_of(refused) == "denied by agentguard (no_credentials)"

            assert storage.client is not None  # registered dynamically at the provider
            assert storage.tokens is not None
            token = storage.tokens.access_token
            claims = (await oauth.authenticate(token)).claims
            assert (claims["sub"], claims["aud"]) == ("alice", resource)
            assert claims["client_id"] == storage.client.client_id

            delegation = setup.delegation(["notes/read_note"])
            guarded = await stack.enter_async_context(
                GuardedClient(resource, delegation, setup.agent)
            )
            names = [t.name for t in (await guarded.list_tools()).tools]
            assert names == ["read_note"]
            ran = await guarded.call_tool("read_note", {"id": "n1"})
            assert not ran.is_error, text_of(ran)


async def test_cli_proxy_with_resource_and_issuer(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The README's command (loopback addresses put in), in its own process."""
    config = write_config(setup, {"notes": {"command": notes_command(tmp_path / "n.jsonl")}})
    section = README.read_text(encoding="utf-8").split("### Behind your identity provider")[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    command = block.group(1).replace("\\\n", " ")
    for example, actual in (
        ("proxy.yaml", str(config)),
        ("127.0.0.1:8765", f"127.0.0.1:{port}"),
        ("https://mcp.example.com/mcp", resource),
        ("https://login.example.com", idp.issuer),
    ):
        assert example in command
        command = command.replace(example, actual)
    argv = shlex.split(command)
    assert argv[:3] == ["agentguard", "mcp", "proxy"]
    argv[0] = str(BIN / "agentguard")
    token = await idp.user_token("bob")
    process = await anyio.open_process(argv)
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while b"listening on" not in seen:
                seen += await process.stderr.receive()
            async with httpx2.AsyncClient() as http:
                metadata = await http.get(
                    f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
                )
                assert metadata.json()["authorization_servers"] == [idp.issuer]
                nobody = await http.post(resource, json=INIT, headers=MCP_HEADERS)
                assert nobody.status_code == 401
                assert "resource_metadata=" in nobody.headers["www-authenticate"]
                person = await http.post(
                    resource, json=INIT, headers={**MCP_HEADERS, "authorization": f"Bearer {token}"}
                )
                assert person.status_code == 200, person.text
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.aclose()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resource", "http://127.0.0.1:1/mcp"], "needs --issuer URL or a federation"),
        (["--issuer", "http://127.0.0.1:2"], "needs --resource"),
        (["--resource", "http://mcp.example.com/mcp", "--issuer", "https://idp"], "https"),
        (["--resource", "https://mcp.example.com/mcp", "--issuer", "http://idp.example"], "https"),
    ],
)
def test_cli_refuses_bad_resource_flags(
    setup: Setup, tmp_path: Path, flags: list[str], message: str
) -> None:
    config = write_config(setup, {"notes": {"command": notes_command(tmp_path / "n.jsonl")}})
    argv = [sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config)]
    done = subprocess.run(
        [*argv, "--http", "127.0.0.1:1", *flags], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_cli_refuses_resource_flags_without_http(setup: Setup, tmp_path: Path) -> None:
    """--resource and --issuer serve HTTP callers only: over stdio they are a usage error."""
    config = write_config(setup, {"notes": {"command": notes_command(tmp_path / "n.jsonl")}})
    argv = [sys.executable, "-m", "agentguard_mcp", "proxy", "--config", str(config)]
    stdio = subprocess.run(
        [*argv, "--resource", "https://m.example/mcp", "--issuer", "https://i.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stdio.returncode == 2
    assert "need --http" in stdio.stderr


async def test_hostile_header_values_cannot_break_the_challenge(
    idp: IdentityProvider, port: int
) -> None:
    """An ``alg`` or ``kid`` with quotes and line breaks: refused, the challenge stays one line."""
    evil = 'RS256"\r\nSet-Cookie: stolen=1\r\nX: "'
    tokens = [
        _unsigned({"iss": idp.issuer, "sub": "a"}, {"alg": evil, "typ": "at+jwt", "kid": "k"}),
        idp.forge({}, headers={"kid": evil}),
    ]
    async with (
        resource_server(idp) as oauth,
        serve_on(port, DelegationGate(Recorder(), proxy=None, oauth=oauth)) as base,  # type: ignore[arg-type]
        httpx2.AsyncClient() as http,
    ):
        with anyio.fail_after(30):
            for token in tokens:
                reply = await http.post(
                    f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {token}"}
                )
                assert reply.status_code == 401
                assert "set-cookie" not in reply.headers
                challenge = reply.headers["www-authenticate"]
                assert "\r" not in challenge
                assert "\n" not in challenge
                assert challenge.count('"') % 2 == 0


@pytest.mark.parametrize(
    ("discovery", "jwks", "reason"),
    [
        ({"issuer": "http://127.0.0.1:1"}, {"keys": []}, "idp_misconfigured"),
        ({"issuer": "{issuer}"}, {"keys": []}, "idp_misconfigured"),
        ({"issuer": "{issuer}", "jwks_uri": "http://keys.example/jwks"}, {}, "idp_misconfigured"),
        ({"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"}, {"keys": "all"}, "idp_misconfigured"),
        ({"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"}, [1, 2], "idp_misconfigured"),
        ({"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"}, "not json", "idp_misconfigured"),
        ({"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"}, None, "idp_unavailable"),
        ({"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"}, "x" * 600_000, "idp_unavailable"),
        (
            {"issuer": "{issuer}", "jwks_uri": "{issuer}/jwks"},
            {"keys": [1, {"kid": 2}, {"kid": "k", "use": "enc", "kty": "RSA"}]},
            "unknown_key",
        ),
    ],
)
async def test_hostile_provider_documents_fail_closed(
    discovery: dict[str, Any], jwks: Any, reason: str
) -> None:
    """Discovery and key-set documents a provider (or someone in between) gets wrong."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    port = free_port()
    issuer = f"http://127.0.0.1:{port}"

    def filled(value: Any) -> Any:
        return json.loads(json.dumps(value).replace("{issuer}", issuer))

    async def well_known(_request: Any) -> Response:
        return JSONResponse(filled(discovery))

    async def keys(_request: Any) -> Response:
        if jwks is None:
            return Response(status_code=500)
        if isinstance(jwks, str):
            return Response(jwks, media_type="application/json")
        return JSONResponse(jwks)

    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", well_known),
            Route("/jwks", keys),
        ]
    )
    resource = "http://127.0.0.1:9/mcp"
    token = jwt.encode(
        {"iss": issuer, "aud": resource, "sub": "a", "exp": int(time.time()) + 60},
        SigningKey.generate().private,
        algorithm="RS256",
        headers={"kid": "k", "typ": "at+jwt"},
    )
    async with (
        serve_on(port, app),
        ResourceServer(resource, [Provider(issuer, resource)]) as oauth,
    ):
        with anyio.fail_after(30), pytest.raises(TokenRefused) as refused:
            await oauth.authenticate(token)
    assert refused.value.reason == reason


def test_configuration_mistakes_are_refused() -> None:
    with pytest.raises(ValueError, match="https"):
        Provider("http://login.example.com", "https://mcp.example.com/mcp")
    with pytest.raises(ValueError, match="algorithms"):
        Provider("https://login.example.com", "https://mcp.example.com/mcp", algorithms=("HS256",))
    with pytest.raises(ValueError, match="leeway"):
        Provider("https://login.example.com", "https://mcp.example.com/mcp", leeway=3600)
    with pytest.raises(ValueError, match="at least one"):
        ResourceServer("https://mcp.example.com/mcp", [])
    with pytest.raises(ValueError, match="not this proxy's resource URI"):
        ResourceServer(
            "https://mcp.example.com/mcp",
            [Provider("https://login.example.com", "https://other.example.com/mcp")],
        )


async def test_derived_caller_gets_exactly_its_tools_and_the_upstream_no_token(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """The SDK's OAuth client through the proxy, the policy's ``federation:`` section mapping.

    incident-response may read notes; anything else reaches nothing. The chain is derived
    and signed by the guard's key, and the guard checks it like any other. The upstream
    is an HTTP server that records the headers it gets.
    """
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [
                    {"claim": "groups", "equals": "incident-response", "tools": ["web/read_note"]}
                ],
            }
        ]
    )
    derived: list[str] = []

    record = tmp_path / "web.jsonl"
    web_port = free_port()
    web = await anyio.open_process(notes_command(record, "--http", f"127.0.0.1:{web_port}"))
    try:
        assert web.stdout is not None
        seen = b""
        with anyio.fail_after(30):
            while b"ready" not in seen:
                seen += await web.stdout.receive()
        guard = build_guard(setup.home, str(setup.policy_file))
        spec = UpstreamSpec(namespace="web", url=f"http://127.0.0.1:{web_port}/mcp", trusted=True)
        callback: dict[str, str] = {}

        async def login(url: str) -> None:
            async with httpx2.AsyncClient() as browser:
                callback.update(await follow_to_callback(browser, url))

        async def answer() -> AuthorizationCodeResult:
            return AuthorizationCodeResult(
                code=callback["code"], state=callback.get("state"), iss=callback.get("iss")
            )

        storage = _Memory()
        auth = OAuthClientProvider(
            resource,
            OAuthClientMetadata(
                redirect_uris=[AnyUrl(REDIRECT_URI)],
                token_endpoint_auth_method="none",
                scope="openid tools.read tools.call",
            ),
            storage,
            redirect_handler=login,
            callback_handler=answer,
        )
        bob = await idp.user_token("bob")
        with anyio.fail_after(60):
            async with AsyncExitStack() as stack:
                proxy = GuardedProxy(guard, [Upstream(spec)])
                await proxy.start(stack)
                federated = policy_federation(proxy)
                assert federated is not None
                oauth, mapping = federated
                await stack.enter_async_context(oauth)

                async def derive(authenticated: Authenticated, token: str) -> Caller | None:
                    derived.append(authenticated.digest)
                    return await mapping(authenticated, token)

                app = http_app(proxy, oauth=oauth, federate=derive)
                await stack.enter_async_context(serve_on(port, app))
                http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth))
                client = await stack.enter_async_context(
                    Client(streamable_http_client(resource, http_client=http))
                )
                listed = await client.list_tools()
                assert [t.name for t in listed.tools] == ["read_note"]
                ran = await client.call_tool("read_note", {"id": "n1"})
                assert not ran.is_error, text_of(ran)
                refused = await client.call_tool("write_note", {"id": "n1", "text": "x"})
                assert refused.is_error
                assert "out_of_scope" in text_of(refused)
                # One token, one derivation: the later requests used the cached caller.
                assert len(set(derived)) == 1
                assert len(derived) == 1

                # Revoking the person stops the same token at once (its chain is cached):
                # the gate refuses every request, before the MCP layer.
                guard.revoke("principal", "user:corp.alice")
                with pytest.raises(MCPError):
                    await client.call_tool("read_note", {"id": "n1"})
                assert storage.tokens is not None
                async with httpx2.AsyncClient() as raw:
                    replayed = await raw.post(
                        resource,
                        json=INIT,
                        headers={
                            **MCP_HEADERS,
                            "authorization": f"Bearer {storage.tokens.access_token}",
                        },
                    )
                assert (replayed.status_code, replayed.json()["error"]) == (403, "revoked")

                # bob's groups reach nothing: 403 insufficient_scope before the MCP layer.
                async with httpx2.AsyncClient() as raw:
                    nothing = await raw.post(
                        resource,
                        json=INIT,
                        headers={**MCP_HEADERS, "authorization": f"Bearer {bob}"},
                    )
                assert nothing.status_code == 403
                assert 'error="insufficient_scope"' in nothing.headers["www-authenticate"]
    finally:
        web.terminate()
        with anyio.fail_after(10):
            await web.aclose()
    # The audit log holds each decision with the derived chain's people, never the token.
    audit = build_guard(setup.home, str(setup.policy_file))
    try:
        bodies = [e.body for e in audit.store.audit_entries()]
        assert audit.audit.verify() is None
    finally:
        audit.close()
    decisions = [d for d in map(json.loads, bodies) if d["type"] == "decision"]
    assert [(d["tool"], d["outcome"]) for d in decisions] == [
        ("web/read_note", "allow"),
        ("web/write_note", "deny"),
    ]
    assert storage.client is not None
    for decision in decisions:
        assert decision["path"] == [guard.policy.guard_id, f"agent:corp.{storage.client.client_id}"]
    assert storage.tokens is not None
    assert not any(storage.tokens.access_token in b for b in bodies)
    [entry] = [json.loads(line) for line in record.read_text().splitlines()]
    assert entry["name"] == "read_note"
    assert "authorization" not in {k.lower() for k in entry["headers"] or {}}
    assert storage.tokens is not None
    assert storage.tokens.access_token not in record.read_text()


async def test_cli_proxy_maps_tokens_by_the_policy_federation_section(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """With a federation section the proxy process needs no OAuth flag at all."""
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [{"claim": "groups", "equals": "finance", "tools": ["notes/read_note"]}],
            }
        ]
    )
    notes = {"command": notes_command(tmp_path / "n.jsonl"), "trusted": True}
    config = write_config(setup, {"notes": notes})
    argv = [
        str(BIN / "agentguard"), "mcp", "proxy", "--config", str(config),
        "--http", f"127.0.0.1:{port}",
    ]  # fmt: skip
    conflict = await anyio.run_process(
        [*argv, "--issuer", idp.issuer, "--resource", resource], check=False
    )
    assert conflict.returncode == 2
    assert b"drop --issuer" in conflict.stderr
    bob, alice = await idp.user_token("bob"), await idp.user_token("alice")
    process = await anyio.open_process(argv)
    try:
        assert process.stderr is not None
        seen = b""
        with anyio.fail_after(30):
            while b"listening on" not in seen:
                seen += await process.stderr.receive()
            bearer = httpx2.AsyncClient(headers={"authorization": f"Bearer {bob}"})
            async with (
                bearer as http,
                Client(streamable_http_client(resource, http_client=http)) as client,
            ):
                listed = await client.list_tools()
                assert [t.name for t in listed.tools] == ["read_note"]
                ran = await client.call_tool("read_note", {"id": "n1"})
                assert not ran.is_error, text_of(ran)
            async with httpx2.AsyncClient() as http:
                nothing = await http.post(
                    resource,
                    json=INIT,
                    headers={**MCP_HEADERS, "authorization": f"Bearer {alice}"},
                )
                assert nothing.status_code == 403
                assert nothing.json()["error"] == "insufficient_scope"
                # The process serves token exchange too, and says where.
                metadata = await http.get(
                    f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
                )
                endpoint = metadata.json()["agentguard_token_exchange_endpoint"]
                assert endpoint == f"http://127.0.0.1:{port}/agentguard/token-exchange"
                refused = await http.post(endpoint, data={"grant_type": "password"})
                assert refused.json()["error"] == "unsupported_grant_type"
    finally:
        process.terminate()
        with anyio.fail_after(10):
            await process.aclose()


def test_policy_federation_configuration_mistakes(setup: Setup) -> None:
    """Providers naming different audiences need --resource, and it must be theirs."""
    rule = {"claim": "groups", "equals": "ops", "tools": ["notes/*"]}
    setup.write_policy(
        federation=[
            {"issuer": "https://a.example", "audience": "https://m.example/mcp", "alias": "a",
             "rules": [rule]},
            {"issuer": "https://b.example", "audience": "https://n.example/mcp", "alias": "b",
             "rules": [rule]},
        ]
    )  # fmt: skip
    proxy = GuardedProxy(build_guard(setup.home, str(setup.policy_file)), [])
    with pytest.raises(ConfigError, match="different audiences"):
        policy_federation(proxy)
    with pytest.raises(ConfigError, match="not this proxy's resource URI"):
        policy_federation(proxy, "https://m.example/mcp")
    setup.write_policy()
    assert policy_federation(GuardedProxy(build_guard(setup.home, None), [])) is None


async def test_store_that_cannot_answer_refuses_a_federated_token_with_503(
    setup: Setup, idp: IdentityProvider, port: int, resource: str
) -> None:
    """Whether the derived chain is revoked cannot be told: refused, and said to be ours."""
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [{"claim": "groups", "equals": "finance", "tools": ["notes/*"]}],
            }
        ]
    )
    guard = build_guard(setup.home, str(setup.policy_file))
    proxy = GuardedProxy(guard, [])
    federated = policy_federation(proxy)
    assert federated is not None
    oauth, federate = federated
    token = await idp.user_token("bob")
    (setup.home / "state.db").unlink()
    gate = DelegationGate(Recorder(), proxy=proxy, oauth=oauth, federate=federate)
    async with oauth, serve_on(port, gate) as base, httpx2.AsyncClient() as http:
        with anyio.fail_after(30):
            reply = await http.post(
                f"{base}/mcp", json=INIT, headers={"authorization": f"Bearer {token}"}
            )
    assert reply.status_code == 503
    assert reply.json()["error"] == "store_error"
