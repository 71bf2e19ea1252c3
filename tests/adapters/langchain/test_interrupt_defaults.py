"""``approval="interrupt"``: what it needs is said at wiring time, in one message; the
interrupt and the model's refusal say who can answer and how; the README's example runs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agentguard_langchain import guard_tools
from agentguard_langchain.middleware import GuardMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command
from typing_extensions import TypedDict

from agentguard import Delegation, Identity
from agentguard.approval import QueueChannel, TerminalChannel
from agentguard.guard import Guard

README = Path(__file__).resolve().parents[3] / "adapters" / "langchain" / "README.md"
SECRET = "canary-5d1e-not-for-models"


@tool
def wipe(target: str, token: str = "") -> str:
    """Wipe a cache (privileged)."""
    return f"wiped {target}"


def _delegation(org: Identity, bot: Identity) -> Delegation:
    return Delegation.issue(org, bot, [{"tool": "ops/wipe", "approval": True}], ttl="1h")


WHAT_TO_PASS = "Guard(..., approval_mode='raise', approver=QueueChannel())"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default guard"),
        pytest.param({"approval_mode": "raise"}, id="raising, but no channel"),
        pytest.param({"approver": QueueChannel()}, id="queue, but blocking"),
        pytest.param(
            {"approval_mode": "raise", "approver": TerminalChannel("user:carol")},
            id="a terminal asks inside the graph's step",
        ),
    ],
)
def test_an_interrupt_needing_what_the_guard_lacks_says_exactly_what_to_pass(
    org: Identity, bot: Identity, options: dict[str, Any]
) -> None:
    guard = Guard.in_memory(trusted_roots=[org.principal], **options)
    delegation = _delegation(org, bot)

    def tools() -> object:
        return guard_tools(
            [wipe], guard=guard, delegation=delegation, holder=bot, namespace="ops",
            approval="interrupt",
        )  # fmt: skip

    def middleware() -> object:
        return GuardMiddleware(
            guard=guard, delegation=delegation, holder=bot, namespace="ops", approval="interrupt"
        )

    for wire in (tools, middleware):
        with pytest.raises(ValueError, match="approval='interrupt' needs") as info:
            wire()
        text = str(info.value)
        assert WHAT_TO_PASS in text
        assert "from agentguard.approval import QueueChannel" in text
        assert "approval: {mode: raise, channel: queue}" in text  # the policy's way
        assert f"approval_mode={guard.approval_mode!r}" in text  # what this guard has
        assert f"channel {guard.channel.name!r}" in text


def _paused(guard: Guard, delegation: Delegation, bot: Identity) -> tuple[Any, Any, Any]:
    (guarded,) = guard_tools(
        [wipe], guard=guard, delegation=delegation, holder=bot, namespace="ops",
        approval="interrupt",
    )  # fmt: skip

    class State(TypedDict):
        result: str

    def run(state: State) -> State:
        return {"result": guarded.invoke({"target": "cart-cache", "token": SECRET})}

    graph = (
        StateGraph(State)
        .add_node("run", run)
        .add_edge(START, "run")
        .compile(checkpointer=InMemorySaver())
    )
    config: Any = {"configurable": {"thread_id": "t"}}
    return graph, config, graph.invoke({"result": ""}, config)


def test_the_interrupt_says_who_can_answer_and_only_how_it_would_count(
    org: Identity, bot: Identity, bob: Identity
) -> None:
    guard = Guard.in_memory(
        {"approvers": [{"id": bob.id, "public_key": bob.principal.public_jwk()}]},
        trusted_roots=[org.principal],
        approval_mode="raise",
        approver=QueueChannel(),
    )
    graph, config, paused = _paused(guard, _delegation(org, bot), bot)
    value = paused["__interrupt__"][0].value
    how = value["how_to_answer"]
    request_id = value["request_id"]
    assert "user:bob" in how
    assert f"agentguard approvals approve {request_id} --as ID" in how
    assert "approval page" not in how  # a grant rule needs 'signed': the page would not count
    assert 'resume with {"type": "approve"}' in how
    assert SECRET not in repr(value)

    guard.approvals.approve(request_id, bob)
    done = graph.invoke(Command(resume={"type": "approve"}), config)
    assert done["result"] == "wiped cart-cache"


def test_a_model_told_to_wait_learns_who_can_answer_and_no_values(
    org: Identity, bot: Identity, bob: Identity
) -> None:
    """A tool that does not interrupt hands the model the pending request: short, no values."""
    guard = Guard.in_memory(
        {"approvers": [{"id": bob.id, "public_key": bob.principal.public_jwk()}]},
        trusted_roots=[org.principal],
        approval_mode="raise",
        approver=QueueChannel(),
    )
    (guarded,) = guard_tools(
        [wipe], guard=guard, delegation=_delegation(org, bot), holder=bot, namespace="ops"
    )
    call = {
        "type": "tool_call",
        "name": "wipe",
        "args": {"target": "cart-cache", "token": SECRET},
        "id": "c1",
    }
    message = guarded.invoke(call)
    assert isinstance(message, ToolMessage)
    assert message.status == "error"
    (request,) = guard.approvals.pending()
    text = str(message.content)
    assert text.startswith(f"approval pending, id={request.id}")
    assert "a person must approve it (user:bob can)" in text
    # Never how: an agent that can run commands must not be handed the one that approves.
    assert "approvals approve" not in text
    assert SECRET not in text
    assert "cart-cache" not in text  # no argument value reaches the model
    assert len(text) < 400


def _readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Step-up as a LangGraph interrupt", 1)
    assert len(section) == 2, "the README has the interrupt section"
    block = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert block is not None
    return block.group(1)


def test_the_readme_interrupt_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_readme_example(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        r"paused: request apr_\S+ \(ops/wipe, needs 'signed' assurance\).*", lines[0]
    )
    assert "user:bob can answer" in lines[0]
    assert lines[-1] == "wiped cart-cache"
    assert list(tmp_path.iterdir()) == [script]  # nothing written: everything in memory
