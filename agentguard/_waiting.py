"""Waiting for a human's answer, written once for the sync and async drivers.

:func:`wait_for` is a generator of the operations a wait needs: deliver the
request to the channel, read its row from the store, sleep. The guard's sync
driver performs them by blocking; its async driver awaits them (store reads in
a worker thread). An operation that fails is thrown back into the generator,
which turns it into the answer (a refusal): it fails closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any, NamedTuple

from agentguard.approval import ApprovalBook, ApprovalRequest, Channel, no_approver_text
from agentguard.clock import Clock
from agentguard.decision import Reason
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.policy import assurance_at_least
from agentguard.store.base import ApprovalRow, Store

__all__ = [
    "Deliver",
    "Read",
    "Remind",
    "Sleep",
    "WaitStep",
    "Who",
    "aperform",
    "can_wake",
    "perform",
    "wait_for",
]

log = logging.getLogger("agentguard")

#: First and longest pause between two reads of a pending request (seconds).
FIRST_POLL = 0.02
LONGEST_POLL = 0.25
#: Longest wait between two reads on a store that wakes its waiters when a request is
#: answered from any process (PostgreSQL's LISTEN/NOTIFY): a safety net, not a poll.
WOKEN_POLL = 5.0


class Deliver(NamedTuple):
    """Hand ``request`` to the channel (a terminal prompt, a webhook, a queue)."""

    request: ApprovalRequest


class Remind(NamedTuple):
    """Show ``request`` again on a channel that can (a notebook card): the call joined a
    request that is pending already, so nothing new was delivered."""

    request: ApprovalRequest


class Read(NamedTuple):
    """Read the request's row from the store; the reply is the row (or ``None``)."""

    request_id: str


class Who(NamedTuple):
    """Ask who could approve ``request``; the reply is the list of approver ids and the
    line that tells a waiting caller who can answer and how."""

    request: ApprovalRequest


class Sleep(NamedTuple):
    """Pause before the next read; with ``request_id``, a store that can be woken by the
    request's answer (``approval_wait``) is waited on instead, for at most ``seconds``."""

    seconds: float
    request_id: str | None = None


WaitStep = Deliver | Remind | Read | Who | Sleep
Answer = ApprovalRow | BaseException | None


def wait_for(
    request: ApprovalRequest,
    *,
    deliver: bool,
    channel: Channel,
    mode: str,
    clock: Clock,
    wakeable: bool = False,
) -> Generator[WaitStep, Any, Answer]:
    """The operations of one wait; returns the answered row, ``None`` on timeout, or the
    refusal (an exception) that stands for the answer.

    In ``raise`` mode a request that is still pending returns
    :class:`~agentguard.errors.ApprovalPending` at once instead of waiting. With
    ``wakeable`` (the store has ``approval_wait``) each pause waits for the answer's
    notification, up to :data:`WOKEN_POLL`, instead of polling.
    """
    approvers: list[str] = []
    how = f"request {request.id} ({request.tool})"
    if channel.name != "none":  # NoChannel refuses on delivery, as approval_unavailable
        try:
            approvers, how = yield Who(request)
        except Exception as exc:  # noqa: BLE001 - cannot tell who may answer: refuse
            return exc
        if not approvers:
            return DeniedError(no_approver_text(request), reason=Reason.NO_APPROVER)
    if deliver:
        weak = channel_too_weak(channel, request)
        if weak is not None:
            return weak
        try:
            yield Deliver(request)
        except Exception as exc:  # noqa: BLE001 - any channel failure denies (fail closed)
            return exc
    elif _can_remind(channel):
        try:
            yield Remind(request)
        except Exception as exc:  # noqa: BLE001 - any channel failure denies (fail closed)
            return exc
    row = yield Read(request.id)
    if mode == "raise" and (row is None or row.status == "pending"):
        return ApprovalPending(
            f"approval request {request.id} for {request.tool} is pending; {how}",
            request_id=request.id,
        )
    if row is not None and row.status == "pending":
        left = max(0.0, request.deadline - clock.now())
        log.warning("agentguard: waiting up to %s for approval; %s", _span(left), how)
    deadline = time.monotonic() + max(0.0, request.deadline - clock.now())
    delay = FIRST_POLL
    while row is not None and row.status == "pending":
        now = time.monotonic()
        if now >= deadline or clock.now() >= request.deadline:
            return None
        if wakeable:
            yield Sleep(min(WOKEN_POLL, deadline - now), request.id)
        else:
            yield Sleep(delay)
            delay = min(delay * 2, LONGEST_POLL)
        row = yield Read(request.id)
    answer: ApprovalRow | None = row
    return answer


def _who_and_how(book: ApprovalBook, request: ApprovalRequest) -> tuple[list[str], str]:
    approvers = book.who_may_approve(request)
    return approvers, book.how_to_answer(request, approvers)


def _can_remind(channel: Channel) -> bool:
    return callable(getattr(channel, "remind", None)) or callable(getattr(channel, "aremind", None))


def _span(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 60:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole}s" if whole >= 10 else f"{seconds:.1f}s"


def channel_too_weak(channel: Channel, request: ApprovalRequest) -> DeniedError | None:
    """A refusal when ``channel`` answers at less assurance than ``request`` needs."""
    level = getattr(channel, "assurance", None)
    if isinstance(level, str) and not assurance_at_least(level, request.min_assurance):
        return DeniedError(
            f"the {channel.name} channel answers at assurance '{level}', but this "
            f"call needs '{request.min_assurance}' (configure a stronger channel, or lower "
            "the rule's min_assurance in the policy)",
            reason=Reason.APPROVAL_ASSURANCE,
        )
    return None


def perform(
    steps: Generator[WaitStep, Any, Answer], channel: Channel, book: ApprovalBook, store: Store
) -> Answer:
    """Run the operations of a wait by blocking this thread."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            answer: Answer = stop.value
            return answer
        reply, error = None, None
        try:
            if isinstance(op, Deliver):
                channel.deliver(op.request, book)
            elif isinstance(op, Remind):
                remind = getattr(channel, "remind", None)
                if remind is not None:
                    remind(op.request, book)
            elif isinstance(op, Read):
                reply = store.approval_get(op.request_id)
            elif isinstance(op, Who):
                reply = _who_and_how(book, op.request)
            else:
                wake = _waker(store, op)
                if wake is not None:
                    wake(op.request_id, op.seconds)
                else:
                    time.sleep(op.seconds)
        except Exception as exc:  # noqa: BLE001 - handed back to the wait, which fails closed
            error = exc


async def aperform(
    steps: Generator[WaitStep, Any, Answer],
    channel: Channel,
    book: ApprovalBook,
    store: Store,
    *,
    offload: bool,
) -> Answer:
    """Run the operations of a wait on an event loop (store reads in a worker thread)."""
    import anyio

    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = steps.throw(error) if error is not None else steps.send(reply)
        except StopIteration as stop:
            answer: Answer = stop.value
            return answer
        reply, error = None, None
        try:
            if isinstance(op, Deliver):
                adeliver = getattr(channel, "adeliver", None)
                if adeliver is not None:
                    await adeliver(op.request, book)
                else:
                    await anyio.to_thread.run_sync(channel.deliver, op.request, book)
            elif isinstance(op, Remind):
                aremind = getattr(channel, "aremind", None)
                remind = getattr(channel, "remind", None)
                if aremind is not None:
                    await aremind(op.request, book)
                elif remind is not None:
                    await anyio.to_thread.run_sync(remind, op.request, book)
            elif isinstance(op, Read):
                if offload:
                    reply = await anyio.to_thread.run_sync(store.approval_get, op.request_id)
                else:
                    reply = store.approval_get(op.request_id)
            elif isinstance(op, Who):
                if offload:
                    reply = await anyio.to_thread.run_sync(_who_and_how, book, op.request)
                else:
                    reply = _who_and_how(book, op.request)
            else:
                wake = _waker(store, op)
                if wake is None:
                    await anyio.sleep(op.seconds)
                else:
                    # A cancelled caller does not wait for the thread (which ends by itself).
                    await anyio.to_thread.run_sync(
                        wake, op.request_id, op.seconds, abandon_on_cancel=True
                    )
        except Exception as exc:  # noqa: BLE001 - handed back to the wait, which fails closed
            error = exc


def can_wake(store: Store) -> bool:
    """Whether ``store`` can block until a request is answered (``approval_wait``)."""
    return callable(getattr(store, "approval_wait", None))


def _waker(store: Store, op: Sleep) -> Any:
    """The store's ``approval_wait`` when ``op`` may use it, else ``None``."""
    if op.request_id is None or not can_wake(store):
        return None
    return store.approval_wait  # type: ignore[attr-defined]
