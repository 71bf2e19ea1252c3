"""Serving the proxy: over stdio (the agent's local gate) or streamable HTTP (many callers).

Over HTTP every request must carry ``Authorization: Bearer <delegation>``; a
request without one, with a chain that does not verify, or with a delegation
that reaches none of the proxy's namespaces is refused before it reaches the
MCP layer. The header itself never travels further than this process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import anyio
from mcp.server.stdio import stdio_server
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from agentguard import Reason
from agentguard.errors import AgentGuardError, DeniedError, StoreError
from agentguard_mcp.proxy import GuardedProxy, bearer_token

__all__ = ["DelegationGate", "http_app", "serve_http", "serve_stdio"]

logger = logging.getLogger("agentguard_mcp")


async def serve_stdio(proxy: GuardedProxy) -> None:
    """Serve the proxy on this process's stdin/stdout until the client closes it."""
    async with stdio_server() as (read_stream, write_stream):
        await proxy.server.run(
            read_stream, write_stream, proxy.server.create_initialization_options()
        )


class DelegationGate:
    """ASGI middleware: refuse HTTP requests whose delegation cannot reach this proxy at all."""

    def __init__(self, app: ASGIApp, proxy: GuardedProxy) -> None:
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        delegation = bearer_token(headers.get("authorization"))
        if delegation is None:
            await _reject(send, 401, "no_credentials", "send the delegation as a Bearer token")
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


async def _reject(send: Send, status: int, reason: str, text: str) -> None:
    body = json.dumps({"error": reason, "message": f"agentguard: {text}"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="agentguard"'))
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(proxy: GuardedProxy, *, host: str = "127.0.0.1", path: str = "/mcp") -> Starlette:
    """The Starlette app serving the proxy over streamable HTTP at ``path``."""
    app = proxy.server.streamable_http_app(streamable_http_path=path, host=host)
    app.add_middleware(DelegationGate, proxy=proxy)
    return app


async def serve_http(
    proxy: GuardedProxy,
    host: str,
    port: int,
    *,
    on_ready: Callable[[], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve over streamable HTTP until cancelled (``on_ready`` runs once listening)."""
    import uvicorn

    config = uvicorn.Config(
        http_app(proxy, host=host), host=host, port=port, log_level=log_level, lifespan="on"
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
