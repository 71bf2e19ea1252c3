"""``GuardMiddleware``: the agentguard gate as a ``langchain.agents`` middleware.

Needs the ``agents`` extra (``langchain`` and ``langgraph``). The middleware
does not decide on the call it is handed: it hands on the request with every
tool swapped for a :class:`~agentguard_langchain.GuardedTool`, so the decision
is made where the tool runs, on the arguments as the tool's own schema parsed
them, after every other middleware's edits.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ToolCallRequest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langgraph.types import Command

from agentguard import Delegation, DeniedError, Identity, Reason
from agentguard_langchain._gate import ApprovalMode, GuardAPI, ToolGate
from agentguard_langchain._tools import GuardedTool

__all__ = ["GUARDED_TOOLS_KEPT", "GuardMiddleware"]

#: How many wrapped tools a middleware keeps for reuse (the least recently used go).
GUARDED_TOOLS_KEPT = 1024

_Result = ToolMessage | Command[Any]


class _UnknownTool(DeniedError):
    default_reason = Reason.UNKNOWN_TOOL

    @property
    def short(self) -> str:
        return (
            "denied by agentguard (unknown_tool: no registered tool has this name; a tool "
            "supplied at run time must be supplied by a middleware listed before GuardMiddleware)"
        )


class _InjectedArgument(DeniedError):
    default_reason = Reason.INJECTED_ARGUMENT


class GuardMiddleware(AgentMiddleware):
    """Gate every tool call of a ``create_agent`` agent through an agentguard guard.

    The middleware hands each call on with its tool (and the runtime's tool
    list) swapped for a :class:`~agentguard_langchain.GuardedTool` for
    ``holder``, so the guard decides where the tool runs, on the call as the
    tool's own schema parses it. List it **last** (innermost) among middleware
    that touch tool calls. Middleware listed after it may still edit a call's
    arguments or redirect it to another registered tool (LangChain's
    ``HumanInTheLoopMiddleware`` does both): the edited call is what is
    decided. But a tool object such a middleware supplies itself runs outside
    the guard, and a call naming no registered tool is refused here. A
    model's value for an injected parameter is refused. ``approval="interrupt"``
    maps step-up onto LangGraph interrupts (the agent needs a checkpointer and
    a ``thread_id``).
    """

    def __init__(
        self,
        *,
        guard: GuardAPI,
        delegation: Delegation | str,
        holder: Identity,
        namespace: str,
        approval: ApprovalMode = "block",
    ) -> None:
        """Gate every tool call with ``guard`` for ``holder``.

        Raises:
            ValueError: bad ``namespace`` or ``approval``, or ``holder`` does not
                hold ``delegation`` (see :class:`~agentguard_langchain.ToolGate`).
        """
        super().__init__()
        self.gate = ToolGate(guard, delegation, holder, namespace, approval)
        # By tool object; bounded, as runtime-supplied tools may be new on every call.
        self._guarded: OrderedDict[int, tuple[BaseTool, GuardedTool]] = OrderedDict()
        self._lock = threading.Lock()

    def guarded(self, tool: BaseTool) -> GuardedTool:
        """``tool`` as it runs under this middleware (made once per tool object).

        A tool already guarded for another delegation (a parent agent's, say)
        is rebound to this middleware's delegation, keeping its address: the
        agent running here acts under this delegation.
        """
        with self._lock:
            known = self._guarded.get(id(tool))
            if known is not None and known[0] is tool:
                self._guarded.move_to_end(id(tool))
                return known[1]
            if isinstance(tool, GuardedTool):
                if tool.gate.same_authority(self.gate):
                    made = tool
                else:
                    made = tool.rebind(
                        delegation=self.gate.delegation,
                        holder=self.gate.holder,
                        namespace=tool.address.split("/", 1)[0],
                        approval=self.gate.approval,
                        guard=self.gate.guard,
                    )
            else:
                made = GuardedTool(
                    inner=tool,
                    guard=self.gate.guard,
                    delegation=self.gate.delegation,
                    holder=self.gate.holder,
                    namespace=self.gate.namespace,
                    approval=self.gate.approval,
                )
            self._guarded[id(tool)] = (tool, made)
            while len(self._guarded) > GUARDED_TOOLS_KEPT:
                self._guarded.popitem(last=False)
            return made

    def _guard_request(self, request: ToolCallRequest) -> ToolCallRequest:
        if request.tool is None:
            raise _UnknownTool("no registered tool is named in this call")
        guarded = self.guarded(request.tool)
        written = request.tool_call.get("args")
        if isinstance(written, Mapping) and set(written) & guarded.injected_keys:
            # The call as the model wrote it, before ToolNode fills injected values in.
            raise _InjectedArgument("the model's call sets an injected parameter")
        overrides: dict[str, Any] = {"tool": guarded}
        runtime = request.runtime
        tools = getattr(runtime, "tools", None)
        if dataclasses.is_dataclass(runtime) and isinstance(tools, list):
            # A middleware inside this one that redirects the call to another tool
            # (a reviewer's edit, say) takes it from here: give it guarded tools.
            every: list[BaseTool] = [self.guarded(t) for t in tools]
            overrides["runtime"] = dataclasses.replace(runtime, tools=every)
        return request.override(**overrides)

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], _Result],
    ) -> _Result:
        """Hand the call on with guarded tools; an unknown tool is refused."""
        try:
            guarded = self._guard_request(request)
        except DeniedError as exc:
            return _refusal(request, exc)
        return handler(guarded)

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[_Result]],
    ) -> _Result:
        """Async twin of :meth:`wrap_tool_call`."""
        try:
            guarded = self._guard_request(request)
        except DeniedError as exc:
            return _refusal(request, exc)
        return await handler(guarded)


def _refusal(request: ToolCallRequest, exc: DeniedError) -> ToolMessage:
    # Only the safe text: reason code, never tokens or argument values.
    return ToolMessage(
        exc.short,
        tool_call_id=request.tool_call["id"] or "",
        name=request.tool_call["name"],
        status="error",
    )
