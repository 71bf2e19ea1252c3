"""A JSON-schema LangChain tool (MCP-derived, say): an omitted argument is judged, and the
tool runs, at the schema's default; the audit record lists it. And a refused predicate
tells the model nothing but the reason code and the decision id."""

from __future__ import annotations

from typing import Any

from agentguard_langchain import guard_tools
from langchain_core.messages import ToolMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel

from agentguard.testing import World, audit_records

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "priority": {"type": "string", "default": "normal"},
    },
    "required": ["to"],
}
SCOPE: list[Any] = [
    {"tool": "mail/send", "where": {"to": "bob@corp.example", "priority": "normal"}}
]


def _send(world: World) -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def send(**kwargs: Any) -> str:
        seen.append(kwargs)
        return "sent"

    tool = StructuredTool(name="send", description="Send mail.", args_schema=SCHEMA, func=send)
    guard = world.guard(redact=["to"])
    (guarded,) = guard_tools(
        [tool], guard=guard, delegation=world.chain(world.bot, scope=SCOPE),
        holder=world.bot, namespace="mail",
    )  # fmt: skip
    return (guarded, guard), seen


def test_an_omitted_argument_runs_and_is_judged_at_its_schema_default(world: World) -> None:
    (guarded, guard), seen = _send(world)
    call = {"type": "tool_call", "id": "c1", "name": "send", "args": {"to": "bob@corp.example"}}
    message = guarded.invoke(call)
    assert isinstance(message, ToolMessage)
    assert message.content == "sent", message.content
    assert seen == [{"to": "bob@corp.example", "priority": "normal"}]
    record = [r for r in audit_records(guard) if r.get("type") == "decision"][-1]
    assert record["outcome"] == "allow"
    assert record["defaults_filled"] == ["priority"]


def test_the_model_sees_a_short_value_free_refusal(world: World) -> None:
    """The operator's record names the argument (redacted here); the ToolMessage does not."""
    (guarded, guard), seen = _send(world)
    args = {"to": "mallory@evil.example", "priority": "urgent"}
    message = guarded.invoke({"type": "tool_call", "id": "c2", "name": "send", "args": args})
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    content = str(message.content)
    assert content.startswith("denied by agentguard (predicate_failed, decision ")
    for value in ("mallory", "urgent", "priority"):
        assert value not in content
    assert seen == []
    record = [r for r in audit_records(guard) if r.get("type") == "decision"][-1]
    assert "argument to = [redacted] fails ==" in record["explanation"]
    assert 'argument priority = "urgent" fails == "normal"' in record["explanation"]
    assert "mallory" not in record["explanation"]
    assert "defaults_filled" not in record


class _Mail(BaseModel):
    to: str
    priority: str = "normal"


def test_a_pydantic_schema_fills_its_defaults_before_the_guard_judges(world: World) -> None:
    """LangChain's own parsing fills `priority`; the guard judges and the tool gets it."""
    seen: list[dict[str, Any]] = []

    def send(to: str, priority: str = "other") -> str:
        seen.append({"to": to, "priority": priority})
        return "sent"

    tool = StructuredTool.from_function(
        func=send, name="send", description="Send mail.", args_schema=_Mail
    )
    guard = world.guard()
    (guarded,) = guard_tools(
        [tool], guard=guard, delegation=world.chain(world.bot, scope=SCOPE),
        holder=world.bot, namespace="mail",
    )  # fmt: skip
    call = {"type": "tool_call", "id": "c3", "name": "send", "args": {"to": "bob@corp.example"}}
    assert guarded.invoke(call).content == "sent"
    assert seen == [{"to": "bob@corp.example", "priority": "normal"}]
    record = [r for r in audit_records(guard) if r.get("type") == "decision"][-1]
    assert record["args"] == {"to": "bob@corp.example", "priority": "normal"}
