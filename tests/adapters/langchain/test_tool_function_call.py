"""A guarded StructuredTool's function is called as LangChain's own ``_run`` calls it.

GuardedTool calls a StructuredTool's function itself (its parameters looked up
once per function) instead of through ``StructuredTool._run``, which looks them
up again on every call. What the function receives must not change: the
arguments, a child callback manager for a ``callbacks`` parameter, the run's
config for a ``RunnableConfig`` parameter; a tool that overrides ``_run`` is
still called through it.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any
from uuid import UUID

import langchain_core.tools.structured as structured
import pytest
from agentguard_langchain import guard_tools
from langchain_core.callbacks import BaseCallbackHandler, CallbackManager, Callbacks
from langchain_core.callbacks.manager import AsyncCallbackManager, CallbackManagerForToolRun
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools.base import _get_runnable_config_param

from agentguard import Delegation, Identity
from agentguard.guard import Guard


class Starts(BaseCallbackHandler):
    """Remembers the run id of every tool start."""

    def __init__(self) -> None:
        self.runs: list[UUID] = []

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kw: Any
    ) -> None:
        self.runs.append(run_id)


def _recording_tool(seen: list[dict[str, Any]]) -> StructuredTool:
    def lookup(order: str, settings: RunnableConfig, callbacks: Callbacks = None) -> str:
        seen.append({"order": order, "callbacks": callbacks, "config": settings})
        return f"order {order}: shipped"

    async def alookup(order: str, settings: RunnableConfig, callbacks: Callbacks = None) -> str:
        seen.append({"order": order, "callbacks": callbacks, "config": settings})
        return f"order {order}: shipped (async)"

    return StructuredTool.from_function(
        func=lookup, coroutine=alookup, name="lookup", description="Look up an order."
    )


def _received(
    tool: BaseTool, seen: list[dict[str, Any]], *, run_async: bool
) -> tuple[dict[str, Any], UUID]:
    """What the function received for one call, and the run id of the call."""
    starts = Starts()
    config: RunnableConfig = {"callbacks": [starts], "tags": ["t1"], "metadata": {"m": 1}}
    args = {"order": "A1"}
    if run_async:
        asyncio.run(tool.ainvoke(args, config))
    else:
        tool.invoke(args, config)
    (run_id,) = starts.runs
    return seen.pop(), run_id


@pytest.mark.parametrize("run_async", [False, True], ids=["sync", "async"])
def test_the_function_receives_what_the_bare_tool_gives_it(
    guard: Guard, delegation: Delegation, bot: Identity, run_async: bool
) -> None:
    seen: list[dict[str, Any]] = []
    bare = _recording_tool(seen)
    (guarded,) = guard_tools(
        [_recording_tool(seen)], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    for tool in (bare, guarded):
        got, run_id = _received(tool, seen, run_async=run_async)
        assert got["order"] == "A1"
        # A child of this very tool run, as StructuredTool._run makes it.
        manager = got["callbacks"]
        assert isinstance(manager, AsyncCallbackManager if run_async else CallbackManager)
        assert manager.parent_run_id == run_id
        assert [type(h) for h in manager.handlers] == [Starts]
        # The run's config under the function's RunnableConfig parameter.
        assert got["config"]["tags"] == ["t1"]
        assert got["config"]["metadata"]["m"] == 1
    assert seen == []


def test_the_function_parameters_are_looked_up_once_not_per_call(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """StructuredTool._run resolves its function's type hints on every call; guarded, the
    wrapper already did that for itself, so the function's are not resolved again."""
    lookups: list[object] = []
    original = _get_runnable_config_param

    def counting(func: Any) -> str | None:
        lookups.append(func)
        return original(func)

    monkeypatch.setattr(structured, "_get_runnable_config_param", counting)
    seen: list[dict[str, Any]] = []
    bare = _recording_tool(seen)
    (guarded,) = guard_tools(
        [_recording_tool(seen)], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    lookups.clear()  # building the tools looked them up
    for _ in range(3):
        bare.invoke({"order": "A1"})
    assert len(lookups) == 3  # the bare tool: once per call
    lookups.clear()
    for _ in range(3):
        assert guarded.invoke({"order": "A1"}) == "order A1: shipped"
    assert lookups == []
    assert [s["order"] for s in seen] == ["A1"] * 6


def test_a_tool_that_overrides_run_is_called_through_it(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    calls: list[str] = []

    class Audited(StructuredTool):
        def _run(
            self,
            *args: Any,
            config: RunnableConfig,
            run_manager: CallbackManagerForToolRun | None = None,
            **kwargs: Any,
        ) -> Any:
            calls.append("_run")
            return super()._run(*args, config=config, run_manager=run_manager, **kwargs)

    def lookup(order: str) -> str:
        return f"order {order}: shipped"

    tool = Audited(
        name="lookup",
        description="Look up an order.",
        func=lookup,
        args_schema=StructuredTool.from_function(lookup, description="-").args_schema,
    )
    (guarded,) = guard_tools(
        [tool], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    assert guarded.invoke({"order": "A1"}) == "order A1: shipped"
    assert calls == ["_run"]


def test_the_wrapper_still_reports_its_full_signature() -> None:
    from agentguard_langchain import GuardedTool

    for method in (GuardedTool._run, GuardedTool._arun):
        assert list(inspect.signature(method).parameters) == [
            "self",
            "args",
            "config",
            "run_manager",
            "values",
        ]
        assert inspect.signature(method).parameters["config"].annotation is RunnableConfig


def test_an_unhashable_function_is_looked_up_on_every_call(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    class Lookup:
        """A callable tool function that cannot be remembered (no hash)."""

        def __eq__(self, other: object) -> bool:
            return other is self

        __hash__ = None  # type: ignore[assignment]

        def __call__(self, order: str) -> str:
            return f"order {order}: shipped"

    tool = StructuredTool(
        name="lookup",
        description="Look up an order.",
        func=Lookup(),
        args_schema=StructuredTool.from_function(_plain_lookup, description="-").args_schema,
    )
    (guarded,) = guard_tools(
        [tool], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    assert guarded.invoke({"order": "A1"}) == tool.invoke({"order": "A1"})
    assert guarded.invoke({"order": "A2"}) == "order A2: shipped"


def _plain_lookup(order: str) -> str:
    return order
