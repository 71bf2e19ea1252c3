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
import typing
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, NamedTuple, Self, SupportsIndex

from langchain_core.callbacks import (
    AsyncCallbackManagerForToolRun,
    CallbackManagerForToolRun,
    Callbacks,
)
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool
from langchain_core.tools.base import (
    ArgsSchema,
    _get_runnable_config_param,
    _is_injected_arg_type,
    get_all_basemodel_annotations,
)
from langchain_core.utils.pydantic import TypeBaseModel, get_fields
from pydantic import ConfigDict, PrivateAttr, ValidationError
from pydantic.v1 import ValidationError as ValidationErrorV1
from pydantic_core import PydanticSerializationError, to_jsonable_python

from agentguard import AgentGuardError, Delegation, DeniedError, Identity, Reason
from agentguard.argschema import ArgumentSchemaError, check_arguments
from agentguard_langchain._gate import (
    ApprovalMode,
    GuardAPI,
    Prepare,
    Prepared,
    ToolGate,
    _Step,
)

__all__ = ["AlreadyGuardedError", "GuardedTool", "GuardedToolList", "guard_tools"]


class AlreadyGuardedError(AgentGuardError, TypeError):
    """A tool that is already guarded was wrapped again.

    Gating twice would mint two call tokens and audit two decisions for one
    call; wrap ``tool.inner`` instead, or use :meth:`GuardedTool.rebind`.
    """


class _ArgumentsError(DeniedError):
    default_reason = Reason.UNSUPPORTED_ARGUMENTS

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
    _address: str = PrivateAttr()
    _injected_keys: frozenset[str] = PrivateAttr()

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
        # Fixed now: renaming the wrapper later changes what a model calls it, not
        # which address the guard decides on.
        self._address = gate.address(inner.name)
        self._injected_keys = frozenset(_injected_keys(inner))

    # -- what LangChain and LangGraph inspect -------------------------------------

    @property
    def address(self) -> str:
        """The tool address used by delegations and policy: ``namespace/name``.

        Fixed when the tool is wrapped; renaming the wrapper does not change it.
        """
        return self._address

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
    #
    # BaseTool.run/arun on this wrapper do LangChain's work once: callbacks, parsing
    # with the wrapped tool's own _to_args_and_kwargs (its full schema: validators,
    # aliases, model_config), error handling and ToolMessage formatting. _run/_arun
    # then receive exactly the values the wrapped tool's function would receive; the
    # guard decides on those, and the wrapped tool's _run/_arun runs with them.

    def run(
        self,
        tool_input: str | dict[str, Any],
        verbose: bool | None = None,
        start_color: str | None = "green",
        color: str | None = "green",
        callbacks: Callbacks = None,
        *,
        tool_call_id: str | None = None,
        injected: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Validate the call with the tool's schema, decide it with the guard, run it.

        ``injected`` holds the application's values for injected parameters
        (``InjectedToolArg``); a tool call's own arguments may not carry them,
        since a model wrote those. A refusal by the guard is returned (as an
        error ``ToolMessage`` when there is a ``tool_call_id``), not raised.

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
        merged, refused = self._merge(tool_input, tool_call_id, injected, kwargs.get("config"))
        context = _CALL.set(_Call(tool_call_id, refused))
        try:
            return super().run(
                merged, verbose, start_color, color, callbacks, tool_call_id=tool_call_id, **kwargs
            )
        finally:
            _CALL.reset(context)

    async def arun(
        self,
        tool_input: str | dict[str, Any],
        verbose: bool | None = None,
        start_color: str | None = "green",
        color: str | None = "green",
        callbacks: Callbacks = None,
        *,
        tool_call_id: str | None = None,
        injected: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Async twin of :meth:`run`."""
        merged, refused = self._merge(tool_input, tool_call_id, injected, kwargs.get("config"))
        context = _CALL.set(_Call(tool_call_id, refused))
        try:
            return await super().arun(
                merged, verbose, start_color, color, callbacks, tool_call_id=tool_call_id, **kwargs
            )
        finally:
            _CALL.reset(context)

    def _merge(
        self,
        tool_input: str | dict[str, Any],
        tool_call_id: str | None,
        injected: Mapping[str, Any] | None,
        config: RunnableConfig | None,
    ) -> tuple[str | dict[str, Any], DeniedError | None]:
        """The input with the application's injected values, or why it is refused."""
        if not isinstance(tool_input, dict):
            return tool_input, None
        refused: DeniedError | None = None
        if tool_call_id is not None:
            # A tool call's arguments come from a model: only values LangGraph's
            # ToolNode fills in itself may sit under injected parameter names.
            smuggled = sorted(
                set(tool_input) & (self._injected_keys - _graph_filled(self.inner, config))
            )
            if smuggled:
                refused = _InjectedArgumentError(
                    "the tool call carries values for injected parameters: "
                    + ", ".join(repr(k)[:80] for k in smuggled[:5])
                )
        extra = dict(injected or {})
        unknown = sorted(set(extra) - self._injected_keys)
        if unknown:
            raise ValueError(f"not injected parameters of {self.name!r}: {unknown}")
        return {**tool_input, **extra}, refused

    def _to_args_and_kwargs(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # Exactly the wrapped tool's parsing: its schema, its overrides.
        return self.inner._to_args_and_kwargs(tool_input, tool_call_id)

    def _run(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: CallbackManagerForToolRun | None = None,
        **values: Any,
    ) -> Any:
        call = _CALL.get() or _NO_CALL
        inner = self.inner
        extras = _extras(inner._run, config, run_manager)
        try:
            prepared = self._prepare(args, values, call, lambda a, v: inner._run(*a, **v, **extras))
            return self._gate.run(
                self._address,
                prepared,
                self._preparer(values, call, lambda a, v: inner._run(*a, **v, **extras)),
                call_id=call.tool_call_id,
                step=_step(config),
            )
        except DeniedError as exc:
            return self._refused(exc, call)

    async def _arun(
        self,
        *args: Any,
        config: RunnableConfig,
        run_manager: AsyncCallbackManagerForToolRun | None = None,
        **values: Any,
    ) -> Any:
        call = _CALL.get() or _NO_CALL
        inner = self.inner
        extras = _extras(inner._arun, config, run_manager)
        try:
            prepared = self._prepare(
                args, values, call, lambda a, v: inner._arun(*a, **v, **extras)
            )
            return await self._gate.arun(
                self._address,
                prepared,
                self._preparer(values, call, lambda a, v: inner._arun(*a, **v, **extras)),
                call_id=call.tool_call_id,
                step=_step(config),
            )
        except DeniedError as exc:
            return self._refused(exc, call)

    def _prepare(
        self,
        args: tuple[Any, ...],
        values: dict[str, Any],
        call: _Call,
        runner: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    ) -> Prepared:
        """The decided view of validated ``args``/``values``, and a runner of exactly them."""
        if call.refused is not None:
            raise call.refused
        inner = self.inner
        if args:
            # A string input, passed positionally as the wrapped tool would get it.
            key = next(iter(inner.args), "input")
            decided = _jsonable({key: args[0]})
        else:
            decided = _jsonable({k: v for k, v in values.items() if k not in self._injected_keys})
            schema = inner.args_schema
            if isinstance(schema, dict):
                # A JSON-schema tool (MCP-derived, say) validates nothing itself.
                try:
                    check_arguments(schema, decided)
                except ArgumentSchemaError as exc:
                    raise _InvalidArgumentsError(str(exc)) from None
        return Prepared(decided, functools.partial(runner, args, values))

    def _preparer(
        self,
        values: dict[str, Any],
        call: _Call,
        runner: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    ) -> Prepare:
        """Prepares a reviewer's edit: parsed by the tool's schema like the model's call."""
        injected = {k: v for k, v in values.items() if k in self._injected_keys}

        def prepare(edited: Mapping[str, Any]) -> Prepared:
            smuggled = set(edited) & self._injected_keys
            if smuggled:
                raise _InjectedArgumentError("the edit carries values for injected parameters")
            try:
                args, parsed = self._to_args_and_kwargs({**edited, **injected}, call.tool_call_id)
            except (ValidationError, ValidationErrorV1, ValueError) as exc:
                raise _InvalidArgumentsError(
                    f"the edited arguments do not fit the tool's schema ({type(exc).__name__})"
                ) from None
            return self._prepare(args, parsed, call, runner)

        return prepare

    def _refused(self, exc: DeniedError, call: _Call) -> Any:
        # Only the safe text: reason code and decision id, never tokens or argument values.
        content: Any = exc.short
        if call.tool_call_id is not None:
            content = ToolMessage(
                content, tool_call_id=call.tool_call_id, name=self.name, status="error"
            )
        if self.response_format == "content_and_artifact":
            return content, None
        return content


# BaseTool.run inspects ``_run`` on every call: its signature (for ``run_manager``)
# and its type hints (for the RunnableConfig parameter). With postponed annotations
# that meant compiling the annotation strings again each time, which cost about a
# fifth of a bare tool call. Resolved once here; the same objects, found faster.
for _method in (GuardedTool._run, GuardedTool._arun):
    _method.__annotations__ = typing.get_type_hints(_method)
    # inspect.signature honours __signature__; typeshed does not declare it on functions.
    _method.__signature__ = inspect.signature(_method)  # type: ignore[union-attr]


class _Call(NamedTuple):
    """What run()/arun() learnt that _run/_arun do not receive."""

    tool_call_id: str | None
    refused: DeniedError | None


_CALL: ContextVar[_Call | None] = ContextVar("agentguard_langchain_call", default=None)
_NO_CALL = _Call(None, None)


class _InjectedArgumentError(DeniedError):
    default_reason = Reason.INJECTED_ARGUMENT

    @property
    def short(self) -> str:
        return (
            "denied by agentguard (injected_argument: the call sets a parameter "
            "that only the application may set)"
        )


class _InvalidArgumentsError(DeniedError):
    default_reason = Reason.INVALID_ARGUMENTS

    @property
    def short(self) -> str:
        return (
            "denied by agentguard (invalid_arguments: the arguments do not fit the tool's schema)"
        )


def _injected_keys(tool: BaseTool) -> set[str]:
    """Parameters of ``tool`` a model does not see: injected, or outside its model schema."""
    keys = set(tool._injected_args_keys)
    schema = tool.tool_call_schema
    if not isinstance(schema, dict):
        full = set(get_fields(tool.get_input_schema()))
        keys |= full - set(get_fields(schema))
    return keys


def _graph_filled(tool: BaseTool, config: RunnableConfig | None) -> set[str]:
    """Injected parameters LangGraph's ToolNode overwrites, when running inside a graph.

    ToolNode puts state, store and runtime into the call itself, replacing any
    value the model gave; the tool call id is filled in by LangChain's parsing.
    Outside a graph nothing overwrites them, so nothing is exempt but the id.
    """
    filled = set(_tool_call_id_keys(tool))
    configurable = (config or {}).get("configurable") or {}
    if not any(str(k).startswith("__pregel_") for k in configurable):
        return filled
    try:
        from langgraph.prebuilt.tool_node import _get_all_injected_args
    except ImportError:  # pragma: no cover - no langgraph, no ToolNode
        return filled
    found = _get_all_injected_args(tool)
    filled |= set(found.state)
    filled |= {k for k in (found.store, found.runtime) if k}
    return filled


def _tool_call_id_keys(tool: BaseTool) -> set[str]:
    schema = tool.args_schema
    if schema is None or isinstance(schema, dict):
        return set()
    return {
        k
        for k, v in get_all_basemodel_annotations(schema).items()
        if _is_injected_arg_type(v, injected_type=InjectedToolCallId)
    }


def _extras(
    method: Callable[..., Any],
    config: RunnableConfig,
    run_manager: CallbackManagerForToolRun | AsyncCallbackManagerForToolRun | None,
) -> dict[str, Any]:
    """The keyword arguments LangChain would add when calling ``method`` itself."""
    function = getattr(method, "__func__", method)
    try:
        takes_run_manager, config_name = _extra_parameters(function)
    except TypeError:  # an unhashable callable: inspect it every time
        takes_run_manager, config_name = _extra_parameters.__wrapped__(function)
    extras: dict[str, Any] = {}
    if takes_run_manager:
        extras["run_manager"] = run_manager
    if config_name:
        extras[config_name] = config
    return extras


@functools.lru_cache(maxsize=1024)
def _extra_parameters(function: Callable[..., Any]) -> tuple[bool, str | None]:
    """Whether ``function`` takes ``run_manager``, and its ``RunnableConfig`` parameter.

    Remembered per function: LangChain resolves the type hints (compiling
    string annotations) on every call, which cost more than the guard's decision.
    """
    takes_run_manager = "run_manager" in inspect.signature(function).parameters
    return takes_run_manager, _get_runnable_config_param(function)


def _step(config: RunnableConfig | None) -> _Step | None:
    """The LangGraph task a call runs in (stable when the task re-runs on resume or retry)."""
    configurable = (config or {}).get("configurable") or {}
    step = configurable.get("checkpoint_ns")
    if not step or not any(str(k).startswith("__pregel_") for k in configurable):
        return None
    # Only a checkpointed graph can resume elsewhere: then the store must remember too.
    durable = configurable.get("__pregel_checkpointer") is not None
    return _Step(f"{configurable.get('thread_id')}|{step}", durable)


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    try:
        value = to_jsonable_python(args)
    except PydanticSerializationError as exc:
        raise _ArgumentsError("the tool arguments are not JSON-serialisable") from exc
    assert isinstance(value, dict)  # noqa: S101 (a dict serialises to a dict)
    return value


class GuardedToolList(list[BaseTool]):
    """The list :func:`guard_tools` returns: joining lists refuses a repeated tool name.

    LangChain keeps only the last of two tools with one name, so a tool guarded
    for one delegation could silently stand in for another. ``+``, ``+=``,
    ``append``, ``extend`` and ``insert`` raise ``ValueError`` on a repeated name.
    (Unpacking into a plain list, ``[*a, *b]``, is not checked.)
    """

    def __init__(self, tools: Iterable[BaseTool] = ()) -> None:
        super().__init__()
        self.extend(tools)

    def _check(self, tools: Iterable[BaseTool]) -> list[BaseTool]:
        incoming = list(tools)
        seen = {t.name for t in self}
        for tool in incoming:
            if tool.name in seen:
                raise ValueError(
                    f"two tools are named {tool.name!r}; tool names must be unique "
                    "(LangChain would keep only the last one)"
                )
            seen.add(tool.name)
        return incoming

    def append(self, tool: BaseTool) -> None:
        super().extend(self._check([tool]))

    def extend(self, tools: Iterable[BaseTool]) -> None:
        super().extend(self._check(tools))

    def insert(self, index: SupportsIndex, tool: BaseTool) -> None:
        self._check([tool])
        super().insert(index, tool)

    def __iadd__(self, tools: Iterable[BaseTool]) -> Self:  # type: ignore[override]
        self.extend(tools)
        return self

    def __add__(self, tools: list[BaseTool]) -> GuardedToolList:  # type: ignore[override]
        joined = GuardedToolList(self)
        joined.extend(tools)
        return joined

    def __radd__(self, tools: list[BaseTool]) -> GuardedToolList:
        joined = GuardedToolList(tools)
        joined.extend(self)
        return joined


def guard_tools(
    tools: Iterable[BaseTool | Callable[..., Any]],
    *,
    guard: GuardAPI,
    delegation: Delegation | str,
    holder: Identity,
    namespace: str,
    approval: ApprovalMode = "block",
) -> GuardedToolList:
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

    wrapped = GuardedToolList()
    for item in tools:
        base = item if isinstance(item, BaseTool) else make_tool(item)
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
