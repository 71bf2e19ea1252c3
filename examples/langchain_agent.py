"""A LangChain agent whose tools are guarded by agentguard (no API key needed).

A scripted chat model drives ``langchain.agents.create_agent`` through three
tool calls made in one step:

* ``shop/lookup``: allowed by the delegation;
* ``shop/refund`` of 500 EUR: denied, the delegation caps refunds at 100;
* ``shop/wipe``: privileged, so the run pauses (a LangGraph interrupt) until
  ``user:bob`` approves it through the queue with his own key.

It prints each outcome and the audit tail. Everything it writes goes to a
temporary directory that is removed at the end. Run: ``python examples/langchain_agent.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentguard_langchain import guard_tools
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from agentguard import Delegation, Identity
from agentguard.approval import QueueChannel
from agentguard.guard import Guard


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that plays a script; ``bind_tools`` makes it usable by create_agent."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


@tool
def lookup(order: str) -> str:
    """Look up an order by its id."""
    return f"order {order}: shipped on 2027-01-14"


@tool
def refund(order: str, amount: int) -> str:
    """Refund part of an order, in euros."""
    return f"refunded {amount} EUR on {order}"


@tool
def wipe(target: str) -> str:
    """Wipe a cache (privileged)."""
    return f"wiped {target}"


def main(home: Path) -> int:
    """Run the story with all state under ``home``; return the exit code."""
    org = Identity.generate("org:acme")
    agent_id = Identity.generate("agent:support-bot")
    bob = Identity.generate("user:bob")
    policy = {
        "approvers": [
            {"id": bob.id, "min_assurance": "signed", "public_key": bob.principal.public_jwk()}
        ],
        "approval": {"channel": "queue", "mode": "raise"},
    }
    guard = Guard(
        policy,
        home=home,
        trusted_roots=[org.principal],
        approver=QueueChannel(),
        enforcement_point="langchain",
    )
    delegation = Delegation.issue(
        org,
        agent_id,
        [
            "shop/lookup",
            {"tool": "shop/refund", "where": {"amount": {"<=": 100}}},
            {"tool": "shop/wipe", "approval": True},
        ],
        ttl="1h",
        purpose="customer support",
        on_behalf_of="user:alice",
    )
    print("delegation:", " -> ".join(delegation.path))

    tools = guard_tools(
        [lookup, refund, wipe],
        guard=guard,
        delegation=delegation,
        holder=agent_id,
        namespace="shop",
        approval="interrupt",
    )
    model = ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "lookup", "args": {"order": "A-17"}, "id": "call-1"},
                        {
                            "name": "refund",
                            "args": {"order": "A-17", "amount": 500},
                            "id": "call-2",
                        },
                        {"name": "wipe", "args": {"target": "cart-cache"}, "id": "call-3"},
                    ],
                ),
                AIMessage(content="Looked up A-17, the refund was refused, the cache is wiped."),
            ]
        )
    )
    agent = create_agent(model, tools=tools, checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "support-1"}}

    question = HumanMessage("Order A-17 is broken, please fix it")
    result = agent.invoke({"messages": [question]}, config)
    for pending in result.get("__interrupt__", ()):
        request = pending.value
        print(f"\npaused for approval {request['request_id']}:")
        print(request["description"])
        # The human reviewer approves in the queue with his own key (the CLI does the same).
        guard.approvals.approve(request["request_id"], bob, message="ok, cart cache only")
        print(f"approved by {bob.id}")
        result = agent.invoke(Command(resume={"type": "approve"}), config)

    print("\noutcomes:")
    outcomes = {}
    for message in result["messages"]:
        if isinstance(message, ToolMessage):
            outcomes[message.tool_call_id] = message.status
            print(
                f"  {message.tool_call_id} {message.name:<7} {message.status:<8} {message.content}"
            )
    print("final answer:", result["messages"][-1].content)

    print("\naudit tail:")
    for entry in guard.store.audit_tail(20):
        record = json.loads(entry.body)
        if record.get("type") == "decision":
            print(
                f"  #{entry.seq} decision {record['tool']:<12} {record['outcome']:<18} "
                f"{record['reason']:<17} call {record['call_id']}  "
                f"path {' -> '.join(record['path'])}"
            )
        else:
            print(
                f"  #{entry.seq} {record.get('type')} {record.get('tool')} {record.get('status')}"
            )
    problem = guard.audit.verify()
    print("audit log verifies" if problem is None else f"audit log broken: {problem}")
    guard.close()
    expected = {"call-1": "success", "call-2": "error", "call-3": "success"}
    return 0 if outcomes == expected and problem is None else 1


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="agentguard-langchain-") as tmp:
        sys.exit(main(Path(tmp)))
