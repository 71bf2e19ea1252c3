"""A typed MCP server (``MCPServer``, pydantic-validated tools) for the argument-schema tests.

Its tools coerce what they receive the way pydantic's lax mode does (``"5000"``
becomes ``5000``, ``"true"`` becomes ``True``, a JSON string holding a list
becomes that list), which is what made deciding on the raw JSON arguments
unsafe. Every call is appended to ``--record FILE`` as the values the tool saw,
so a test can tell whether anything ran. ``--name`` sets the name the server
reports about itself (the namespace tests).

    python bank_server.py --record FILE [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BeforeValidator


def _json_list(value: object) -> object:
    # The kind of convenience real servers add: a list may come as a JSON string.
    return json.loads(value) if isinstance(value, str) else value


def build(record: Path, name: str) -> MCPServer:
    server = MCPServer(name)
    destructive = ToolAnnotations(read_only_hint=False, destructive_hint=True)

    def note(tool: str, **seen: object) -> None:
        with record.open("a") as fh:
            fh.write(json.dumps({"name": tool, "arguments": seen}) + "\n")

    @server.tool(annotations=destructive)
    def transfer(to: str, amount: int) -> str:
        """Send money."""
        note("transfer", to=to, amount=amount)
        return f"sent {amount} to {to}"

    @server.tool(annotations=destructive)
    def purge(target: str, force: bool = False) -> str:
        """Delete a target; force skips the safety checks."""
        note("purge", target=target, force=force)
        return f"purged {target} (force={force})"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False))
    def read_files(paths: Annotated[list[str], BeforeValidator(_json_list)]) -> str:
        """Read files (the test records the paths; nothing is read)."""
        note("read_files", paths=paths)
        return f"read {len(paths)} files"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--name", default="bank")
    opts = parser.parse_args()
    build(Path(opts.record), opts.name).run("stdio")


if __name__ == "__main__":
    main()
