"""``GuardMiddleware``: the agentguard gate as a ``langchain.agents`` middleware.

Needs the ``agents`` extra (``langchain`` and ``langgraph``). Tools that are
already :class:`~agentguard_langchain.GuardedTool` gate themselves and pass
through untouched, so a call is never gated twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ToolCallRequest
from langchain_core.messages import ToolMessage
from langgraph.types import Command
from pydantic import ValidationError

from agentguard import Delegation, DeniedError, Identity
from agentguard_langchain._gate import ApprovalMode, GuardAPI, Normalizer, ToolGate
from agentguard_langchain._tools import GuardedTool, split_arguments

__all__ = ["GuardMiddleware"]

_Result = ToolMessage | Command[Any]


class GuardMiddleware(AgentMiddleware):
    """Gate every tool call of a ``create_agent`` agent through an agentguard guard.

    ``approval="interrupt"`` maps step-up onto LangGraph interrupts (the agent
    needs a checkpointer and a ``thread_id``); the resume value is read, but
    only the guard's stored, signed approval lets the call run. A refusal is
    returned as an error ``ToolMessage`` the model can read.
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

    def _prepare(
        self, request: ToolCallRequest
    ) -> tuple[dict[str, Any], Callable[..., ToolCallRequest], Normalizer] | None:
        """(checked arguments, request builder, normaliser), or ``None`` to pass through."""
        tool = request.tool
        if tool is None or isinstance(tool, GuardedTool):
            # Unknown tools fail in ToolNode's validation; guarded tools gate themselves.
            return None
        args = dict(request.tool_call["args"])
        checked, _ = split_arguments(tool, args)

        def rebuild(**effective: Any) -> ToolCallRequest:
            # The tool runs with exactly the arguments the guard checked (or the approved edit).
            return request.override(tool_call={**request.tool_call, "args": effective})

        def normalize(edited: Mapping[str, Any]) -> dict[str, Any]:
            return split_arguments(tool, edited)[0]

        return checked, rebuild, normalize

    def wrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], _Result],
    ) -> _Result:
        """Run the tool call through ``guard.call``; refusals become error messages."""
        try:
            prepared = self._prepare(request)
        except ValidationError:
            # The tool cannot run with these arguments; ToolNode reports why.
            return handler(request)
        except DeniedError as exc:
            return _refusal(request, exc)
        if prepared is None:
            return handler(request)
        checked, rebuild, normalize = prepared
        try:
            result: _Result = self.gate.run(
                request.tool_call["name"],
                checked,
                lambda **effective: handler(rebuild(**effective)),
                call_id=request.tool_call["id"],
                normalize=normalize,
            )
        except DeniedError as exc:
            return _refusal(request, exc)
        return result

    async def awrap_tool_call(
        self,
        request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[_Result]],
    ) -> _Result:
        """Async twin of :meth:`wrap_tool_call`, through ``guard.acall``."""
        try:
            prepared = self._prepare(request)
        except ValidationError:
            return await handler(request)
        except DeniedError as exc:
            return _refusal(request, exc)
        if prepared is None:
            return await handler(request)
        checked, rebuild, normalize = prepared

        async def execute(**effective: Any) -> _Result:
            return await handler(rebuild(**effective))

        try:
            result: _Result = await self.gate.arun(
                request.tool_call["name"],
                checked,
                execute,
                call_id=request.tool_call["id"],
                normalize=normalize,
            )
        except DeniedError as exc:
            return _refusal(request, exc)
        return result


def _refusal(request: ToolCallRequest, exc: DeniedError) -> ToolMessage:
    # Only the safe text: reason code and decision id, never tokens or argument values.
    return ToolMessage(
        exc.short,
        tool_call_id=request.tool_call["id"] or "",
        name=request.tool_call["name"],
        status="error",
    )
