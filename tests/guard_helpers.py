"""Old names kept for tests/adapters/mcp until it moves to :mod:`agentguard.testing`.

Everything else imports :mod:`agentguard.testing` (and the fixtures of
``tests/conftest.py``); do not add to this module.
"""

from __future__ import annotations

from typing import Any

from agentguard.guard import Guard
from agentguard.testing import START, World
from agentguard.testing import RecordingTool as Recorder

__all__ = ["START", "Recorder", "World", "make_guard", "manual_world"]


def manual_world() -> World:
    """Same as ``World()``."""
    return World()


def make_guard(world: World, **options: Any) -> Guard:
    """Same as ``world.guard(**options)``."""
    return world.guard(**options)
