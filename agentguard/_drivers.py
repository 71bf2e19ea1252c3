"""The guard's drivers: run the decision pipeline, wait for answers, run the tool.

:class:`Driver` runs :func:`agentguard._pipeline.run` to its result, either by
blocking this thread (:meth:`Driver.decide`) or on an event loop
(:meth:`Driver.adecide`, whose store and crypto work runs in a worker thread
unless the store is in memory). :meth:`Driver.run` and :meth:`Driver.arun`
run the tool an allow decision let through and write its completion record.

A cancelled caller never leaves half a decision behind: a pipeline step that
is running in a worker thread (it may have spent a call token or an approval
receipt and written an ``allow``) is waited for, and an ``allow`` whose tool
will now never run gets a ``not_run`` completion before the cancellation goes
on. It fails closed: a store, audit or channel error means the tool does not run.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from agentguard import _pipeline, tracing
from agentguard._pipeline import CallRequest, Parts, Result, Wait
from agentguard._waiting import WaitStep, aperform, can_wake, perform, wait_for
from agentguard.approval import ApprovalBook, Channel
from agentguard.audit import AuditLog, completion_record
from agentguard.clock import Clock
from agentguard.decision import Decision, Outcome
from agentguard.delegation import Delegation, budget_warnings, scope_warnings
from agentguard.errors import DeniedError, IssuanceError, StoreError
from agentguard.federation import Federation
from agentguard.keys import Identity, Keyring, Principal
from agentguard.policy import Policy
from agentguard.resolve import guard_identity_in, open_store, policy_home, resolve_home
from agentguard.store.base import Store
from agentguard.verify import Verifier

log = logging.getLogger("agentguard")

_T = TypeVar("_T")

#: The decision that allowed the tool now running (see ``current_decision``).
CURRENT: ContextVar[Decision | None] = ContextVar("agentguard_current_decision", default=None)


class Driver:
    """Drives one guard's pipeline; the :class:`~agentguard.Guard` entry points are thin over it."""

    def __init__(self, parts: Parts, channel: Channel, approval_mode: str) -> None:
        self.parts = parts
        self.channel = channel
        self.approval_mode = approval_mode
        self.offload = parts.store.durability != "memory"

    # -- deciding ------------------------------------------------------------------------
    def decide(self, request: CallRequest) -> Result:
        """Run the pipeline, answering its waits by blocking this thread."""
        pipeline = _pipeline.run(self.parts, request)
        step = advance(pipeline, None, first=True)
        while isinstance(step, Wait):
            with self._traced_wait(step) as waiting:
                try:
                    answer = perform(
                        self._waiting(step), self.channel, self.parts.approvals, self.parts.store
                    )
                except Exception as exc:  # noqa: BLE001 - a store error while polling denies, audited
                    answer = exc
                waiting.answered(answer)
            step = advance(pipeline, answer)
        tracing.decided(step.decision)
        return step

    async def adecide(self, request: CallRequest) -> Result:
        """Run the pipeline without blocking the event loop.

        Its steps (store reads and writes, signatures) run in a worker thread
        unless the store is in memory; waiting for an answer sleeps on the loop.
        """
        pipeline = _pipeline.run(self.parts, request)
        step = await self._astep(pipeline, None, first=True)
        while isinstance(step, Wait):
            with self._traced_wait(step) as waiting:
                try:
                    answer = await aperform(
                        self._waiting(step),
                        self.channel,
                        self.parts.approvals,
                        self.parts.store,
                        offload=self.offload,
                    )
                except Exception as exc:  # noqa: BLE001 - a store error while polling denies, audited
                    answer = exc
                waiting.answered(answer)
            step = await self._astep(pipeline, answer)
        tracing.decided(step.decision)
        return step

    async def _astep(
        self, pipeline: _pipeline.Pipeline, answer: _pipeline.Answer, *, first: bool = False
    ) -> Wait | Result:
        if not self.offload:
            return advance(pipeline, answer, first=first)
        step, cancelled = await finish_in_thread(lambda: advance(pipeline, answer, first=first))
        if cancelled is not None:
            if isinstance(step, Result) and _lets_run(step):
                # The caller is gone: the allow just written is followed by the
                # news that its tool never ran.
                await finish_in_thread(
                    lambda: self.complete(step.decision, time.monotonic(), cancelled, ran=False)
                )
            raise cancelled
        return step

    def _traced_wait(self, wait: Wait) -> tracing.ApprovalWait:
        return tracing.ApprovalWait(
            wait.request.tool, request_id=wait.request.id, channel=self.channel.name
        )

    def _waiting(self, wait: Wait) -> Generator[WaitStep, Any, _pipeline.Answer]:
        return wait_for(
            wait.request,
            deliver=wait.deliver,
            channel=self.channel,
            mode=self.approval_mode,
            clock=self.parts.clock,
            wakeable=can_wake(self.parts.store),
        )

    # -- running ---------------------------------------------------------------------------
    def run(
        self,
        decision: Decision,
        args: dict[str, Any],
        fn: Callable[..., _T],
        failed: Callable[[Any], bool] | None,
    ) -> _T:
        """Run ``fn(**args)`` under ``decision`` and record its completion."""
        started = time.monotonic()
        current = CURRENT.set(decision)
        try:
            result = fn(**args)
        except BaseException as exc:
            self.complete(decision, started, exc)
            raise
        finally:
            CURRENT.reset(current)
        self.complete(decision, started, None, tool_error=_failed(failed, result))
        return result

    async def arun(
        self,
        decision: Decision,
        args: dict[str, Any],
        fn: Callable[..., Awaitable[_T] | _T],
        failed: Callable[[Any], bool] | None,
    ) -> _T:
        """Async twin of :meth:`run`; ``fn`` may be sync or async.

        A caller cancelled while the decision was being made does not run the
        tool: the completion says ``not_run``.
        """
        import anyio

        started = time.monotonic()
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
        except BaseException as exc:
            self.complete(decision, started, exc, ran=False)
            raise
        current = CURRENT.set(decision)
        try:
            result = fn(**args)
            if inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            # Written here and now, even when the caller is being cancelled.
            self.complete(decision, started, exc)
            raise
        finally:
            CURRENT.reset(current)
        tool_error = _failed(failed, result)
        if not self.offload:
            self.complete(decision, started, None, tool_error=tool_error)
            return result
        _, cancelled = await finish_in_thread(
            lambda: self.complete(decision, started, None, tool_error=tool_error)
        )
        if cancelled is not None:
            raise cancelled
        return result

    def complete(
        self,
        decision: Decision,
        started: float,
        error: BaseException | None,
        *,
        tool_error: bool = False,
        ran: bool = True,
    ) -> None:
        """Append the completion record of ``decision`` (logged, not raised, on failure)."""
        if not ran:
            status = "not_run"
        else:
            status = "error" if error is not None else "tool_error" if tool_error else "success"
        clock = self.parts.clock
        record = completion_record(
            decision,
            time=clock.now(),
            status=status,
            error=error,
            duration_ms=(time.monotonic() - started) * 1000,
            enforcement_point=self.parts.enforcement_point,
        )
        try:
            self.parts.audit.append(record, at=clock.now())
        except StoreError:
            # The decision record (the authorisation proof) is already written;
            # the loss of its completion is logged loudly.
            log.error("agentguard: could not record completion of decision %s", decision.id)


async def finish_in_thread(fn: Callable[[], _T]) -> tuple[_T, BaseException | None]:
    """Run ``fn`` in a worker thread to its end, even if the caller is cancelled meanwhile.

    Returns its result and the cancellation that arrived while it ran (for the
    caller to raise once it has put things in order), or ``None``. anyio's
    shielded scope covers anyio cancellation; on asyncio a native
    ``Task.cancel()`` would still abandon the thread, so the worker's future
    is awaited again until it is done.
    """
    import anyio
    import sniffio

    if sniffio.current_async_library() != "asyncio":
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(fn), None

    import asyncio

    # The step runs in this task's context (its trace span, current decision).
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(None, context.run, fn)
    cancelled: BaseException | None = None
    while True:
        try:
            with anyio.CancelScope(shield=True):
                return await asyncio.shield(future), cancelled
        except asyncio.CancelledError as exc:
            if future.cancelled():  # the executor is shutting down: nothing ran
                raise
            if not future.done():
                cancelled = exc
                continue
            # Done while the cancellation was delivered: its outcome stands.
            return future.result(), exc


class Assembly(NamedTuple):
    """What :func:`assemble` chose and built for a guard."""

    home: Path | None
    keyring: Keyring | None
    identity: Identity
    parts: Parts


def assemble(
    policy: Policy,
    clock: Clock,
    *,
    home: str | Path | None,
    store: Store | None,
    guard_identity: Identity | None,
    trusted_roots: Iterable[Principal],
    enforcement_point: str,
) -> Assembly:
    """Choose a guard's home, store and key, and build the parts it decides with.

    Raises:
        ConfigError: a key cannot be loaded.
        StoreError: the store cannot be opened.
    """
    if store is not None and home is None:
        # A store given as is: only the policy's own storage.home names a home
        # (for the guard's key and the audit side file).
        chosen = policy_home(policy)
    else:
        chosen = resolve_home(home, policy, only_existing_default=True)
    keyring = Keyring(chosen / "keys") if chosen is not None else None
    store = store if store is not None else open_store(chosen, policy)
    identity = guard_identity or guard_identity_in(keyring, policy)
    verifier = Verifier(
        [*policy.root_keys(), *trusted_roots],
        revocations=store,
        replay=store,
        clock=clock,
        leeway=policy.limits.leeway,
        max_links=policy.limits.max_chain_length,
        redact=policy.redact,
        # Federation keys (issue 16): roots only within the federation rules.
        bounded_roots=Federation.from_policy(policy, guard_key=identity.principal).bounded_roots(),
    )
    side = chosen / "audit-checkpoints.jsonl" if chosen is not None else None
    approvals = ApprovalBook(
        store, policy=policy, guard_identity=identity, clock=clock, keyring=keyring
    )
    parts = Parts(
        policy=policy,
        verifier=verifier,
        store=store,
        approvals=approvals,
        audit=AuditLog(store, identity, side_file=side, trusted_keys=approvals.guard_keys),
        clock=clock,
        enforcement_point=enforcement_point,
    )
    return Assembly(chosen, keyring, identity, parts)


def check_issuance(policy: Policy, delegation: Delegation) -> None:
    """Check a grant the guard issues against the policy's limits; log its scope warnings.

    Raises:
        IssuanceError: the grant breaks a policy limit.
    """
    try:
        policy.check_limits(delegation)
    except DeniedError as exc:
        raise IssuanceError(exc.explanation) from None
    for text in [*scope_warnings(delegation.leaf.scope), *budget_warnings(delegation)]:
        log.warning("grant %s: %s", delegation.leaf.link_id[:12], text)


def spend_key(scope: str, key: str) -> str:
    """The nonce-table key of ``Guard.spend_once``'s ``key`` in ``scope``.

    Raises:
        ValueError: ``scope`` is empty or holds ``/`` or ``:``.
    """
    # No "/" or ":": scoped keys share the nonce table with call tokens ("issuer/jti",
    # where every issuer id holds a ":"), so they can never meet one.
    if not scope or "/" in scope or ":" in scope:
        raise ValueError("scope must be a non-empty name without '/' or ':'")
    return f"{scope}/{key}"


def advance(
    pipeline: _pipeline.Pipeline, answer: _pipeline.Answer, *, first: bool = False
) -> Wait | Result:
    """One step of the pipeline: the next wait, or the result (never StopIteration)."""
    try:
        return next(pipeline) if first else pipeline.send(answer)
    except StopIteration as stop:
        result: Result = stop.value
        return result


def enforced(result: Result) -> tuple[Decision, dict[str, Any]]:
    """The allow decision and the arguments to run with, or the refusal raised."""
    if result.error is not None:
        raise result.error
    return result.decision, result.args


def _lets_run(result: Result) -> bool:
    """Whether the caller would now run the tool (so a completion is owed)."""
    decision = result.decision
    if result.error is not None or decision.dry_run:
        return False
    return decision.outcome == Outcome.ALLOW or decision.shadow


def _failed(failed: Callable[[Any], bool] | None, result: Any) -> bool:
    """Whether the caller's ``failed`` test says the tool reported an error (never raises)."""
    if failed is None:
        return False
    try:
        return bool(failed(result))
    except Exception:  # noqa: BLE001 - a broken test must not turn a completed call into an exception
        log.warning("agentguard: the 'failed' test raised; completion recorded as success")
        return False
