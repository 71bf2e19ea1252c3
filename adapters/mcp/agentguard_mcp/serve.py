"""Serving the proxy: over stdio (the agent's local gate) or streamable HTTP (many callers).

Over HTTP every request must carry ``Authorization: Bearer <delegation>``; a
request without one, with a chain that does not verify, or with a delegation
that reaches none of the proxy's namespaces is refused before it reaches the
MCP layer. The header itself never travels further than this process.

With a :class:`~agentguard_mcp.oauth.ResourceServer`, the proxy is also an OAuth 2.1 protected
resource: it serves its metadata, answers ``401`` with a ``WWW-Authenticate`` challenge naming
it, and accepts identity-provider access tokens beside delegations. A validated access token is
removed from the request before it reaches the MCP layer; its claims travel in the request's
state (``agentguard.federated``) for the federation mapping.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import jwt
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from agentguard import Reason
from agentguard.errors import AgentGuardError, DeniedError, StoreError
from agentguard.federation import DerivedChains
from agentguard.tokens import TYP_GRANT
from agentguard_mcp.oauth import Authenticated, ResourceServer, TokenRefused
from agentguard_mcp.oauth import Provider as OAuthProvider
from agentguard_mcp.proxy import STATE_CALLER, Caller, GuardedProxy, bearer_token

__all__ = [
    "STATE_CALLER",
    "STATE_FEDERATED",
    "DelegationGate",
    "Federate",
    "policy_federation",
    "http_app",
    "serve_http",
    "serve_stdio",
]

#: Key of the validated access token (:class:`~agentguard_mcp.oauth.Authenticated`) in the
#: ASGI scope's ``state``.
STATE_FEDERATED = "agentguard.federated"

#: The federation mapping: a validated access token (its claims, and its text, to be hashed
#: into the evidence only) to the caller the proxy acts as (a delegation and the key
#: holding it), or None when the token reaches nothing.
Federate = Callable[[Authenticated, str], Awaitable[Caller | None]]

_CACHE_SIZE = 4096

logger = logging.getLogger("agentguard_mcp")


async def serve_stdio(proxy: GuardedProxy) -> None:
    """Serve the proxy on this process's stdin/stdout until the client closes it."""
    async with stdio_server() as (read_stream, write_stream):
        await proxy.server.run(
            read_stream, write_stream, proxy.server.create_initialization_options()
        )


class DelegationGate:
    """ASGI middleware: refuse HTTP requests whose delegation cannot reach this proxy at all."""

    def __init__(
        self,
        app: ASGIApp,
        proxy: GuardedProxy,
        oauth: ResourceServer | None = None,
        federate: Federate | None = None,
    ) -> None:
        self.app = app
        self.proxy = proxy
        self.oauth = oauth
        self.federate = federate
        # Derived chains and their holder keys by token digest, until the chain expires:
        # every request after the first with the same token skips the derivation. Each
        # request still verifies the chain (revocations included) before it passes.
        self._chains = DerivedChains(_CACHE_SIZE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        oauth = self.oauth
        if oauth is not None and scope["path"] in oauth.metadata_paths():
            await _metadata(send, scope["method"], oauth)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        delegation = bearer_token(headers.get("authorization"))
        if delegation is None:
            challenge = oauth.challenge() if oauth is not None else None
            await _reject(
                send,
                401,
                "no_credentials",
                "send the delegation as a Bearer token",
                challenge=challenge,
            )
            return
        if oauth is not None and not _is_delegation(delegation):
            await self._federated(scope, receive, send, oauth, delegation)
            return
        try:
            chain = await self.proxy.averified_chain(delegation)
        except DeniedError as exc:
            await _reject(send, 403, exc.reason, "the delegation does not verify")
            return
        except StoreError as exc:
            # Fail closed, and say it is ours: the revocation list could not be read.
            logger.warning("HTTP request refused: %s", exc)
            await _reject(
                send, 503, Reason.STORE_ERROR, "the state store did not answer; try again"
            )
            return
        except AgentGuardError:
            await _reject(send, 403, "malformed_token", "the delegation does not verify")
            return
        if not self.proxy.reachable_namespaces(chain):
            await _reject(
                send, 403, "out_of_scope", "the delegation reaches none of this proxy's servers"
            )
            return
        await self.app(scope, receive, send)

    async def _federated(
        self, scope: Scope, receive: Receive, send: Send, oauth: ResourceServer, token: str
    ) -> None:
        """Validate an identity-provider access token; pass the request on without it."""
        try:
            authenticated = await oauth.authenticate(token)
        except TokenRefused as exc:
            if exc.status == 503:
                logger.warning("HTTP request refused: %s", exc)
            scope_hint = " ".join(sorted(oauth.required_scopes)) or None
            challenge = (
                oauth.challenge(
                    exc.error,
                    str(exc),
                    scope=scope_hint if exc.error == "insufficient_scope" else None,
                )
                if exc.status in (401, 403)
                else None
            )
            await _reject(send, exc.status, exc.reason, str(exc), challenge=challenge)
            return
        state: dict[str, Any] = {**scope.get("state", {}), STATE_FEDERATED: authenticated}
        if self.federate is not None:
            try:
                caller = await self._derived(authenticated, token)
            except StoreError as exc:
                # Cannot tell whether the chain is revoked: refuse, and say it is ours.
                logger.warning("HTTP request refused: %s", exc)
                await _reject(
                    send, 503, Reason.STORE_ERROR, "the state store did not answer; try again"
                )
                return
            except DeniedError as exc:
                # The derived chain no longer verifies (a principal, key or link of it was
                # revoked): no challenge, since a new token for the same people would be too.
                await _reject(
                    send, 403, exc.reason, f"the chain derived from this token: {exc.short}"
                )
                return
            if caller is None:
                await _reject(
                    send,
                    403,
                    "insufficient_scope",
                    "the token reaches none of this proxy's tools",
                    challenge=oauth.challenge("insufficient_scope", "no tool is reachable"),
                )
                return
            state[STATE_CALLER] = caller
        # The bearer token goes no further than this gate: the MCP layer (and so every
        # upstream) sees the request without it; the claims and the caller are in its state.
        inner = dict(scope)
        inner["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"authorization"]
        inner["state"] = state
        await self.app(inner, receive, send)

    async def _derived(self, authenticated: Authenticated, token: str) -> Caller | None:
        """The caller for a token, or None if it reaches none of the proxy's tools.

        The derived chain and its holder key are cached per token until the chain
        expires; on every request, cached or not, the chain is verified again
        (revocations included) before the request may pass.

        Raises:
            StoreError: the revocation list could not be read to check the chain.
            DeniedError: the derived chain does not verify now (e.g. ``revoked``).
        """
        assert self.federate is not None  # noqa: S101 - checked by the caller
        cached = self._chains.get(token, now=time.time())
        if cached is not None:
            caller = Caller(cached[0].serialize(), holder=cached[1])
        else:
            derived = await self.federate(authenticated, token)
            if derived is None:
                return None
            caller = derived
        try:
            chain = await self.proxy.averified_chain(caller.delegation)
        except (StoreError, DeniedError):
            raise
        except AgentGuardError:
            return None
        if not self.proxy.reachable_namespaces(chain):
            return None
        if cached is None and caller.holder is not None:
            self._chains.put(token, chain.delegation, caller.holder)
        return caller


def policy_federation(
    proxy: GuardedProxy, resource: str | None = None
) -> tuple[ResourceServer, Federate] | None:
    """The protected resource and the mapping of the guard's policy ``federation:`` section.

    Each provider's access tokens are validated (:class:`ResourceServer`) and turned into
    a chain signed by its federation key (:meth:`agentguard.federation.Federation.derive`),
    which the guard trusts within the federation rules. None without the section.

    Args:
        proxy: the proxy whose guard's policy and key are used.
        resource: the proxy's resource URI; by default the providers' (single) audience.

    Raises:
        ConfigError: the providers name different audiences and no ``resource`` is
            given, a provider's audience is not ``resource``, or the guard has no key
            to sign derived chains with.
    """
    from agentguard.errors import ConfigError
    from agentguard.federation import Federation, FederationError

    guard = proxy.guard
    policy = guard.policy
    if not policy.federation:
        return None
    signer = guard.guard_identity
    if signer is None:
        raise ConfigError("the federation section needs the guard's own key to sign chains")
    federation = Federation.from_policy(policy, guard_key=signer.principal)
    audiences = {p.audience for p in federation.providers}
    if resource is None:
        if len(audiences) != 1:
            raise ConfigError(
                "the federation providers name different audiences; give --resource URI"
            )
        resource = audiences.pop()
    try:
        oauth = ResourceServer(
            resource, [OAuthProvider(p.issuer, p.audience) for p in federation.providers]
        )
    except ValueError as exc:
        raise ConfigError(f"federation: {exc}") from None

    async def federate(authenticated: Authenticated, token: str) -> Caller | None:
        provider = federation.provider_for(authenticated.claims.get("iss"))
        if provider is None:
            return None
        try:
            derived = federation.derive(
                authenticated.claims, provider, signer=signer, now=time.time(), token=token
            )
        except FederationError as exc:
            logger.info("no chain for a token of %s: %s", provider.alias, exc.short)
            return None
        return Caller(derived.delegation.serialize(), holder=derived.holder)

    return oauth, federate


def _is_delegation(token: str) -> bool:
    """Whether a bearer token is an agentguard delegation (its first grant's ``typ``)."""
    first = token.split("~", 1)[0]
    try:
        header = jwt.get_unverified_header(first)
    except jwt.PyJWTError:
        return False
    return header.get("typ") == TYP_GRANT


async def _metadata(send: Send, method: str, oauth: ResourceServer) -> None:
    if method not in ("GET", "HEAD"):
        await _reject(send, 405, "method_not_allowed", "use GET")
        return
    body = json.dumps(oauth.metadata()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"max-age=300"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body if method == "GET" else b""})


async def _reject(
    send: Send, status: int, reason: str, text: str, *, challenge: str | None = None
) -> None:
    body = json.dumps({"error": reason, "message": f"agentguard: {text}"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge is not None:
        headers.append((b"www-authenticate", challenge.encode("latin-1", "replace")))
    elif status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="agentguard"'))
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(
    proxy: GuardedProxy,
    *,
    host: str = "127.0.0.1",
    path: str = "/mcp",
    oauth: ResourceServer | None = None,
    federate: Federate | None = None,
) -> Starlette:
    """The Starlette app serving the proxy over streamable HTTP at ``path``.

    Args:
        proxy: the proxy to serve.
        host: the host the app is served on (for the SDK's DNS-rebinding protection).
        path: the request path of the MCP endpoint.
        oauth: when given, the proxy is also an OAuth 2.1 protected resource accepting
            that resource server's identity providers' access tokens.
        federate: the federation mapping turning a validated token into the caller the
            proxy acts as; without it an access-token caller reaches no tool.
    """
    app = proxy.server.streamable_http_app(streamable_http_path=path, host=host)
    app.add_middleware(DelegationGate, proxy=proxy, oauth=oauth, federate=federate)
    return app


async def serve_http(
    proxy: GuardedProxy,
    host: str,
    port: int,
    *,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "warning",
    oauth: ResourceServer | None = None,
    federate: Federate | None = None,
) -> None:
    """Serve over streamable HTTP until cancelled (``on_ready`` runs once listening)."""
    import uvicorn

    config = uvicorn.Config(
        http_app(proxy, host=host, oauth=oauth, federate=federate),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        # uvicorn offers no start-up hook; its flag flips once the socket listens.
        while not server.started:
            await anyio.sleep(0.01)
        if on_ready is not None:
            on_ready()

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve()
        tg.cancel_scope.cancel()
