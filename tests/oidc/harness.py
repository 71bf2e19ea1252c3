"""A real OpenID Provider (npm ``oidc-provider``) run on loopback for the federation tests.

``provider.mjs`` configures it; ``make npm-deps`` installs it from the pinned lock file in
this directory. Without node or the installed package the tests skip loudly, and fail under
``CI=true`` (CI must run them).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import jwt
import pytest
from anyio.abc import Process
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

HERE = Path(__file__).parent
SCRIPT = HERE / "provider.mjs"
INSTALLED = HERE / "node_modules" / "oidc-provider" / "package.json"

#: The pre-registered public client the MCP client and the scripted logins use (PKCE, no secret).
PUBLIC_CLIENT = "mcp-test-client"
#: A confidential client allowed the client-credentials grant (tokens without a person).
SERVICE_CLIENT = "service-client"
SERVICE_SECRET = "service-secret-for-tests-only"
REDIRECT_URI = "http://127.0.0.1:9/callback"
#: The device authorization grant (RFC 8628), which the public client may use too.
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def require_node() -> str:
    """The node binary, or skip loudly (fail under CI=true) when the provider cannot run."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed; the identity-provider tests cannot run"
    elif not INSTALLED.exists():
        problem = "oidc-provider is not installed; run `make npm-deps` first"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the identity-provider tests: {problem}")
        pytest.skip(f"SKIPPED LOUDLY: {problem}")
    assert node is not None
    return node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SigningKey:
    """An RSA key of the provider: the private key (to forge with) and its JWK."""

    kid: str
    private: rsa.RSAPrivateKey
    jwk: dict[str, Any]

    @classmethod
    def generate(cls) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private))
        kid = "k-" + secrets.token_hex(6)
        jwk.update(kid=kid, use="sig", alg="RS256")
        return cls(kid=kid, private=private, jwk=jwk)

    def public_jwk(self) -> dict[str, Any]:
        return {k: v for k, v in self.jwk.items() if k in {"kty", "n", "e", "kid", "use", "alg"}}


@dataclass
class IdentityProvider:
    """A running oidc-provider: issuer URL, its signing keys, the resource it issues tokens for."""

    node: str
    workdir: Path
    resource: str
    users: dict[str, list[str]]
    #: Realm roles per user, carried nested in access tokens as Keycloak does
    #: (``realm_access.roles``); users not named here carry no ``realm_access``.
    roles: dict[str, list[str]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    process: Process | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        config = {
            "port": self.port,
            "issuer": self.issuer,
            "resource": self.resource,
            "jwks": {"keys": [k.jwk for k in self.keys]},
            "users": {
                u: {"groups": g, **({"roles": self.roles[u]} if u in self.roles else {})}
                for u, g in self.users.items()
            },
            "default_user": next(iter(self.users)),
            "access_token_ttl": 600,
            "clients": [
                {
                    "client_id": PUBLIC_CLIENT,
                    "token_endpoint_auth_method": "none",
                    "redirect_uris": [REDIRECT_URI],
                    "grant_types": ["authorization_code", DEVICE_GRANT],
                    "response_types": ["code"],
                },
                {
                    "client_id": SERVICE_CLIENT,
                    "client_secret": SERVICE_SECRET,
                    "grant_types": ["client_credentials"],
                    "redirect_uris": [],
                    "response_types": [],
                },
            ],
        }
        path = self.workdir / f"oidc-{self.port}.json"
        path.write_text(json.dumps(config))
        return path

    async def start(self) -> None:
        """Start the provider and wait (bounded) until it listens."""
        config = self._config()
        process = await anyio.open_process([self.node, str(SCRIPT), str(config)], cwd=HERE)
        assert process.stdout is not None
        seen = b""
        try:
            with anyio.fail_after(30):
                while b"oidc ready" not in seen:
                    seen += await process.stdout.receive()
        except BaseException:
            process.kill()
            await process.aclose()
            raise
        self.process = process

    async def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        with anyio.fail_after(10):
            await self.process.aclose()
        self.process = None

    async def rotate(self, *, keep_old: bool) -> SigningKey:
        """Restart with a new signing key first (and the old ones only if ``keep_old``)."""
        new = SigningKey.generate()
        self.keys = [new, *self.keys] if keep_old else [new]
        await self.stop()
        await self.start()
        return new

    # -- tokens ---------------------------------------------------------------

    async def service_token(self, scope: str = "tools.read") -> str:
        """A real access token from the client-credentials grant (no person)."""
        async with httpx2.AsyncClient() as http:
            reply = await http.post(
                f"{self.issuer}/token",
                data={
                    "grant_type": "client_credentials",
                    "scope": scope,
                    "resource": self.resource,
                },
                auth=(SERVICE_CLIENT, SERVICE_SECRET),
            )
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["access_token"]
        return token

    async def user_token(self, user: str, scope: str = "openid tools.read tools.call") -> str:
        """A real access token for ``user`` through the authorization code flow with PKCE."""
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        state = secrets.token_urlsafe(16)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": PUBLIC_CLIENT,
                "redirect_uri": REDIRECT_URI,
                "scope": scope,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "resource": self.resource,
                "login_hint": user,
            }
        )
        async with httpx2.AsyncClient() as http:
            params = await follow_to_callback(http, f"{self.issuer}/auth?{query}")
            assert params.get("state") == state, params
            code = params["code"]
            reply = await http.post(
                f"{self.issuer}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT_URI,
                    "client_id": PUBLIC_CLIENT,
                    "code_verifier": verifier,
                    "resource": self.resource,
                },
            )
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["access_token"]
        return token

    def forge(
        self,
        claims: dict[str, Any],
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token signed with one of the provider's private keys (as if it had issued it)."""
        signer = key or self.keys[0]
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": self.resource,
            "sub": "alice",
            "client_id": PUBLIC_CLIENT,
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "scope": "tools.read",
        }
        body.update(claims)
        header: dict[str, Any] = {"kid": signer.kid, "typ": "at+jwt"}
        header.update(headers or {})
        # A None value leaves the claim or header out.
        body = {k: v for k, v in body.items() if v is not None}
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(body, signer.private, algorithm="RS256", headers=header)


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"/>')
_ACTION = re.compile(r'<form[^>]*method="post" action="([^"]+)"')


async def approve_device(url: str, user: str, *, abort: bool = False) -> None:
    """The person's browser for the device flow: open ``url``, confirm, sign in as ``user``.

    Posts the provider's own forms (user code, confirmation) and follows its redirects
    through the scripted login and consent until the success page. With ``abort`` the
    person refuses at the confirmation instead (the provider records ``access_denied``).
    """
    async with httpx2.AsyncClient() as browser:
        reply = await browser.get(url)
        for _ in range(20):
            if reply.status_code in (302, 303):
                location = str(reply.url.join(reply.headers["location"]))
                if "/interaction/" in location:
                    location += ("&" if "?" in location else "?") + urlencode({"as": user})
                reply = await browser.get(location)
                continue
            assert reply.status_code == 200, (reply.status_code, reply.text[:500])
            if "device signed in" in reply.text:
                return
            action = _ACTION.search(reply.text)
            assert action is not None, reply.text[:500]
            fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(reply.text)}
            target = str(reply.url.join(html.unescape(action[1])))
            if abort and fields.pop("confirm", None) is not None:
                fields["abort"] = "yes"
                await browser.post(target, data=fields)
                return
            reply = await browser.post(target, data=fields)
    raise AssertionError("the device flow did not reach the success page")


async def follow_to_callback(http: httpx2.AsyncClient, url: str) -> dict[str, str]:
    """Follow the provider's redirects (scripted login and consent) to the client's callback.

    Returns the callback's query parameters (``code``, ``state``, ``iss``...).
    """
    for _ in range(10):
        reply = await http.get(url)
        assert reply.status_code in (302, 303), (reply.status_code, reply.text[:500])
        location = reply.headers["location"]
        url = location if location.startswith("http") else str(reply.url.join(location))
        if url.startswith(REDIRECT_URI):
            return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    raise AssertionError("no redirect to the callback after 10 redirects")


@asynccontextmanager
async def running_provider(
    workdir: Path,
    resource: str,
    users: Mapping[str, Sequence[str]],
    roles: Mapping[str, Sequence[str]] | None = None,
) -> AsyncIterator[IdentityProvider]:
    """Start oidc-provider on a loopback port for the duration of the block.

    ``users`` maps each user to their ``groups``; ``roles``, to realm roles carried
    nested (``realm_access.roles``).
    """
    provider = IdentityProvider(
        node=require_node(),
        workdir=workdir,
        resource=resource,
        users={u: list(g) for u, g in users.items()},
        roles={u: list(r) for u, r in (roles or {}).items()},
    )
    await provider.start()
    try:
        yield provider
    finally:
        await provider.stop()
