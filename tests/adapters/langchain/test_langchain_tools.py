"""GuardedTool fidelity: it looks and behaves like the tool it wraps, and refuses safely."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import pytest
from agentguard_langchain import AlreadyGuardedError, GuardedTool, guard_tools
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, InjectedToolCallId, StructuredTool, tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.pydantic import model_json_schema
from pydantic import BaseModel, Field, ValidationError

from agentguard import Delegation, Identity
from agentguard.guard import Guard

Decisions = Callable[[Guard], list[dict[str, Any]]]


@tool
def lookup(order: str) -> str:
    """Look up an order by its id."""
    return f"order {order}: shipped"


class RefundArgs(BaseModel):
    order: str = Field(description="order id")
    amount: int = Field(description="amount in euros")
    reason: str = "customer request"


def _refund(order: str, amount: int, reason: str = "customer request") -> str:
    return f"refunded {amount} on {order} ({reason})"


async def _arefund(order: str, amount: int, reason: str = "customer request") -> str:
    return f"refunded {amount} on {order} ({reason}, async)"


refund = StructuredTool.from_function(
    func=_refund,
    coroutine=_arefund,
    name="refund",
    description="Refund part of an order.",
    args_schema=RefundArgs,
    return_direct=True,
)


class NoteArgs(BaseModel):
    text: str
    call: Annotated[str, InjectedToolCallId]


class NoteTool(BaseTool):
    """A BaseTool subclass with an injected tool call id in its schema."""

    name: str = "note"
    description: str = "Attach a note to the current ticket."
    args_schema: type[BaseModel] = NoteArgs

    def _run(self, text: str, call: str) -> str:
        return f"noted {text!r} (call {call})"


async def _slow_lookup(order: str) -> str:
    return f"order {order}: delivered"


async_only = StructuredTool.from_function(
    coroutine=_slow_lookup, name="lookup_async", description="Look up an order (async only)."
)

SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["query"],
}


def _search(**kwargs: Any) -> str:
    return f"results for {kwargs['query']}"


search = StructuredTool(
    name="search",
    description="Search the knowledge base (an MCP-derived tool).",
    args_schema=SEARCH_SCHEMA,
    func=_search,
)


@tool(response_format="content_and_artifact")
def wipe(target: str) -> tuple[str, dict[str, Any]]:
    """Wipe a target (privileged)."""
    return f"wiped {target}", {"target": target, "rows": 3}


def call(name: str, args: dict[str, Any], call_id: str = "call-1") -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "args": args, "id": call_id}


def _guarded(
    tools: list[BaseTool], guard: Guard, delegation: Delegation, bot: Identity, namespace: str
) -> dict[str, GuardedTool]:
    wrapped = guard_tools(
        tools, guard=guard, delegation=delegation, holder=bot, namespace=namespace
    )
    return {t.name: t for t in wrapped if isinstance(t, GuardedTool)}


@pytest.mark.parametrize("original", [lookup, refund, NoteTool(), async_only, search, wipe])
def test_wrapper_looks_like_the_original(
    original: BaseTool, guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    """Name, description, schemas, flags and the provider tool spec are unchanged."""
    (wrapped,) = guard_tools(
        [original], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    assert isinstance(wrapped, GuardedTool)
    assert wrapped.inner is original
    assert wrapped.address == f"shop/{original.name}"
    for attr in ("name", "description", "return_direct", "response_format", "args_schema"):
        assert getattr(wrapped, attr) == getattr(original, attr), attr
    assert wrapped.args == original.args
    assert wrapped.tool_call_schema == original.tool_call_schema
    assert model_json_schema(wrapped.get_input_schema()) == model_json_schema(
        original.get_input_schema()
    )
    assert wrapped._injected_args_keys == original._injected_args_keys
    assert convert_to_openai_tool(wrapped) == convert_to_openai_tool(original)


def test_allowed_call_returns_the_tools_message_and_audits_the_call_id(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """A ToolMessage with the right tool_call_id; the call id is the decision's call id."""
    tools = _guarded([lookup], guard, delegation, bot, "shop")
    result = tools["lookup"].invoke(call("lookup", {"order": "A1"}, "call-42"))
    assert isinstance(result, ToolMessage)
    assert (result.content, result.tool_call_id, result.name) == (
        "order A1: shipped",
        "call-42",
        "lookup",
    )
    assert result.status == "success"
    (record,) = decisions(guard)
    assert (record["tool"], record["outcome"], record["call_id"]) == (
        "shop/lookup",
        "allow",
        "call-42",
    )
    assert record["enforcement_point"] == "langchain"


def test_plain_invoke_without_a_tool_call_returns_content(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    """Invoked with bare arguments, the wrapper returns what the tool returns."""
    tools = _guarded([lookup], guard, delegation, bot, "shop")
    assert tools["lookup"].invoke({"order": "B2"}) == "order B2: shipped"
    assert tools["lookup"].invoke("C3") == "order C3: shipped"


def test_defaults_are_checked_as_the_tool_will_see_them(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """The checked arguments are the validated ones, defaults filled in and coerced."""
    tools = _guarded([refund], guard, delegation, bot, "shop")
    result = tools["refund"].invoke(call("refund", {"order": "A1", "amount": "40"}))
    assert result.content == "refunded 40 on A1 (customer request)"
    (record,) = decisions(guard)
    assert record["args"] == {"order": "A1", "amount": 40, "reason": "customer request"}


def test_predicate_refusal_is_an_error_message_with_reason_and_decision(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    tools = _guarded([refund], guard, delegation, bot, "shop")
    result = tools["refund"].invoke(call("refund", {"order": "A1", "amount": 500}, "c-9"))
    assert isinstance(result, ToolMessage)
    assert result.status == "error"
    assert result.tool_call_id == "c-9"
    (record,) = decisions(guard)
    assert record["outcome"] == "deny"
    assert result.content == (
        f"denied by agentguard (predicate_failed, decision {record['decision_id']})"
    )


def test_refusals_leak_no_argument_token_or_delegation_content(
    guard: Guard, delegation: Delegation, bot: Identity, canary: str
) -> None:
    """A canary in the arguments and in the delegation never reaches the model."""
    tools = _guarded([refund, wipe], guard, delegation, bot, "shop")
    outputs = [
        tools["refund"].invoke(call("refund", {"order": canary, "amount": 10**6})),
        tools["wipe"].invoke(call("wipe", {"target": canary})),
    ]
    (unknown,) = guard_tools(
        [lookup], guard=guard, delegation=delegation, holder=bot, namespace="other"
    )
    outputs.append(unknown.invoke(call("lookup", {"order": canary})))
    for output in outputs:
        assert isinstance(output, ToolMessage)
        assert output.status == "error"
        text = json.dumps(output.model_dump(), default=str)
        assert canary not in text
        assert delegation.serialize()[:40] not in text
        assert "eyJ" not in text  # no JWS of any kind


def test_non_json_arguments_are_an_error_message_not_a_crash(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    """Arguments that are no JSON values (NaN, a Python object) are refused as messages."""

    @tool
    def measure(level: Any) -> str:
        """Record a level."""
        return f"recorded {level}"

    (guarded,) = guard_tools(
        [measure], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    for value in (float("nan"), object()):
        output = guarded.invoke(call("measure", {"level": value}))
        assert isinstance(output, ToolMessage)
        assert output.status == "error"
        assert str(output.content).startswith("denied by agentguard (")
    assert "unsupported_arguments" in str(output.content)  # the object never reached the guard


def test_a_holder_that_does_not_hold_the_delegation_is_refused_when_wiring(
    guard: Guard, delegation: Delegation
) -> None:
    outsider = Identity.generate("agent:outsider")
    with pytest.raises(ValueError, match="agent:outsider does not hold this delegation"):
        guard_tools([lookup], guard=guard, delegation=delegation, holder=outsider, namespace="s")


def test_async_path_goes_through_the_guard(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    import anyio

    tools = _guarded([refund, async_only], guard, delegation, bot, "shop")

    async def main() -> tuple[Any, Any, Any]:
        return (
            await tools["refund"].ainvoke(call("refund", {"order": "A1", "amount": 5}, "a1")),
            await tools["lookup_async"].ainvoke(call("lookup_async", {"order": "Z"}, "a2")),
            await tools["refund"].ainvoke(call("refund", {"order": "A1", "amount": 101}, "a3")),
        )

    ok, only_async, denied = anyio.run(main)
    assert ok.content == "refunded 5 on A1 (customer request, async)"
    assert only_async.content == "order Z: delivered"
    assert denied.status == "error"
    assert [r["call_id"] for r in decisions(guard)] == ["a1", "a2", "a3"]
    assert [r["outcome"] for r in decisions(guard)] == ["allow", "allow", "deny"]


def test_async_only_tool_refuses_sync_calls_before_deciding(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    tools = _guarded([async_only], guard, delegation, bot, "shop")
    with pytest.raises(NotImplementedError, match="does not support sync"):
        tools["lookup_async"].invoke(call("lookup_async", {"order": "Z"}))
    assert decisions(guard) == []


def test_injected_tool_call_id_is_not_checked(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """InjectedToolCallId reaches the tool but is neither checked nor digested."""
    tools = _guarded([NoteTool()], guard, delegation, bot, "shop")
    result = tools["note"].invoke(call("note", {"text": "hello"}, "call-7"))
    assert result.content == "noted 'hello' (call call-7)"
    (record,) = decisions(guard)
    assert record["args"] == {"text": "hello"}


def test_dict_schema_tool(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """A JSON-schema tool (as MCP adapters build them) is checked with its arguments as given."""
    tools = _guarded([search], guard, delegation, bot, "mcp")
    result = tools["search"].invoke(call("search", {"query": "vat", "limit": 3}))
    assert result.content == "results for vat"
    assert decisions(guard)[0]["args"] == {"query": "vat", "limit": 3}
    assert decisions(guard)[0]["tool"] == "mcp/search"


def test_content_and_artifact_and_approval_pending(
    guard: Guard, delegation: Delegation, bot: Identity, bob: Identity
) -> None:
    """A privileged tool waits for approval; once bob approves, content and artifact come back."""
    tools = _guarded([wipe], guard, delegation, bot, "shop")
    pending = tools["wipe"].invoke(call("wipe", {"target": "cache"}))
    assert pending.status == "error"
    (request,) = guard.approvals.pending()
    assert pending.content.startswith(f"approval pending, id={request.id}: ")
    assert "user:bob can" in pending.content  # who, never how (tests/.../*interrupt*)
    assert "approvals approve" not in pending.content
    guard.approvals.approve(request.id, bob)
    done = tools["wipe"].invoke(call("wipe", {"target": "cache"}, "call-2"))
    assert (done.content, done.artifact, done.status) == (
        "wiped cache",
        {"target": "cache", "rows": 3},
        "success",
    )


def test_blocking_guard_waits_for_its_approver(
    blocking_guard: Guard, delegation: Delegation, bot: Identity, bob: Identity
) -> None:
    """In blocking mode the tool call simply waits until the queue answers."""
    import threading

    tools = _guarded([wipe], blocking_guard, delegation, bot, "shop")

    def approve_when_filed() -> None:
        for _ in range(500):
            pending = blocking_guard.approvals.pending()
            if pending:
                blocking_guard.approvals.approve(pending[0].id, bob)
                return
            threading.Event().wait(0.01)

    approver = threading.Thread(target=approve_when_filed)
    approver.start()
    result = tools["wipe"].invoke(call("wipe", {"target": "logs"}))
    approver.join()
    assert (result.content, result.status) == ("wiped logs", "success")


def test_validation_errors_propagate_like_the_original(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    tools = _guarded([refund], guard, delegation, bot, "shop")
    with pytest.raises(ValidationError):
        tools["refund"].invoke(call("refund", {"order": "A1", "amount": "lots"}))
    assert decisions(guard) == []


def test_callbacks_see_one_tool_run_per_call(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    """Callbacks fire once for an allowed call and once for a refusal."""

    class Recorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.events: list[tuple[str, str]] = []

        def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kw: Any) -> None:
            self.events.append(("start", serialized["name"]))

        def on_tool_end(self, output: Any, *, run_id: UUID, **kw: Any) -> None:
            self.events.append(("end", getattr(output, "status", "?")))

    recorder = Recorder()
    tools = _guarded([refund], guard, delegation, bot, "shop")
    config: RunnableConfig = {"callbacks": [recorder]}
    tools["refund"].invoke(call("refund", {"order": "A", "amount": 1}), config)
    tools["refund"].invoke(call("refund", {"order": "A", "amount": 1000}), config)
    assert recorder.events == [
        ("start", "refund"),
        ("end", "success"),
        ("start", "refund"),
        ("end", "error"),
    ]


def test_a_tool_is_never_guarded_twice(guard: Guard, delegation: Delegation, bot: Identity) -> None:
    (once,) = guard_tools([lookup], guard=guard, delegation=delegation, holder=bot, namespace="s")
    with pytest.raises(AlreadyGuardedError, match="already guarded as 's/lookup'"):
        guard_tools([once], guard=guard, delegation=delegation, holder=bot, namespace="shop")
    assert isinstance(once, GuardedTool)
    rebound = once.rebind(delegation=delegation, holder=bot, namespace="shop")
    assert rebound.inner is lookup
    assert rebound.address == "shop/lookup"


def test_plain_functions_are_made_tools_and_names_must_be_unique(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    def ping(host: str) -> str:
        """Ping a host."""
        return f"pong {host}"

    (wrapped,) = guard_tools([ping], guard=guard, delegation=delegation, holder=bot, namespace="n")
    assert wrapped.name == "ping"
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        guard_tools([lookup, lookup], guard=guard, delegation=delegation, holder=bot, namespace="n")
