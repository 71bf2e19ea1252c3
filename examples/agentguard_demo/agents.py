"""Scripted LangChain ``create_agent`` agents, their tools, and the MCP proxy to the EDR server."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import mcp_types as types
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from opentelemetry import trace
from rich.text import Text

from agentguard import Delegation, Identity

from .run import Run

EDR_SERVER = Path(__file__).resolve().parent.parent / "servers" / "edr_server.py"

tracer = trace.get_tracer("agentguard.demo")


# -- a scripted chat model ------------------------------------------------------------


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that plays a script; ``bind_tools`` makes it usable by create_agent."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


def calls(*items: tuple[str, dict[str, Any]], prefix: str) -> AIMessage:
    """One model turn asking for several tool calls at once."""
    return AIMessage(
        content="",
        tool_calls=[
            {"name": name, "args": args, "id": f"{prefix}-{index}"}
            for index, (name, args) in enumerate(items, 1)
        ],
    )


# -- the tools (canned answers: nothing real happens) -------------------------------------


@tool
def search_articles(query: str, business_unit: str) -> str:
    """Search the knowledge base of one business unit."""
    return f"KB-311 'VPN concentrator failover' ({business_unit})"


@tool
def open_ticket(title: str, business_unit: str, severity: str) -> str:
    """Open an incident ticket in one business unit's queue."""
    return f"INC-{4100 + len(title) % 97} opened in {business_unit} ({severity})"


@tool
def collect_logs(host: str, since: str) -> str:
    """Collect a host's system and network logs."""
    return f"collected 18 412 log lines from {host} (last {since})"


def deploy_release(service: str, digest: str) -> str:
    """The pipeline's deploy step."""
    return f"{service} rolled out at {digest}"


def submit_events(source: str, count: int) -> str:
    """The partner event intake."""
    return f"accepted {count} events from {source}"


# -- driving an agent -----------------------------------------------------------------------


async def run_agent(
    run: Run,
    name: str,
    tools: Sequence[BaseTool],
    script: Iterable[BaseMessage],
    turns: list[str],
    between: Callable[[], None] | None = None,
) -> list[ToolMessage]:
    """Drive a create_agent agent, one human message per turn; return the tool results.

    ``between`` runs after every turn but the last (a human answering, say).
    """
    model = ScriptedChatModel(messages=iter(script))
    agent = create_agent(model, tools=list(tools), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": name}}
    results: list[ToolMessage] = []
    for number, turn in enumerate(turns, 1):
        with tracer.start_as_current_span(
            f"invoke_agent {name}",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name},
        ):
            run.say(f'{name} <- "{turn}"', "italic")
            state = await agent.ainvoke({"messages": [HumanMessage(turn)]}, config)
        fresh = [m for m in state["messages"] if isinstance(m, ToolMessage)][len(results) :]
        results.extend(fresh)
        run.show_new_decisions()
        for message in fresh:
            style = "green" if message.status == "success" else "red"
            run.console.print(
                Text(f"    model sees {message.name}: ", style="dim")
                + Text(str(message.content), style=style)
            )
        run.say(f"{name}: {state['messages'][-1].content}", "italic")
        if between is not None and number < len(turns):
            between()
    return results


# -- the MCP side ---------------------------------------------------------------------------


def mcp_tools(client: Client, listed: Sequence[types.Tool]) -> list[BaseTool]:
    """LangChain tools that call the MCP proxy (which is their enforcement point)."""

    def make(spec: types.Tool) -> BaseTool:
        async def call(**args: Any) -> str:
            with tracer.start_as_current_span(
                f"execute_tool edr/{spec.name}",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": spec.name},
            ):
                result = await client.call_tool(spec.name, args)
            text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
            if result.is_error:
                raise ToolException(text)
            return text

        return StructuredTool(
            name=spec.name,
            description=spec.description or spec.name,
            args_schema=dict(spec.input_schema),
            coroutine=call,
            handle_tool_error=True,
        )

    return [make(spec) for spec in listed]


@asynccontextmanager
async def edr_proxy(
    run: Run, delegation: Delegation, holder: Identity, errlog: TextIO
) -> AsyncIterator[tuple[Client, list[types.Tool]]]:
    """``python -m agentguard_mcp proxy`` in front of the EDR server, both real processes."""
    path = run.home / "log-collector.delegation"
    path.write_text(delegation.serialize())
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "agentguard_mcp",
            "proxy",
            "--delegation",
            str(path),
            "--as",
            holder.id,
            "--namespace",
            "edr",
            "--home",
            str(run.home),
            "--policy",
            str(run.policy_file),
            "--trusted",
            "--",
            sys.executable,
            str(EDR_SERVER),
        ],
        cwd=str(run.home),
    )
    async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
        listed = (await client.list_tools()).tools
        yield client, listed
