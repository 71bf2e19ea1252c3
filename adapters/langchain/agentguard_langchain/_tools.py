"""Guarded LangChain tools: :class:`GuardedTool` and :func:`guard_tools`.

A :class:`GuardedTool` looks exactly like the tool it wraps (name, description,
schemas, ``return_direct``, ``response_format``, injected arguments) and runs it
through the wrapped tool's own ``run``/``arun``, so parsing, injection,
callbacks and ``ToolMessage`` formatting stay LangChain's. Before that, every
call goes through the guard with the model-visible arguments only.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager, Callbacks
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.tools.base import ArgsSchema
from langchain_core.utils.pydantic import TypeBaseModel, get_fields
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from pydantic.v1 import ValidationError as ValidationErrorV1
from pydantic_core import PydanticSerializationError, to_jsonable_python

from agentguard import AgentGuardError, Delegation, DeniedError, Identity
from agentguard_langchain._gate import ApprovalMode, GuardAPI, ToolGate

__all__ = ["AlreadyGuardedError", "GuardedTool", "guard_tools", "split_arguments"]


class AlreadyGuardedError(AgentGuardError, TypeError):
    """A tool that is already guarded was wrapped again.

    Gating twice would mint two call tokens and audit two decisions for one
    call; wrap ``tool.inner`` instead, or use :meth:`GuardedTool.rebind`.
    """


class _ArgumentsError(DeniedError):
    default_reason = "unsupported_arguments"

    @property
    def short(self) -> str:
        return "denied by agentguard (unsupported_arguments: arguments must be JSON values)"


class GuardedTool(BaseTool):
    """A tool whose every call is verified, decided and audited by an agentguard guard.

    Build one with :func:`guard_tools` (or directly: ``GuardedTool(inner=tool,
    guard=..., delegation=..., holder=..., namespace=...)``). The tool address
    is ``f"{namespace}/{inner.name}"``; the LangChain tool call id becomes the
    decision's call id. A refusal is returned as an error ``ToolMessage``
    holding only the reason code and the decision id.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: BaseTool
    """The wrapped tool."""

    _gate: ToolGate = PrivateAttr()

    def __init__(
        self,
        *,
        inner: BaseTool,
        guard: GuardAPI,
        delegation: Delegation | str,
        holder: Identity,
        namespace: str,
        approval: ApprovalMode = "block",
    ) -> None:
        """Wrap ``inner``.

        Raises:
            AlreadyGuardedError: ``inner`` is already a :class:`GuardedTool`.
            ValueError: bad ``namespace`` or ``approval``, or ``holder`` does not
                hold ``delegation`` (see :class:`ToolGate`).
        """
        if isinstance(inner, GuardedTool):
            raise AlreadyGuardedError(
                f"tool {inner.name!r} is already guarded as {inner.address!r}; "
                "wrap its .inner or call .rebind(...) instead of guarding it twice"
            )
        gate = ToolGate(guard, delegation, holder, namespace, approval)
        super().__init__(
            inner=inner,
            name=inner.name,
            description=inner.description,
            args_schema=inner.args_schema,
            return_direct=inner.return_direct,
            verbose=inner.verbose,
            callbacks=inner.callbacks,
            tags=inner.tags,
            metadata=inner.metadata,
            handle_tool_error=inner.handle_tool_error,
            handle_validation_error=inner.handle_validation_error,
            response_format=inner.response_format,
            extras=inner.extras,
        )
        self._gate = gate

    # -- what LangChain and LangGraph inspect -------------------------------------

    @property
    def address(self) -> str:
        """The tool address used by delegations and policy: ``namespace/name``."""
        return self._gate.address(self.name)

    @property
    def gate(self) -> ToolGate:
        """The guard, delegation, holder, namespace and approval mode of this tool."""
        return self._gate

    @property
    def tool_call_schema(self) -> ArgsSchema:
        """The wrapped tool's schema for the model (injected arguments excluded)."""
        return self.inner.tool_call_schema

    @property
    def _injected_args_keys(self) -> frozenset[str]:
        # ToolRuntime/InjectedToolArg parameters of the wrapped tool's function.
        return self.inner._injected_args_keys

    def get_input_schema(self, config: RunnableConfig | None = None) -> TypeBaseModel:
        """The wrapped tool's full input schema (injected arguments included)."""
        return self.inner.get_input_schema(config)

    @property
    def func(self) -> Callable[..., Any] | None:
        """A guarded stand-in for the wrapped ``func`` with its signature and annotations.

        LangGraph's ``ToolNode`` reads the annotations to find ``InjectedState``
        and ``InjectedStore`` parameters; calling it still goes through the guard.
        """
        func = getattr(self.inner, "func", None)
        if not callable(func):
            return None

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.run(dict(inspect.signature(func).bind(*args, **kwargs).arguments))

        return guarded

    @property
    def coroutine(self) -> Callable[..., Any] | None:
        """Async twin of :attr:`func`."""
        coroutine = getattr(self.inner, "coroutine", None)
        if not callable(coroutine):
            return None

        @functools.wraps(coroutine)
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(coroutine).bind(*args, **kwargs)
            return await self.arun(dict(bound.arguments))

        return guarded

    def rebind(
        self,
        *,
        delegation: Delegation | str,
        holder: Identity,
        namespace: str | None = None,
        approval: ApprovalMode | None = None,
    ) -> GuardedTool:
        """The same tool guarded for another holder (e.g. a sub-agent's delegation).

        Raises:
            ValueError: as for the constructor.
        """
        return GuardedTool(
            inner=self.inner,
            guard=self._gate.guard,
            delegation=delegation,
            holder=holder,
            namespace=namespace or self._gate.namespace,
            approval=approval or self._gate.approval,
        )

    # -- running ----------------------------------------------------------------------

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        # Never reached: run/arun below never call _run. Kept because BaseTool requires it.
        raise NotImplementedError("GuardedTool runs through run()/arun()")

    def _split(
        self, tool_input: str | dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        string_key: str | None = None
        if isinstance(tool_input, str):
            if isinstance(self.inner.args_schema, dict):
                raise ValueError(
                    "String tool inputs are not allowed when using tools with JSON schema "
                    "args_schema."
                )
            string_key = next(iter(self.inner.args), "input")
            tool_input = {string_key: tool_input}
        checked, injected = split_arguments(self.inner, tool_input)
        return checked, injected, string_key

    def _normalizer(
        self, injected: dict[str, Any]
    ) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        def normalize(args: Mapping[str, Any]) -> dict[str, Any]:
            checked, _ = split_arguments(self.inner, {**injected, **args})
            return checked

        return normalize

    def run(
        self,
        tool_input: str | dict[str, Any],
        verbose: bool | None = None,
        start_color: str | None = "green",
        color: str | None = "green",
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: Any = None,
        config: RunnableConfig | None = None,
        tool_call_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Check the call with the guard, then run the wrapped tool.

        A refusal by the guard is returned (as an error ``ToolMessage`` when
        there is a ``tool_call_id``), not raised.

        Raises:
            ValidationError: the arguments do not fit the tool's schema (as the
                wrapped tool would raise, unless ``handle_validation_error``).
            ValueError: a string input for a tool with a JSON-schema ``args_schema``.
            NotImplementedError: the wrapped ``StructuredTool`` has no sync function.
            GraphInterrupt: interrupt mode, a human must answer first.
        """
        inner = self.inner
        if isinstance(inner, StructuredTool) and inner.func is None:
            # Fail like the wrapped tool would, before anything is decided or audited.
            raise NotImplementedError("StructuredTool does not support sync invocation.")
        try:
            checked, injected, string_key = self._split(tool_input)
        except (ValidationError, ValidationErrorV1) as exc:
            if not inner.handle_validation_error:
                raise
            return _validation_output(exc, inner, tool_call_id)
        except DeniedError as exc:
            # Arguments that are not JSON values: refused like any other call,
            # returned to the model rather than raised into the graph.
            return self._refusal(exc, tool_call_id)

        def execute(**effective: Any) -> Any:
            payload = _payload(effective, injected, string_key)
            return inner.run(
                payload,
                verbose,
                start_color,
                color,
                callbacks,
                tags=tags,
                metadata=metadata,
                run_name=run_name,
                run_id=run_id,
                config=config,
                tool_call_id=tool_call_id,
                **kwargs,
            )

        try:
            return self._gate.run(
                self.name,
                checked,
                execute,
                call_id=tool_call_id,
                normalize=self._normalizer(injected),
            )
        except DeniedError as exc:
            output = self._refusal(exc, tool_call_id)
            manager = CallbackManager.configure(
                callbacks, self.callbacks, self.verbose or bool(verbose), tags, self.tags,
                metadata, self.metadata,
            )  # fmt: skip
            run = manager.on_tool_start(
                {"name": self.name, "description": self.description},
                str(checked),
                run_id=run_id,
                name=run_name,
                inputs=checked,
                tool_call_id=tool_call_id,
            )
            run.on_tool_end(output, name=self.name)
            return output

    async def arun(
        self,
        tool_input: str | dict[str, Any],
        verbose: bool | None = None,
        start_color: str | None = "green",
        color: str | None = "green",
        callbacks: Callbacks = None,
        *,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        run_name: str | None = None,
        run_id: Any = None,
        config: RunnableConfig | None = None,
        tool_call_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Async twin of :meth:`run`."""
        inner = self.inner
        try:
            checked, injected, string_key = self._split(tool_input)
        except (ValidationError, ValidationErrorV1) as exc:
            if not inner.handle_validation_error:
                raise
            return _validation_output(exc, inner, tool_call_id)
        except DeniedError as exc:
            # Arguments that are not JSON values: refused like any other call,
            # returned to the model rather than raised into the graph.
            return self._refusal(exc, tool_call_id)

        async def execute(**effective: Any) -> Any:
            payload = _payload(effective, injected, string_key)
            return await inner.arun(
                payload,
                verbose,
                start_color,
                color,
                callbacks,
                tags=tags,
                metadata=metadata,
                run_name=run_name,
                run_id=run_id,
                config=config,
                tool_call_id=tool_call_id,
                **kwargs,
            )

        try:
            return await self._gate.arun(
                self.name,
                checked,
                execute,
                call_id=tool_call_id,
                normalize=self._normalizer(injected),
            )
        except DeniedError as exc:
            output = self._refusal(exc, tool_call_id)
            manager = AsyncCallbackManager.configure(
                callbacks, self.callbacks, self.verbose or bool(verbose), tags, self.tags,
                metadata, self.metadata,
            )  # fmt: skip
            run = await manager.on_tool_start(
                {"name": self.name, "description": self.description},
                str(checked),
                run_id=run_id,
                name=run_name,
                inputs=checked,
                tool_call_id=tool_call_id,
            )
            await run.on_tool_end(output, name=self.name)
            return output

    def _refusal(self, exc: DeniedError, tool_call_id: str | None) -> Any:
        # Only the safe text: reason code and decision id, never tokens or argument values.
        content = exc.short
        if tool_call_id is None:
            return content
        return ToolMessage(content, tool_call_id=tool_call_id, name=self.name, status="error")


def split_arguments(
    tool: BaseTool, tool_input: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model arguments to check, injected values to pass through) of one call.

    The checked arguments are those of the tool's model-facing schema, validated
    and with defaults filled in, as JSON values: a predicate sees exactly what
    the tool will run with. Injected arguments (``InjectedState``,
    ``InjectedToolCallId``, ``ToolRuntime``...) are never checked or digested.

    Raises:
        ValidationError: the arguments do not fit the tool's schema.
        DeniedError: they are not JSON values (reason ``unsupported_arguments``).
    """
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        # JSON-schema tools (e.g. MCP-derived): no injection, validated by the server.
        return _jsonable(dict(tool_input)), {}
    visible = set(get_fields(schema))
    given = {k: v for k, v in tool_input.items() if k in visible}
    if issubclass(schema, BaseModel):
        try:
            checked = schema.model_validate(given).model_dump(mode="json")
        except PydanticSerializationError as exc:
            raise _ArgumentsError("the tool arguments are not JSON-serialisable") from exc
    else:  # a pydantic.v1 model
        checked = _jsonable(schema.parse_obj(given).dict())
    # Synthetic fields pydantic makes for *args/**kwargs are not arguments unless given.
    checked = {k: v for k, v in checked.items() if k in given or k not in ("args", "kwargs")}
    full = set(get_fields(tool.get_input_schema()))
    injected_keys = (full - visible) | set(tool._injected_args_keys)
    injected = {k: v for k, v in tool_input.items() if k in injected_keys}
    return checked, injected


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    try:
        value = to_jsonable_python(args)
    except PydanticSerializationError as exc:
        raise _ArgumentsError("the tool arguments are not JSON-serialisable") from exc
    assert isinstance(value, dict)  # noqa: S101 (a dict serialises to a dict)
    return value


def _payload(
    effective: dict[str, Any], injected: dict[str, Any], string_key: str | None
) -> str | dict[str, Any]:
    if string_key is not None and set(effective) == {string_key} and not injected:
        value = effective[string_key]
        if isinstance(value, str):
            return value
    return {**injected, **effective}


def _validation_output(
    exc: ValidationError | ValidationErrorV1, inner: BaseTool, tool_call_id: str | None
) -> Any:
    # Same content as BaseTool.run's handling of handle_validation_error.
    flag = inner.handle_validation_error
    if isinstance(flag, str):
        content = flag
    elif callable(flag):
        content = flag(exc)
    else:
        content = "Tool input validation error"
    if tool_call_id is None:
        return content
    return ToolMessage(content, tool_call_id=tool_call_id, name=inner.name, status="error")


def guard_tools(
    tools: Iterable[BaseTool | Callable[..., Any]],
    *,
    guard: GuardAPI,
    delegation: Delegation | str,
    holder: Identity,
    namespace: str,
    approval: ApprovalMode = "block",
) -> list[BaseTool]:
    """Wrap every tool so each call is verified, decided, (approved,) audited.

    ``tools`` may hold ``BaseTool`` objects or plain functions (made tools with
    ``langchain_core.tools.tool``). The guard mints a fresh call token from
    ``holder`` for every call. ``approval="interrupt"`` turns step-up into a
    LangGraph interrupt instead of waiting on the guard's approval channel.

    Raises:
        AlreadyGuardedError: a tool is already guarded.
        ValueError: bad ``namespace``/``approval``, ``holder`` does not hold
            ``delegation``, or duplicate tool names.
    """
    from langchain_core.tools import tool as make_tool

    wrapped: list[BaseTool] = []
    seen: set[str] = set()
    for item in tools:
        base = item if isinstance(item, BaseTool) else make_tool(item)
        if base.name in seen:
            raise ValueError(f"two tools are named {base.name!r}; tool names must be unique")
        seen.add(base.name)
        wrapped.append(
            GuardedTool(
                inner=base,
                guard=guard,
                delegation=delegation,
                holder=holder,
                namespace=namespace,
                approval=approval,
            )
        )
    return wrapped
