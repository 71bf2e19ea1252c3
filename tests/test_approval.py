"""Step-up approval: receipts that resist attack, waiting modes, channels, edits, assurance."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from agentguard import _jws
from agentguard.approval import (
    RECEIPT_TTL,
    ApprovalBook,
    ApprovalRequest,
    CallbackChannel,
    QueueChannel,
    TerminalChannel,
    call_digest,
)
from agentguard.clock import ManualClock, SystemClock
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import ApprovalRow, Store
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import RecordingTool, World, audit_records
from agentguard.tokens import TYP_APPROVAL, args_digest, new_jti

TOOL = "admin/reset"
ARGS: dict[str, Any] = {"target": "db1"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def queue_guard(world: World, store: Store | None = None, **policy: Any) -> Guard:
    """A non-blocking guard: approval-required calls raise ApprovalPending at once."""
    approval = {"channel": "queue", **policy.pop("approval", {})}
    return world.guard(
        store=store,
        approver=QueueChannel(),
        approval_mode="raise",
        approval=approval,
        **policy,
    )


def submit(
    guard: Guard,
    world: World,
    args: dict[str, Any] | None = None,
    *,
    tool: str = TOOL,
    delegation: Delegation | None = None,
) -> RecordingTool:
    """Submit the call (a fresh call token each time); return the tool that may have run."""
    fn = RecordingTool()
    guard.call(delegation or world.delegation, tool, args or ARGS, fn, holder=world.bot)
    return fn


def pending_id(guard: Guard, world: World, args: dict[str, Any] | None = None, **kw: Any) -> str:
    """Submit a call that needs approval; return the id of the pending request."""
    with pytest.raises(ApprovalPending) as info:
        submit(guard, world, args, **kw)
    assert info.value.request_id in info.value.short
    return info.value.request_id


def refused(guard: Guard, world: World, args: dict[str, Any] | None = None, **kw: Any) -> str:
    """Submit a call expected to be refused (not pending); return the reason."""
    with pytest.raises(DeniedError) as info:
        submit(guard, world, args, **kw)
    assert not isinstance(info.value, ApprovalPending), info.value
    return info.value.reason


def sign_receipt(signer: Identity, **claims: Any) -> str:
    """A receipt JWS with sane defaults, for attacks that bypass the ApprovalBook."""
    now = int(claims.pop("now"))
    body = {
        "ver": 1,
        "iss": signer.id,
        "approver": signer.id,
        "decision": "approve",
        "iat": now,
        "exp": now + RECEIPT_TTL,
        "jti": new_jti(),
        "channel": "queue",
        "assurance": "signed",
        **claims,
    }
    return _jws.sign(body, signer, TYP_APPROVAL)


def plant(store: Store, request_id: str, receipt: str, now: float) -> None:
    """Record ``receipt`` as the answer to a pending request, as a store writer could."""
    assert store.approval_answer(
        request_id, status="approved", receipt=receipt, answered_at=now, reusable_until=None
    )


# -- the non-blocking flow ------------------------------------------------------------------


def test_pending_then_approved_runs_once_then_needs_a_new_approval(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    request = guard.approvals.get(request_id)
    assert request.tool == TOOL
    assert request.requester == "agent:bot"
    assert request.path == ("org:acme", "user:alice", "agent:bot")
    assert [r.id for r in guard.approvals.pending()] == [request_id]
    # Submitting again before the answer does not file a second request.
    assert pending_id(guard, world) == request_id

    guard.approvals.approve(request_id, world.carol, message="ok once")
    fn = submit(guard, world)
    assert fn.calls == [ARGS]
    decision = [r for r in audit_records(guard) if r["type"] == "decision"][-1]
    assert decision["approval"]["approver"] == "user:carol"
    assert decision["approval_request_id"] == request_id
    assert guard.approvals.get(request_id).status == "used"

    assert pending_id(guard, world) != request_id  # third submission: a new approval


def test_approval_from_another_process(tmp_path: Path) -> None:
    """Pending; the approver signs in another process over the same SQLite home; resubmit runs."""
    world = World(clock=ManualClock(time.time()))
    home = tmp_path / "home"
    policy = world.write_policy(
        tmp_path / "agentguard.yaml", approval={"channel": "queue", "mode": "raise"}
    )
    carol_key = tmp_path / "carol.key"
    world.carol.save(carol_key)
    guard = Guard(policy=policy, home=home)
    try:
        request_id = pending_id(guard, world)
        approve = subprocess.run(
            [sys.executable, "-c",
            "import sys\n"
            "from pathlib import Path\n"
            "from agentguard.approval import ApprovalBook\n"
            "from agentguard.clock import SystemClock\n"
            "from agentguard.keys import Identity\n"
            "from agentguard.policy import load_policy\n"
            "from agentguard.store.sqlite import SQLiteStore\n"
            "home, policy, key, request_id = sys.argv[1:5]\n"
            "store = SQLiteStore(Path(home) / 'state.db')\n"
            "book = ApprovalBook(store, policy=load_policy(Path(policy)),\n"
            "    guard_identity=Identity.generate('service:agentguard'), clock=SystemClock())\n"
            "book.approve(request_id, Identity.load(Path(key)), message='from afar')\n"
            "store.close()\n",
            str(home), str(policy), str(carol_key), request_id],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert approve.returncode == 0, approve.stderr
        fn = submit(guard, world)
        assert fn.calls == [ARGS]
        assert pending_id(guard, world) != request_id
        assert guard.audit.verify() is None
    finally:
        guard.close()


@pytest.mark.anyio
async def test_acall_raises_pending_then_runs(world: World) -> None:
    guard = queue_guard(world)
    with pytest.raises(ApprovalPending) as info:
        await guard.acall(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    fn = RecordingTool()
    await guard.acall(world.delegation, TOOL, ARGS, fn, holder=world.bot)
    assert fn.calls == [ARGS]


def test_check_reports_pending_and_never_burns_the_receipt(world: World) -> None:
    guard = queue_guard(world)
    decision = guard.check(world.delegation, TOOL, ARGS, holder=world.bot, request_approval=True)
    assert decision.outcome == "approval_required"
    assert decision.approval_request_id is not None
    guard.approvals.approve(decision.approval_request_id, world.carol)
    decision = guard.check(world.delegation, TOOL, ARGS, holder=world.bot)
    assert decision.allowed
    assert guard.approvals.get(decision.approval_request_id or "").status == "approved"
    assert submit(guard, world).ran  # the receipt filed ahead of time is used by the real call


# -- receipt attacks ------------------------------------------------------------------------------


def test_used_receipt_cannot_be_burned_again(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    assert submit(guard, world).ran
    assert not guard.store.approval_burn(request_id, world.clock.now())
    assert pending_id(guard, world) != request_id


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_concurrent_uses_of_one_receipt_exactly_one_runs(
    world: World, tmp_path: Path, backend: str
) -> None:
    store: Store = MemoryStore() if backend == "memory" else SQLiteStore(tmp_path / "state.db")
    guard = queue_guard(world, store=store)
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    runs: list[int] = []
    refusals: list[str] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        try:
            guard.call(world.delegation, TOOL, ARGS, lambda **kw: runs.append(n), holder=world.bot)
        except DeniedError as exc:
            refusals.append(exc.reason)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(runs) == 1
    assert len(refusals) == 7
    assert set(refusals) <= {"approval_replayed", "approval_pending"}
    store.close()


def _moved_receipt_row(
    guard: Guard, world: World, tool: str, args: dict[str, Any], leaf: str
) -> str:
    """Approve ARGS for TOOL, then copy its receipt onto a request for another call."""
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    row = guard.store.approval_get(request_id)
    assert row is not None
    assert row.receipt is not None
    forged = "apr_moved"
    guard.store.approval_insert(
        replace(
            row,
            id=forged,
            status="pending",
            receipt=None,
            created_at=row.created_at + 1,
            call_digest=call_digest(tool, args_digest(args), leaf),
        )
    )
    plant(guard.store, forged, row.receipt, world.clock.now())
    return forged


def test_receipt_moved_to_other_arguments(world: World) -> None:
    guard = queue_guard(world)
    other = {"target": "prod-db"}
    _moved_receipt_row(guard, world, TOOL, other, world.delegation.leaf.link_id)
    assert refused(guard, world, other) == "approval_mismatch"


def test_receipt_moved_to_another_tool(world: World) -> None:
    guard = queue_guard(world)
    _moved_receipt_row(guard, world, "admin/drop", ARGS, world.delegation.leaf.link_id)
    assert refused(guard, world, tool="admin/drop") == "approval_mismatch"


def test_receipt_moved_to_another_delegation(world: World) -> None:
    guard = queue_guard(world)
    other = world.chain(world.bot)
    _moved_receipt_row(guard, world, TOOL, ARGS, other.leaf.link_id)
    assert refused(guard, world, delegation=other) == "approval_mismatch"


def test_receipt_signed_for_other_arguments(world: World) -> None:
    """A genuine approver signature, but its ``call`` claim is for other arguments."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    leaf = world.delegation.leaf.link_id
    wrong = call_digest(TOOL, args_digest({"target": "db2"}), leaf)
    receipt = sign_receipt(world.carol, req=request_id, call=wrong, now=world.clock.now())
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "approval_mismatch"


def test_expired_receipt(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    row = guard.store.approval_get(request_id)
    assert row is not None
    then = world.clock.now() - RECEIPT_TTL - 60
    receipt = sign_receipt(world.carol, req=request_id, call=row.call_digest, now=then)
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "approval_expired"


def test_receipt_issued_in_the_future_is_refused(world: World) -> None:
    """A receipt post-dated beyond the leeway could outlive its window: refused."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    row = guard.store.approval_get(request_id)
    assert row is not None
    later = world.clock.now() + 3600
    receipt = sign_receipt(world.carol, req=request_id, call=row.call_digest, now=later)
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "approval_invalid"


def test_receipt_claiming_a_long_lifetime_is_refused(world: World) -> None:
    """An approver-signed receipt valid for a day is refused: receipts live minutes."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    row = guard.store.approval_get(request_id)
    assert row is not None
    now = int(world.clock.now())
    receipt = sign_receipt(
        world.carol, req=request_id, call=row.call_digest, now=now, exp=now + 86400
    )
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "approval_invalid"


def test_edited_call_records_the_edited_digest(world: World) -> None:
    """The audit record of an edited call names the digest of what actually ran."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    edited = {**ARGS, "target": "db2"}
    guard.approvals.approve(request_id, world.carol, edited_args=edited)
    submit(guard, world)
    approval = next(
        r["approval"] for r in reversed(audit_records(guard)) if r.get("approval") is not None
    )
    assert approval["edited"] is True
    assert approval["edited_args_digest"] == args_digest(edited)


def test_edit_keeps_redacted_values_out_of_the_approval_path(tmp_path: Path, world: World) -> None:
    """An edit leaves a redacted field as the marker; the tool gets the caller's secret,
    and the secret appears nowhere in the database (request, receipt, audit)."""
    canary = "hunter2-canary-9f8e7d"
    store = SQLiteStore(tmp_path / "state.db")
    guard = queue_guard(world, store=store)
    asked = {"target": "db1", "password": canary}
    request_id = pending_id(guard, world, asked)
    shown = guard.approvals.get(request_id).args_display
    assert shown["password"] == "[redacted]"
    guard.approvals.approve(request_id, world.carol, edited_args={**shown, "target": "db2"})
    ran = submit(guard, world, asked)
    assert ran.calls == [{"target": "db2", "password": canary}]
    store.close()
    for path in tmp_path.iterdir():
        assert canary.encode() not in path.read_bytes(), path.name


def test_edit_may_not_set_a_redacted_field(world: World) -> None:
    """Secrets never travel through the approval path: an edit writing one is refused."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world, {"target": "db1", "password": "x"})
    with pytest.raises(DeniedError) as info:
        guard.approvals.approve(
            request_id, world.carol, edited_args={"target": "db1", "password": "chosen"}
        )
    assert info.value.reason == "approval_invalid"
    assert "chosen" not in str(info.value)


def test_withdrawn_request_is_closed_and_the_call_asks_again(world: World) -> None:
    """A withdrawn request cannot be answered any more; the same call files a new one."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    assert guard.approvals.withdraw(request_id)
    assert not guard.approvals.withdraw(request_id)
    with pytest.raises(DeniedError) as info:
        guard.approvals.approve(request_id, world.carol)
    assert info.value.reason == "approval_closed"
    assert pending_id(guard, world) != request_id


def test_approval_left_unused_until_it_expires_is_asked_again(world: World) -> None:
    """A stale receipt does not block that exact call forever: a new request is filed."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    assert isinstance(world.clock, ManualClock)
    world.clock.advance(RECEIPT_TTL + guard.policy.limits.leeway + 1)
    fresh = pending_id(guard, world)
    assert fresh != request_id
    guard.approvals.approve(fresh, world.carol)
    assert submit(guard, world).ran


def test_approval_after_revocation_does_not_run(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    guard.revoke("link", world.delegation.leaf.link_id)
    assert refused(guard, world) == "revoked"


def test_unauthorised_approver_is_refused_by_the_book(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    mallory = Identity.generate("user:mallory")
    with pytest.raises(DeniedError) as info:
        guard.approvals.approve(request_id, mallory)
    assert info.value.reason == "approver_not_authorized"
    assert guard.approvals.get(request_id).status == "pending"


def test_unauthorised_approver_receipt_planted_in_the_store(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    mallory = Identity.generate("user:mallory")
    row = guard.store.approval_get(request_id)
    assert row is not None
    receipt = sign_receipt(mallory, req=request_id, call=row.call_digest, now=world.clock.now())
    plant(guard.store, request_id, receipt, world.clock.now())
    # No key is known for mallory, so the signature cannot even be checked.
    assert refused(guard, world) in ("approval_invalid", "approver_not_authorized")


def test_receipt_claiming_an_approver_but_signed_by_another_key(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    impostor = Identity.generate("user:carol")
    row = guard.store.approval_get(request_id)
    assert row is not None
    receipt = sign_receipt(impostor, req=request_id, call=row.call_digest, now=world.clock.now())
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "approval_invalid"


def test_requesting_agent_cannot_approve_itself(world: World) -> None:
    """Even when the policy (wrongly) lists the agent as an approver: separation of duties."""
    approvers = [
        *world.policy()["approvers"],
        {"id": "agent:bot", "public_key": world.bot.principal.public_jwk()},
    ]
    guard = queue_guard(world, approvers=approvers)
    request_id = pending_id(guard, world)
    with pytest.raises(DeniedError) as info:
        guard.approvals.approve(request_id, world.bot)
    assert info.value.reason == "separation_of_duties"
    row = guard.store.approval_get(request_id)
    assert row is not None
    receipt = sign_receipt(world.bot, req=request_id, call=row.call_digest, now=world.clock.now())
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world) == "separation_of_duties"


def test_tampered_receipt_signature(world: World, tmp_path: Path) -> None:
    guard = queue_guard(world, store=SQLiteStore(tmp_path / "state.db"))
    request_id = pending_id(guard, world)
    receipt = guard.approvals.approve(request_id, world.carol)
    header, payload, signature = receipt.split(".")
    forged = f"{header}.{payload}.{('A' if signature[0] != 'A' else 'B')}{signature[1:]}"
    conn = sqlite3.connect(tmp_path / "state.db")
    with conn:
        conn.execute("UPDATE approvals SET receipt = ? WHERE id = ?", (forged, request_id))
    conn.close()
    assert refused(guard, world) == "approval_invalid"
    guard.close()


def test_rejection_rewritten_as_approval_is_refused(world: World, tmp_path: Path) -> None:
    """Flipping ``decision`` in the payload without re-signing breaks the signature."""
    import base64
    import json

    guard = queue_guard(world, store=SQLiteStore(tmp_path / "state.db"))
    request_id = pending_id(guard, world)
    receipt = guard.approvals.deny(request_id, world.carol, message="no")
    header, payload, signature = receipt.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["decision"] = "approve"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    conn = sqlite3.connect(tmp_path / "state.db")
    with conn:
        conn.execute(
            "UPDATE approvals SET receipt = ?, status = 'approved' WHERE id = ?",
            (f"{header}.{raw}.{signature}", request_id),
        )
    conn.close()
    assert refused(guard, world) == "approval_invalid"
    guard.close()


def test_grant_token_is_not_a_receipt(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    plant(guard.store, request_id, world.delegation.leaf.token, world.clock.now())
    assert refused(guard, world) == "approval_invalid"


def test_revoked_approver_principal_cannot_approve(world: World) -> None:
    """Attack: an approver whose principal was revoked still has a receipt accepted."""
    guard = queue_guard(world)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", {"t": 1}, RecordingTool(), holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    guard.revoke("principal", "user:carol", reason="left the company")
    fn = RecordingTool()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "admin/reset", {"t": 1}, fn, holder=world.bot)
    assert denied.value.reason == "approver_not_authorized"
    assert not fn.ran


def test_revoked_approver_key_cannot_approve(world: World) -> None:
    """Attack: an approver whose signing key was revoked still has a signed receipt accepted."""
    guard = queue_guard(world)
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "admin/reset", {"t": 2}, RecordingTool(), holder=world.bot)
    guard.approvals.approve(info.value.request_id, world.carol)
    guard.revoke("key", world.carol.kid, reason="key leaked")
    fn = RecordingTool()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "admin/reset", {"t": 2}, fn, holder=world.bot)
    assert denied.value.reason == "approval_invalid"
    assert not fn.ran


# -- blocking mode: timeout, channel errors, rejection ---------------------------------------------


def test_no_answer_before_the_deadline_is_approval_timeout() -> None:
    world = World(clock=ManualClock(time.time()))
    guard = world.guard(
        clock=SystemClock(), approver=QueueChannel(), approval={"channel": "queue", "timeout": 0.3}
    )
    fn = RecordingTool()
    started = time.monotonic()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, fn, holder=world.bot)
    assert info.value.reason == "approval_timeout"
    assert time.monotonic() - started < 5
    assert not fn.ran


@pytest.mark.anyio
async def test_async_wait_times_out_without_blocking_the_loop() -> None:
    world = World(clock=ManualClock(time.time()))
    guard = world.guard(
        clock=SystemClock(), approver=QueueChannel(), approval={"channel": "queue", "timeout": 0.3}
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            with pytest.raises(DeniedError) as info:
                await guard.acall(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
            tg.cancel_scope.cancel()
    assert info.value.reason == "approval_timeout"
    assert ticks > 5  # the loop kept running while the guard waited


def test_channel_error_denies(world: World) -> None:
    def explode(request: ApprovalRequest, book: ApprovalBook) -> None:
        raise RuntimeError("pager is down")

    guard = world.guard(approver=CallbackChannel(explode))
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, fn, holder=world.bot)
    assert info.value.reason == "approval_unavailable"
    assert "pager is down" not in str(info.value)
    assert not fn.ran


@pytest.mark.anyio
async def test_async_channel_error_denies(world: World) -> None:
    async def explode(request: ApprovalRequest, book: ApprovalBook) -> None:
        raise RuntimeError("pager is down")

    guard = world.guard(approver=CallbackChannel(explode))
    with pytest.raises(DeniedError) as info:
        await guard.acall(world.delegation, TOOL, ARGS, RecordingTool(), holder=world.bot)
    assert info.value.reason == "approval_unavailable"


def test_rejection_carries_the_approvers_message(world: World) -> None:
    def reject(request: ApprovalRequest, book: ApprovalBook) -> None:
        book.deny(request.id, world.carol, message="not during the freeze")

    guard = world.guard(approver=CallbackChannel(reject))
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, ARGS, fn, holder=world.bot)
    assert info.value.reason == "approval_rejected"
    assert "not during the freeze" in info.value.explanation
    assert "user:carol" in info.value.explanation
    assert not fn.ran


def test_rejection_reaches_a_non_blocking_caller(world: World) -> None:
    """After a rejection, resubmitting the same call learns of it instead of waiting again."""
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    guard.approvals.deny(request_id, world.carol, message="no way")
    with pytest.raises(DeniedError) as info:
        submit(guard, world)
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.reason == "approval_rejected"
    assert "no way" in info.value.explanation


def test_sync_callback_approval_in_block_mode(world: World) -> None:
    def approve(request: ApprovalRequest, book: ApprovalBook) -> None:
        assert "db1" in request.describe(world.clock.now())
        book.approve(request.id, world.carol)

    guard = world.guard(approver=CallbackChannel(approve))
    assert submit(guard, world).calls == [ARGS]


@pytest.mark.anyio
async def test_async_callback_approval(world: World) -> None:
    async def approve(request: ApprovalRequest, book: ApprovalBook) -> None:
        await anyio.lowlevel.checkpoint()
        book.approve(request.id, world.carol)

    guard = world.guard(approver=CallbackChannel(approve))
    fn = RecordingTool()
    await guard.acall(world.delegation, TOOL, ARGS, fn, holder=world.bot)
    assert fn.calls == [ARGS]


def test_approval_arriving_later_from_another_thread_unblocks_the_wait() -> None:
    world = World(clock=ManualClock(time.time()))
    answered = threading.Event()

    def later(request: ApprovalRequest, book: ApprovalBook) -> None:
        def answer() -> None:
            book.approve(request.id, world.carol)
            answered.set()

        threading.Timer(0.05, answer).start()

    guard = world.guard(
        clock=SystemClock(), approver=CallbackChannel(later), approval={"timeout": 10}
    )
    assert submit(guard, world).ran
    assert answered.is_set()


class _FlakyApprovals(MemoryStore):
    """Attack: a store whose approval lookups fail once a request is pending."""

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        raise StoreError("approvals table is locked")


def test_store_error_while_waiting_for_approval_is_an_audited_denial(world: World) -> None:
    """Attack: a store failure while the driver waits escapes raw, with no audit record."""
    guard = world.guard(
        store=_FlakyApprovals(),
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue"},
    )
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "admin/reset", {"t": 3}, fn, holder=world.bot)
    assert not fn.ran
    assert info.value.reason == "store_error"  # the cause, not "the channel failed"
    assert audit_records(guard)[-1]["reason"] == "store_error"


# -- edits ----------------------------------------------------------------------------------


def refund_guard(world: World, **policy: Any) -> Guard:
    return queue_guard(world, step_up=[{"tools": ["billing/refund"]}], **policy)


def test_edit_runs_the_tool_with_the_edited_arguments(world: World) -> None:
    guard = refund_guard(world)
    request_id = pending_id(guard, world, {"amount": 900}, tool="billing/refund")
    guard.approvals.approve(request_id, world.carol, edited_args={"amount": 90})
    fn = submit(guard, world, {"amount": 900}, tool="billing/refund")
    assert fn.calls == [{"amount": 90}]
    decision = [r for r in audit_records(guard) if r["type"] == "decision"][-1]
    assert decision["approval"]["edited"] is True
    assert decision["args"] == {"amount": 90}


def test_edit_out_of_scope_is_denied(world: World) -> None:
    guard = refund_guard(world)
    request_id = pending_id(guard, world, {"amount": 900}, tool="billing/refund")
    guard.approvals.approve(request_id, world.carol, edited_args={"amount": 5000})
    assert refused(guard, world, {"amount": 900}, tool="billing/refund") == "predicate_failed"


def test_edit_hitting_a_deny_rule_is_denied(world: World) -> None:
    deny = [{"tools": ["billing/refund"], "where": {"currency": "XBT"}, "if_missing": "skip"}]
    guard = refund_guard(world, deny=deny)
    request_id = pending_id(guard, world, {"amount": 900}, tool="billing/refund")
    guard.approvals.approve(request_id, world.carol, edited_args={"amount": 9, "currency": "XBT"})
    assert refused(guard, world, {"amount": 900}, tool="billing/refund") == "policy_denied"


def test_edit_into_a_higher_assurance_step_up_is_refused(world: World) -> None:
    """Attack: a 'local' approver edits the call into arguments whose step-up needs 'signed'."""
    guard = queue_guard(
        world,
        step_up=[
            {"tools": ["tickets/*"], "min_assurance": "local"},
            {"tools": ["tickets/*"], "where": {"amount": {">": 100}}, "min_assurance": "signed"},
        ],
    )
    args = {"amount": 10}
    with pytest.raises(ApprovalPending) as info:
        guard.call(world.delegation, "tickets/pay", args, RecordingTool(), holder=world.bot)
    guard.approvals.answer(
        info.value.request_id,
        approver="user:carol",
        approve=True,
        channel="terminal",
        assurance="local",
        edited_args={"amount": 5000},
    )
    fn = RecordingTool()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "tickets/pay", args, fn, holder=world.bot)
    assert denied.value.reason == "approval_assurance"
    assert not fn.ran


# -- reusable receipts ---------------------------------------------------------------------------


def test_reusable_receipt_covers_identical_calls_within_the_window(world: World) -> None:
    guard = queue_guard(world, approval={"reusable_for": "2m"})
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    assert submit(guard, world).ran
    assert isinstance(world.clock, ManualClock)
    world.clock.advance(60)
    assert submit(guard, world).ran  # identical call, same receipt
    assert pending_id(guard, world, {"target": "db2"}) != request_id  # other arguments
    world.clock.advance(61)
    assert pending_id(guard, world) != request_id  # window over
    row = guard.store.approval_get(request_id)
    assert row is not None
    assert row.uses == 2


def test_single_use_is_the_default(world: World) -> None:
    guard = queue_guard(world)
    assert guard.policy.approval.reusable_for == 0
    request_id = pending_id(guard, world)
    guard.approvals.approve(request_id, world.carol)
    assert submit(guard, world).ran
    assert pending_id(guard, world) != request_id


# -- assurance -------------------------------------------------------------------------------------


def answering(assurance: str, approve: bool = True) -> CallbackChannel:
    """A channel whose human (user:carol) answers at once with the given assurance."""

    def answer(request: ApprovalRequest, book: ApprovalBook) -> None:
        book.answer(
            request.id,
            approver="user:carol",
            approve=approve,
            channel="mcp-form",
            assurance=assurance,
        )

    return CallbackChannel(answer)


def test_agent_assurance_is_refused_for_a_signed_rule(world: World) -> None:
    guard = world.guard(
        approver=answering("agent"),
        step_up=[{"tools": ["tickets/delete"], "min_assurance": "signed"}],
    )
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/delete", {"id": 1}, fn, holder=world.bot)
    assert info.value.reason == "approval_assurance"
    assert not fn.ran


def test_a_rejection_counts_below_the_rules_assurance(world: World) -> None:
    """A rejection only restricts: carol's 'agent'-level No on a 'signed' rule is recorded
    and the call is refused as rejected (her Yes at that level is not: the test above)."""
    step_up = [{"tools": ["tickets/delete"], "min_assurance": "signed"}]
    guard = world.guard(approver=answering("agent", approve=False), step_up=step_up)
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/delete", {"id": 1}, fn, holder=world.bot)
    assert info.value.reason == "approval_rejected"
    assert not fn.ran
    (request,) = guard.approvals.all()
    assert request.approver == "user:carol"


@pytest.mark.parametrize("who", ["user:mallory", "user:carol-revoked"])
def test_a_low_assurance_rejection_still_passes_the_approver_checks(world: World, who: str) -> None:
    """Anyone may not say No: a person not in the approver list, or a revoked approver,
    is refused for a rejection as for an approval, whatever the channel."""
    guard = queue_guard(world, step_up=[{"tools": ["tickets/delete"], "min_assurance": "signed"}])
    request_id = pending_id(guard, world, {"id": 1}, tool="tickets/delete")
    approver = who
    if who == "user:carol-revoked":
        approver = "user:carol"
        guard.revoke("principal", "user:carol")
    with pytest.raises(DeniedError) as info:
        guard.approvals.answer(
            request_id, approver=approver, approve=False, channel="web", assurance="agent"
        )
    assert info.value.reason == "approver_not_authorized"
    assert guard.approvals.get(request_id).status == "pending"


def test_link_rule_approvals_need_a_signed_receipt(world: World) -> None:
    guard = world.guard(approver=answering("authenticated"))
    assert refused(guard, world) == "approval_assurance"


def test_assurance_meeting_the_rule_is_accepted(world: World) -> None:
    step_up = [{"tools": ["tickets/delete"], "min_assurance": "local"}]
    guard = world.guard(approver=answering("agent"), step_up=step_up)
    assert refused(guard, world, {"id": 1}, tool="tickets/delete") == "approval_assurance"
    guard = world.guard(approver=answering("local"), step_up=step_up)
    assert submit(guard, world, {"id": 1}, tool="tickets/delete").ran


def test_low_assurance_receipt_planted_in_the_store_never_counts(world: World) -> None:
    """A guard-signed receipt at assurance 'agent' slipped past the book is set aside (burned)
    and a new request is filed; read through the book directly it still fails verification."""
    guard = queue_guard(world, step_up=[{"tools": ["tickets/delete"], "min_assurance": "signed"}])
    request_id = pending_id(guard, world, {"id": 1}, tool="tickets/delete")
    row = guard.store.approval_get(request_id)
    assert row is not None
    receipt = sign_receipt(
        guard.guard_identity,
        approver="user:carol",
        req=request_id,
        call=row.call_digest,
        assurance="agent",
        channel="mcp-form",
        now=world.clock.now(),
    )
    plant(guard.store, request_id, receipt, world.clock.now())
    planted = guard.store.approval_get(request_id)
    assert planted is not None
    with pytest.raises(DeniedError) as info:
        guard.approvals.verify_receipt(planted, expected_digest=row.call_digest, required="signed")
    assert info.value.reason == "approval_assurance"
    assert pending_id(guard, world, {"id": 1}, tool="tickets/delete") != request_id
    assert guard.store.approval_get(request_id).status == "used"  # type: ignore[union-attr]


def test_channels_cannot_claim_signed_assurance(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world)
    with pytest.raises(ValueError, match="at most 'authenticated'"):
        guard.approvals.answer(
            request_id, approver="user:carol", approve=True, channel="x", assurance="signed"
        )


# -- terminal channel -----------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_weak_channel_is_refused_at_once(world: World) -> None:
    """A channel that can only answer at 'local' is not even asked for a 'signed' rule."""
    channel = TerminalChannel("user:carol", stdin=FakeTTY("y\n"), stdout=io.StringIO())
    guard = world.guard(approver=channel, step_up=[{"tools": ["tickets/delete"]}])
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/delete", {}, fn, holder=world.bot)
    assert info.value.reason == "approval_assurance"
    assert not fn.ran
    assert guard.approvals.pending()[0].tool == "tickets/delete"


def test_terminal_channel_refuses_without_a_tty(world: World) -> None:
    channel = TerminalChannel("user:carol", stdin=io.StringIO("y\n"), stdout=io.StringIO())
    guard = world.guard(
        approver=channel, step_up=[{"tools": ["tickets/delete"], "min_assurance": "local"}]
    )
    fn = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, "tickets/delete", {}, fn, holder=world.bot)
    assert info.value.reason == "approval_unavailable"
    assert "TTY" in info.value.explanation
    assert not fn.ran


def test_terminal_channel_prompts_on_a_tty(world: World) -> None:
    out = io.StringIO()
    channel = TerminalChannel("user:carol", stdin=FakeTTY("y\n"), stdout=out)
    step_up = [{"tools": ["tickets/delete"], "min_assurance": "local"}]
    guard = world.guard(approver=channel, step_up=step_up)
    assert submit(guard, world, {"id": 4}, tool="tickets/delete").ran
    assert "agent:bot" in out.getvalue()
    assert "tickets/delete" in out.getvalue()


def test_terminal_channel_denial_message(world: World) -> None:
    channel = TerminalChannel("user:carol", stdin=FakeTTY("wrong ticket\n"), stdout=io.StringIO())
    step_up = [{"tools": ["tickets/delete"], "min_assurance": "local"}]
    guard = world.guard(approver=channel, step_up=step_up)
    with pytest.raises(DeniedError) as info:
        submit(guard, world, {"id": 4}, tool="tickets/delete")
    assert info.value.reason == "approval_rejected"
    assert "wrong ticket" in info.value.explanation


def test_request_display_is_redacted(world: World) -> None:
    guard = queue_guard(world)
    request_id = pending_id(guard, world, {"target": "db1", "password": "hunter2"})
    request = guard.approvals.get(request_id)
    assert request.args_display == {"target": "db1", "password": "[redacted]"}
    assert "hunter2" not in request.describe()


# -- what the call demands now; separation of duties by the demanding link -----------------------


def test_an_answer_weaker_than_the_tightened_policy_files_a_new_request(
    world: World, tmp_path: Path
) -> None:
    """Answered at 'local', then the policy demands 'signed': a new request, not the old answer."""
    store = SQLiteStore(tmp_path / "state.db")
    loose = {"tools": ["tickets/delete"], "min_assurance": "local"}
    first = queue_guard(world, store=store, step_up=[loose])
    old_id = pending_id(first, world, {"id": 1}, tool="tickets/delete")
    first.approvals.answer(
        old_id, approver="user:carol", approve=True, channel="terminal", assurance="local"
    )
    # The same call (same digest) on a guard whose policy was tightened meanwhile.
    strict = queue_guard(world, store=store, step_up=[{**loose, "min_assurance": "signed"}])
    request_id = pending_id(strict, world, {"id": 1}, tool="tickets/delete")
    assert request_id != old_id
    assert strict.approvals.get(request_id).min_assurance == "signed"
    strict.approvals.approve(request_id, world.carol)
    assert submit(strict, world, {"id": 1}, tool="tickets/delete").ran
    store.close()


def test_enforcement_point_step_up_is_demanded_now_not_only_when_filed(world: World) -> None:
    """A 'local' answer does not satisfy a call whose enforcement point asks for 'signed'."""
    guard = queue_guard(world, step_up=[{"tools": ["tickets/delete"], "min_assurance": "local"}])
    request_id = pending_id(guard, world, {"id": 1}, tool="tickets/delete")
    guard.approvals.answer(
        request_id, approver="user:carol", approve=True, channel="terminal", assurance="local"
    )
    fn = RecordingTool()
    with pytest.raises(ApprovalPending) as info:
        guard.call(
            world.delegation,
            "tickets/delete",
            {"id": 1},
            fn,
            holder=world.bot,
            step_up=[("enforcement point", "signed")],
        )
    assert info.value.request_id != request_id
    assert not fn.ran


def _sod_world(world: World, *, on_link: int) -> tuple[Guard, Delegation]:
    """org -> alice -> bot where link ``on_link`` puts an approval rule on ``ops/wipe``;
    alice and carol are approvers with keys in the policy."""
    rule = {"tool": "ops/wipe", "approval": True}
    scopes: list[list[Any]] = [["ops/*"], ["ops/*"]]
    scopes[on_link] = ["ops/*", rule]
    root = Delegation.issue(
        world.org, world.alice, scopes[0], ttl="1d", on_behalf_of="user:alice", clock=world.clock
    )
    chain = root.attenuate(world.alice, world.bot, scopes[1], ttl="1h", clock=world.clock)
    approvers = [
        *world.policy()["approvers"],
        {"id": "user:alice", "public_key": world.alice.principal.public_jwk()},
    ]
    return queue_guard(world, approvers=approvers), chain


def test_self_approval_through_the_chain_is_refused(world: World) -> None:
    """The org demanded approval on alice's own grant: alice may not approve her agent's call."""
    guard, chain = _sod_world(world, on_link=0)
    request_id = pending_id(guard, world, {}, tool="ops/wipe", delegation=chain)
    assert "user:alice" in guard.approvals.get(request_id).excluded
    with pytest.raises(DeniedError) as info:
        guard.approvals.approve(request_id, world.alice)
    assert info.value.reason == "separation_of_duties"
    # A receipt alice signed and planted in the store is refused at use as well.
    row = guard.store.approval_get(request_id)
    assert row is not None
    receipt = sign_receipt(world.alice, req=request_id, call=row.call_digest, now=world.clock.now())
    plant(guard.store, request_id, receipt, world.clock.now())
    assert refused(guard, world, {}, tool="ops/wipe", delegation=chain) == "separation_of_duties"


def test_a_delegator_may_approve_what_she_demanded_of_her_agent(world: World) -> None:
    """Alice put the approval rule on her agent's link: she may approve (the common case)."""
    guard, chain = _sod_world(world, on_link=1)
    request_id = pending_id(guard, world, {}, tool="ops/wipe", delegation=chain)
    guard.approvals.approve(request_id, world.alice)
    assert submit(guard, world, {}, tool="ops/wipe", delegation=chain).ran


def test_people_of_the_chain_may_still_say_no(world: World) -> None:
    """A rejection grants nothing, so an excluded sponsor may reject."""
    guard, chain = _sod_world(world, on_link=0)
    request_id = pending_id(guard, world, {}, tool="ops/wipe", delegation=chain)
    guard.approvals.deny(request_id, world.alice, message="not today")
    assert refused(guard, world, {}, tool="ops/wipe", delegation=chain) == "approval_rejected"


def test_policy_step_up_excludes_everyone_in_the_chain_but_the_root_issuer(world: World) -> None:
    """A policy step_up counts as demanded by link 0; allow_self_approval opts out (weaker)."""
    from agentguard.approval import excluded_approvers

    grants = world.delegation.grants
    assert excluded_approvers(grants, [0]) == {"user:alice", "agent:bot"}
    assert excluded_approvers(grants, [1]) == {"agent:bot"}
    approvers = [
        *world.policy()["approvers"],
        {"id": "user:alice", "public_key": world.alice.principal.public_jwk()},
    ]
    rule = {"tools": ["tickets/close"]}
    strict = queue_guard(world, approvers=approvers, step_up=[rule])
    request_id = pending_id(strict, world, {}, tool="tickets/close")
    with pytest.raises(DeniedError) as info:
        strict.approvals.approve(request_id, world.alice)
    assert info.value.reason == "separation_of_duties"
    weaker = queue_guard(
        world, approvers=approvers, step_up=[{**rule, "allow_self_approval": True}]
    )
    request_id = pending_id(weaker, world, {}, tool="tickets/close")
    weaker.approvals.approve(request_id, world.alice)
    assert submit(weaker, world, {}, tool="tickets/close").ran
