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

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

from agentguard import tracing
from agentguard._drivers import CURRENT, Driver, assemble, check_issuance, enforced, spend_key
from agentguard._pipeline import CallRequest, Demand
from agentguard.approval import Channel
from agentguard.clock import Clock, SystemClock
from agentguard.decision import Decision
from agentguard.delegation import Delegation, ScopeSpec
from agentguard.errors import ConfigError
from agentguard.keys import Identity, Principal
from agentguard.policy import Policy
from agentguard.resolve import (
    POLICY_FILE,
    channel_for,
    default_home,
    guard_policy,
)
from agentguard.store.base import GrantRecord, RevocationKind, Store
from agentguard.store.memory import MemoryStore
from agentguard.verify import VerifiedChain

__all__ = [
    "POLICY_FILE",
    "Decision",
    "Demand",
    "Guard",
    "check_limits",
    "current_decision",
    "default_home",
]

log = logging.getLogger("agentguard")


def current_decision() -> Decision | None:
    """The decision that allowed the tool now running under :meth:`Guard.call`/``acall``.

    Enforcement points use it inside the function they hand to the guard, e.g.
    the MCP proxy forwards ``approval_receipt`` to agentguard-aware upstreams.
    ``None`` outside a guarded call.
    """
    return CURRENT.get()


_T = TypeVar("_T")


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
        self.policy = guard_policy(policy)
        built = assemble(
            self.policy,
            self.clock,
            home=home,
            store=store,
            guard_identity=guard_identity,
            trusted_roots=trusted_roots,
            enforcement_point=enforcement_point,
        )
        self.home, self.keyring, self.guard_identity = built.home, built.keyring, built.identity
        parts = built.parts
        self.store, self.verifier = parts.store, parts.verifier
        self.audit, self.approvals = parts.audit, parts.approvals
        mode = approval_mode or self.policy.approval.mode
        if mode not in ("block", "raise"):
            raise ConfigError("approval_mode must be 'block' or 'raise'")
        self.enforcement_point = enforcement_point
        self._driver = Driver(parts, approver or channel_for(self.policy), mode)
        log.info("agentguard guard using %s", self.describe())

    @classmethod
    def in_memory(
        cls, policy: Policy | str | Path | Mapping[str, Any] | None = None, **options: Any
    ) -> Guard:
        """A guard that keeps everything in memory and reads nothing it was not given.

        Unlike ``Guard()``, it never looks at ``$AGENTGUARD_HOME``, ``./.agentguard``
        or ``./agentguard.yaml`` and ignores the policy's ``storage.home``: no key or
        state file is read or written. ``options``: :class:`Guard`'s other keywords.
        """
        if "home" in options or "store" in options:
            raise TypeError("Guard.in_memory() takes no home or store")
        return cls(guard_policy(policy, look_around=False), store=MemoryStore(), **options)

    @property
    def channel(self) -> Channel:
        """The approval channel requests are delivered to."""
        return self._driver.channel

    @channel.setter
    def channel(self, channel: Channel) -> None:
        self._driver.channel = channel

    @property
    def approval_mode(self) -> str:
        """``block`` (wait for the answer) or ``raise`` (:class:`ApprovalPending` at once)."""
        return self._driver.approval_mode

    def describe(self) -> str:
        """Where state lives (home, store) and where the policy came from."""
        home = f"home {self.home}" if self.home is not None else "no home (keys in memory)"
        store = self.store.location
        where = "in-memory stores (nothing persists)" if store == "memory" else f"state in {store}"
        origin = self.policy.base_dir or "embedded default policy"
        return f"{home}; {where}; policy from {origin}"

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
        check_issuance(self.policy, delegation)
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
        check_issuance(self.policy, child)
        self.record(child)
        return child

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
        if not ttl > 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = self.clock.now()
        return self.store.consume(spend_key(scope, key), now + ttl, now=now)

    def was_spent(self, scope: str, key: str) -> bool:
        """Whether :meth:`spend_once` spent ``key`` of ``scope`` (and it is still remembered).

        Raises:
            ValueError: as :meth:`spend_once`.
            StoreError: the store failed (treat as "spent": fail closed).
        """
        return self.store.is_consumed(spend_key(scope, key), now=self.clock.now())

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
            return self._driver.decide(request).decision

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
            return (await self._driver.adecide(request)).decision

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
            result = self._driver.decide(request)
        # Raised outside the authorize span: a refusal is the tool span's error.
        return enforced(result)

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
            result = await self._driver.adecide(request)
        return enforced(result)

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
            return self._driver.run(decision, effective, fn, failed)

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
            return await self._driver.arun(decision, effective, fn, failed)

    def close(self) -> None:
        """Release the store (after the audit log's newest signed head is written out)."""
        self.audit.close()
        self.store.close()


def check_limits(policy: Policy, delegation: Delegation) -> None:
    """:meth:`Policy.check_limits` (``DeniedError``, reason ``policy_limit``, names the link)."""
    policy.check_limits(delegation)
