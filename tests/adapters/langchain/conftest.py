"""Fixtures for the LangChain adapter: identities, a real guard and a delegation.

The delegation ``org:acme -> agent:bot`` (on behalf of ``user:alice``) allows
``shop/lookup``, ``shop/refund`` while ``amount <= 100``, and ``shop/wipe``
only with approval; ``user:bob`` approves with his own key through the queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage

from agentguard import Delegation, Identity
from agentguard.approval import QueueChannel
from agentguard.guard import Guard
from agentguard.store.memory import MemoryStore

# Test modules never import this file (mypy and pytest would see several
# "conftest" modules); everything they need comes as a fixture.

#: Appears in arguments and delegation metadata; must never reach a model.
CANARY = "canary-7f3a9c1e-do-not-leak"


@pytest.fixture
def org() -> Identity:
    return Identity.generate("org:acme")


@pytest.fixture
def bot() -> Identity:
    """The agent holding the delegation."""
    return Identity.generate("agent:bot")


@pytest.fixture
def bob() -> Identity:
    """A human approver listed by the policy."""
    return Identity.generate("user:bob")


def _make_guard(org: Identity, bob: Identity, *, approval_mode: str = "raise") -> Guard:
    """An in-memory guard trusting ``org``, with ``bob`` as signed approver on the queue."""
    policy = {
        "approvers": [
            {"id": bob.id, "min_assurance": "signed", "public_key": bob.principal.public_jwk()}
        ],
        "approval": {"channel": "queue"},
    }
    return Guard(
        policy,
        store=MemoryStore(),
        trusted_roots=[org.principal],
        approver=QueueChannel(),
        approval_mode=approval_mode,
        enforcement_point="langchain",
    )


@pytest.fixture
def guard(org: Identity, bob: Identity) -> Iterator[Guard]:
    """A guard that raises ApprovalPending instead of waiting."""
    g = _make_guard(org, bob)
    yield g
    g.close()


@pytest.fixture
def blocking_guard(org: Identity, bob: Identity) -> Iterator[Guard]:
    """A guard that waits on its queue until the deadline (approval_mode='block')."""
    g = _make_guard(org, bob, approval_mode="block")
    yield g
    g.close()


@pytest.fixture
def canary() -> str:
    """A secret that appears in arguments and delegation metadata; must never reach a model."""
    return CANARY


@pytest.fixture
def delegation(org: Identity, bot: Identity) -> Delegation:
    return Delegation.issue(
        org,
        bot,
        [
            "shop/lookup",
            "shop/lookup_async",
            "shop/note",
            {"tool": "shop/refund", "where": {"amount": {"<=": 100}}},
            {"tool": "shop/wipe", "approval": True},
            "mcp/*",
        ],
        ttl="1h",
        purpose="customer support",
        on_behalf_of="user:alice",
        meta={"evidence": CANARY},
    )


AuditReader = Callable[[Guard], list[dict[str, Any]]]


@pytest.fixture
def decisions() -> AuditReader:
    """Reads every decision record (not completions) of a guard, oldest first."""

    def read(guard: Guard) -> list[dict[str, Any]]:
        records = [json.loads(e.body) for e in guard.store.audit_tail(1000)]
        return [r for r in records if r.get("type") == "decision"]

    return read


class ScriptedChatModel(GenericFakeChatModel):
    """GenericFakeChatModel plus the ``bind_tools`` that ``create_agent`` needs."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        # The script already knows which tools it calls.
        return self


ModelFactory = Callable[[Sequence[BaseMessage]], ScriptedChatModel]


@pytest.fixture
def scripted_model() -> ModelFactory:
    """Builds a chat model that answers with the given messages, in order."""

    def build(messages: Sequence[BaseMessage]) -> ScriptedChatModel:
        return ScriptedChatModel(messages=iter(list(messages)))

    return build


@pytest.fixture
def tool_call() -> Callable[..., AIMessage]:
    """Builds an AI message calling tools: ``tool_call(("name", {args}, "id"), ...)``."""

    def build(*calls: tuple[str, dict[str, Any], str]) -> AIMessage:
        return AIMessage(
            content="",
            tool_calls=[{"name": n, "args": a, "id": i, "type": "tool_call"} for n, a, i in calls],
        )

    return build
