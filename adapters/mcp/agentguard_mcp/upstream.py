"""Connections from the proxy to its upstream MCP servers, built on ``mcp.Client``.

Each upstream is one long-lived client session. The proxy sends it rebuilt
requests only: the tool's own name, the (possibly edited) arguments and an
allow-listed ``_meta``; nothing the downstream caller sent is passed through
as is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agentguard_mcp.config import UpstreamSpec

__all__ = ["ToolTraits", "Upstream", "otel_environment", "tool_fingerprint", "tool_traits"]

_LIST_PAGE_CAP = 50


def otel_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` variables of this process, handed to spawned upstreams.

    The SDK starts stdio servers with a minimal environment; without these their
    spans would not reach the same collector and the trace would break.
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


@dataclass(frozen=True)
class ToolTraits:
    """What the proxy believes about a tool's effects (DESIGN §9: annotations feed step-up)."""

    read_only: bool
    destructive: bool
    trusted: bool


def tool_traits(tool: types.Tool, *, trusted: bool) -> ToolTraits:
    """Read-only / destructive as the spec defaults them; untrusted annotations are ignored.

    An unannotated tool, or any tool of an untrusted upstream, is treated as
    destructive and not read-only: annotations are hints a server could lie in.
    """
    notes = tool.annotations if trusted else None
    if notes is None:
        return ToolTraits(read_only=False, destructive=True, trusted=trusted)
    read_only = notes.read_only_hint is True
    destructive = not read_only and notes.destructive_hint is not False
    return ToolTraits(read_only=read_only, destructive=destructive, trusted=True)


def tool_fingerprint(tool: types.Tool) -> str:
    """Digest of everything that defines what a tool does (rug-pull detection)."""
    shape = tool.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        include={"name", "description", "input_schema", "output_schema", "annotations"},
    )
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


class Upstream:
    """One upstream server: its spec, its live client session and its last tool listing."""

    def __init__(self, spec: UpstreamSpec, *, read_timeout: float | None = 120.0) -> None:
        self.spec = spec
        self.read_timeout = read_timeout
        self._client: Client | None = None
        self.tools: dict[str, types.Tool] = {}
        self.server_name: str | None = None

    @property
    def namespace(self) -> str:
        """The namespace this upstream's tools live in."""
        return self.spec.namespace

    def _target(self, stack: AsyncExitStack) -> Any:
        spec = self.spec
        if spec.command is not None:
            return StdioServerParameters(
                command=spec.command[0],
                args=list(spec.command[1:]),
                env={**otel_environment(), **spec.env},
                cwd=spec.cwd,
            )
        assert spec.url is not None  # noqa: S101 - UpstreamSpec guarantees one of the two
        # Only the proxy's own configured headers: never anything of the caller's.
        http = httpx2.AsyncClient(
            headers=dict(spec.headers),
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        stack.push_async_callback(http.aclose)
        return streamable_http_client(spec.url, http_client=http)

    async def connect(self, stack: AsyncExitStack) -> None:
        """Open the session (its lifetime is ``stack``'s) and read the tool listing."""
        # cache=None: a listing must always come from the upstream itself, so a
        # changed definition is noticed (rug-pull defence). A stdio upstream is one
        # long-lived session, what the 2025-11-25 era is made for; the stateless
        # era would repeat client info and capabilities in every request (about
        # 0.3 ms per call, benchmarks/mcp_proxy.py).
        mode = "legacy" if self.spec.command is not None else "auto"
        client = Client(
            self._target(stack), mode=mode, cache=None, read_timeout_seconds=self.read_timeout
        )
        await stack.enter_async_context(client)
        self._client = client
        info = client.server_info
        self.server_name = info.name if info is not None else None
        await self.refresh()

    @property
    def client(self) -> Client:
        """The live client session.

        Raises:
            RuntimeError: the upstream is not connected.
        """
        if self._client is None:
            raise RuntimeError(f"upstream {self.namespace} is not connected")
        return self._client

    async def refresh(self) -> dict[str, types.Tool]:
        """Fetch the complete tool listing again (bounded pagination)."""
        tools: dict[str, types.Tool] = {}
        cursor: str | None = None
        for _ in range(_LIST_PAGE_CAP):
            page = await self.client.list_tools(cursor=cursor)
            for tool in page.tools:
                tools[tool.name] = tool
            cursor = page.next_cursor
            if cursor is None:
                break
        self.tools = tools
        return tools

    async def call(
        self, name: str, arguments: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> types.CallToolResult:
        """Call ``name`` with rebuilt params: exactly these arguments and this ``_meta``."""
        return await self.client.call_tool(
            name,
            dict(arguments),
            # RequestParamsMeta is a TypedDict with extra_items (PEP 728), which
            # mypy cannot match a plain dict against.
            meta=dict(meta) if meta else None,  # type: ignore[arg-type]
        )
