"""The approval page shows the budgets a pending call would be charged to (issue 19).

In process: a guard over a policy file with a budgeted rule and a policy budget,
the page over its approval book, carol logged in with her token.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from agentguard.approval import ApprovalRequest
from agentguard.budgets import Budget, Charge, pending_usage, request_budgets
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, StoreError
from agentguard.guard import Guard
from agentguard.policy import load_policy
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World
from agentguard.web import ApproverTokens, create_app
from tests.test_web_page import BASE, card, login

TOOL = "tickets/comment"


class Desk:
    """A guard whose calls with ``id`` above 10 wait for carol on the page."""

    def __init__(self, tmp_path: Path, store: Any) -> None:
        self.world = world = World()
        carol = world.identity("user:carol")
        self.policy_file = tmp_path / "agentguard.yaml"
        doc = world.policy(
            approvers=[
                {
                    "id": carol.id,
                    "tools": ["*/*"],
                    "min_assurance": "authenticated",
                    "public_key": carol.principal.public_jwk(),
                }
            ],
            step_up=[{"tools": [TOOL], "where": {"id": {">": 10}}}],
            approval={"channel": "web"},
            budgets=[{"tools": ["tickets/*"], "window": "1h", "calls": 5, "per": "global"}],
        )
        self.policy_file.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        self.guard = Guard(
            load_policy(self.policy_file), store=store, clock=world.clock, approval_mode="raise"
        )
        self.delegation = Delegation.issue(
            world.org,
            world.bot,
            [{"tool": TOOL, "budget": {"window": "1d", "calls": 3, "sum": {"id": 100}}}],
            ttl="1h",
            clock=world.clock,
        )
        self.tokens = ApproverTokens(tmp_path / "t.json")
        self.carol = self.tokens.issue("user:carol")

    def call(self, n: int) -> object:
        return self.guard.call(
            self.delegation, TOOL, {"id": n}, RecordingTool(), holder=self.world.bot
        )

    def ask(self, n: int) -> str:
        with pytest.raises(ApprovalPending) as pending:
            self.call(n)
        return pending.value.request_id

    def page(self) -> str:
        app = create_app(self.guard.approvals, self.tokens, policy_file=self.policy_file)
        client = TestClient(app, base_url=BASE, headers={"Origin": BASE})
        login(client, self.carol)
        reply = client.get("/")
        assert reply.status_code == 200
        return reply.text


def test_a_pending_calls_card_shows_its_budgets_used_and_left(tmp_path: Path) -> None:
    desk = Desk(tmp_path, MemoryStore())
    desk.call(7)  # runs without approval: charged to both budgets
    request_id = desk.ask(20)
    shown = card(desk.page(), request_id)
    assert "<h3>Budgets</h3>" in shown
    assert (
        "<b>link 0 rule 0</b>: 1/3 calls used (2 left), 7/100 id used (93 left), resets "
        "2027-01-16T00:00:00Z" in shown
    )
    assert "<b>policy budget 0</b>: 1/5 calls used (4 left), resets 2027-01-15T09:00:00Z" in shown
    # Showing them charged nothing.
    desk.call(8)
    assert card(desk.page(), request_id).count("2/") == 2


def test_a_card_without_budgets_has_no_budget_section(tmp_path: Path) -> None:
    desk = Desk(tmp_path, MemoryStore())
    desk.delegation = desk.world.chain(desk.world.bot, scope=["tickets/comment"])
    desk.guard = Guard(
        load_policy(desk.policy_file).model_copy(update={"budgets": []}),
        store=MemoryStore(),
        clock=desk.world.clock,
        approval_mode="raise",
    )
    request_id = desk.ask(20)
    assert "Budgets" not in card(desk.page(), request_id)


@pytest.mark.parametrize(
    "recorded",
    [
        "not a list",
        [1],
        [{"budget": "link 0 rule 0", "key": "k"}],
        [{"budget": "", "key": "k", "window": 60, "calls": 1}],
        [{"budget": "x" * 500, "key": "k", "window": 60, "calls": 1}],
        [{"budget": "b", "key": "k", "window": -1, "calls": 1}],
        [{"budget": "b", "key": "k", "window": 60, "calls": 1, "sum": {"id": "NaN"}}],
        [{"budget": "b", "key": "k", "window": 60, "calls": 1, "extra": True}],
        [{"budget": "b", "key": 7, "window": 60, "calls": 1}],
        [{"budget": "b", "key": "k", "window": 60, "calls": 1}] * 300,
    ],
)
def test_a_tampered_request_shows_that_it_cannot_tell(tmp_path: Path, recorded: Any) -> None:
    """Whatever a stored request says of its budgets, the page still shows the card."""
    desk = Desk(tmp_path, SQLiteStore(tmp_path / "s.db"))
    request_id = desk.ask(20)
    with sqlite3.connect(tmp_path / "s.db") as db:
        (text,) = db.execute("SELECT request FROM approvals WHERE id = ?", (request_id,)).fetchone()
        data = json.loads(text)
        data["budgets"] = recorded
        db.execute("UPDATE approvals SET request = ? WHERE id = ?", (json.dumps(data), request_id))
    shown = card(desk.page(), request_id)
    if isinstance(recorded, list) and recorded:
        assert "cannot tell what they have used" in shown
    else:
        assert "Budgets" not in shown
    desk.guard.close()


def test_a_store_that_cannot_read_the_counters_shows_that_it_cannot_tell(tmp_path: Path) -> None:
    class Unreadable(MemoryStore):
        broken = False

        def budget_states(self, charges: Any, now: float) -> Any:
            if self.broken:
                raise StoreError("counters cannot be read (injected)")
            return super().budget_states(charges, now)

    store = Unreadable()
    desk = Desk(tmp_path, store)
    request_id = desk.ask(20)
    store.broken = True
    assert "cannot tell what they have used" in card(desk.page(), request_id)


def test_the_request_records_budgets_but_not_amounts(tmp_path: Path) -> None:
    desk = Desk(tmp_path, MemoryStore())
    request_id = desk.ask(42)
    row = desk.guard.store.approval_get(request_id)
    assert row is not None
    request = ApprovalRequest.from_row(row)
    assert [b["budget"] for b in request.budgets] == ["link 0 rule 0", "policy budget 0"]
    assert request.budgets[0]["sum"] == {"id": "100"}
    assert "42" not in json.dumps(request.budgets)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_KEYS = st.sampled_from(["budget", "key", "window", "calls", "sum"]) | st.text(max_size=5)
_VALID = {"budget": "b", "key": "k", "window": 60, "calls": 1}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(lambda extra: {**_VALID, **extra}, st.dictionaries(_KEYS, _JSON, max_size=3))
        | st.dictionaries(_KEYS, _JSON, max_size=6)
        | _JSON,
        max_size=4,
    )
)
def test_pending_usage_reads_or_refuses_hostile_entries(recorded: list[Any]) -> None:
    """Any JSON a stored request may hold: read as budgets, or ValueError; never a crash."""
    store = MemoryStore()
    try:
        views = pending_usage(recorded, store.budget_states, 0.0)
    except ValueError:
        return
    assert len(views) == len(recorded)


def test_pending_usage_reads_what_request_budgets_writes() -> None:
    store = MemoryStore()
    charge = Charge("k", "link 0 rule 0", Budget(60, 2, (("amount", Decimal(5)),)))
    recorded = json.loads(json.dumps(request_budgets([charge])))
    store.budget_charge([Charge("k", "x", charge.budget, (("amount", Decimal("1.5")),))], 0.0)
    (view,) = pending_usage(recorded, store.budget_states, 1.0)
    assert view["calls"] == {"used": 1, "limit": 2}
    assert view["sum"]["amount"] == {"used": "1.5", "limit": "5"}


def test_a_book_whose_store_keeps_no_budgets_shows_that_it_cannot_tell(tmp_path: Path) -> None:
    """A page over a store without budget counters (another release's) does not guess."""
    from types import SimpleNamespace

    from agentguard.web import _budgets_html

    desk = Desk(tmp_path, MemoryStore())
    request_id = desk.ask(20)
    row = desk.guard.store.approval_get(request_id)
    assert row is not None
    book: Any = SimpleNamespace(store=object(), clock=desk.world.clock)
    shown = _budgets_html(ApprovalRequest.from_row(row), book)
    assert "cannot tell what they have used" in shown
