"""Guarded tools in LangGraph and create_agent: ToolNode, parallel calls, interrupts, sub-agents."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import anyio
import pytest
from agentguard_langchain import INTERRUPT_KIND, GuardedTool, attenuate_for, guard_tools
from agentguard_langchain.middleware import GuardMiddleware
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode, ToolRuntime
from langgraph.types import Command

from agentguard import Delegation, Identity
from agentguard.guard import Guard

Decisions = Callable[[Guard], list[dict[str, Any]]]
Model = Callable[[Sequence[BaseMessage]], BaseChatModel]
Calls = Callable[..., AIMessage]

RAN: list[str] = []


@tool
def lookup(order: str) -> str:
    """Look up an order by its id."""
    return f"order {order}: shipped"


@tool
def refund(order: str, amount: int) -> str:
    """Refund part of an order."""
    return f"refunded {amount} on {order}"


@tool
def wipe(target: str) -> str:
    """Wipe a target (privileged)."""
    RAN.append(target)
    return f"wiped {target}"


@tool
def note(
    text: str,
    state: Annotated[dict[str, Any], InjectedState],
    tool_call_id: Annotated[str, InjectedToolCallId],
    runtime: ToolRuntime,
) -> str:
    """Attach a note to the ticket."""
    return (
        f"{text}: {len(state['messages'])} message(s), call {tool_call_id}/{runtime.tool_call_id}"
    )


@pytest.fixture(autouse=True)
def _reset_ran() -> None:
    RAN.clear()


def _tools(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    *,
    approval: Literal["block", "interrupt"] = "block",
) -> list[BaseTool]:
    return guard_tools(
        [lookup, refund, wipe, note],
        guard=guard,
        delegation=delegation,
        holder=bot,
        namespace="shop",
        approval=approval,
    )


def _tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def test_tool_node_in_a_graph_injects_state_call_id_and_runtime(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions, tool_call: Calls
) -> None:
    """InjectedState, InjectedToolCallId and ToolRuntime reach the tool; only text is checked."""
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(_tools(guard, delegation, bot)))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    app = graph.compile()
    result = app.invoke(
        {
            "messages": [
                tool_call(
                    ("note", {"text": "hi"}, "n1"), ("refund", {"order": "A", "amount": 900}, "r1")
                )
            ]
        }
    )
    by_id = {m.tool_call_id: m for m in _tool_messages(result)}
    assert by_id["n1"].content == "hi: 1 message(s), call n1/n1"
    assert by_id["n1"].status == "success"
    assert by_id["r1"].status == "error"
    assert "predicate_failed" in str(by_id["r1"].content)
    records = {r["call_id"]: r for r in decisions(guard)}
    assert records["n1"]["args"] == {"text": "hi"}
    assert records["r1"]["outcome"] == "deny"


def test_create_agent_with_parallel_calls_allowed_and_denied(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """Several tool calls in one step: each is decided on its own; refusals never crash."""
    model = scripted_model(
        [
            tool_call(
                ("lookup", {"order": "A1"}, "c1"),
                ("refund", {"order": "A1", "amount": 20}, "c2"),
                ("refund", {"order": "A1", "amount": 2000}, "c3"),
                ("lookup", {"order": "A2"}, "c4"),
            ),
            AIMessage(content="done"),
        ]
    )
    agent = create_agent(model, tools=_tools(guard, delegation, bot))
    result = agent.invoke({"messages": [HumanMessage("help with A1")]})
    statuses = {m.tool_call_id: m.status for m in _tool_messages(result)}
    assert statuses == {"c1": "success", "c2": "success", "c3": "error", "c4": "success"}
    assert result["messages"][-1].content == "done"
    assert sorted(r["call_id"] for r in decisions(guard)) == ["c1", "c2", "c3", "c4"]


def _interrupt_value(result: dict[str, Any]) -> dict[str, Any]:
    (pending,) = result["__interrupt__"]
    value = pending.value
    assert isinstance(value, dict)
    return value


def _agent(model: BaseChatModel, tools: list[BaseTool], **kw: Any) -> Any:
    return create_agent(model, tools=tools, checkpointer=InMemorySaver(), **kw)


CONFIG: Any = {"configurable": {"thread_id": "t1"}}


def test_interrupt_then_approve_in_the_queue(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    scripted_model: Model,
    tool_call: Calls,
    canary: str,
) -> None:
    """The run pauses with a reviewer-friendly request; it resumes only after bob signs."""
    model = scripted_model(
        [tool_call(("wipe", {"target": "cache", "token": canary}, "w1")), AIMessage(content="ok")]
    )
    agent = _agent(model, _tools(guard, delegation, bot, approval="interrupt"))
    first = agent.invoke({"messages": [HumanMessage("wipe the cache")]}, CONFIG)
    value = _interrupt_value(first)
    (request,) = guard.approvals.pending()
    assert value["type"] == INTERRUPT_KIND
    assert value["request_id"] == request.id
    assert value["tool"] == "shop/wipe"
    assert value["on_behalf_of"] == "user:alice"
    assert value["requester"] == "agent:bot"
    assert value["path"] == ["org:acme", "agent:bot"]
    assert "approval" in value["rules"][0]
    assert value["args"]["target"] == "cache"
    (link,) = value["links"]  # what each link claims, and who asserted it
    assert (link["issuer"], link["subject"], link["on_behalf_of"], link["purpose"]) == (
        "org:acme",
        "agent:bot",
        "user:alice",
        "customer support",
    )
    assert "agent:bot" in value["excluded_approvers"]
    assert value["unfolded"] == ""  # nothing long enough to fold
    assert canary not in repr(value)  # redacted by the guard's policy
    assert RAN == []

    # Saying "approve" is not enough: nothing signed, so the run pauses again.
    again = agent.invoke(Command(resume={"type": "approve"}), CONFIG)
    assert _interrupt_value(again)["request_id"] == request.id
    assert RAN == []

    guard.approvals.approve(request.id, bob)
    done = agent.invoke(Command(resume={"type": "approve"}), CONFIG)
    assert RAN == ["cache"]
    (message,) = _tool_messages(done)
    assert (message.content, message.status, message.tool_call_id) == (
        "wiped cache",
        "success",
        "w1",
    )
    assert done["messages"][-1].content == "ok"


def test_interrupt_then_reject_with_a_message(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """bob denies in the queue; the model reads his note in an error ToolMessage."""
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    agent = _agent(model, _tools(guard, delegation, bot, approval="interrupt"))
    first = agent.invoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
    request_id = _interrupt_value(first)["request_id"]
    guard.approvals.deny(request_id, bob, message="never wipe prod; ask the on-call")
    done = agent.invoke(
        Command(resume={"type": "reject", "message": "never wipe prod; ask the on-call"}), CONFIG
    )
    (message,) = _tool_messages(done)
    assert message.status == "error"
    assert "never wipe prod; ask the on-call" in str(message.content)
    assert RAN == []


def test_reject_through_the_resume_alone_still_refuses(
    guard: Guard, delegation: Delegation, bot: Identity, scripted_model: Model, tool_call: Calls
) -> None:
    """Rejecting only reduces authority, so the resume value alone may do it."""
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    agent = _agent(model, _tools(guard, delegation, bot, approval="interrupt"))
    agent.invoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
    done = agent.invoke(Command(resume={"type": "reject", "message": "not today"}), CONFIG)
    (message,) = _tool_messages(done)
    assert message.status == "error"
    assert str(message.content).endswith(": not today")
    assert RAN == []


def test_interrupt_then_edit(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    scripted_model: Model,
    tool_call: Calls,
    decisions: Decisions,
) -> None:
    """bob approves an edited call in the queue; the tool runs with the edited arguments."""
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    agent = _agent(model, _tools(guard, delegation, bot, approval="interrupt"))
    first = agent.invoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
    request_id = _interrupt_value(first)["request_id"]
    guard.approvals.approve(request_id, bob, edited_args={"target": "staging"})
    done = agent.invoke(Command(resume={"type": "edit", "args": {"target": "staging"}}), CONFIG)
    (message,) = _tool_messages(done)
    assert (message.content, message.status) == ("wiped staging", "success")
    assert RAN == ["staging"]
    assert decisions(guard)[-1]["approval"]["edited"] is True


def test_edit_through_the_resume_files_a_new_request(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """An edit proposed only in the resume value is a new call that needs its own approval."""
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    agent = _agent(model, _tools(guard, delegation, bot, approval="interrupt"))
    first = agent.invoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
    original = _interrupt_value(first)["request_id"]
    second = agent.invoke(Command(resume={"type": "edit", "args": {"target": "tmp"}}), CONFIG)
    value = _interrupt_value(second)
    assert value["request_id"] != original
    assert value["args"] == {"target": "tmp"}
    assert RAN == []
    guard.approvals.approve(value["request_id"], bob)
    done = agent.invoke(Command(resume={"type": "approve"}), CONFIG)
    assert RAN == ["tmp"]
    assert _tool_messages(done)[-1].content == "wiped tmp"


def test_interrupt_mode_needs_a_raising_guard(
    blocking_guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    with pytest.raises(ValueError, match="approval_mode='raise'"):
        _tools(blocking_guard, delegation, bot, approval="interrupt")


def test_middleware_gates_plain_tools_and_skips_guarded_ones(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    scripted_model: Model,
    tool_call: Calls,
    decisions: Decisions,
) -> None:
    """Plain tools are gated by the middleware; a GuardedTool is gated once, by itself."""
    (guarded_lookup,) = guard_tools(
        [lookup], guard=guard, delegation=delegation, holder=bot, namespace="shop"
    )
    model = scripted_model(
        [
            tool_call(
                ("lookup", {"order": "A1"}, "c1"),
                ("refund", {"order": "A1", "amount": 50}, "c2"),
                ("refund", {"order": "A1", "amount": 5000}, "c3"),
                ("note", {"text": "called"}, "c4"),
            ),
            AIMessage(content="done"),
        ]
    )
    middleware = GuardMiddleware(guard=guard, delegation=delegation, holder=bot, namespace="shop")
    agent = create_agent(model, tools=[guarded_lookup, refund, note], middleware=[middleware])
    result = agent.invoke({"messages": [HumanMessage("go")]})
    by_id = {m.tool_call_id: m for m in _tool_messages(result)}
    assert {k: m.status for k, m in by_id.items()} == {
        "c1": "success",
        "c2": "success",
        "c3": "error",
        "c4": "success",
    }
    assert by_id["c4"].content == "called: 2 message(s), call c4/c4"
    records = decisions(guard)
    assert sorted(r["call_id"] for r in records) == ["c1", "c2", "c3", "c4"]
    assert {r["call_id"]: r["args"] for r in records}["c4"] == {"text": "called"}


def test_middleware_interrupt_approve_and_edit_async(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    bob: Identity,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """awrap_tool_call: pause, bob approves with an edit, resume, the edited call runs."""
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    middleware = GuardMiddleware(
        guard=guard, delegation=delegation, holder=bot, namespace="shop", approval="interrupt"
    )
    agent = _agent(model, [wipe], middleware=[middleware])

    async def main() -> dict[str, Any]:
        first = await agent.ainvoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
        request_id = _interrupt_value(first)["request_id"]
        guard.approvals.approve(request_id, bob, edited_args={"target": "qa"})
        result: dict[str, Any] = await agent.ainvoke(
            Command(resume={"type": "edit", "args": {"target": "qa"}}), CONFIG
        )
        return result

    done = anyio.run(main)
    assert RAN == ["qa"]
    assert _tool_messages(done)[-1].content == "wiped qa"


def test_middleware_interrupt_reject_sync(
    guard: Guard, delegation: Delegation, bot: Identity, scripted_model: Model, tool_call: Calls
) -> None:
    model = scripted_model([tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="ok")])
    middleware = GuardMiddleware(
        guard=guard, delegation=delegation, holder=bot, namespace="shop", approval="interrupt"
    )
    agent = _agent(model, [wipe], middleware=[middleware])
    agent.invoke({"messages": [HumanMessage("wipe prod")]}, CONFIG)
    done = agent.invoke(Command(resume="reject"), CONFIG)
    (message,) = _tool_messages(done)
    assert message.status == "error"
    assert "rejected by the reviewer" in str(message.content)
    assert RAN == []


def test_sub_agent_chain_shows_in_the_audit_record(
    guard: Guard, delegation: Delegation, bot: Identity, decisions: Decisions
) -> None:
    """One call narrows the delegation for a sub-agent; its calls are audited agent -> sub-agent."""
    tools = {t.name: t for t in _tools(guard, delegation, bot)}
    sub = Identity.generate("agent:researcher")
    sub_delegation = attenuate_for(
        delegation, bot, sub, tools=[tools["lookup"]], ttl="10m", purpose="look things up"
    )
    assert sub_delegation.leaf.expires_at < delegation.leaf.expires_at
    guarded = tools["lookup"]
    assert isinstance(guarded, GuardedTool)
    sub_lookup = guarded.rebind(delegation=sub_delegation, holder=sub)
    sub_refund = tools["refund"]
    assert isinstance(sub_refund, GuardedTool)
    out_of_reach = sub_refund.rebind(delegation=sub_delegation, holder=sub)

    ok = sub_lookup.invoke(
        {"type": "tool_call", "name": "lookup", "args": {"order": "Q"}, "id": "s1"}
    )
    denied = out_of_reach.invoke(
        {"type": "tool_call", "name": "refund", "args": {"order": "Q", "amount": 1}, "id": "s2"}
    )
    assert ok.status == "success"
    assert denied.status == "error"
    records = {r["call_id"]: r for r in decisions(guard)}
    assert records["s1"]["path"] == ["org:acme", "agent:bot", "agent:researcher"]
    assert records["s1"]["link_ids"] == list(sub_delegation.link_ids)
    assert records["s2"]["outcome"] == "deny"


def test_attenuate_for_accepts_patterns_and_needs_a_namespace_for_plain_tools(
    delegation: Delegation, bot: Identity
) -> None:
    sub = Identity.generate("agent:sub")
    narrowed = attenuate_for(delegation.serialize(), bot, sub, tools=["shop/lookup*"])
    assert narrowed.holder == "agent:sub"
    assert narrowed.leaf.scope[0].tool == "shop/lookup*"
    with pytest.raises(ValueError, match="pass namespace"):
        attenuate_for(delegation, bot, sub, tools=[lookup])
    via_namespace = attenuate_for(delegation, bot, sub, tools=[lookup], namespace="shop")
    assert via_namespace.leaf.scope[0].tool == "shop/lookup"
