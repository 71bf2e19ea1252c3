"""Fixtures for the MCP proxy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters.mcp.mcp_support import Setup, make_setup


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return make_setup(tmp_path)
