"""The call that runs is the call that was decided: schema coercion, middleware, resumes.

Each test reproduces a way a tool once ran with arguments -- or as a call --
the guard never decided on, through real graphs (``create_agent`` with
middleware, ``StateGraph`` + ``ToolNode``) driven by scripted chat models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import anyio
import pytest
from agentguard_langchain import GuardedTool, guard_tools
from agentguard_langchain.middleware import GuardMiddleware
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    HumanInTheLoopMiddleware,
    ToolCallRequest,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from agentguard import Delegation, Identity
from agentguard.guard import Guard

Decisions = Callable[[Guard], list[dict[str, Any]]]
Model = Callable[[Sequence[BaseMessage]], BaseChatModel]
Calls = Callable[..., AIMessage]

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset_ran() -> None:
    RAN.clear()


class CoercingRefund(BaseModel):
    """The tool's schema turns numbers into strings (the model's order may be a number)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)
    order: str
    amount: int


def _refund(order: str, amount: int) -> str:
    RAN.append(f"refund {order} {amount}")
    return f"REFUNDED {amount}"


def _parse_thousands(value: object) -> object:
    return int(value.replace(",", "")) if isinstance(value, str) else value


class ThousandsRefund(BaseModel):
    order: str
    amount: Annotated[int, BeforeValidator(_parse_thousands)]


class AliasRefund(BaseModel):
    order: str
    amount: int = Field(alias="amt")


class CentsRefund(BaseModel):
    """An after-validator: the tool receives a hundred times what the model wrote."""

    order: str
    amount: Annotated[int, AfterValidator(lambda v: v * 100)]


def _refund_tool(schema: type[BaseModel]) -> StructuredTool:
    return StructuredTool.from_function(
        _refund, name="refund", description="Refund an order.", args_schema=schema
    )


@tool
def wipe(target: str) -> str:
    """Wipe a target (needs approval)."""
    RAN.append(f"wipe {target}")
    return f"wiped {target}"


@tool
def lookup(order: str) -> str:
    """Look up an order."""
    RAN.append(f"lookup {order}")
    return f"order {order}: shipped"


def _messages(result: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}


def _middleware(guard: Guard, delegation: Delegation, bot: Identity, **kw: Any) -> GuardMiddleware:
    return GuardMiddleware(guard=guard, delegation=delegation, holder=bot, namespace="shop", **kw)


# -- 1. the tool's full schema, not the model-facing one ------------------------------


@pytest.mark.parametrize(
    ("schema", "args", "decided"),
    [
        (CoercingRefund, {"order": 1, "amount": 5000}, {"order": "1", "amount": 5000}),
        (ThousandsRefund, {"order": "A", "amount": "5,000"}, {"order": "A", "amount": 5000}),
        (AliasRefund, {"order": "A", "amt": 5000}, {"order": "A", "amount": 5000}),
        (CentsRefund, {"order": "A", "amount": 90}, {"order": "A", "amount": 9000}),
    ],
    ids=["coerce_numbers_to_str", "before_validator", "alias", "after_validator"],
)
@pytest.mark.parametrize("surface", ["middleware", "guard_tools"])
def test_the_guard_decides_on_what_the_tools_own_schema_makes_of_the_arguments(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
    schema: type[BaseModel],
    args: dict[str, Any],
    decided: dict[str, Any],
    surface: str,
) -> None:
    """``amount <= 100`` holds for what the model wrote only: the tool would get more."""
    model = scripted_model([tool_call(("refund", args, "r1")), AIMessage(content="done")])
    refund = _refund_tool(schema)
    if surface == "middleware":
        agent = create_agent(
            model, tools=[refund], middleware=[_middleware(guard, delegation, bot)]
        )
    else:
        tools = guard_tools(
            [refund], guard=guard, delegation=delegation, holder=bot, namespace="shop"
        )
        agent = create_agent(model, tools=tools)
    result = agent.invoke({"messages": [HumanMessage("refund")]})
    message = _messages(result)["r1"]
    assert message.status == "error"
    assert "predicate_failed" in str(message.content)
    assert RAN == []
    (record,) = decisions(guard)
    assert (record["tool"], record["outcome"], record["args"]) == ("shop/refund", "deny", decided)


def test_an_allowed_call_runs_with_exactly_the_decided_values(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """The after-validator runs once: the model's 1 is 100 for the guard and for the tool."""
    model = scripted_model(
        [tool_call(("refund", {"order": "A", "amount": 1}, "r1")), AIMessage(content="done")]
    )
    agent = create_agent(
        model,
        tools=[_refund_tool(CentsRefund)],
        middleware=[_middleware(guard, delegation, bot)],
    )
    result = agent.invoke({"messages": [HumanMessage("refund")]})
    assert _messages(result)["r1"].content == "REFUNDED 100"
    assert RAN == ["refund A 100"]
    (record,) = decisions(guard)
    assert (record["outcome"], record["args"]) == ("allow", {"order": "A", "amount": 100})


def test_arguments_the_tools_schema_rejects_are_its_validation_error_not_a_bypass(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    model = scripted_model(
        [tool_call(("refund", {"order": "A", "amount": "lots"}, "r1")), AIMessage(content="ok")]
    )
    agent = create_agent(
        model,
        tools=[_refund_tool(CoercingRefund)],
        middleware=[_middleware(guard, delegation, bot)],
    )
    result = agent.invoke({"messages": [HumanMessage("refund")]})
    assert _messages(result)["r1"].status == "error"
    assert RAN == []
    assert decisions(guard) == []


def test_a_json_schema_tool_is_refused_arguments_its_schema_would_coerce(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """An MCP-derived tool (JSON Schema ``args_schema``) validates nothing itself."""
    schema = {
        "type": "object",
        "properties": {"order": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["order", "amount"],
    }

    def run(**kwargs: Any) -> str:
        RAN.append(f"refund {kwargs}")
        return "REFUNDED"

    refund = StructuredTool(name="refund", description="Refund.", args_schema=schema, func=run)
    (guarded,) = guard_tools(
        [refund], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    for args in ({"order": "A", "amount": "5000"}, {"order": "A", "amount": 5, "extra": 1}):
        result = guarded.invoke({"name": "refund", "args": args, "id": "c", "type": "tool_call"})
        assert result.status == "error"
        assert "invalid_arguments" in result.content
    assert RAN == []
    ok = guarded.invoke(
        {"name": "refund", "args": {"order": "A", "amount": 5}, "id": "c2", "type": "tool_call"}
    )
    assert (ok.content, RAN) == ("REFUNDED", ["refund {'order': 'A', 'amount': 5}"])
    assert [r["outcome"] for r in decisions(guard)] == ["allow"]


# -- 2. a tool supplied at run time by another middleware ------------------------------


class SuppliesWipe(AgentMiddleware):
    """LangChain's runtime-tool pattern: a middleware supplies a tool the agent lacks."""

    def wrap_tool_call(self, request: ToolCallRequest, handler: Any) -> Any:
        if request.tool_call["name"] == "wipe":
            return handler(request.override(tool=wipe))
        return handler(request)


@pytest.mark.parametrize("order", ["guard_first", "supplier_first"])
def test_a_runtime_supplied_tool_never_runs_unguarded(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
    order: str,
) -> None:
    model = scripted_model(
        [tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="done")]
    )
    gate = _middleware(guard, delegation, bot)
    middleware = [gate, SuppliesWipe()] if order == "guard_first" else [SuppliesWipe(), gate]
    agent = create_agent(model, tools=[lookup], middleware=middleware)
    result = agent.invoke({"messages": [HumanMessage("wipe prod")]})
    message = _messages(result)["w1"]
    assert message.status == "error"
    assert RAN == []
    if order == "guard_first":
        # The guard cannot see the tool an inner middleware will supply: refused.
        assert "unknown_tool" in str(message.content)
        assert decisions(guard) == []
    else:
        # Supplied before the guard sees it: decided as shop/wipe, which needs approval.
        assert "approval" in str(message.content)
        assert [(r["tool"], r["outcome"]) for r in decisions(guard)] == [
            ("shop/wipe", "approval_required")
        ]


# -- 3. a reviewer's edit in LangChain's HumanInTheLoopMiddleware ----------------------


@pytest.mark.parametrize("order", ["guard_first", "hitl_first"])
@pytest.mark.parametrize(
    ("edited", "tool"),
    [
        ({"name": "wipe", "args": {"target": "prod"}}, "shop/wipe"),
        ({"name": "refund", "args": {"order": "A", "amount": 5000}}, "shop/refund"),
    ],
    ids=["edit_to_another_tool", "edit_the_amount"],
)
def test_a_reviewers_edit_is_what_the_guard_decides(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
    order: str,
    edited: dict[str, Any],
    tool: str,
) -> None:
    model = scripted_model(
        [
            tool_call(("refund", {"order": "A", "amount": 50}, "r1")),
            AIMessage(content="done"),
        ]
    )
    hitl = HumanInTheLoopMiddleware(interrupt_on={"refund": True})
    gate = _middleware(guard, delegation, bot)
    middleware = [gate, hitl] if order == "guard_first" else [hitl, gate]
    agent = create_agent(
        model,
        tools=[_refund_tool(CoercingRefund), wipe],
        middleware=middleware,
        checkpointer=InMemorySaver(),
    )
    config: Any = {"configurable": {"thread_id": f"hitl-{order}-{tool}"}}
    first = agent.invoke({"messages": [HumanMessage("refund A")]}, config)
    assert "__interrupt__" in first
    resume = {"decisions": [{"type": "edit", "edited_action": edited}]}
    done = agent.invoke(Command(resume=resume), config)
    assert _messages(done)["r1"].status == "error"
    assert RAN == []
    (record,) = decisions(guard)
    assert record["tool"] == tool
    assert record["args"] == edited["args"]
    assert record["outcome"] in ("deny", "approval_required")


# -- 4. a ToolNode re-run on resume ------------------------------------------------------


def _batch_graph(guard: Guard, delegation: Delegation, bot: Identity) -> Any:
    """A checkpointed graph whose one ToolNode runs refund and wipe (interrupt mode)."""
    tools = guard_tools(
        [_refund_tool(CoercingRefund), wipe],
        guard=guard,
        delegation=delegation,
        holder=bot,
        namespace="shop",
        approval="interrupt",
    )
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    return graph.compile(checkpointer=InMemorySaver())


@pytest.mark.parametrize("run", ["sync", "async"])
def test_calls_that_ran_before_an_interrupt_do_not_run_again_on_resume(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    decisions: Decisions,
    tool_call: Calls,
    run: str,
) -> None:
    """One AI message: refund (allowed) runs, wipe interrupts; the resume re-runs the node."""
    app = _batch_graph(guard, delegation, bot)
    config: Any = {"configurable": {"thread_id": f"batch-{run}"}}
    message = tool_call(
        ("refund", {"order": "A", "amount": 50}, "r1"), ("wipe", {"target": "cache"}, "w1")
    )

    def invoke(value: Any) -> Any:
        if run == "sync":
            return app.invoke(value, config)

        async def go() -> Any:
            return await app.ainvoke(value, config)

        return anyio.run(go)

    first = invoke({"messages": [message]})
    (pending,) = first["__interrupt__"]
    guard.approvals.approve(pending.value["request_id"], bob)
    done = invoke(Command(resume={"type": "approve"}))
    by_id = _messages(done)
    assert by_id["r1"].content == "REFUNDED 50"
    assert by_id["w1"].content == "wiped cache"
    assert RAN == ["refund A 50", "wipe cache"]
    allowed = [r["call_id"] for r in decisions(guard) if r["outcome"] == "allow"]
    assert sorted(allowed) == ["r1", "w1"]


def test_a_resume_in_a_process_that_does_not_remember_the_result_refuses_the_repeat(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    tool_call: Calls,
) -> None:
    """The store remembers that the call ran; without its result the repeat is refused."""
    from agentguard_langchain import _gate

    app = _batch_graph(guard, delegation, bot)
    config: Any = {"configurable": {"thread_id": "forgetful"}}
    message = tool_call(
        ("refund", {"order": "A", "amount": 50}, "r1"), ("wipe", {"target": "cache"}, "w1")
    )
    first = app.invoke({"messages": [message]}, config)
    (pending,) = first["__interrupt__"]
    guard.approvals.approve(pending.value["request_id"], bob)
    _gate._ONCE = _gate._Once()  # another process: no results in memory
    done = app.invoke(Command(resume={"type": "approve"}), config)
    by_id = _messages(done)
    assert "already_ran" in str(by_id["r1"].content)
    assert RAN == ["refund A 50", "wipe cache"]


# -- addresses, duplicates, delegations, injected parameters -----------------------------


def test_the_decision_address_is_fixed_when_the_tool_is_wrapped(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    (guarded,) = guard_tools(
        [wipe], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    assert isinstance(guarded, GuardedTool)
    guarded.name = "sandbox_wipe"
    guarded.inner.name = "lookup"
    try:
        result = guarded.invoke(
            {"name": "sandbox_wipe", "args": {"target": "prod"}, "id": "w", "type": "tool_call"}
        )
    finally:
        guarded.inner.name = "wipe"
    assert result.status == "error"
    assert RAN == []
    assert [(r["tool"], r["outcome"]) for r in decisions(guard)] == [
        ("shop/wipe", "approval_required")
    ]


class RenamesCalls(AgentMiddleware):
    """An outer middleware that relabels a call without changing the tool that runs."""

    def wrap_tool_call(self, request: ToolCallRequest, handler: Any) -> Any:
        return handler(request.override(tool_call={**request.tool_call, "name": "lookup"}))


def test_a_renamed_call_is_decided_as_the_tool_that_runs(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    model = scripted_model(
        [tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="done")]
    )
    agent = create_agent(
        model,
        tools=[lookup, wipe],
        middleware=[RenamesCalls(), _middleware(guard, delegation, bot)],
    )
    agent.invoke({"messages": [HumanMessage("wipe")]})
    assert RAN == []
    assert [(r["tool"], r["outcome"]) for r in decisions(guard)] == [
        ("shop/wipe", "approval_required")
    ]


def test_one_name_in_two_guarded_lists_is_refused(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    first = guard_tools([lookup], guard=guard, delegation=delegation, holder=bot, namespace="shop")
    second = guard_tools([lookup], guard=guard, delegation=delegation, holder=bot, namespace="mcp")
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        first + second
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        [wipe, *first] + second  # noqa: RUF005 (the checked concatenation)
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        first.extend(second)
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        first += second
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        first.append(second[0])
    with pytest.raises(ValueError, match="two tools are named 'lookup'"):
        first.insert(0, second[0])
    assert [t.name for t in first] == ["lookup"]
    joined = first + guard_tools(
        [wipe], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    assert [t.name for t in joined] == ["lookup", "wipe"]


def test_a_sub_agents_middleware_applies_its_narrower_delegation_to_guarded_tools(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """Tools guarded for the parent's delegation are decided under the sub-agent's."""
    parent_tools = guard_tools(
        [lookup, wipe], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    helper = Identity.generate("agent:helper")
    narrower = delegation.attenuate(bot, helper, ["shop/wipe"], ttl="10m")
    assert isinstance(parent_tools[0], GuardedTool)
    model = scripted_model([tool_call(("lookup", {"order": "A"}, "l1")), AIMessage(content="done")])
    agent = create_agent(
        model,
        tools=parent_tools,
        middleware=[
            GuardMiddleware(guard=guard, delegation=narrower, holder=helper, namespace="x")
        ],
    )
    result = agent.invoke({"messages": [HumanMessage("look")]})
    assert _messages(result)["l1"].status == "error"
    assert RAN == []
    (record,) = decisions(guard)
    assert (record["tool"], record["outcome"]) == ("shop/lookup", "deny")


@tool
def account(order: str, user_id: Annotated[str, InjectedToolArg]) -> str:
    """Show an order of the current user."""
    RAN.append(f"account {user_id} {order}")
    return f"{user_id}: {order}"


def test_a_model_supplied_value_for_an_injected_parameter_is_refused(
    guard: Guard, org: Identity, bot: Identity, decisions: Decisions
) -> None:
    grant = Delegation.issue(org, bot, ["shop/account"], ttl="1h")
    (guarded,) = guard_tools([account], guard=guard, delegation=grant, holder=bot, namespace="shop")
    model_call = {
        "name": "account",
        "args": {"order": "A", "user_id": "admin"},
        "id": "a1",
        "type": "tool_call",
    }
    refused = guarded.invoke(model_call)
    assert refused.status == "error"
    assert "injected_argument" in refused.content
    assert RAN == []
    fine = guarded.invoke({**model_call, "args": {"order": "A"}}, injected={"user_id": "u-7"})
    assert fine.content == "u-7: A"
    assert RAN == ["account u-7 A"]
    (record,) = decisions(guard)
    assert record["args"] == {"order": "A"}
    with pytest.raises(ValueError, match="not injected parameters"):
        guarded.invoke({**model_call, "args": {"order": "A"}}, injected={"order": "B"})


def test_a_model_supplied_injected_value_never_reaches_the_tool_inside_a_graph(
    guard: Guard, org: Identity, bot: Identity, scripted_model: Model, tool_call: Calls
) -> None:
    grant = Delegation.issue(org, bot, ["shop/account"], ttl="1h")
    model = scripted_model(
        [
            tool_call(("account", {"order": "A", "user_id": "admin"}, "a1")),
            AIMessage(content="done"),
        ]
    )
    tools: list[BaseTool] = [account]
    agent = create_agent(
        model,
        tools=tools,
        middleware=[GuardMiddleware(guard=guard, delegation=grant, holder=bot, namespace="shop")],
    )
    result = agent.invoke({"messages": [HumanMessage("show")]})
    # ToolNode drops the model's value itself; the tool then lacks the parameter.
    assert _messages(result)["a1"].status == "error"
    assert RAN == []
