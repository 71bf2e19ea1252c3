"""A small MCP server for the proxy tests (low-level ``Server``), run as its own process.

Tools: ``read_note`` (annotated read-only), ``delete_note`` (annotated
destructive) and ``write_note`` (no annotations). Every ``tools/call`` it
receives is appended as one JSON line to ``--record FILE`` (name, arguments,
``_meta`` and, over HTTP, the request headers), so tests can assert what
crossed the proxy. With ``--verify NAMESPACE`` it installs
``agentguard_mcp.verify.DelegationVerifier`` (roots from ``--root-key``,
revocations from ``--revocations``, keys trusted for approval receipts from
each ``--approval-key``, with ``--min-assurance``).

    python notes_server.py --record FILE [--http HOST:PORT] [--verify NS --root-key F]
        [--approval-key F ...] [--min-assurance LEVEL]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from agentguard_mcp.verify import DelegationVerifier, current_authority
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server

from agentguard.keys import Principal
from agentguard.store.sqlite import SQLiteStore

TOOLS = [
    types.Tool(
        name="read_note",
        description="Read a note.",
        input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False),
    ),
    types.Tool(
        name="delete_note",
        description="Delete a note.",
        input_schema={"type": "object", "properties": {"id": {"type": "string"}}},
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
    ),
    types.Tool(
        name="write_note",
        description="Write a note.",
        input_schema={
            "type": "object",
            "properties": {"id": {"type": "string"}, "text": {"type": "string"}},
        },
    ),
]


def build(record: Path, verifier: DelegationVerifier | None) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        headers = getattr(ctx.request, "headers", None)
        authority = current_authority()
        entry = {
            "name": params.name,
            "arguments": params.arguments,
            "meta": dict(ctx.meta or {}),
            "headers": dict(headers) if headers is not None else None,
            "holder": authority.holder if authority is not None else None,
            "approver": authority.approval.approver
            if authority is not None and authority.approval is not None
            else None,
        }
        with record.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        note = (params.arguments or {}).get("id", "?")
        return types.CallToolResult(content=[types.TextContent(text=f"{params.name} {note} done")])

    server: Server[Any] = Server("notes", on_list_tools=list_tools, on_call_tool=call_tool)
    if verifier is not None:
        server.middleware.append(verifier)
    return server


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--http")
    parser.add_argument("--verify")
    parser.add_argument("--root-key")
    parser.add_argument("--revocations")
    parser.add_argument("--approval-key", action="append", default=[])
    parser.add_argument("--min-assurance", default="signed")
    opts = parser.parse_args()
    verifier = None
    if opts.verify:
        doc = json.loads(Path(opts.root_key).read_text())
        store = SQLiteStore(opts.revocations) if opts.revocations else None
        approval_keys = []
        for key_file in opts.approval_key:
            key = json.loads(Path(key_file).read_text())
            approval_keys.append(Principal.from_jwk(key["id"], key["jwk"]))
        verifier = DelegationVerifier(
            opts.verify,
            trusted_roots=[Principal.from_jwk(doc["id"], doc["jwk"])],
            revocations=store,
            approval_keys=approval_keys,
            min_assurance=opts.min_assurance,
        )
    server = build(Path(opts.record), verifier)
    if opts.http:
        import uvicorn

        host, _, port = opts.http.rpartition(":")
        config = uvicorn.Config(
            server.streamable_http_app(host=host), host=host, port=int(port), log_level="warning"
        )
        web = uvicorn.Server(config)

        async def announce() -> None:
            while not web.started:
                await anyio.sleep(0.01)
            print("ready", flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(announce)
            await web.serve()
        return
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
    sys.exit(0)
