"""Helpers for testing MCP servers and the proxy in one event loop.

:func:`serve_app` runs a streamable-HTTP app (the proxy's ``http_app`` or an
SDK server's ``streamable_http_app()``) on a loopback port inside the caller's
event loop, so a test or benchmark can put real HTTP between client, proxy and
upstream without starting processes or polling for readiness.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_app"]


@asynccontextmanager
async def serve_app(
    app: ASGIApp, *, log_level: str = "warning", backlog: int = 64
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 in this event loop; yield its base URL.

    The socket listens before uvicorn starts, so clients can connect at once.
    The server stops when the block exits.
    """
    sock = socket.socket()
    # Accepted sockets inherit this: without it every HTTP exchange waits ~40 ms
    # for a delayed ACK (Nagle's algorithm on a pre-bound socket).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
