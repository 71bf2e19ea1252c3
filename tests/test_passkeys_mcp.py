"""The MCP upstream verifier checks passkey receipts offline with the approver's credential.

The receipt is a real one: filed by a guard, signed by a software
authenticator over the statement the book made, recorded by the book. The
upstream knows only the credential (``passkeys=``), no guard key.
"""

from __future__ import annotations

from typing import Any

import pytest
from agentguard_mcp.verify import DelegationVerifier

from agentguard.approval import QueueChannel
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.passkeys import PasskeyReceipt, passkey_key_id
from agentguard.policy import Passkey
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from tests.adapters.mcp.test_upstream_approval import ARGS, _params
from tests.passkey_support import ORIGIN, RP_ID, SoftKey


def enrolled(key: SoftKey) -> dict[str, str]:
    return {
        "credential_id": key.credential_id,
        "public_key": key.cose(),
        "rp_id": RP_ID,
        "origin": ORIGIN,
    }


def passkey_receipt(
    world: World, key: SoftKey, args: dict[str, Any] = ARGS, *, approve: bool = True, **kw: Any
) -> str:
    """Carol answers ``admin/reset`` with her passkey through a real guard's book."""
    guard = world.guard(
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue"},
        approvers=[
            {"id": "user:carol", "min_assurance": "signed", "passkey": enrolled(key)},
        ],
    )
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", args, RecordingTool(), holder=world.bot)
    book = guard.approvals
    statement = book.passkey_statement(
        info.value.request_id, approver="user:carol", approve=approve, **kw
    )
    return book.record_passkey_answer(
        statement, key.receipt(statement).assertion, edited_args=kw.get("edited_args")
    )


def verifier(world: World, key: SoftKey, store: MemoryStore | None = None) -> DelegationVerifier:
    return DelegationVerifier(
        "admin",
        trusted_roots=[world.org.principal],
        revocations=store or MemoryStore(),
        clock=world.clock,
        passkeys={"user:carol": Passkey.model_validate(enrolled(key))},
    )


def reason(check: DelegationVerifier, params: dict[str, Any]) -> str:
    with pytest.raises(DeniedError) as info:
        check.check(params)
    return info.value.reason


def test_a_passkey_receipt_counts_as_signed_once(world: World) -> None:
    key = SoftKey()
    receipt = passkey_receipt(world, key)
    check = verifier(world, key)
    authority = check.check(_params(world, receipt))
    assert authority.approval is not None
    assert authority.approval.approver == "user:carol"
    assert authority.approval.assurance == "signed"
    assert reason(check, _params(world, receipt)) == "approval_replayed"


def test_another_credential_other_arguments_or_a_denial_are_refused(world: World) -> None:
    key = SoftKey(-7)
    receipt = passkey_receipt(world, key)
    assert reason(verifier(world, SoftKey()), _params(world, receipt)) == "approval_invalid"
    assert reason(verifier(world, key), _params(world, receipt, {"target": "db2"})) == (
        "approval_mismatch"
    )
    denial = passkey_receipt(world, key, approve=False)
    assert reason(verifier(world, key), _params(world, denial)) == "approval_rejected"


def test_a_rewrapped_statement_and_an_unknown_approver_are_refused(world: World) -> None:
    key = SoftKey()
    receipt = PasskeyReceipt.decode(passkey_receipt(world, key))
    longer = PasskeyReceipt(
        {**receipt.statement, "exp": receipt.statement["exp"] + 3600}, receipt.assertion
    )
    assert reason(verifier(world, key), _params(world, longer.encode())) == "approval_invalid"
    as_dave = PasskeyReceipt(
        {**receipt.statement, "approver": "user:dave", "iss": "user:dave"}, receipt.assertion
    )
    assert reason(verifier(world, key), _params(world, as_dave.encode())) == "approval_invalid"


def test_a_revoked_approver_and_an_edited_receipt_are_refused(world: World) -> None:
    key = SoftKey()
    receipt = passkey_receipt(world, key)
    store = MemoryStore()
    store.revoke("principal", "user:carol", reason="left", at=world.clock.now())
    assert reason(verifier(world, key, store), _params(world, receipt)) == (
        "approver_not_authorized"
    )
    edited = passkey_receipt(world, key, edited_args={"target": "db2"})
    assert reason(verifier(world, key), _params(world, edited)) == "approval_mismatch"


def test_a_revoked_passkey_key_id_refuses_that_authenticator_not_the_person(
    world: World,
) -> None:
    """Revoking the lost passkey's key id (not the person): its receipts are refused
    upstream; the person's passkey enrolled in its place counts under the same
    revocations."""
    lost = SoftKey()
    receipt = passkey_receipt(world, lost)
    store = MemoryStore()
    store.revoke("key", passkey_key_id(lost.cose()), reason="lost", at=world.clock.now())
    check = verifier(world, lost, store)
    assert reason(check, _params(world, receipt)) == "approver_not_authorized"
    replacement = SoftKey(-7)
    fresh = passkey_receipt(world, replacement)
    authority = verifier(world, replacement, store).check(_params(world, fresh))
    assert authority.approval is not None
    assert authority.approval.approver == "user:carol"


def test_an_enrolled_key_that_is_not_base64url_fails_closed(world: World) -> None:
    key = SoftKey(-7)  # 77 bytes of COSE key: the last character carries two spare bits
    receipt = passkey_receipt(world, key)
    check = verifier(world, key)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(key.cose()[-1]) ^ 1]  # a spare bit set: not canonical
    bent = key.cose()[:-1] + last
    check.passkeys["user:carol"] = check.passkeys["user:carol"].model_copy(
        update={"public_key": bent}
    )
    assert reason(check, _params(world, receipt)) == "approval_invalid"


def test_no_credential_and_no_key_fails_closed(world: World) -> None:
    receipt = passkey_receipt(world, SoftKey())
    bare = DelegationVerifier(
        "admin", trusted_roots=[world.org.principal], revocations=MemoryStore(), clock=world.clock
    )
    assert reason(bare, _params(world, receipt)) == "approval_required"
