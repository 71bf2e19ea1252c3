"""Sub-agents: derive a narrower delegation for a sub-agent's tools in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.tools import BaseTool

from agentguard import Clock, Delegation, Identity, Principal, Rule
from agentguard_langchain._tools import GuardedTool

__all__ = ["attenuate_for"]

ToolSpec = BaseTool | str | Rule | Mapping[str, Any]


def attenuate_for(
    delegation: Delegation | str,
    holder: Identity,
    sub_agent: Identity | Principal,
    *,
    tools: Sequence[ToolSpec],
    namespace: str | None = None,
    ttl: float | str | None = None,
    purpose: str | None = None,
    clock: Clock | None = None,
) -> Delegation:
    """Delegate part of ``holder``'s authority to ``sub_agent``: only ``tools``, for ``ttl``.

    ``tools`` may mix tools (a :class:`GuardedTool` names its own address; a
    plain tool needs ``namespace``), tool patterns such as ``"tickets/read_*"``,
    :class:`agentguard.Rule` objects and rule mappings (``{"tool": ...,
    "where": ..., "approval": True}``). The new link is signed by ``holder``,
    so every audit record of the sub-agent's calls shows agent -> sub-agent.
    The parent's rules keep applying (scope is conjunctive).

    Raises:
        IssuanceError: ``holder`` does not hold ``delegation``, it allows no
            further delegation, a tool is outside it, or ``ttl`` outlives it.
        ValueError: a plain tool was given without ``namespace``.
    """
    parent = Delegation.parse(delegation) if isinstance(delegation, str) else delegation
    scope: list[str | Rule | Mapping[str, Any]] = []
    for item in tools:
        if isinstance(item, GuardedTool):
            scope.append(item.address)
        elif isinstance(item, BaseTool):
            if not namespace:
                raise ValueError(f"tool {item.name!r} is not guarded: pass namespace=...")
            scope.append(f"{namespace}/{item.name}")
        else:
            scope.append(item)
    return parent.attenuate(holder, sub_agent, scope, ttl=ttl, purpose=purpose, clock=clock)
