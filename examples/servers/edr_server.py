"""A toy endpoint-security (EDR) MCP server for the demo, run as its own process over stdio.

Tools (annotated, so a proxy that trusts this server can tell them apart):

* ``get_host_status``: read-only, the host's health and open alerts;
* ``quarantine_host``: destructive, cuts a host off the network.

Nothing is real: the answers are canned. Run: ``python examples/servers/edr_server.py``.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

_HOST = {"type": "string", "description": "Host name, e.g. web-17.emea"}

TOOLS = [
    types.Tool(
        name="get_host_status",
        description="Health and open alerts of one host.",
        input_schema={"type": "object", "properties": {"host": _HOST}, "required": ["host"]},
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
    ),
    types.Tool(
        name="quarantine_host",
        description="Cut one host off the network (privileged).",
        input_schema={
            "type": "object",
            "properties": {"host": _HOST, "reason": {"type": "string"}},
            "required": ["host", "reason"],
        },
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
]


async def _list_tools(
    ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def _call_tool(
    ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    host = str((params.arguments or {}).get("host", "?"))
    if params.name == "get_host_status":
        text = f"{host}: beaconing to 203.0.113.9 every 60 s; 3 open alerts"
    elif params.name == "quarantine_host":
        text = f"{host} quarantined (network isolated, EDR agent still reporting)"
    else:
        return types.CallToolResult(
            content=[types.TextContent(text=f"unknown tool {params.name}")], is_error=True
        )
    return types.CallToolResult(content=[types.TextContent(text=text)])


def build() -> Server[Any]:
    """The server, ready to run."""
    return Server("edr", on_list_tools=_list_tools, on_call_tool=_call_tool)


async def main() -> None:
    """Serve over stdio until the client closes the pipe."""
    server = build()
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
