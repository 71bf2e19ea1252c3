"""The guard: the one decision and enforcement point (DESIGN §4).

The pipeline is written once, as a generator that yields when it needs a human
approval and receives the answer; :meth:`Guard.check`/:meth:`Guard.acheck`
and :meth:`Guard.call`/:meth:`Guard.acall` drive it synchronously or
asynchronously (the approach httpx uses for its auth flows)::

    parse -> verify chain -> scope -> policy -> (approval) -> call token
          -> replay check -> audit "decision" -> run -> audit "completion"

It fails closed: a store, audit or channel error means the tool does not run.
"""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

from agentguard import tracing
from agentguard.approval import (
    ApprovalBook,
    ApprovalRequest,
    Channel,
    NoChannel,
    QueueChannel,
    TerminalChannel,
    accountable_claims,
    approval_arguments,
    call_digest,
    display_size,
    excluded_approvers,
    link_assertions,
    receipt_assurance,
    receipt_lifetime,
)
from agentguard.audit import AuditLog, redact, restore_redacted
from agentguard.clock import Clock, SystemClock
from agentguard.delegation import Delegation, ScopeSpec, scope_warnings
from agentguard.errors import (
    AgentGuardError,
    ApprovalPending,
    ApprovalRejected,
    ConfigError,
    DeniedError,
    IdentityError,
    IssuanceError,
    StoreError,
)
from agentguard.keys import Identity, Keyring, Principal
from agentguard.policy import ASSURANCE_LEVELS, Policy, assurance_at_least, load_policy
from agentguard.store.base import ApprovalRow, GrantRecord, Store
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SQLiteStore
from agentguard.tokens import args_digest, mint_call_token
from agentguard.verify import ScopeMatch, VerifiedChain, Verifier

__all__ = ["Decision", "Guard", "check_limits", "current_decision", "default_home"]

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
STATE_FILE = "state.db"


def default_home(start: Path | None = None) -> Path | None:
    """The state directory a bare ``Guard()`` uses: ``$AGENTGUARD_HOME`` or ``./.agentguard``.

    Returns ``None`` when neither exists (the guard then runs in memory).
    """
    env = os.environ.get("AGENTGUARD_HOME")
    if env:
        return Path(env)
    candidate = (start or Path.cwd()) / ".agentguard"
    return candidate if candidate.is_dir() else None


@dataclass(frozen=True)
class Decision:
    """What the guard decided about one call, and why.

    ``outcome`` is ``allow``, ``deny`` or ``approval_required``; ``reason`` a
    stable low-cardinality code; ``explanation`` operator text naming the link
    and rule (never token or argument content).
    """

    id: str
    outcome: str
    reason: str
    explanation: str
    tool: str
    path: tuple[str, ...] = ()
    link_ids: tuple[str, ...] = ()
    link: int | None = None
    rule: int | None = None
    approval_rules: tuple[str, ...] = ()
    approval_request_id: str | None = None
    approver: str | None = None
    call_id: str | None = None
    shadow: bool = False
    dry_run: bool = False
    audit_seq: int | None = None
    #: For chains that failed verification: the principals the chain *claims*
    #: (unverified, for investigation only).
    claimed_path: tuple[str, ...] = ()
    #: The approval receipt (JWS) this call used, for enforcement points that
    #: forward it to an upstream verifier. Not included in ``as_dict``.
    approval_receipt: str | None = field(default=None, repr=False)

    @property
    def allowed(self) -> bool:
        """Whether the call may run."""
        return self.outcome == "allow"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for ``--json`` output)."""
        return {
            "decision_id": self.id,
            "outcome": self.outcome,
            "reason": self.reason,
            "explanation": self.explanation,
            "tool": self.tool,
            "path": list(self.path),
            "link_ids": list(self.link_ids),
            "link": self.link,
            "rule": self.rule,
            "approval_rules": list(self.approval_rules),
            "approval_request_id": self.approval_request_id,
            "approver": self.approver,
            "call_id": self.call_id,
            "shadow": self.shadow,
            "dry_run": self.dry_run,
        }

    def __str__(self) -> str:
        return f"{self.outcome} ({self.reason}): {self.explanation} [decision {self.id}]"

    def _repr_html_(self) -> str:
        import html

        color = {"allow": "#1a7f37", "deny": "#cf222e"}.get(self.outcome, "#9a6700")
        return (
            f'<div style="font-family:sans-serif"><b style="color:{color}">'
            f"{html.escape(self.outcome.upper())}</b> {html.escape(self.tool)} "
            f"<code>{html.escape(self.reason)}</code><br><small>"
            f"{html.escape(self.explanation)}<br>{html.escape(' -> '.join(self.path))} "
            f"&middot; decision {html.escape(self.id)}</small></div>"
        )


@dataclass
class _Wait:
    """Yielded by the pipeline: wait for an answer to ``request``."""

    request: ApprovalRequest
    deliver: bool


class Demand(NamedTuple):
    """One approval demand: the rule's text, its minimum assurance, and the link it
    counts as demanded by for separation of duties (``None``: the chain's own
    people may approve, which a policy rule may allow explicitly)."""

    rule: str
    assurance: str
    link: int | None


@dataclass
class _Outcome:
    decision: Decision
    error: DeniedError | None = None
    args: dict[str, Any] = field(default_factory=dict)


_Answer = ApprovalRow | BaseException | None
_Pipeline = Generator[_Wait, _Answer, _Outcome]


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
        home_path = Path(home) if home is not None else None
        if home_path is None and self.policy.storage.home:
            home_path = Path(self.policy.storage.home)
            if not home_path.is_absolute() and self.policy.base_dir:
                home_path = Path(self.policy.base_dir) / home_path
        if home_path is None and store is None:
            home_path = default_home()
        self.home = home_path
        self.keyring = Keyring(home_path / "keys") if home_path is not None else None
        if store is not None:
            self.store: Store = store
        elif home_path is not None:
            try:
                home_path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create state directory {home_path}: {exc.strerror or exc}"
                ) from exc
            self.store = SQLiteStore(
                home_path / STATE_FILE, durability=self.policy.storage.durability
            )
        else:
            self.store = MemoryStore()
        self.guard_identity = guard_identity or self._guard_identity()
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
        self.channel: Channel = approver or self._channel_from_policy()
        self.approval_mode = approval_mode or self.policy.approval.mode
        if self.approval_mode not in ("block", "raise"):
            raise ConfigError("approval_mode must be 'block' or 'raise'")
        self.enforcement_point = enforcement_point
        log.info("agentguard guard using %s", self.describe())

    # -- set-up helpers ---------------------------------------------------------
    def _guard_identity(self) -> Identity:
        if self.keyring is None:
            return Identity.generate(self.policy.guard_id)
        if self.keyring.has_private(self.policy.guard_id):
            return self.keyring.identity(self.policy.guard_id)
        try:
            return self.keyring.create(self.policy.guard_id)
        except IdentityError:
            # Another process sharing this home created the key first (Identity.save
            # publishes the file atomically, so it is complete once visible).
            return self.keyring.identity(self.policy.guard_id)

    def _channel_from_policy(self) -> Channel:
        settings = self.policy.approval
        if settings.channel == "queue":
            return QueueChannel()
        if settings.channel == "terminal":
            if not settings.terminal_approver:
                raise ConfigError("approval.terminal_approver must name the user at the terminal")
            return TerminalChannel(settings.terminal_approver)
        if settings.channel == "webhook":
            from agentguard.webhook import WebhookChannel

            return WebhookChannel.from_settings(settings)
        if settings.channel in ("web", "callback"):
            # These channels answer through the queue; the web page is started
            # separately (``agentguard approvals serve``).
            return QueueChannel()
        return NoChannel()

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
        chain = delegation.serialize()
        for index, grant in enumerate(delegation):
            self.store.record_grant(
                GrantRecord(
                    link_id=grant.link_id,
                    parent=grant.parent,
                    issuer=grant.issuer,
                    subject=grant.subject,
                    issued_at=grant.issued_at,
                    not_before=grant.not_before,
                    expires_at=grant.expires_at,
                    purpose=grant.purpose,
                    on_behalf_of=grant.on_behalf_of,
                    rules=tuple(rule.describe() for rule in grant.scope),
                    chain="~".join(chain.split("~")[: index + 1]),
                )
            )

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
            check_limits(self.policy, delegation)
        except DeniedError as exc:
            raise IssuanceError(exc.explanation) from None
        for text in scope_warnings(delegation.leaf.scope):
            log.warning("grant %s: %s", delegation.leaf.link_id[:12], text)

    def grants(self) -> list[GrantRecord]:
        """The grant inventory with last use and status."""
        return self.store.grant_records()

    def revoke(self, kind: str, value: str, *, reason: str = "") -> None:
        """Revoke a link id, key thumbprint or principal id; effective for every later call."""
        if kind not in ("link", "key", "principal"):
            raise ValueError("kind must be link, key or principal")
        self.store.revoke(kind, value, reason=reason, at=self.clock.now())  # type: ignore[arg-type]  # narrowed by the check above
        self.verifier.clear_cache()

    # -- the pipeline ------------------------------------------------------------------
    def _pipeline(
        self,
        delegation: str | Delegation,
        tool: str,
        args: Mapping[str, Any],
        *,
        holder: Identity | None,
        call_token: str | None,
        call_id: str | None,
        enforce: bool,
        request_approval: bool = False,
        step_up: Sequence[tuple[str, str]] = (),
    ) -> _Pipeline:
        now = self.clock.now()
        decision = Decision(
            id="dec_" + secrets.token_urlsafe(12),
            outcome="deny",
            reason="denied",
            explanation="",
            tool=tool,
            call_id=call_id,
            dry_run=not enforce,
        )
        args = dict(args) if isinstance(args, Mapping) else {}
        chain: VerifiedChain | None = None
        token: str | None = call_token
        approval: dict[str, Any] | None = None
        try:
            try:
                digest = args_digest(args)
            except ValueError as exc:
                raise DeniedError(str(exc), reason="invalid_arguments") from exc
            chain = self.verifier.verify_chain(delegation)
            decision = replace(decision, path=chain.path, link_ids=chain.delegation.link_ids)
            check_limits(self.policy, chain.delegation)
            match = self.verifier.authorize(chain, tool, args)
            demands = [
                *self._policy_rules(chain, match, tool, args),
                # An enforcement point's own step-up is the operator's, like a policy rule.
                *(Demand(rule, level, 0) for rule, level in step_up),
            ]
            # The call token binds exactly what the caller asked for.
            presented = None
            if token is not None:
                # Checked in full now, its nonce burned only once the call may run.
                presented = self.verifier.verify_call_token(
                    chain, token, tool=tool, args=args, consume=False, digest=digest
                )
            elif holder is None:
                raise DeniedError(
                    "no call token and no holder identity to sign one", reason="missing_call_token"
                )
            elif holder.id != chain.holder.id or holder.kid != chain.holder.kid:
                raise DeniedError(
                    f"{holder.id} (key {holder.kid[:8]}) is not the holder of this delegation",
                    reason="call_token_signer",
                )
            effective = args
            if demands:
                decision = replace(decision, approval_rules=tuple(d.rule for d in demands))
                min_level = max(
                    (d.assurance for d in demands), key=lambda lvl: ASSURANCE_LEVELS.index(lvl)
                )
                excluded = self._excluded(chain, demands)
                cdigest = call_digest(tool, digest, chain.delegation.leaf.link_id)
                row = self.store.approval_open(cdigest, now)
                if row is not None and row.status in ("approved", "used"):
                    row = self._still_answers(row, min_level, now)
                if (
                    row is not None
                    and row.status in ("approved", "used")
                    and row.answered_at is not None
                    and now
                    >= int(row.answered_at)
                    + receipt_lifetime(self.policy)
                    + self.policy.limits.leeway
                ):
                    # Its receipt expired unused (or past reuse): ask again rather
                    # than refuse this exact call forever with approval_expired.
                    row = None
                usable = row is not None and row.status in ("approved", "used")
                if not enforce and not (request_approval and row is None):
                    if usable and row is not None:
                        receipt = self.approvals.verify_receipt(
                            row,
                            expected_digest=cdigest,
                            chain=chain,
                            required=min_level,
                            excluded=excluded,
                        )
                        decision = replace(
                            decision,
                            outcome="allow",
                            reason="approved",
                            explanation=f"approved by {receipt.approver} (receipt not used by a "
                            "dry run)",
                            approval_request_id=row.id,
                            approver=receipt.approver,
                        )
                    else:
                        decision = replace(
                            decision,
                            outcome="approval_required",
                            reason="approval_required",
                            explanation="needs approval: " + "; ".join(decision.approval_rules),
                            approval_request_id=row.id if row is not None else None,
                        )
                    return self._finish(decision, chain, token, digest, args, None)
                if row is None:
                    request = self._new_request(
                        decision, chain, tool, args, cdigest, min_level, excluded
                    )
                    self.approvals.file(request)
                    decision = replace(decision, approval_request_id=request.id)
                    if not enforce:
                        decision = replace(
                            decision,
                            outcome="approval_required",
                            reason="approval_required",
                            explanation=f"approval request {request.id} filed: "
                            + "; ".join(decision.approval_rules),
                        )
                        return self._finish(decision, chain, token, digest, args, None)
                    answer = yield _Wait(request, deliver=True)
                elif row.status == "pending":
                    decision = replace(decision, approval_request_id=row.id)
                    answer = yield _Wait(ApprovalRequest.from_row(row), deliver=False)
                else:
                    answer = row
                edited, approval = self._use_answer(
                    answer, chain, tool, args, cdigest, min_level, excluded
                )
                # Without an edit the approved call runs with the arguments asked for.
                effective = edited if approval["edited"] else args
                decision = replace(
                    decision,
                    approval_request_id=approval["request_id"],
                    approver=approval["approver"],
                    approval_receipt=approval.get("receipt"),
                )
            if token is None and holder is not None:
                token = mint_call_token(
                    holder,
                    leaf_link_id=chain.delegation.leaf.link_id,
                    tool=tool,
                    args=args,
                    now=now,
                    ttl=min(self.policy.limits.call_token_ttl, 300),
                    digest=digest,
                )
                self.verifier.accept_minted(chain, token, tool=tool, args=args, digest=digest)
            elif presented is not None and enforce:
                # Checked above: no second signature check, only nonce and expiry remain.
                self.verifier.consume(presented)
            if approval is not None and not self.store.approval_burn(
                approval["request_id"], self.clock.now()
            ):
                raise DeniedError("approval receipt was used already", reason="approval_replayed")
            decision = replace(
                decision,
                outcome="allow",
                reason="approved" if approval else "allowed",
                explanation=(
                    f"approved by {approval['approver']} via {approval['channel']}"
                    if approval
                    else f"every link admits {tool}"
                ),
            )
            return self._finish(decision, chain, token, digest, effective, approval)
        except ApprovalPending as exc:
            decision = replace(
                decision,
                outcome="approval_required",
                reason="approval_pending",
                explanation=exc.explanation,
            )
            # Passed as the error so that shadow mode treats it like any other
            # refusal: what the audit record says is what happens.
            return self._finish(decision, chain, token, _safe_digest(args), args, None, exc)
        except DeniedError as exc:
            decision = replace(
                decision,
                outcome="deny",
                reason=exc.reason,
                explanation=exc.explanation,
                link=exc.link,
                rule=exc.rule,
                claimed_path=_claimed_path(delegation) if chain is None else (),
            )
            return self._finish(decision, chain, token, _safe_digest(args), args, None, exc)
        except StoreError as exc:
            decision = replace(decision, outcome="deny", reason="store_error", explanation=str(exc))
            error = DeniedError(str(exc), reason="store_error", decision_id=decision.id)
            return _Outcome(decision, error, args)

    def _excluded(self, chain: VerifiedChain, demands: Sequence[Demand]) -> frozenset[str]:
        """Approvers separation of duties rules out for these demands (none when it is off)."""
        if not self.policy.approval.separation_of_duties:
            return frozenset()
        links = [d.link for d in demands if d.link is not None]
        return excluded_approvers(chain.delegation.grants, links)

    def _still_answers(self, row: ApprovalRow, min_level: str, now: float) -> ApprovalRow | None:
        """``row`` unless its answer claims less assurance than the call demands now.

        Such an answer (given before the policy was tightened, or through a
        weaker channel) is set aside, burned, and a new request is filed rather
        than refusing this call forever. Anything else about the receipt is
        judged by :meth:`ApprovalBook.verify_receipt`, which fails closed.
        """
        level = receipt_assurance(row)
        if level is None or assurance_at_least(level, min_level):
            return row
        log.info("approval %s (assurance %s) is below %s: asking again", row.id, level, min_level)
        if row.status == "approved":
            self.store.approval_burn(row.id, now)
        return None

    def _policy_rules(
        self, chain: VerifiedChain, match: ScopeMatch, tool: str, args: Mapping[str, Any]
    ) -> list[Demand]:
        """Apply deny rules; return every approval demand of the grants and the policy."""
        for index, rule in enumerate(self.policy.deny):
            if rule.matches(tool, args):
                raise DeniedError(
                    f"policy deny rule {index} ({rule.describe()}) forbids {tool}",
                    reason="policy_denied",
                    rule=index,
                )
        demands = [
            Demand(
                f"link {link} rule {rule} ({chain.delegation.grants[link].scope[rule].describe()})",
                self.policy.approval.grant_rule_assurance,
                link,
            )
            for link, rule in match.approval_rules
        ]
        for index, rule in enumerate(self.policy.step_up):
            if rule.matches(tool, args):
                demands.append(
                    Demand(
                        f"policy step_up rule {index} ({rule.describe()})",
                        rule.min_assurance,
                        # A policy step-up is demanded "by link 0" unless the rule
                        # explicitly allows the chain's own people to approve.
                        None if rule.allow_self_approval else 0,
                    )
                )
        return demands

    def _new_request(
        self,
        decision: Decision,
        chain: VerifiedChain,
        tool: str,
        args: Mapping[str, Any],
        cdigest: str,
        min_level: str,
        excluded: frozenset[str],
    ) -> ApprovalRequest:
        now = self.clock.now()
        # The approver sees every argument and character, or the call is refused:
        # never a part of it.
        limit = self.policy.approval.display_limit
        try:
            shown = approval_arguments(args, self.policy.redact)
            size: int | None = display_size(shown, stop_after=limit)
        except ValueError:
            size = None
        if size is None or size > limit:
            too_big = "nest too deeply" if size is None else f"take more than {limit} characters"
            raise DeniedError(
                f"{tool} needs approval, but its arguments {too_big} to show "
                "(approval.display_limit); refused rather than shown in part",
                reason="approval_display_limit",
            )
        links = link_assertions(chain.delegation.grants)
        # The summary fields hold only what no agent asserted; every link's
        # claims are in ``links``, shown with who asserted them.
        sponsor, purpose = accountable_claims(links)
        trace_id, span_id = tracing.current_ids()
        return ApprovalRequest(
            id=ApprovalBook.new_id(),
            decision_id=decision.id,
            call_digest=cdigest,
            tool=tool,
            args_display=shown,
            path=chain.path,
            requester=chain.holder.id,
            on_behalf_of=sponsor,
            purpose=purpose,
            links=links,
            rules=decision.approval_rules,
            min_assurance=min_level,
            excluded=tuple(sorted(excluded)),
            created_at=now,
            deadline=now + self.policy.approval.timeout,
            trace_id=trace_id,
            span_id=span_id,
        )

    def _use_answer(
        self,
        answer: _Answer,
        chain: VerifiedChain,
        tool: str,
        args: dict[str, Any],
        cdigest: str,
        min_level: str,
        excluded: frozenset[str],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if isinstance(answer, BaseException):
            if isinstance(answer, DeniedError):
                raise answer
            raise DeniedError(
                f"approval channel failed: {type(answer).__name__}", reason="approval_unavailable"
            )
        if answer is None or answer.status == "pending":
            raise DeniedError("no approval arrived before the deadline", reason="approval_timeout")
        receipt = self.approvals.verify_receipt(
            answer, expected_digest=cdigest, chain=chain, required=min_level, excluded=excluded
        )
        tracing.approval_resolved(
            answer.id,
            "rejected"
            if answer.status == "rejected" or receipt.decision != "approve"
            else "approved",
            receipt.channel,
            answer.request,
        )
        if answer.status == "rejected" or receipt.decision != "approve":
            self.store.approval_burn(answer.id, self.clock.now())
            message = f": {receipt.message}" if receipt.message else ""
            raise ApprovalRejected(
                f"{receipt.approver} rejected the call{message}",
                request_id=answer.id,
                message=receipt.message,
                approver=receipt.approver,
            )
        effective: dict[str, Any] | None = None
        if receipt.edited_args is not None:
            # An edit re-runs the decision on the edited arguments.
            effective = restore_redacted(receipt.edited_args, args, self.policy.redact)
            match = self.verifier.authorize(chain, tool, effective)
            demands = self._policy_rules(chain, match, tool, effective)
            # The edited call's own step-up demands must be met by this receipt too.
            if receipt.approver in self._excluded(chain, demands):
                raise DeniedError(
                    f"{receipt.approver} may not approve the edited call (separation of duties)",
                    reason="separation_of_duties",
                )
            for rule, level, _ in demands:
                if not assurance_at_least(receipt.assurance, level):
                    raise DeniedError(
                        f"the edited call needs assurance '{level}' ({rule}), but the "
                        f"approval has '{receipt.assurance}'",
                        reason="approval_assurance",
                    )
        return effective if effective is not None else {}, {
            "request_id": answer.id,
            "approver": receipt.approver,
            "channel": receipt.channel,
            "assurance": receipt.assurance,
            "message": receipt.message,
            "edited": receipt.edited_args is not None,
            "receipt": answer.receipt,
            "edited_args_digest": args_digest(effective) if effective is not None else None,
        }

    def _finish(
        self,
        decision: Decision,
        chain: VerifiedChain | None,
        token: str | None,
        digest: str | None,
        args: Mapping[str, Any],
        approval: dict[str, Any] | None,
        error: DeniedError | None = None,
    ) -> _Outcome:
        shadow = self.policy.shadow and decision.outcome != "allow" and not decision.dry_run
        if shadow:
            decision = replace(decision, shadow=True)
            log.warning(
                "SHADOW MODE: %s would be %s (%s) but runs anyway [decision %s]",
                decision.tool,
                decision.outcome,
                decision.reason,
                decision.id,
            )
        record = {
            "type": "decision",
            "decision_id": decision.id,
            "time": self.clock.now(),
            "outcome": decision.outcome,
            "reason": decision.reason,
            "explanation": decision.explanation,
            "tool": decision.tool,
            "call_id": decision.call_id,
            "args_digest": digest,
            # Arguments that are not canonical JSON (NaN, foreign types) cannot be
            # stored; without this the denial itself would fail as an audit error.
            "args": redact(args, self.policy.redact) if digest is not None else None,
            "path": list(decision.path),
            "claimed_path_unverified": list(decision.claimed_path) or None,
            "link_ids": list(decision.link_ids),
            "link": decision.link,
            "rule": decision.rule,
            "approval_rules": list(decision.approval_rules),
            "approval": approval,
            "approval_request_id": decision.approval_request_id,
            "call_token": token,
            "dry_run": decision.dry_run,
            "shadow": shadow,
            "enforced": not shadow,
            "enforcement_point": self.enforcement_point,
            **tracing.audit_ids(),
        }
        if shadow:
            record["shadow_notice"] = "SHADOW MODE: this decision was NOT enforced"
        try:
            # A dry run is not a use: it must not hide a stale grant from the inventory.
            used = () if decision.dry_run else decision.link_ids
            entry = self.audit.append(record, link_ids=used, at=self.clock.now())
        except StoreError as exc:
            failed = replace(
                decision, outcome="deny", reason="audit_error", explanation=str(exc), shadow=False
            )
            return _Outcome(
                failed, DeniedError(str(exc), reason="audit_error", decision_id=decision.id), {}
            )
        decision = replace(decision, audit_seq=entry.seq)
        if error is not None:
            error.decision_id = decision.id
        if shadow:
            return _Outcome(decision, None, dict(args))
        del chain
        return _Outcome(decision, error, dict(args))

    def _complete(
        self,
        decision: Decision,
        started: float,
        error: BaseException | None,
        *,
        tool_error: bool = False,
    ) -> None:
        status = "error" if error is not None else "tool_error" if tool_error else "success"
        record = {
            "type": "completion",
            "decision_id": decision.id,
            "time": self.clock.now(),
            "tool": decision.tool,
            "call_id": decision.call_id,
            "status": status,
            "error_type": type(error).__name__ if error is not None else None,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "enforcement_point": self.enforcement_point,
        }
        try:
            self.audit.append(record, at=self.clock.now())
        except StoreError:
            # The decision record (the authorisation proof) is already written;
            # the tool has run, so the loss of its completion is logged loudly.
            log.error("agentguard: could not record completion of decision %s", decision.id)

    # -- drivers -------------------------------------------------------------------------
    def _drive(self, pipeline: _Pipeline) -> _Outcome:
        try:
            wait = next(pipeline)
            while True:
                with self._traced_wait(wait) as waiting:
                    try:
                        answer = self._wait_sync(wait)
                    except Exception as exc:  # a store error while polling denies, audited
                        answer = exc
                    waiting.answered(answer)
                wait = pipeline.send(answer)
        except StopIteration as stop:
            outcome: _Outcome = stop.value
            tracing.decided(outcome.decision)
            return outcome

    async def _adrive(self, pipeline: _Pipeline) -> _Outcome:
        try:
            wait = next(pipeline)
            while True:
                with self._traced_wait(wait) as waiting:
                    try:
                        answer = await self._wait_async(wait)
                    except Exception as exc:  # a store error while polling denies, audited
                        answer = exc
                    waiting.answered(answer)
                wait = pipeline.send(answer)
        except StopIteration as stop:
            outcome: _Outcome = stop.value
            tracing.decided(outcome.decision)
            return outcome

    def _traced_wait(self, wait: _Wait) -> tracing.ApprovalWait:
        return tracing.ApprovalWait(
            wait.request.tool, request_id=wait.request.id, channel=self.channel.name
        )

    def _pending(self, request: ApprovalRequest) -> ApprovalPending:
        return ApprovalPending(
            f"approval request {request.id} for {request.tool} is pending",
            request_id=request.id,
        )

    def _channel_too_weak(self, request: ApprovalRequest) -> DeniedError | None:
        level = getattr(self.channel, "assurance", None)
        if isinstance(level, str) and not assurance_at_least(level, request.min_assurance):
            return DeniedError(
                f"the {self.channel.name} channel answers at assurance '{level}', but this "
                f"call needs '{request.min_assurance}' (configure a stronger channel, or lower "
                "the rule's min_assurance in the policy)",
                reason="approval_assurance",
            )
        return None

    def _wait_sync(self, wait: _Wait) -> _Answer:
        if wait.deliver:
            weak = self._channel_too_weak(wait.request)
            if weak is not None:
                return weak
            try:
                self.channel.deliver(wait.request, self.approvals)
            except Exception as exc:  # any channel failure denies (fail closed)
                return exc
        return self._poll(wait.request, sleep=time.sleep)

    async def _wait_async(self, wait: _Wait) -> _Answer:
        import anyio

        if wait.deliver:
            weak = self._channel_too_weak(wait.request)
            if weak is not None:
                return weak
            try:
                adeliver = getattr(self.channel, "adeliver", None)
                if adeliver is not None:
                    await adeliver(wait.request, self.approvals)
                else:
                    await anyio.to_thread.run_sync(
                        self.channel.deliver, wait.request, self.approvals
                    )
            except Exception as exc:  # any channel failure denies (fail closed)
                return exc
        row = self.store.approval_get(wait.request.id)
        if self.approval_mode == "raise" and (row is None or row.status == "pending"):
            return self._pending(wait.request)
        deadline = time.monotonic() + max(0.0, wait.request.deadline - self.clock.now())
        delay = 0.02
        while row is not None and row.status == "pending":
            if time.monotonic() >= deadline or self.clock.now() >= wait.request.deadline:
                return None
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.25)
            row = self.store.approval_get(wait.request.id)
        return row

    def _poll(self, request: ApprovalRequest, *, sleep: Callable[[float], None]) -> _Answer:
        row = self.store.approval_get(request.id)
        if self.approval_mode == "raise" and (row is None or row.status == "pending"):
            return self._pending(request)
        deadline = time.monotonic() + max(0.0, request.deadline - self.clock.now())
        delay = 0.02
        while row is not None and row.status == "pending":
            if time.monotonic() >= deadline or self.clock.now() >= request.deadline:
                return None
            sleep(delay)
            delay = min(delay * 2, 0.25)
            row = self.store.approval_get(request.id)
        return row

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
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            outcome = self._drive(
                self._pipeline(
                    delegation,
                    tool,
                    args or {},
                    holder=holder,
                    call_token=call_token,
                    call_id=call_id,
                    step_up=step_up,
                    enforce=False,
                    request_approval=request_approval,
                )
            )
        return outcome.decision

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
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            outcome = await self._adrive(
                self._pipeline(
                    delegation,
                    tool,
                    args or {},
                    holder=holder,
                    call_token=call_token,
                    call_id=call_id,
                    step_up=step_up,
                    enforce=False,
                    request_approval=request_approval,
                )
            )
        return outcome.decision

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
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            outcome = self._drive(
                self._pipeline(
                    delegation,
                    tool,
                    args or {},
                    holder=holder,
                    call_token=call_token,
                    call_id=call_id,
                    step_up=step_up,
                    enforce=True,
                )
            )
        if outcome.error is not None:
            raise outcome.error
        return outcome.decision, outcome.args

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
        with tracing.Authorization(tool, enforcement_point=self.enforcement_point):
            outcome = await self._adrive(
                self._pipeline(
                    delegation,
                    tool,
                    args or {},
                    holder=holder,
                    call_token=call_token,
                    call_id=call_id,
                    step_up=step_up,
                    enforce=True,
                )
            )
        if outcome.error is not None:
            raise outcome.error
        return outcome.decision, outcome.args

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
                delegation,
                tool,
                args,
                holder=holder,
                call_token=call_token,
                call_id=call_id,
                step_up=step_up,
            )
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
                delegation,
                tool,
                args,
                holder=holder,
                call_token=call_token,
                call_id=call_id,
                step_up=step_up,
            )
            started = time.monotonic()
            current = _CURRENT.set(decision)
            try:
                result = fn(**effective)
                if inspect.isawaitable(result):
                    result = await result
            except BaseException as exc:
                self._complete(decision, started, exc)
                raise
            finally:
                _CURRENT.reset(current)
            self._complete(decision, started, None, tool_error=_failed(failed, result))
            return result

    def close(self) -> None:
        """Release the store (after the audit log's newest signed head is written out)."""
        self.audit.close()
        self.store.close()


def _load(policy: str | Path | Mapping[str, Any] | None) -> Policy:
    if policy is None:
        return Policy()
    return load_policy(policy)


def _failed(failed: Callable[[Any], bool] | None, result: Any) -> bool:
    """Whether the caller's ``failed`` test says the tool reported an error (never raises)."""
    if failed is None:
        return False
    try:
        return bool(failed(result))
    except Exception:  # a broken test must not turn a completed call into an exception
        log.warning("agentguard: the 'failed' test raised; completion recorded as success")
        return False


def _claimed_path(delegation: str | Delegation) -> tuple[str, ...]:
    """The principals an unverifiable chain claims, when it parses at all."""
    try:
        parsed = delegation if isinstance(delegation, Delegation) else Delegation.parse(delegation)
    except AgentGuardError:
        return ()
    return parsed.path


def _safe_digest(args: Mapping[str, Any]) -> str | None:
    try:
        return args_digest(args)
    except ValueError:
        return None


def check_limits(policy: Policy, delegation: Delegation) -> None:
    """Check a chain against the policy's limits (length, link lifetimes, purpose, sponsor).

    Raises:
        DeniedError: reason ``policy_limit``, naming the link that breaks a limit.
    """
    limits = policy.limits
    if len(delegation) > limits.max_chain_length:
        raise DeniedError(
            f"chain has {len(delegation)} links; the policy allows {limits.max_chain_length}",
            reason="policy_limit",
        )
    for index, grant in enumerate(delegation):
        lifetime = grant.expires_at - grant.not_before
        cap = limits.max_root_ttl if index == 0 else limits.max_link_ttl
        if lifetime > cap + limits.leeway:
            raise DeniedError(
                f"link {index} lives {int(lifetime)} s; the policy allows {int(cap)} s",
                reason="policy_limit",
                link=index,
            )
    root = delegation.root
    if limits.require_purpose and not root.purpose:
        raise DeniedError("the root grant names no purpose", reason="policy_limit", link=0)
    if limits.require_sponsor and not root.on_behalf_of:
        raise DeniedError("the root grant names no sponsor", reason="policy_limit", link=0)
