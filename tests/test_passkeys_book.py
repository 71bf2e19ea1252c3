"""Passkey answers through the approval book and the guard, without a browser.

The software authenticator of :mod:`tests.passkey_support` signs; the guard
checks the stored receipt with the credential key in the policy, as it will
for one made in Chromium (``test_passkeys_browser.py``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agentguard.approval import receipt_check
from agentguard.errors import ApprovalPending, ApprovalRejected, DeniedError
from agentguard.guard import Guard
from agentguard.passkeys import PasskeyReceipt, passkey_key_id
from agentguard.policy import Policy
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from tests.passkey_support import ORIGIN, RP_ID, SoftKey


def passkey(key: SoftKey) -> dict[str, str]:
    return {
        "credential_id": key.credential_id,
        "public_key": key.cose(),
        "rp_id": RP_ID,
        "origin": ORIGIN,
    }


class Desk:
    """Carol and bob approve with passkeys; a policy step-up demands ``signed``."""

    def __init__(self) -> None:
        self.world = World()
        self.carol, self.bob = SoftKey(-8), SoftKey(-7)
        self.store = MemoryStore()
        self.guard = self.build()

    def build(self, **changes: Any) -> Guard:
        approvers = [
            {"id": "user:carol", "min_assurance": "signed", "passkey": passkey(self.carol)},
            {"id": "user:bob", "min_assurance": "signed", "passkey": passkey(self.bob)},
            {"id": "user:dave", "min_assurance": "signed"},
        ]
        doc = self.world.policy(
            approvers=approvers,
            step_up=[{"tools": ["tickets/comment"], "min_assurance": "signed"}],
            approval={"channel": "web"},
            **changes,
        )
        return Guard(
            Policy.model_validate(doc), store=self.store, clock=self.world.clock,
            approval_mode="raise",
        )  # fmt: skip

    def ask(self, args: dict[str, Any] | None = None) -> str:
        with pytest.raises(ApprovalPending) as pending:
            self.call(RecordingTool(), args)
        return pending.value.request_id

    def call(self, tool: RecordingTool, args: dict[str, Any] | None = None) -> object:
        return self.guard.call(
            self.world.delegation, "tickets/comment", args or {"id": 7}, tool,
            holder=self.world.bot,
        )  # fmt: skip

    def answer(self, request_id: str, key: SoftKey, approver: str = "user:carol", **kw: Any) -> str:
        book = self.guard.approvals
        statement = book.passkey_statement(request_id, approver=approver, **kw)
        receipt = key.receipt(statement)
        return book.record_passkey_answer(
            statement, receipt.assertion, edited_args=kw.get("edited_args")
        )


def refused(action: Any, reason: str = "approval_invalid") -> str:
    with pytest.raises(DeniedError) as caught:
        action()
    assert caught.value.reason == reason, caught.value
    return caught.value.explanation


def test_a_passkey_approval_counts_as_signed_and_the_call_runs_once() -> None:
    desk = Desk()
    request_id = desk.ask()
    receipt = desk.answer(request_id, desk.carol, approve=True, message="fine")
    assert PasskeyReceipt.decode(receipt).statement["req"] == request_id
    tool = RecordingTool()
    assert desk.call(tool) == "done"
    assert tool.calls == [{"id": 7}]
    record = [r for r in desk.guard.audit.tail(10) if r.get("approval")][-1]
    assert record["approval"]["assurance"] == "signed"
    assert record["approval"]["receipt"] == receipt  # the proof is in the audit log
    assert desk.ask() != request_id  # single use: the next call asks again


def test_a_passkey_denial_refuses_the_call_with_its_reason() -> None:
    desk = Desk()
    request_id = desk.ask()
    desk.answer(request_id, desk.carol, approve=False, message="not today")
    with pytest.raises(ApprovalRejected, match="not today"):
        desk.call(RecordingTool())


def test_an_edited_approval_binds_the_edited_arguments() -> None:
    desk = Desk()
    request_id = desk.ask()
    desk.answer(request_id, desk.carol, approve=True, edited_args={"id": 8})
    tool = RecordingTool()
    assert desk.call(tool) == "done"
    assert tool.calls == [{"id": 8}]


def test_an_assertion_of_another_approvers_credential_is_refused() -> None:
    desk = Desk()
    request_id = desk.ask()
    book = desk.guard.approvals
    statement = book.passkey_statement(request_id, approver="user:carol", approve=True)
    bobs = desk.bob.receipt(statement).assertion  # bob's device signs carol's answer
    assert "another credential" in refused(lambda: book.record_passkey_answer(statement, bobs))
    # Or bob's own statement, presented as carol's: the challenge no longer matches.
    own = book.passkey_statement(request_id, approver="user:bob", approve=True)
    signed = desk.bob.receipt(own).assertion
    as_carol = {**own, "approver": "user:carol", "iss": "user:carol"}
    refused(lambda: book.record_passkey_answer(as_carol, signed))


@pytest.mark.parametrize(
    "change",
    [{"decision": "reject"}, {"edited": "other"}, {"req": "apr_other"}, {"exp": 2_000_000_000}],
)
def test_an_assertion_rewrapped_into_another_answer_is_refused(change: dict[str, Any]) -> None:
    desk = Desk()
    request_id = desk.ask()
    book = desk.guard.approvals
    statement = book.passkey_statement(request_id, approver="user:carol", approve=True)
    assertion = desk.carol.receipt(statement).assertion
    moved = {**statement, **change}
    with pytest.raises(DeniedError):
        book.record_passkey_answer(moved, assertion)
    assert book.get(request_id).status == "pending"


def test_an_assertion_moved_to_another_request_is_refused() -> None:
    desk = Desk()
    first, second = desk.ask({"id": 1}), desk.ask({"id": 2})
    book = desk.guard.approvals
    statement = book.passkey_statement(first, approver="user:carol", approve=True)
    assertion = desk.carol.receipt(statement).assertion
    other = book.passkey_statement(second, approver="user:carol", approve=True)
    refused(lambda: book.record_passkey_answer({**other, "jti": statement["jti"]}, assertion))
    assert book.get(second).status == "pending"


def test_a_replayed_answer_is_refused() -> None:
    desk = Desk()
    request_id = desk.ask()
    book = desk.guard.approvals
    statement = book.passkey_statement(request_id, approver="user:carol", approve=True)
    assertion = desk.carol.receipt(statement).assertion
    book.record_passkey_answer(statement, assertion)
    refused(lambda: book.record_passkey_answer(statement, assertion), "approval_closed")
    assert desk.call(RecordingTool()) == "done"
    refused(lambda: book.record_passkey_answer(statement, assertion), "approval_closed")


def test_a_revoked_approver_cannot_answer_and_their_stored_answer_stops_counting() -> None:
    desk = Desk()
    request_id = desk.ask()
    desk.answer(request_id, desk.carol, approve=True)
    desk.guard.revoke("principal", "user:carol", reason="left")
    with pytest.raises(DeniedError) as caught:
        desk.call(RecordingTool())
    assert caught.value.reason == "approval_invalid"
    fresh = desk.ask({"id": 9})
    refused(
        lambda: desk.answer(fresh, desk.carol, approve=True),
        "approver_not_authorized",
    )


def test_an_approver_without_a_passkey_gets_no_statement() -> None:
    desk = Desk()
    request_id = desk.ask()
    explanation = refused(
        lambda: desk.guard.approvals.passkey_statement(
            request_id, approver="user:dave", approve=True
        ),
        "approver_not_authorized",
    )
    assert "agentguard approvals enroll user:dave" in explanation


def test_a_credential_removed_from_the_policy_stops_a_stored_answer() -> None:
    desk = Desk()
    request_id = desk.ask()
    desk.answer(request_id, desk.carol, approve=True)
    other = SoftKey()
    desk.carol, keep = other, desk.carol
    desk.guard = desk.build()  # carol's entry now names another credential
    with pytest.raises(DeniedError) as caught:
        desk.call(RecordingTool())
    assert caught.value.reason == "approval_invalid"
    desk.carol = keep


def test_a_stored_receipt_whose_edit_was_dropped_is_refused() -> None:
    """The statement binds an edit: a receipt that leaves the edited arguments out is refused."""
    desk = Desk()
    request_id = desk.ask()
    receipt = desk.answer(request_id, desk.carol, approve=True, edited_args={"id": 8})
    parsed = PasskeyReceipt.decode(receipt)
    row = desk.store.approval_get(request_id)
    assert row is not None
    stripped = replace(row, receipt=replace(parsed, edited_args=None).encode())
    refused(lambda: desk.guard.approvals.verify_receipt(stripped, expected_digest=row.call_digest))
    added = replace(row, receipt=replace(parsed, edited_args={"id": 9}).encode())
    refused(lambda: desk.guard.approvals.verify_receipt(added, expected_digest=row.call_digest))


def test_a_waiting_caller_is_told_the_page_only_for_approvers_with_a_passkey() -> None:
    desk = Desk()
    with pytest.raises(ApprovalPending) as pending:
        desk.call(RecordingTool())
    text = str(pending.value)
    assert "user:carol, user:bob through the approval page with their passkey" in text
    assert "user:dave" in text
    assert "user:dave through the approval page" not in text
    # A passkey is a key: only dave is told he has none yet.
    assert "no key is known yet for user:dave:" in text


def test_receipt_check_says_whether_a_stored_receipt_verifies() -> None:
    desk = Desk()
    request_id = desk.ask()
    assert receipt_check(desk.guard.approvals, request_id) is None  # not answered yet
    desk.answer(request_id, desk.carol, approve=True)
    kid = passkey_key_id(desk.carol.cose())
    assert receipt_check(desk.guard.approvals, request_id) == (
        "passkey assertion by user:carol, verified (approve, assurance signed, channel web)"
        f"; passkey key {kid}"
    )
    desk.guard.revoke("principal", "user:carol", reason="left")
    checked = receipt_check(desk.guard.approvals, request_id)
    assert checked is not None
    assert checked.startswith("passkey assertion; does not verify or no longer counts:")
    assert "user:carol is revoked" in checked
    assert checked.endswith(f"; passkey key {kid}")
