"""``@modelcontextprotocol/server-filesystem`` (npm, via npx) behind the stdio proxy.

The server may touch the whole test directory; the delegation narrows writes
and reads to ``allowed/`` with ``within`` predicates on the ``path`` argument.
The package is pinned in ``npm/package.json`` and installed by ``make npm-deps``
before the tests run, so npx never downloads anything here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest
from mcp import Client

from agentguard.guard import Guard
from tests.adapters.mcp.mcp_support import HERE, Setup, proxy_params, text_of

pytestmark = pytest.mark.anyio

NPM_DIR = HERE / "npm"
PACKAGE = "@modelcontextprotocol/server-filesystem@2026.8.31"
INSTALLED = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-filesystem"


@pytest.fixture(autouse=True)
def _node() -> None:
    if shutil.which("npx") is None or shutil.which("node") is None:
        pytest.skip("SKIPPED LOUDLY: node/npx are not installed; the npm server test cannot run")
    if not INSTALLED.is_dir():
        pytest.skip(f"SKIPPED LOUDLY: {PACKAGE} is not installed; run `make npm-deps` first")


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def test_within_predicate_confines_the_filesystem_server(
    setup: Setup, tmp_path: Path
) -> None:
    """Writes outside ``allowed/`` are refused (``..`` and absolute paths too); reads inside run."""
    root = tmp_path / "disk"
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir(parents=True)
    outside.mkdir()
    (allowed / "readme.txt").write_text("inside")
    (outside / "secret.txt").write_text("outside")
    before = _files(root)
    where = {"path": {"within": str(allowed)}}
    delegation = setup.delegation(
        [
            {"tool": "fs/write_file", "where": where},
            {"tool": "fs/read_text_file", "where": where},
            {"tool": "fs/list_allowed_directories"},
        ]
    )
    params = proxy_params(
        [
            "proxy",
            "--delegation", str(setup.delegation_file(delegation)),
            "--as", setup.agent.id,
            "--home", str(setup.home),
            "--policy", str(setup.policy_file),
            "--namespace", "fs", "--trusted",
            "--", "npx", "--no-install", PACKAGE, str(root),
        ]
    )  # fmt: skip
    params.cwd = NPM_DIR
    with anyio.fail_after(60):
        async with Client(params, mode="legacy") as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == ["list_allowed_directories", "read_text_file", "write_file"]

            escapes = [
                str(outside / "new.txt"),
                f"{allowed}/../outside/new.txt",
                f"{allowed}/../../escaped.txt",
                f"{allowed}/./../outside/secret.txt",
                "/etc/agentguard-test.txt",
                "allowed/relative.txt",
                str(tmp_path / "escaped.txt"),
            ]
            for path in escapes:
                result = await client.call_tool("write_file", {"path": path, "content": "x"})
                assert result.is_error, path
                assert "predicate_failed" in text_of(result), (path, text_of(result))
                assert path not in text_of(result)

            read = await client.call_tool("read_text_file", {"path": str(allowed / "readme.txt")})
            assert not read.is_error, text_of(read)
            assert text_of(read) == "inside"
            sneaky = await client.call_tool(
                "read_text_file", {"path": f"{allowed}/../outside/secret.txt"}
            )
            assert sneaky.is_error
            assert "predicate_failed" in text_of(sneaky)

            # A write inside is allowed by the delegation; write_file is destructive
            # by its (trusted) annotations, so it waits for an approval first.
            inside = {"path": str(allowed / "note.txt"), "content": "hello"}
            pending = await client.call_tool("write_file", inside)
            assert text_of(pending).startswith("approval pending, id=apr_")
            assert not (allowed / "note.txt").exists()
            request_id = (pending.meta or {})["io.agentguard/decision"]["approval_request_id"]
            approver = Guard(setup.policy_file, home=setup.home)
            try:
                approver.approvals.approve(request_id, setup.alice)
            finally:
                approver.close()
            written = await client.call_tool("write_file", inside)
            assert not written.is_error, text_of(written)

    assert (allowed / "note.txt").read_text() == "hello"
    assert _files(root) == before | {"allowed/note.txt"}
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/etc/agentguard-test.txt").exists()
