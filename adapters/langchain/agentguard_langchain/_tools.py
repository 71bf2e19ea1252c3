"""Guarded LangChain tools: :class:`GuardedTool` and :func:`guard_tools`.

A :class:`GuardedTool` looks exactly like the tool it wraps (name, description,
schemas, ``return_direct``, ``response_format``, injected arguments) and runs it
through the wrapped tool's own ``run``/``arun``, so parsing, injection,
callbacks and ``ToolMessage`` formatting stay LangChain's. Before that, every
call goes through the guard with the model-visible arguments only.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import inspect
import json
import pathlib
import sys
import typing
import uuid
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
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError
from pydantic.v1 import BaseModel as BaseModelV1
from pydantic.v1 import ValidationError as ValidationErrorV1

from agentguard import AgentGuardError, Delegation, DeniedError, Identity, Reason
from agentguard.argschema import ArgumentSchemaError, check_arguments, fill_defaults
from agentguard.audit import defaults_filled
from agentguard_langchain._gate import (
    ApprovalMode,
    GuardAPI,
    Prepare,
    Prepared,
    ToolGate,
    _Step,
)

__all__ = ["AlreadyGuardedError", "GuardedTool", "GuardedToolList", "guard_tools"]

try:  # how StructuredTool._run reads a function's parameters (langchain-core 1.8 and later)
    from langchain_core.utils._signature import _signature_parameters
except ImportError:  # pragma: no cover - earlier releases read inspect.signature directly

    def _signature_parameters(obj: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(obj).parameters


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
        _address_name: str | None = None,
    ) -> None:
        """Wrap ``inner``.

        Raises:
            AlreadyGuardedError: ``inner`` is already a :class:`GuardedTool`.
            TypeError: ``inner`` overrides ``run``/``arun``/``invoke``/``ainvoke``
                (code there would run outside what the guard decides).
            ValueError: bad ``namespace`` or ``approval``, ``holder`` does not
                hold ``delegation``, or interrupt mode on a guard that cannot
                interrupt (see :class:`ToolGate`).
        """
        if isinstance(inner, GuardedTool):
            raise AlreadyGuardedError(
                f"tool {inner.name!r} is already guarded as {inner.address!r}; "
                "wrap its .inner or call .rebind(...) instead of guarding it twice"
            )
        _refuse_entry_overrides(inner)
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
        self._address = gate.address(_address_name or inner.name)
        self._injected_keys = frozenset(_injected_keys(inner))

    # -- what LangChain and LangGraph inspect -------------------------------------

    @property
    def address(self) -> str:
        """The tool address used by delegations and policy: ``namespace/name``.

        Fixed when the tool is wrapped; renaming the wrapper does not change it.
        """
        return self._address

    @property
    def injected_keys(self) -> frozenset[str]:
        """Parameters a model may not set (injected, or outside the model's schema)."""
        return self._injected_keys

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
        guard: GuardAPI | None = None,
    ) -> GuardedTool:
        """The same tool guarded for another holder (e.g. a sub-agent's delegation).

        The tool keeps the name in its address (fixed when it was first wrapped);
        ``guard`` replaces the guard that decides, when given.

        Raises:
            ValueError: as for the constructor.
        """
        return GuardedTool(
            inner=self.inner,
            guard=guard if guard is not None else self._gate.guard,
            delegation=delegation,
            holder=holder,
            namespace=namespace or self._gate.namespace,
            approval=approval or self._gate.approval,
            _address_name=self._address.split("/", 1)[1],
        )

    # A tool call (``{"type": "tool_call", ...}``) is a model's writing even when
    # its id is missing; invoke/ainvoke note it for run/arun.

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """:meth:`BaseTool.invoke`, noting whether ``input`` is a model's tool call."""
        token = _TOOL_CALL.set(_is_tool_call(input))
        try:
            return super().invoke(input, config, **kwargs)
        finally:
            _TOOL_CALL.reset(token)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async twin of :meth:`invoke`."""
        token = _TOOL_CALL.set(_is_tool_call(input))
        try:
            return await super().ainvoke(input, config, **kwargs)
        finally:
            _TOOL_CALL.reset(token)

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
        origin = self._origin(tool_input, kwargs.get("config"))
        context = _CALL.set(_Call(tool_call_id, refused, origin))
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
        origin = self._origin(tool_input, kwargs.get("config"))
        context = _CALL.set(_Call(tool_call_id, refused, origin))
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
        if tool_call_id is not None or _TOOL_CALL.get():
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
        if not injected:
            return dict(tool_input), refused
        extra = dict(injected)
        unknown = sorted(set(extra) - self._injected_keys)
        if unknown:
            raise ValueError(f"not injected parameters of {self.name!r}: {unknown}")
        return {**tool_input, **extra}, refused

    def _origin(self, tool_input: str | dict[str, Any], config: RunnableConfig | None) -> str:
        """The call as written, without injected values: how a re-run is recognised.

        Only a call inside a LangGraph step can be re-run (see :func:`_step`, which
        _run applies to the same config); elsewhere it is never read.
        """
        if _step(config) is None:
            return ""
        written: Any = tool_input
        if isinstance(tool_input, dict):
            written = {k: v for k, v in tool_input.items() if k not in self._injected_keys}
        return json.dumps(written, sort_keys=True, default=repr, ensure_ascii=False)

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
        runner = _sync_runner(inner, config, run_manager)
        values, filled = _schema_defaults(inner, args, values)
        try:
            with defaults_filled(filled):
                prepared = self._prepare(args, values, call, runner)
                return self._gate.run(
                    self._address,
                    prepared,
                    self._preparer(values, call, runner),
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
        runner = _async_runner(inner, config, run_manager)
        values, filled = _schema_defaults(inner, args, values)
        try:
            with defaults_filled(filled):
                prepared = self._prepare(args, values, call, runner)
                return await self._gate.arun(
                    self._address,
                    prepared,
                    self._preparer(values, call, runner),
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
        inner, injected_keys = self.inner, self._injected_keys  # one private-attribute lookup
        named = {k: v for k, v in values.items() if k not in injected_keys}
        if args:
            named = {**_positional_names(inner, args), **named}
        decided = decided_view(named)
        schema = inner.args_schema
        if isinstance(schema, dict) and not args:
            # A JSON-schema tool (MCP-derived, say) validates nothing itself.
            try:
                check_arguments(schema, decided)
            except ArgumentSchemaError as exc:
                raise _InvalidArgumentsError(str(exc)) from None
        return Prepared(decided, functools.partial(runner, args, values), call.origin)

    def _preparer(
        self,
        values: dict[str, Any],
        call: _Call,
        runner: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    ) -> Prepare:
        """Prepares a reviewer's edit: parsed by the tool's schema like the model's call."""
        injected_keys = self._injected_keys
        injected = {k: v for k, v in values.items() if k in injected_keys}

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
            edit = call._replace(origin=json.dumps(dict(edited), sort_keys=True, default=repr))
            return self._prepare(args, parsed, edit, runner)

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
# Only the RunnableConfig parameter is left in the annotations LangChain resolves (it
# looks for that one); the full signature stays what inspect.signature reports.
for _method in (GuardedTool._run, GuardedTool._arun):
    _method.__annotations__ = typing.get_type_hints(_method)
    # inspect.signature honours __signature__; typeshed does not declare it on functions.
    _method.__signature__ = inspect.signature(_method)  # type: ignore[union-attr]
    _method.__annotations__ = {"config": _method.__annotations__["config"]}


class _Call(NamedTuple):
    """What run()/arun() learnt that _run/_arun do not receive."""

    tool_call_id: str | None
    refused: DeniedError | None
    origin: str = ""


_CALL: ContextVar[_Call | None] = ContextVar("agentguard_langchain_call", default=None)
_NO_CALL = _Call(None, None)
_TOOL_CALL: ContextVar[bool] = ContextVar("agentguard_langchain_tool_call", default=False)


def _is_tool_call(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "tool_call" and "args" in value


#: Where LangChain's own tools define run/arun/invoke/ainvoke.
_LANGCHAIN_TOOLS = ("langchain_core.", "langchain.", "langgraph.")


def _refuse_entry_overrides(tool: BaseTool) -> None:
    """A tool overriding run/arun/invoke/ainvoke would run that code outside the decision."""
    for name in ("run", "arun", "invoke", "ainvoke"):
        owner = next(c for c in type(tool).__mro__ if name in vars(c))
        if not owner.__module__.startswith(_LANGCHAIN_TOOLS):
            raise TypeError(
                f"tool {tool.name!r} overrides {name}() ({owner.__qualname__}); agentguard "
                "runs tools through _run/_arun after deciding, so that code would be "
                "skipped or run undecided. Move it into _run/_arun or the args_schema."
            )


def _schema_defaults(
    tool: BaseTool, args: tuple[Any, ...], values: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A JSON-schema tool's omitted arguments at their schema defaults, and their names.

    The guard judges those values and the tool receives exactly them. (A
    pydantic ``args_schema`` fills its defaults itself, before the guard sees
    the values.)
    """
    schema = tool.args_schema
    if not isinstance(schema, dict) or args:
        return values, ()
    try:
        return fill_defaults(schema, values)
    except ArgumentSchemaError:
        return values, ()  # the schema check refuses it


def _positional_names(tool: BaseTool, args: tuple[Any, ...]) -> dict[str, Any]:
    """Name positional arguments (a string input, or a tool's own parsing) for the decision.

    Named by ``tool._run``'s parameters; a single value for ``*args`` takes the
    first argument name of the tool's schema, as a string input does. Anything
    else cannot be decided by name and is refused.
    """
    parameters = [
        p
        for p in inspect.signature(tool._run).parameters.values()
        if p.name not in ("run_manager", "config", "callbacks")
    ]
    named: dict[str, Any] = {}
    rest = list(args)
    for parameter in parameters:
        if not rest:
            break
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            named[parameter.name] = rest.pop(0)
        elif parameter.kind is parameter.VAR_POSITIONAL:
            break
    if len(rest) == 1 and not named:
        named[next(iter(tool.args), "input")] = rest.pop()
    if rest:
        raise _ArgumentsError(
            f"{len(rest)} positional argument(s) without a name cannot be decided"
        )
    return named


def decided_view(values: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON values the guard decides on, read from the values the tool receives.

    Model fields are read directly (every field, serializers and ``exclude``
    ignored: what the guard sees is what the function gets); enums by value;
    dates and times in ISO form; decimals as numbers when exact, else text; UUIDs
    and paths as text. Anything else is refused (``unsupported_arguments``).
    """
    return {str(k): _view(v, 0) for k, v in values.items()}


def _view(value: Any, depth: int) -> Any:
    if depth > 64:
        raise _ArgumentsError("the tool arguments nest too deeply")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return _view(value.value, depth + 1)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise _ArgumentsError("the tool arguments have a mapping with non-text keys")
        return {k: _view(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_view(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        items = [_view(v, depth + 1) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        fields.update(value.__pydantic_extra__ or {})
        return _view(fields, depth + 1)
    if isinstance(value, BaseModelV1):
        return _view(dict(value.__dict__), depth + 1)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise _ArgumentsError("the tool arguments hold a non-finite decimal")
        if value == value.to_integral_value():
            return int(value)
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, uuid.UUID | pathlib.PurePath):
        return str(value)
    raise _ArgumentsError(
        f"the tool arguments hold a {type(value).__name__}, which has no JSON form"
    )


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
    """Injected parameters LangGraph's ToolNode has just filled in for this call.

    ToolNode drops what a model wrote under state, store and runtime parameters
    and puts in its own values; the tool call id is filled in by LangChain's
    parsing. Only when ToolNode itself is invoking the tool (found on the call
    stack, not inferred from the config, which any node has) are its values
    exempt; anywhere else nothing is exempt but the id.
    """
    filled = set(_tool_call_id_keys(tool))
    try:
        from langgraph.prebuilt.tool_node import ToolNode, _get_all_injected_args
    except ImportError:  # pragma: no cover - no langgraph, no ToolNode
        return filled
    if not _called_from(ToolNode._execute_tool_sync, ToolNode._execute_tool_async):
        return filled
    found = _get_all_injected_args(tool)
    filled |= set(found.state)
    filled |= {k for k in (found.store, found.runtime) if k}
    return filled


def _called_from(*functions: Callable[..., Any], depth: int = 16) -> bool:
    """Whether one of ``functions`` is among the callers (or awaiting coroutines) of this frame."""
    codes = {getattr(f, "__code__", None) for f in functions} - {None}
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return False
        if frame.f_code in codes:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _tool_call_id_keys(tool: BaseTool) -> set[str]:
    schema = tool.args_schema
    if schema is None or isinstance(schema, dict):
        return set()
    return {
        k
        for k, v in get_all_basemodel_annotations(schema).items()
        if _is_injected_arg_type(v, injected_type=InjectedToolCallId)
    }


Runner = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def _sync_runner(
    inner: BaseTool, config: RunnableConfig, run_manager: CallbackManagerForToolRun | None
) -> Runner:
    """Calls the wrapped tool with the decided values as its own ``_run`` would be called.

    A :class:`StructuredTool` whose ``_run`` is LangChain's own is run by calling
    its function the way that ``_run`` does (a child callback manager for a
    ``callbacks`` parameter, the config for a ``RunnableConfig`` one), with the
    function's parameters looked up once: LangChain looks them up on every call,
    and this wrapper's own ``BaseTool.run`` has just done the same for the
    wrapper. Any other tool's ``_run`` is called as LangChain calls it.
    """
    func = inner.func if type(inner)._run is _STRUCTURED_RUN else None  # type: ignore[attr-defined]
    if func:
        return _function_runner(func, config, run_manager)
    extras = _extras(inner._run, config, run_manager)
    return lambda a, v: inner._run(*a, **v, **extras)


def _async_runner(
    inner: BaseTool, config: RunnableConfig, run_manager: AsyncCallbackManagerForToolRun | None
) -> Runner:
    """Async twin of :func:`_sync_runner` (``StructuredTool.coroutine``, ``_arun``)."""
    coroutine = inner.coroutine if type(inner)._arun is _STRUCTURED_ARUN else None  # type: ignore[attr-defined]
    if coroutine:
        return _function_runner(coroutine, config, run_manager)
    extras = _extras(inner._arun, config, run_manager)
    return lambda a, v: inner._arun(*a, **v, **extras)


def _function_runner(
    function: Callable[..., Any],
    config: RunnableConfig,
    run_manager: CallbackManagerForToolRun | AsyncCallbackManagerForToolRun | None,
) -> Runner:
    """``StructuredTool._run``/``_arun``'s call of its function, parameters looked up once."""
    try:
        takes_callbacks, config_name = _function_parameters(function)
    except TypeError:  # an unhashable callable: inspect it every time
        takes_callbacks, config_name = _function_parameters.__wrapped__(function)

    def run(args: tuple[Any, ...], values: dict[str, Any]) -> Any:
        kwargs = dict(values)
        if run_manager and takes_callbacks:
            kwargs["callbacks"] = run_manager.get_child()
        if config_name:
            kwargs[config_name] = config
        return function(*args, **kwargs)

    return run


@functools.lru_cache(maxsize=1024)
def _function_parameters(function: Callable[..., Any]) -> tuple[bool, str | None]:
    """Whether a tool function takes ``callbacks``, and its ``RunnableConfig`` parameter:
    what ``StructuredTool._run`` looks up on every call, remembered per function."""
    takes_callbacks = bool(_signature_parameters(function).get("callbacks"))
    return takes_callbacks, _get_runnable_config_param(function)


_STRUCTURED_RUN = StructuredTool._run
_STRUCTURED_ARUN = StructuredTool._arun


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
