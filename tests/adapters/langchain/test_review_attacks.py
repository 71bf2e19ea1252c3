"""A second review of the reworked adapter: each way it let undecided values run, or broke.

Fail-open findings (a tool ran with values the decision did not cover) and
regressions (legitimate set-ups the rework broke) are reproduced here through
real tools and graphs; each test fails on the adapter before the fixes.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import os
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypedDict

import pytest
from agentguard_langchain import GuardedTool, guard_tools, middleware
from agentguard_langchain.middleware import GuardMiddleware
from langchain.agents import create_agent
from langchain.agents.middleware import ToolRetryMiddleware
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import InjectedState, ToolNode
from langgraph.types import Command, interrupt
from pydantic import BaseModel, Field, SecretStr, field_serializer
from pydantic import v1 as pydantic_v1

from agentguard import Delegation, Identity
from agentguard.guard import Guard
from agentguard.store.memory import MemoryStore

#: ``make hardening`` (AGENTGUARD_HARDENING=1) runs the bounded-middleware test at its
#: real bound; ``make test`` at a smaller one.
HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"

Decisions = Callable[[Guard], list[dict[str, Any]]]
Model = Callable[[Sequence[BaseMessage]], BaseChatModel]
Calls = Callable[..., AIMessage]

RAN: list[str] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    RAN.clear()


def _call(tool: BaseTool, args: dict[str, Any], call_id: str | None = "c1") -> Any:
    return tool.invoke({"name": tool.name, "args": args, "id": call_id, "type": "tool_call"})


def _messages(result: dict[str, Any]) -> dict[str, ToolMessage]:
    return {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}


# -- what the guard sees is what the function gets ------------------------------------


class TransferArgs(BaseModel):
    to: str
    amount: int


class PositionalTransfer(BaseTool):
    """A tool whose own parsing hands its _run positional arguments."""

    name: str = "transfer"
    description: str = "Send money."
    args_schema: type[BaseModel] = TransferArgs

    def _to_args_and_kwargs(
        self, tool_input: str | dict[str, Any], tool_call_id: str | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        _, kwargs = super()._to_args_and_kwargs(tool_input, tool_call_id)
        return (kwargs["to"], kwargs["amount"]), {}

    def _run(self, to: str, amount: int, **_: Any) -> str:
        RAN.append(f"transfer {to} {amount}")
        return f"sent {amount} to {to}"


def test_every_positional_argument_is_decided(
    guard: Guard, org: Identity, bot: Identity, decisions: Decisions
) -> None:
    grant = Delegation.issue(
        org, bot, [{"tool": "bank/transfer", "where": {"amount": {"<=": 1000}}}], ttl="1h"
    )
    (guarded,) = guard_tools(
        [PositionalTransfer()], guard=guard, delegation=grant, holder=bot, namespace="bank"
    )
    refused = _call(guarded, {"to": "eve", "amount": 10**6})
    assert "predicate_failed" in refused.content
    assert RAN == []
    (record,) = decisions(guard)
    assert record["args"] == {"to": "eve", "amount": 10**6}


class Hidden(BaseModel):
    iban: str
    amount: int = Field(exclude=True)


class Masked(BaseModel):
    target: str

    @field_serializer("target")
    def _mask(self, value: str) -> str:
        return "cache"


class Payment(BaseModel):
    payment: Hidden
    spec: Masked


def test_the_guard_reads_field_values_not_their_serialisation(
    guard: Guard, org: Identity, bot: Identity, decisions: Decisions
) -> None:
    """``exclude`` and a masking serializer hide nothing from the decision."""

    @tool(args_schema=Payment)
    def pay(payment: Hidden, spec: Masked) -> str:
        """Pay."""
        RAN.append(f"pay {payment.amount} {spec.target}")
        return "paid"

    grant = Delegation.issue(
        org,
        bot,
        [{"tool": "bank/pay", "where": {"payment.amount": {"<=": 100}, "spec.target": "cache"}}],
        ttl="1h",
    )
    (guarded,) = guard_tools([pay], guard=guard, delegation=grant, holder=bot, namespace="bank")
    out = _call(guarded, {"payment": {"iban": "X", "amount": 10**9}, "spec": {"target": "prod"}})
    assert out.status == "error"
    assert RAN == []
    (record,) = decisions(guard)
    assert record["args"] == {
        "payment": {"iban": "X", "amount": 10**9},
        "spec": {"target": "prod"},
    }


class ItemV1(pydantic_v1.BaseModel):
    sku: str
    qty: int


class OrderV1(pydantic_v1.BaseModel):
    order: str
    item: ItemV1


def test_nested_pydantic_v1_models_are_decided(
    guard: Guard, org: Identity, bot: Identity, decisions: Decisions
) -> None:
    @tool(args_schema=OrderV1)
    def place(order: str, item: ItemV1) -> str:
        """Place an order."""
        RAN.append(f"place {order} {item.qty}")
        return "placed"

    grant = Delegation.issue(
        org, bot, [{"tool": "shop/place", "where": {"item.qty": {"<=": 5}}}], ttl="1h"
    )
    (guarded,) = guard_tools([place], guard=guard, delegation=grant, holder=bot, namespace="shop")
    assert _call(guarded, {"order": "A", "item": {"sku": "s", "qty": 1}}).content == "placed"
    assert _call(guarded, {"order": "A", "item": {"sku": "s", "qty": 50}}).status == "error"
    assert RAN == ["place A 1"]
    assert [r["args"]["item"] for r in decisions(guard)] == [
        {"sku": "s", "qty": 1},
        {"sku": "s", "qty": 50},
    ]


class Tier(enum.Enum):
    GOLD = "gold"


class Kinds(BaseModel):
    tier: Tier
    amount: decimal.Decimal
    third: decimal.Decimal
    day: datetime.date
    pin: SecretStr | None = None


def test_values_without_a_json_type_are_decided_by_their_meaning_or_refused(
    guard: Guard, org: Identity, bot: Identity, decisions: Decisions
) -> None:
    @tool(args_schema=Kinds)
    def book(tier: Tier, amount: decimal.Decimal, third: decimal.Decimal, day: datetime.date,
             pin: SecretStr | None = None) -> str:  # fmt: skip
        """Book."""
        RAN.append("book")
        return "booked"

    grant = Delegation.issue(
        org, bot, [{"tool": "shop/book", "where": {"amount": {"<=": 100}}}], ttl="1h"
    )
    (guarded,) = guard_tools([book], guard=guard, delegation=grant, holder=bot, namespace="shop")
    args = {"tier": "gold", "amount": "5", "third": "0.1", "day": "2027-01-15"}
    assert _call(guarded, args).content == "booked"
    assert decisions(guard)[-1]["args"] == {
        "tier": "gold", "amount": 5, "third": 0.1, "day": "2027-01-15", "pin": None,
    }  # fmt: skip
    refused = _call(guarded, {**args, "pin": "1234"})
    assert "unsupported_arguments" in refused.content
    assert RAN == ["book"]


def test_a_tool_that_overrides_run_is_refused_when_wrapped(
    guard: Guard, delegation: Delegation, bot: Identity
) -> None:
    class Checked(PositionalTransfer):
        def run(self, *args: Any, **kwargs: Any) -> Any:
            return super().run(*args, **kwargs)

    with pytest.raises(TypeError, match="overrides run"):
        guard_tools([Checked()], guard=guard, delegation=delegation, holder=bot, namespace="b")


# -- values for injected parameters -----------------------------------------------------


class UserState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    user: str


@tool
def account(order: str, user: Annotated[str, InjectedState("user")]) -> str:
    """Show an order of the current user."""
    RAN.append(f"account {user} {order}")
    return f"{user}: {order}"


def test_a_node_of_ones_own_cannot_pass_a_models_state_value(
    guard: Guard, org: Identity, bot: Identity
) -> None:
    """Only ToolNode itself is trusted to have filled in state; any other node is not."""
    grant = Delegation.issue(org, bot, ["shop/account"], ttl="1h")
    (guarded,) = guard_tools([account], guard=guard, delegation=grant, holder=bot, namespace="shop")

    def node(state: UserState, config: RunnableConfig) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        return {"messages": [guarded.invoke(call, config) for call in last.tool_calls]}

    graph = StateGraph(UserState)
    graph.add_node("tools", node)
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    call = {"name": "account", "args": {"order": "A", "user": "admin"}, "id": "a1"}
    message = AIMessage(content="", tool_calls=[{**call, "type": "tool_call"}])
    out = graph.compile().invoke({"messages": [message], "user": "alice"})
    assert "injected_argument" in str(_messages(out)["a1"].content)
    assert RAN == []
    # ToolNode drops the model's value and fills in the state's own.
    graph = StateGraph(UserState)
    graph.add_node("tools", ToolNode([guarded]))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    out = graph.compile().invoke({"messages": [message], "user": "alice"})
    assert _messages(out)["a1"].content == "alice: A"


def test_a_tool_call_without_an_id_is_still_a_models_call(
    guard: Guard, org: Identity, bot: Identity
) -> None:
    grant = Delegation.issue(org, bot, ["shop/account"], ttl="1h")
    (guarded,) = guard_tools([account], guard=guard, delegation=grant, holder=bot, namespace="shop")
    out = _call(guarded, {"order": "A", "user": "admin"}, call_id=None)
    assert "injected_argument" in str(out)
    assert RAN == []


# -- re-runs, retries and interrupts -------------------------------------------------------


@tool
def refund(order: str, amount: int) -> str:
    """Refund."""
    RAN.append(f"refund {order} {amount}")
    return f"REFUNDED {amount}"


@tool
def wipe(target: str) -> str:
    """Wipe (needs approval)."""
    RAN.append(f"wipe {target}")
    return f"wiped {target}"


def test_calls_without_ids_do_not_run_twice_on_resume(
    guard: Guard, delegation: Delegation, bot: Identity, bob: Identity
) -> None:
    """Some model servers send empty tool call ids: a call is then known by what it says."""
    tools = guard_tools(
        [refund, wipe],
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
    app = graph.compile(checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "no-ids"}}
    message = AIMessage(
        content="",
        tool_calls=[
            {"name": "refund", "args": {"order": "A", "amount": 50}, "id": "", "type": "tool_call"},
            {"name": "wipe", "args": {"target": "cache"}, "id": "", "type": "tool_call"},
        ],
    )
    first = app.invoke({"messages": [message]}, config)
    (pending,) = first["__interrupt__"]
    guard.approvals.approve(pending.value["request_id"], bob)
    app.invoke(Command(resume={"type": "approve"}), config)
    assert RAN == ["refund A 50", "wipe cache"]


FLAKY = {"failures": 0}


@tool
def flaky_lookup(order: str) -> str:
    """Look up an order; the first attempt fails."""
    RAN.append(f"lookup {order}")
    if FLAKY["failures"] == 0:
        FLAKY["failures"] += 1
        raise ConnectionError("upstream hiccup")
    return f"order {order}: shipped"


@pytest.mark.parametrize("surface", ["middleware", "guard_tools"])
def test_a_call_that_failed_may_be_retried_in_a_checkpointed_agent(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    scripted_model: Model,
    tool_call: Calls,
    surface: str,
) -> None:
    FLAKY["failures"] = 0
    flaky_lookup.name = "lookup"
    model = scripted_model([tool_call(("lookup", {"order": "A"}, "l1")), AIMessage(content="done")])
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)
    if surface == "middleware":
        gate = GuardMiddleware(guard=guard, delegation=delegation, holder=bot, namespace="shop")
        agent = create_agent(
            model, tools=[flaky_lookup], middleware=[retry, gate], checkpointer=InMemorySaver()
        )
    else:
        tools = guard_tools(
            [flaky_lookup], guard=guard, delegation=delegation, holder=bot, namespace="shop"
        )
        agent = create_agent(model, tools=tools, middleware=[retry], checkpointer=InMemorySaver())
    result = agent.invoke({"messages": [HumanMessage("x")]}, {"configurable": {"thread_id": "r"}})
    assert _messages(result)["l1"].content == "order A: shipped"
    assert RAN == ["lookup A", "lookup A"]


@tool
def ask_where(order: str) -> str:
    """Look up an order after asking which warehouse (the tool interrupts itself)."""
    RAN.append(f"ask {order}")
    where = interrupt({"question": "which warehouse?"})
    return f"order {order} in {where}"


@pytest.mark.parametrize("surface", ["middleware", "guard_tools"])
def test_a_tool_that_interrupts_itself_completes_on_resume(
    guard: Guard,
    delegation: Delegation,
    bot: Identity,
    scripted_model: Model,
    tool_call: Calls,
    surface: str,
) -> None:
    ask_where.name = "lookup"
    model = scripted_model([tool_call(("lookup", {"order": "A"}, "l1")), AIMessage(content="done")])
    if surface == "middleware":
        gate = GuardMiddleware(guard=guard, delegation=delegation, holder=bot, namespace="shop")
        agent = create_agent(
            model, tools=[ask_where], middleware=[gate], checkpointer=InMemorySaver()
        )
    else:
        tools = guard_tools(
            [ask_where], guard=guard, delegation=delegation, holder=bot, namespace="shop"
        )
        agent = create_agent(model, tools=tools, checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "ask"}}
    assert "__interrupt__" in agent.invoke({"messages": [HumanMessage("x")]}, config)
    done = agent.invoke(Command(resume="north"), config)
    assert _messages(done)["l1"].content == "order A in north"


# -- rebinding under a middleware ----------------------------------------------------------


def test_a_tool_guarded_by_another_guard_is_decided_by_the_middlewares(
    guard: Guard,
    org: Identity,
    bot: Identity,
    decisions: Decisions,
    scripted_model: Model,
    tool_call: Calls,
) -> None:
    """Wrapped with a lenient guard and renamed inside: the middleware's guard and address rule."""
    lenient = Guard(
        {"trusted_roots": [{"id": org.id, "public_key": org.principal.public_jwk()}]},
        store=MemoryStore(),
    )
    broad = Delegation.issue(org, bot, ["shop/*"], ttl="1h")
    (wrapped,) = guard_tools([wipe], guard=lenient, delegation=broad, holder=bot, namespace="shop")
    assert isinstance(wrapped, GuardedTool)
    wrapped.inner.name = "lookup"  # renaming after wrapping changes nothing
    try:
        narrow = Delegation.issue(org, bot, ["shop/lookup"], ttl="1h")
        model = scripted_model(
            [tool_call(("wipe", {"target": "prod"}, "w1")), AIMessage(content="done")]
        )
        gate = GuardMiddleware(guard=guard, delegation=narrow, holder=bot, namespace="shop")
        agent = create_agent(model, tools=[wrapped], middleware=[gate])
        agent.invoke({"messages": [HumanMessage("x")]})
    finally:
        wrapped.inner.name = "wipe"
    assert RAN == []
    assert [(r["tool"], r["outcome"]) for r in decisions(guard)] == [("shop/wipe", "deny")]
    assert decisions(lenient) == []
    lenient.close()


@pytest.mark.slow
def test_the_middleware_keeps_a_bounded_number_of_wrapped_tools(
    guard: Guard, delegation: Delegation, bot: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tools supplied anew on every call must not pile up inside the middleware.

    The bound is read as tools are wrapped: ``make test`` sets it to 64, ``make
    hardening`` keeps the real 1024."""
    kept_at_most = middleware.GUARDED_TOOLS_KEPT if HARDENING else 64
    monkeypatch.setattr(middleware, "GUARDED_TOOLS_KEPT", kept_at_most)
    gate = GuardMiddleware(guard=guard, delegation=delegation, holder=bot, namespace="shop")
    kept = []
    for n in range(kept_at_most + 50):

        @tool(f"fresh_{n}")
        def fresh(order: str) -> str:
            """A tool made for one call."""
            return order

        kept.append(fresh)
        guarded = gate.guarded(fresh)
        assert gate.guarded(fresh) is guarded  # reused while kept
    assert len(gate._guarded) == kept_at_most
