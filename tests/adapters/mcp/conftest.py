"""Fixtures for the MCP proxy tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.adapters.mcp.mcp_support import Setup, make_setup
from tests.oidc.harness import IdentityProvider, free_port, running_provider


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)


@pytest.fixture
def port() -> int:
    """The proxy's port, chosen before anything starts: the resource URI names it."""
    return free_port()


@pytest.fixture
def resource(port: int) -> str:
    """The proxy's resource URI (the audience of the identity provider's tokens)."""
    return f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
async def idp(
    tmp_path: Path, resource: str, request: pytest.FixtureRequest
) -> AsyncIterator[IdentityProvider]:
    """The real OpenID provider on loopback, with the people (and their groups) the
    test module names in ``USERS``."""
    async with running_provider(tmp_path, resource, request.module.USERS) as provider:
        yield provider
