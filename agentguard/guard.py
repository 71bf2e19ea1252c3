"""The guard: the one decision and enforcement point (DESIGN §4).

:class:`Guard` holds the parts (policy, verifier, store, approval book, audit
log, channel) and offers the entry points; the decision itself is the pipeline
in :mod:`agentguard._pipeline`, a generator that yields when it needs a human's
answer. The entry points drive it synchronously (:meth:`Guard.check`,
:meth:`Guard.authorize`, :meth:`Guard.call`) or asynchronously (``acheck``,
``aauthorize``, ``acall``); the async drivers run the pipeline's store and
crypto work in a worker thread, so a slow store never stalls the event loop.

It fails closed: a store, audit or channel error means the tool does not run.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar, overload

from agentguard import _pipeline, tracing
from agentguard._pipeline import CallRequest, Demand, Result, Wait
from agentguard._waiting import WaitStep, aperform, perform, wait_for
from agentguard.approval import ApprovalBook, Channel
from agentguard.audit import AuditLog, completion_record
from agentguard.clock import Clock, SystemClock
from agentguard.decision import Decision
from agentguard.delegation import Delegation, ScopeSpec, scope_warnings
from agentguard.errors import (
    ConfigError,
    DeniedError,
    IssuanceError,
    StoreError,
)
from agentguard.keys import Identity, Keyring, Principal
from agentguard.policy import Policy, load_policy
from agentguard.resolve import (
    DEFAULT_HOME,
    channel_for,
    guard_identity_in,
    open_store,
    policy_home,
    resolve_home,
)
from agentguard.store.base import GrantRecord, RevocationKind, Store
from agentguard.verify import VerifiedChain, Verifier

__all__ = ["Decision", "Demand", "Guard", "check_limits", "current_decision", "default_home"]

log = logging.getLogger("agentguard")

_CURRENT: ContextVar[Decision | None] = ContextVar("agentguard_current_decision", default=None)


def current_decision() -> Decision | None:
    """The decision that allowed the tool now running under :meth:`Guard.call`/``acall``.

    Enforcement points use it inside the function they hand to the guard, e.g.
    the MCP proxy forwards ``approval_receipt`` to agentguard-aware upstreams.
    ``None`` outside a guarded call.
    """
    return _CURRENT.get()


_T = TypeVar("_T")

POLICY_FILE = "agentguard.yaml"


def default_home(start: Path | None = None) -> Path | None:
    """The state directory a bare ``Guard()`` uses: ``$AGENTGUARD_HOME`` or ``./.agentguard``.

    Returns ``None`` when neither exists (the guard then runs in memory).
    """
    env = os.environ.get("AGENTGUARD_HOME")
    if env:
        return Path(env)
    candidate = (start or Path.cwd()) / DEFAULT_HOME
    return candidate if candidate.is_dir() else None


class Guard:
    """Verifies, decides, asks for approval, audits and runs tool calls.

    Args:
        policy: a :class:`Policy`, a path to ``agentguard.yaml``, a mapping, or
            ``None`` for ``./agentguard.yaml`` when present, else defaults.
        home: the state directory (keys, ``state.db``); default
            ``$AGENTGUARD_HOME`` or ``./.agentguard`` when it exists, else none
            (everything in memory).
        store: overrides the store chosen from ``home``.
        clock: time source (inject a :class:`~agentguard.clock.ManualClock` in tests).
        trusted_roots: principals trusted as roots in addition to the policy's.
        approver: the approval channel; default from the policy (``none``
            denies with ``approval_unavailable``).
        approval_mode: ``block`` waits for the answer until the deadline;
            ``raise`` raises :class:`ApprovalPending` at once.
        enforcement_point: recorded in audit and traces (``python``,
            ``langchain``, ``mcp_proxy``).

    Raises:
        ConfigError: the policy or a key cannot be loaded.
        StoreError: the store cannot be opened.
    """

    def __init__(
        self,
        policy: Policy | str | Path | Mapping[str, Any] | None = None,
        *,
        home: str | Path | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        trusted_roots: Iterable[Principal] = (),
        approver: Channel | None = None,
        approval_mode: str | None = None,
        enforcement_point: str = "python",
        guard_identity: Identity | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        if policy is None and Path(POLICY_FILE).is_file():
            policy = Path(POLICY_FILE)
        self.policy = policy if isinstance(policy, Policy) else _load(policy)
        if store is not None and home is None:
            # A store given as is: only the policy's own storage.home names a home
            # (for the guard's key and the audit side file).
            home_path = policy_home(self.policy)
        else:
            home_path = resolve_home(home, self.policy, only_existing_default=True)
        self.home = home_path
        self.keyring = Keyring(home_path / "keys") if home_path is not None else None
        self.store: Store = store if store is not None else open_store(home_path, self.policy)
        self.guard_identity = guard_identity or guard_identity_in(self.keyring, self.policy)
        roots = [*self.policy.root_principals(), *trusted_roots]
        self.verifier = Verifier(
            roots,
            revocations=self.store,
            replay=self.store,
            clock=self.clock,
            leeway=self.policy.limits.leeway,
            max_links=self.policy.limits.max_chain_length,
        )
        side = home_path / "audit-checkpoints.jsonl" if home_path is not None else None
        self.audit = AuditLog(self.store, self.guard_identity, side_file=side)
        self.approvals = ApprovalBook(
            self.store,
            policy=self.policy,
            guard_identity=self.guard_identity,
            clock=self.clock,
            keyring=self.keyring,
        )
        self.channel: Channel = approver or channel_for(self.policy)
        self.approval_mode = approval_mode or self.policy.approval.mode
        if self.approval_mode not in ("block", "raise"):
            raise ConfigError("approval_mode must be 'block' or 'raise'")
        self.enforcement_point = enforcement_point
        self._parts = _pipeline.Parts(
            policy=self.policy,
            verifier=self.verifier,
            store=self.store,
            approvals=self.approvals,
            audit=self.audit,
            clock=self.clock,
            enforcement_point=enforcement_point,
        )
        log.info("agentguard guard using %s", self.describe())

    def describe(self) -> str:
        """Where state lives: ``memory`` or the store path (with the policy's origin)."""
        where = (
            "in-memory stores (nothing persists)"
            if self.store.location == "memory"
            else (f"state in {self.store.location}")
        )
        origin = self.policy.base_dir or "embedded default policy"
        return f"{where}; policy from {origin}"

    def __repr__(self) -> str:
        return f"<Guard {self.describe()}>"

    # -- grants -------------------------------------------------------------------
    def record(self, delegation: Delegation) -> None:
        """Record every link of ``delegation`` in the issuer-side grant inventory."""
        for record in GrantRecord.of_chain(delegation):
            self.store.record_grant(record)

    def issue(
        self, issuer: Identity, subject: Principal | Identity, scope: ScopeSpec, **kw: Any
    ) -> Delegation:
        """:meth:`Delegation.issue` checked against the policy's limits and recorded.

        Raises:
            IssuanceError: the grant is malformed or breaks a policy limit.
        """
        delegation = Delegation.issue(issuer, subject, scope, clock=self.clock, **kw)
        self._check_issuance(delegation)
        self.record(delegation)
        return delegation

    def attenuate(
        self,
        delegation: Delegation,
        holder: Identity,
        subject: Principal | Identity,
        scope: ScopeSpec,
        **kw: Any,
    ) -> Delegation:
        """:meth:`Delegation.attenuate` checked against the policy's limits and recorded.

        Raises:
            IssuanceError: the child would widen its parent or break a policy limit.
        """
        child = delegation.attenuate(holder, subject, scope, clock=self.clock, **kw)
        self._check_issuance(child)
        self.record(child)
        return child

    def _check_issuance(self, delegation: Delegation) -> None:
        try:
            self.policy.check_limits(delegation)
        except DeniedError as exc:
            raise IssuanceError(exc.explanation) from None
        for text in scope_warnings(delegation.leaf.scope):
            log.warning("grant %s: %s", delegation.leaf.link_id[:12], text)

    def grants(self) -> list[GrantRecord]:
        """The grant inventory with last use and status."""
        return self.store.grant_records()

    def revoke(self, kind: RevocationKind, value: str, *, reason: str = "") -> None:
        """Revoke a link id, key thumbprint or principal id; effective for every later call."""
        if kind not in ("link", "key", "principal"):
            raise ValueError("kind must be link, key or principal")
        self.store.revoke(kind, value, reason=reason, at=self.clock.now())
        self.verifier.clear_cache()

    # -- for enforcement points ----------------------------------------------------------
    def verify_chain(self, delegation: str | Delegation) -> VerifiedChain:
        """Verify a presented chain now (trust, signatures, windows, revocation), no call.

        Enforcement points use it to show a caller only what its chain can reach.

        Raises:
            DeniedError: the chain is not valid now.
        """
        return self.verifier.verify_chain(delegation)

    def spend_once(self, scope: str, key: str, *, ttl: float) -> bool:
        """Mark the single-use value ``key`` of ``scope`` spent: ``True`` the first time.

        Enforcement points keep their own single-use values here (the MCP
        proxy's sealed step-up state, a LangGraph step's calls), apart from the
        guard's call-token nonces: ``scope`` names the kind of value.

        Raises:
            ValueError: an empty ``scope``, one containing ``/`` or ``:``, or a
                ``ttl`` that is not positive.
            StoreError: the store failed (treat as "not first": fail closed).
        """
        _check_scope(scope)
        if not ttl > 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = self.clock.now()
        return self.store.consume(f"{scope}/{key}", now + ttl, now=now)

    def was_spent(self, scope: str, key: str) -> bool:
        """Whether :meth:`spend_once` spent ``key`` of ``scope`` (and it is still remembered).

        Raises:
            ValueError: as :meth:`spend_once`.
            StoreError: the store failed (treat as "spent": fail closed).
        """
        _check_scope(scope)
        return self.store.is_consumed(f"{scope}/{key}", now=self.clock.now())

    # -- drivers -------------------------------------------------------------------------
    def _decide(self, request: CallRequest) -> Result:
        """Run the pipeline, answering its waits by blocking this thread."""
        pipeline = _pipeline.run(self._parts, request)
        step = _advance(pipeline, None, first=True)
        while isinstance(step, Wait):
            with self._traced_wait(step) as waiting:
                try:
                    answer = self._wait(step)
                except Exception as exc:  # noqa: BLE001 - a store error while polling denies, audited
                    answer = exc
                waiting.answered(answer)
            step = _advance(pipeline, answer)
        tracing.decided(step.decision)
        return step

    async def _adecide(self, request: CallRequest) -> Result:
        """Run the pipeline without blocking the event loop.

        The pipeline's own work (store reads and writes, signatures) runs in a
        worker thread unless the store is in memory; waiting for an answer
        sleeps on the loop.
        """
        import anyio

        pipeline = _pipeline.run(self._parts, request)
        offload = self.store.durability != "memory"

        async def advance(answer: _pipeline.Answer, *, first: bool = False) -> Wait | Result:
            if offload:
                # Shielded: a step that spends a token or a receipt and writes its
                # record is not abandoned half-way by an anyio cancellation.
                with anyio.CancelScope(shield=True):
                    return await anyio.to_thread.run_sync(
                        lambda: _advance(pipeline, answer, first=first)
                    )
            return _advance(pipeline, answer, first=first)

        step = await advance(None, first=True)
        while isinstance(step, Wait):
            with self._traced_wait(step) as waiting:
                try:
                    answer = await self._await(step, offload)
                except Exception as exc:  # noqa: BLE001 - a store error while polling denies, audited
                    answer = exc
                waiting.answered(answer)
            step = await advance(answer)
        tracing.decided(step.decision)
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
            clock=self.clock,
        )

    def _wait(self, wait: Wait) -> _pipeline.Answer:
        """Deliver and poll for an answer, blocking this thread."""
        return perform(self._waiting(wait), self.channel, self.approvals, self.store)

    async def _await(self, wait: Wait, offload: bool) -> _pipeline.Answer:
        """Async twin of :meth:`_wait`: sleeps on the loop, store reads off it."""
        steps = self._waiting(wait)
        return await aperform(steps, self.channel, self.approvals, self.store, offload=offload)

    def _complete(
        self,
        decision: Decision,
        started: float,
        error: BaseException | None,
        *,
        tool_error: bool = False,
    ) -> None:
        status = "error" if error is not None else "tool_error" if tool_error else "success"
        record = completion_record(
            decision,
            time=self.clock.now(),
            status=status,
            error=error,
            duration_ms=(time.monotonic() - started) * 1000,
            enforcement_point=self.enforcement_point,
        )
        try:
            self.audit.append(record, at=self.clock.now())
        except StoreError:
            # The decision record (the authorisation proof) is already written;
            # the tool has run, so the loss of its completion is logged loudly.
            log.error("agentguard: could not record completion of decision %s", decision.id)

    async def _acomplete(
        self,
        decision: Decision,
        started: float,
        error: BaseException | None,
        *,
        tool_error: bool = False,
    ) -> None:
        """:meth:`_complete` off the event loop (unless the store is in memory)."""
        if self.store.durability == "memory":
            self._complete(decision, started, error, tool_error=tool_error)
            return
        import anyio

        # Shielded: a caller cancelled after the tool ran still gets its completion.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                lambda: self._complete(decision, started, error, tool_error=tool_error)
            )

    # -- public API ------------------------------------------------------------------------
    def check(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        request_approval: bool = False,
        step_up: Sequence[tuple[str, str]] = (),
    ) -> Decision:
        """Decide without running anything (a dry run, recorded as such in the audit log).

        Never burns a call token nonce or an approval receipt. With
        ``request_approval`` an approval-required call files a pending request
        whose id is in the decision. ``step_up`` adds approval demands from the
        enforcement point, as ``(description, minimum assurance)`` pairs (the
        MCP proxy derives them from tool annotations); like every approval
        demand they only ever restrict.
        """
        request = CallRequest(
            delegation, tool, args or {}, holder, call_token, call_id, step_up,
            enforce=False, request_approval=request_approval,
        )  # fmt: skip
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            return self._decide(request).decision

    async def acheck(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        request_approval: bool = False,
        step_up: Sequence[tuple[str, str]] = (),
    ) -> Decision:
        """Async twin of :meth:`check`."""
        request = CallRequest(
            delegation, tool, args or {}, holder, call_token, call_id, step_up,
            enforce=False, request_approval=request_approval,
        )  # fmt: skip
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            return (await self._adecide(request)).decision

    def authorize(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
    ) -> tuple[Decision, dict[str, Any]]:
        """Enforce the decision for a call the caller runs itself.

        Returns the allow decision and the arguments to run with (an approver
        may have edited them). Prefer :meth:`call`, which also records completion.

        Raises:
            DeniedError: the call may not run (``ApprovalPending`` when waiting).
        """
        request = CallRequest(delegation, tool, args or {}, holder, call_token, call_id, step_up)
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            result = self._decide(request)
        # Raised outside the authorize span: a refusal is the tool span's error.
        return _enforced(result)

    async def aauthorize(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any] | None = None,
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
    ) -> tuple[Decision, dict[str, Any]]:
        """Async twin of :meth:`authorize`."""
        request = CallRequest(delegation, tool, args or {}, holder, call_token, call_id, step_up)
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            result = await self._adecide(request)
        return _enforced(result)

    def call(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., _T],
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
        failed: Callable[[Any], bool] | None = None,
    ) -> _T:
        """Run ``fn(**args)`` if and only if the guard allows this call.

        ``failed`` tells from the result whether the tool reported an error
        without raising (an MCP ``isError`` result, say); the completion record
        then says ``tool_error``.

        Raises:
            DeniedError: the call was refused; ``fn`` did not run.
            ApprovalPending: approval is needed and not yet given; submit the
                same call again once it is approved.
        """
        with tracing.ToolCall(
            tool,
            call_id=call_id,
            enforcement_point=self.enforcement_point,
            args=args,
            redact_fields=self.policy.redact,
        ):
            decision, effective = self.authorize(
                delegation, tool, args, holder=holder, call_token=call_token, call_id=call_id,
                step_up=step_up,
            )  # fmt: skip
            started = time.monotonic()
            current = _CURRENT.set(decision)
            try:
                result = fn(**effective)
            except BaseException as exc:
                self._complete(decision, started, exc)
                raise
            finally:
                _CURRENT.reset(current)
            self._complete(decision, started, None, tool_error=_failed(failed, result))
            return result

    # Overloads so that type checkers infer the result of an async ``fn`` (a
    # single ``Callable[..., Awaitable[_T] | _T]`` infers ``Never`` for it).
    @overload
    async def acall(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., Awaitable[_T]],
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
        failed: Callable[[Any], bool] | None = None,
    ) -> _T: ...

    @overload
    async def acall(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., _T],
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
        failed: Callable[[Any], bool] | None = None,
    ) -> _T: ...

    async def acall(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any],
        fn: Callable[..., Awaitable[_T] | _T],
        *,
        holder: Identity | None = None,
        call_token: str | None = None,
        call_id: str | None = None,
        step_up: Sequence[tuple[str, str]] = (),
        failed: Callable[[Any], bool] | None = None,
    ) -> _T:
        """Async twin of :meth:`call`; ``fn`` may be sync or async.

        Raises:
            DeniedError: the call was refused; ``fn`` did not run.
            ApprovalPending: approval is needed and not yet given.
        """
        with tracing.ToolCall(
            tool,
            call_id=call_id,
            enforcement_point=self.enforcement_point,
            args=args,
            redact_fields=self.policy.redact,
        ):
            decision, effective = await self.aauthorize(
                delegation, tool, args, holder=holder, call_token=call_token, call_id=call_id,
                step_up=step_up,
            )  # fmt: skip
            started = time.monotonic()
            current = _CURRENT.set(decision)
            try:
                result = fn(**effective)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:
                # Written here and now, even when the caller is being cancelled.
                self._complete(decision, started, exc)
                raise
            finally:
                _CURRENT.reset(current)
            await self._acomplete(decision, started, None, tool_error=_failed(failed, result))
            return result

    def close(self) -> None:
        """Release the store (after the audit log's newest signed head is written out)."""
        self.audit.close()
        self.store.close()


def _load(policy: str | Path | Mapping[str, Any] | None) -> Policy:
    if policy is None:
        return Policy()
    return load_policy(policy)


def _advance(
    pipeline: _pipeline.Pipeline, answer: _pipeline.Answer, *, first: bool = False
) -> Wait | Result:
    """One step of the pipeline: the next wait, or the result (never StopIteration)."""
    try:
        return next(pipeline) if first else pipeline.send(answer)
    except StopIteration as stop:
        result: Result = stop.value
        return result


def _check_scope(scope: str) -> None:
    # No "/" or ":": scoped keys share the nonce table with call tokens ("issuer/jti",
    # where every issuer id holds a ":"), so they can never meet one.
    if not scope or "/" in scope or ":" in scope:
        raise ValueError("scope must be a non-empty name without '/' or ':'")


def _enforced(result: Result) -> tuple[Decision, dict[str, Any]]:
    if result.error is not None:
        raise result.error
    return result.decision, result.args


def _failed(failed: Callable[[Any], bool] | None, result: Any) -> bool:
    """Whether the caller's ``failed`` test says the tool reported an error (never raises)."""
    if failed is None:
        return False
    try:
        return bool(failed(result))
    except Exception:  # noqa: BLE001 - a broken test must not turn a completed call into an exception
        log.warning("agentguard: the 'failed' test raised; completion recorded as success")
        return False


def check_limits(policy: Policy, delegation: Delegation) -> None:
    """Check a chain against the policy's limits; see :meth:`Policy.check_limits`.

    Raises:
        DeniedError: reason ``policy_limit``, naming the link that breaks a limit.
    """
    policy.check_limits(delegation)
