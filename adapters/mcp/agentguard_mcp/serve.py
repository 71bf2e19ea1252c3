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
from urllib.parse import parse_qsl, urlsplit

import anyio
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from agentguard import Reason
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError, ConfigError, DeniedError, StoreError
from agentguard.federation import (
    ACCESS_TOKEN_TYPE,
    ACTOR_TOKEN_TYPE,
    DELEGATION_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    DerivedChains,
    Federation,
    FederationError,
    verify_actor_token,
)
from agentguard.keys import Identity
from agentguard.tokens import TYP_GRANT
from agentguard_mcp.oauth import Authenticated, ResourceServer, TokenRefused
from agentguard_mcp.oauth import Provider as OAuthProvider
from agentguard_mcp.proxy import STATE_CALLER, Caller, GuardedProxy, bearer_token

__all__ = [
    "EXCHANGE_PATH",
    "STATE_CALLER",
    "STATE_FEDERATED",
    "DelegationGate",
    "Federate",
    "FederationMapping",
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

#: Where the proxy serves token exchange (RFC 8693) with a :class:`FederationMapping`.
EXCHANGE_PATH = "/agentguard/token-exchange"

_CACHE_SIZE = 4096
_MAX_FORM = 64 * 1024

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
        exchange = self.exchange_url
        if oauth is not None and scope["path"] in oauth.metadata_paths():
            await _metadata(send, scope["method"], oauth, exchange)
            return
        if oauth is not None and exchange is not None and scope["path"] == EXCHANGE_PATH:
            assert isinstance(self.federate, FederationMapping)  # noqa: S101 - exchange_url
            await self._exchange(scope, receive, send, oauth, self.federate, exchange)
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

    @property
    def exchange_url(self) -> str | None:
        """The token exchange endpoint's URL, when this gate serves one."""
        if self.oauth is None or not isinstance(self.federate, FederationMapping):
            return None
        parts = urlsplit(self.oauth.resource)
        return f"{parts.scheme}://{parts.netloc}{EXCHANGE_PATH}"

    async def _exchange(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        oauth: ResourceServer,
        mapping: FederationMapping,
        endpoint: str,
    ) -> None:
        """Token exchange (RFC 8693): an access token and an actor token for a delegation."""
        if scope["method"] != "POST":
            await _reject(send, 405, "method_not_allowed", "use POST")
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            await _oauth_error(send, 400, "invalid_request", "send a form (urlencoded)")
            return
        body = await _read_body(receive, _MAX_FORM)
        if body is None:
            await _oauth_error(send, 413, "invalid_request", "the request is too large")
            return
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            pairs = [] if not body else [("", "")]
        form = dict(pairs)
        if not body or "" in form or len(form) != len(pairs):
            # RFC 6749 3.2: every parameter at most once; a form that does not parse is refused.
            await _oauth_error(send, 400, "invalid_request", "the form is malformed")
            return
        if form.get("grant_type") != TOKEN_EXCHANGE:
            await _oauth_error(send, 400, "unsupported_grant_type", f"use {TOKEN_EXCHANGE}")
            return
        expected = {
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "actor_token_type": ACTOR_TOKEN_TYPE,
            "requested_token_type": DELEGATION_TOKEN_TYPE,
        }
        for name, value in expected.items():
            given = form.get(name, value if name == "requested_token_type" else None)
            if given != value:
                await _oauth_error(send, 400, "invalid_request", f"{name} must be {value}")
                return
        for name in ("subject_token", "actor_token"):
            if not form.get(name):
                await _oauth_error(send, 400, "invalid_request", f"{name} is missing")
                return
        if "scope" in form:
            # The exchange issues what the mapping derives; granting more than a scope asked
            # for, silently, would surprise the agent. It narrows its delegation itself:
            # attenuation.
            await _oauth_error(
                send, 400, "invalid_scope", "no scope: attenuate the delegation to narrow it"
            )
            return
        for name in ("resource", "audience"):
            if name in form and form[name] != oauth.resource:
                await _oauth_error(send, 400, "invalid_target", f"{name} is not {oauth.resource}")
                return
        token = form["subject_token"]
        try:
            authenticated = await oauth.authenticate(token)
        except TokenRefused as exc:
            if exc.status == 503:
                logger.warning("token exchange refused: %s", exc)
                await _oauth_error(send, 503, "temporarily_unavailable", str(exc), exc.reason)
            else:
                await _oauth_error(
                    send, 400, "invalid_request", f"subject_token: {exc}", exc.reason
                )
            return
        now = time.time()
        try:
            actor = verify_actor_token(form["actor_token"], endpoint, now=now)
            delegation = mapping.exchange(authenticated, token, actor)
            chain = await self.proxy.averified_chain(delegation.serialize())
        except FederationError as exc:
            error = "invalid_scope" if exc.insufficient_scope else "invalid_request"
            await _oauth_error(send, 400, error, exc.short, exc.reason)
            return
        except StoreError as exc:
            logger.warning("token exchange refused: %s", exc)
            await _oauth_error(
                send, 503, "temporarily_unavailable", "the state store did not answer",
                Reason.STORE_ERROR,
            )  # fmt: skip
            return
        except ConfigError as exc:
            logger.error("token exchange refused: %s", exc)
            await _oauth_error(send, 503, "temporarily_unavailable", _CANNOT_SIGN)
            return
        except DeniedError as exc:
            await _oauth_error(send, 400, "invalid_grant", exc.short, exc.reason)
            return
        if not self.proxy.reachable_namespaces(chain):
            await _oauth_error(
                send, 400, "invalid_scope", "the token reaches none of this proxy's tools",
                Reason.OUT_OF_SCOPE,
            )  # fmt: skip
            return
        answer = {
            "access_token": delegation.serialize(),
            "issued_token_type": DELEGATION_TOKEN_TYPE,
            "token_type": "N_A",
            "expires_in": max(0, int(delegation.expires_at - now)),
        }
        await _json(send, 200, answer)

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
            except ConfigError as exc:
                # This replica's key may no longer sign chains (retired since it started):
                # refuse, say it is ours, and let the operator see why.
                logger.error("HTTP request refused: %s", exc)
                await _reject(send, 503, "config_error", _CANNOT_SIGN)
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


class FederationMapping:
    """The policy's ``federation:`` section as the gate uses it.

    Called with a validated access token, it is the :data:`Federate` mapping: the chain
    :meth:`agentguard.federation.Federation.derive` signs for the token, held by an
    ephemeral key of the proxy. :meth:`exchange` serves token exchange (RFC 8693): the
    same chain, granted to the agent's own key. Build one with :func:`policy_federation`.
    """

    def __init__(self, federation: Federation, signer: Identity) -> None:
        self.federation = federation
        self.signer = signer

    async def __call__(self, authenticated: Authenticated, token: str) -> Caller | None:
        provider = self.federation.provider_for(authenticated.claims.get("iss"))
        if provider is None:
            return None
        try:
            derived = self.federation.derive(
                authenticated.claims, provider, signer=self.signer, now=time.time(), token=token
            )
        except FederationError as exc:
            logger.info("no chain for a token of %s: %s", provider.alias, exc.short)
            return None
        return Caller(derived.delegation.serialize(), holder=derived.holder)

    def exchange(
        self, authenticated: Authenticated, token: str, actor: Ed25519PublicKey
    ) -> Delegation:
        """The chain the token's claims allow, granted to the agent's key ``actor``.

        Raises:
            FederationError: no provider is configured for the token's issuer, or the
                token's claims cannot become a chain (``insufficient_scope`` when they
                meet no rule).
        """
        provider = self.federation.provider_for(authenticated.claims.get("iss"))
        if provider is None:
            raise FederationError("no provider for this issuer", reason=Reason.UNTRUSTED_ROOT)
        derived = self.federation.derive(
            authenticated.claims,
            provider,
            signer=self.signer,
            now=time.time(),
            holder_key=actor,
            token=token,
        )
        return derived.delegation


def policy_federation(
    proxy: GuardedProxy, resource: str | None = None
) -> tuple[ResourceServer, FederationMapping] | None:
    """The protected resource and the mapping of the guard's policy ``federation:`` section.

    Each provider's access tokens are validated (:class:`ResourceServer`) and turned into
    a chain signed by its federation key (:meth:`agentguard.federation.Federation.derive`),
    which the guard trusts within the federation rules. None without the section. With
    the mapping, :func:`http_app` also serves token exchange at :data:`EXCHANGE_PATH`.

    Args:
        proxy: the proxy whose guard's policy and key are used.
        resource: the proxy's resource URI; by default the providers' (single) audience.

    Raises:
        ConfigError: the providers name different audiences and no ``resource`` is
            given, a provider's audience is not ``resource``, or the guard has no key
            to sign derived chains with, or its key is not one the policy lists as
            valid now for them (``guard_keys``, a provider's ``keys``).
    """
    guard = proxy.guard
    policy = guard.policy
    if not policy.federation:
        return None
    signer = guard.guard_identity
    if signer is None:
        raise ConfigError("the federation section needs the guard's own key to sign chains")
    federation = Federation.from_policy(policy, guard_key=signer.principal)
    # A replica whose key the policy does not list would derive chains no replica takes.
    federation.check_signer(signer, now=time.time())
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
    return oauth, FederationMapping(federation, signer)


def _is_delegation(token: str) -> bool:
    """Whether a bearer token is an agentguard delegation (its first grant's ``typ``)."""
    first = token.split("~", 1)[0]
    try:
        header = jwt.get_unverified_header(first)
    except jwt.PyJWTError:
        return False
    return header.get("typ") == TYP_GRANT


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _json(send: Send, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"pragma", b"no-cache"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _oauth_error(
    send: Send, status: int, error: str, text: str, reason: str | None = None
) -> None:
    """An OAuth error response (RFC 6749 5.2), with agentguard's reason when there is one."""
    document = {"error": error, "error_description": f"agentguard: {text}"}
    if reason is not None:
        document["agentguard_reason"] = str(reason)
    await _json(send, status, document)


async def _metadata(
    send: Send, method: str, oauth: ResourceServer, exchange: str | None = None
) -> None:
    if method not in ("GET", "HEAD"):
        await _reject(send, 405, "method_not_allowed", "use GET")
        return
    document = oauth.metadata()
    if exchange is not None:
        document["agentguard_token_exchange_endpoint"] = exchange
    body = json.dumps(document).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"max-age=300"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body if method == "GET" else b""})


#: Said when this proxy's own key may not sign federated chains (e.g. retired while running).
_CANNOT_SIGN = "this proxy cannot sign chains for identity-provider tokens now; see its log"


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
