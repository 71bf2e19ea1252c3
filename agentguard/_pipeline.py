"""The guard's decision pipeline, as named steps over one typed state (DESIGN §4).

    verify -> authorize -> demands -> bind caller -> budgets -> settle approval
           -> bind call token -> record (budgets charged with the record)

Each step is a short function over :class:`_State`. The pipeline is written
once, as a generator that yields a :class:`Wait` when it needs a human's answer
and receives the answer (or the exception that stood in for it); the guard's
sync and async drivers run it. A dry run (:meth:`Guard.check`) differs in one
place only: :func:`_settle_dry_run`.

It fails closed: a store, audit or channel error means the tool does not run.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Generator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, NamedTuple

from agentguard import tracing
from agentguard.approval import (
    ApprovalBook,
    ApprovalRequest,
    accountable_claims,
    approval_arguments,
    call_digest,
    display_size,
    excluded_approvers,
    link_assertions,
    no_approver_text,
    receipt_assurance,
    receipt_lifetime,
)
from agentguard.audit import AuditLog, decision_record, restore_redacted
from agentguard.budgets import (
    BudgetExhausted,
    Charge,
    charges_for,
    refuse_unless_fits,
    request_budgets,
)
from agentguard.clock import Clock
from agentguard.decision import Decision, Outcome, Reason
from agentguard.delegation import Delegation
from agentguard.errors import (
    AgentGuardError,
    ApprovalPending,
    ApprovalRejected,
    DeniedError,
    StoreError,
)
from agentguard.keys import Identity
from agentguard.policy import ASSURANCE_LEVELS, Policy, assurance_at_least
from agentguard.store.base import ApprovalRow, Store
from agentguard.tokens import args_digest, mint_call
from agentguard.verify import VerifiedCall, VerifiedChain, Verifier

log = logging.getLogger("agentguard")

#: A call token the guard mints lives at most this long (seconds).
MINTED_TOKEN_TTL = 300


@dataclass(frozen=True)
class CallRequest:
    """One call as an entry point received it."""

    delegation: str | Delegation
    tool: str
    args: Mapping[str, Any]
    holder: Identity | None = None
    call_token: str | None = None
    call_id: str | None = None
    step_up: Sequence[tuple[str, str]] = ()
    #: ``False`` for a dry run (:meth:`Guard.check`): nothing is spent.
    enforce: bool = True
    #: A dry run files a pending approval request when one is needed.
    request_approval: bool = False


class Demand(NamedTuple):
    """One approval demand: the rule's text, its minimum assurance, and the link it
    counts as demanded by for separation of duties (``None``: the chain's own
    people may approve, which a policy rule may allow explicitly)."""

    rule: str
    assurance: str
    link: int | None


@dataclass(frozen=True)
class Approval:
    """The verified approval a call runs under."""

    request_id: str
    approver: str
    channel: str
    assurance: str
    message: str | None
    receipt: str | None
    #: The approver's edit of the arguments (restored where redacted), if any.
    edited_args: dict[str, Any] | None = None
    #: Its digest, computed before anything is spent.
    edited_digest: str | None = None

    def as_record(self) -> dict[str, Any]:
        """The ``approval`` field of the decision's audit record."""
        edited = self.edited_args
        return {
            "request_id": self.request_id,
            "approver": self.approver,
            "channel": self.channel,
            "assurance": self.assurance,
            "message": self.message,
            "edited": edited is not None,
            "receipt": self.receipt,
            "edited_args_digest": self.edited_digest,
        }


@dataclass
class Wait:
    """Yielded by the pipeline: wait for an answer to ``request`` (delivering it first)."""

    request: ApprovalRequest
    deliver: bool


@dataclass
class Result:
    """What the pipeline returns: the decision, the refusal (if any), the arguments to run."""

    decision: Decision
    error: DeniedError | None = None
    args: dict[str, Any] = field(default_factory=dict)


Answer = ApprovalRow | BaseException | None
Pipeline = Generator[Wait, Answer, Result]


@dataclass(frozen=True)
class Parts:
    """What the pipeline works with; the guard builds it once."""

    policy: Policy
    verifier: Verifier
    store: Store
    approvals: ApprovalBook
    audit: AuditLog
    clock: Clock
    enforcement_point: str


@dataclass
class _State:
    """One call on its way through the pipeline.

    The verdict is kept in plain fields and turned into a :class:`Decision`
    once, when it is recorded (:meth:`decision`): a frozen dataclass rebuilt by
    every step cost more than the step.
    """

    request: CallRequest
    id: str
    args: dict[str, Any]
    now: float
    outcome: Outcome = Outcome.DENY
    reason: Reason = Reason.DENIED
    explanation: str = ""
    link: int | None = None
    rule: int | None = None
    claimed_path: tuple[str, ...] = ()
    approval_rules: tuple[str, ...] = ()
    approval_request_id: str | None = None
    approver: str | None = None
    approval_receipt: str | None = None
    digest: str | None = None
    chain: VerifiedChain | None = None
    token: str | None = None
    presented: VerifiedCall | None = None
    demands: list[Demand] = field(default_factory=list)
    approval: Approval | None = None
    #: The budgets this call is charged to, and their state as last read.
    charges: list[Charge] = field(default_factory=list)
    budget_view: list[dict[str, Any]] | None = None
    #: False once the scope check found no rule budget for the tool (ScopeMatch.budgeted).
    budgeted: bool = True

    @property
    def verified(self) -> VerifiedChain:
        assert self.chain is not None  # noqa: S101 (steps after _verify only)
        return self.chain

    def decide(
        self,
        outcome: Outcome,
        reason: Reason,
        explanation: str,
        *,
        approval_request_id: str | None = None,
        approver: str | None = None,
    ) -> None:
        """Set the verdict (and the approval it names, when given)."""
        self.outcome, self.reason, self.explanation = outcome, reason, explanation
        if approval_request_id is not None:
            self.approval_request_id = approval_request_id
        if approver is not None:
            self.approver = approver

    def decision(self, *, shadow: bool = False) -> Decision:
        """The verdict as a :class:`Decision`; a verified chain's path and link ids go with it.

        Every way out of the pipeline decides before it records, so the chain is
        written into the decision here rather than by a copy of its own.
        """
        chain, request = self.chain, self.request
        # Built as Decision(...) would build it, without the frozen dataclass's
        # per-field setattr (tests/test_decision_copy.py holds the two equal).
        decision: Decision = object.__new__(Decision)
        decision.__dict__.update(
            _DECISION_DEFAULTS,
            id=self.id,
            outcome=self.outcome,
            reason=self.reason,
            explanation=self.explanation,
            tool=request.tool,
            path=chain.path if chain is not None else (),
            link_ids=chain.delegation.link_ids if chain is not None else (),
            link=self.link,
            rule=self.rule,
            approval_rules=self.approval_rules,
            approval_request_id=self.approval_request_id,
            approver=self.approver,
            call_id=request.call_id,
            shadow=shadow,
            dry_run=not request.enforce,
            claimed_path=self.claimed_path,
            approval_receipt=self.approval_receipt,
        )
        return decision


#: The fields of :class:`Decision` that have a default, at their default.
_DECISION_DEFAULTS = {f.name: f.default for f in fields(Decision) if f.default is not MISSING}


def run(parts: Parts, request: CallRequest) -> Pipeline:
    """Decide ``request``; the generator the guard's drivers run."""
    state = _State(
        request=request,
        id="dec_" + secrets.token_urlsafe(12),
        args=dict(request.args) if isinstance(request.args, Mapping) else {},
        now=parts.clock.now(),
    )
    try:
        _verify(parts, state)
        _authorize(parts, state)
        _bind_caller(parts, state)
        _check_budgets(parts, state, state.args, state.now)
        if state.demands:
            done = yield from _settle_approval(parts, state)
            if done:
                return _record(parts, state)
        _bind_call_token(parts, state)
        return _record(parts, state)
    except ApprovalPending as exc:
        state.decide(Outcome.APPROVAL_REQUIRED, Reason.APPROVAL_PENDING, exc.explanation)
        # Passed as the error so that shadow mode treats it like any other
        # refusal: what the audit record says is what happens.
        return _record(parts, state, exc)
    except DeniedError as exc:
        state.decide(
            Outcome.DENY,
            exc.reason,  # type: ignore[arg-type]  # a Reason code, possibly an adapter's own
            exc.explanation,
        )
        state.link, state.rule = exc.link, exc.rule
        if state.chain is None:
            state.claimed_path = _claimed_path(request.delegation)
        return _record(parts, state, exc)
    except StoreError as exc:
        state.decide(Outcome.DENY, Reason.STORE_ERROR, str(exc))
        error = DeniedError(str(exc), reason=Reason.STORE_ERROR, decision_id=state.id)
        return Result(state.decision(), error, state.args)


# -- the steps ----------------------------------------------------------------------------


def _verify(parts: Parts, state: _State) -> None:
    """The arguments are canonical JSON; the chain verifies and keeps the policy's limits."""
    try:
        state.digest = args_digest(state.args)
    except ValueError as exc:
        raise DeniedError(str(exc), reason=Reason.INVALID_ARGUMENTS) from exc
    state.chain = parts.verifier.verify_chain(state.request.delegation)
    parts.policy.check_limits(state.chain.delegation)


def _authorize(parts: Parts, state: _State) -> None:
    """Every link admits the call; collect every approval demand (grants, policy, caller)."""
    chain, tool, args = state.verified, state.request.tool, state.args
    match = parts.verifier.authorize(chain, tool, args)
    state.budgeted = match.budgeted
    parts.policy.check_deny(tool, args)
    state.demands = [
        *grant_demands(parts.policy, chain, match.approval_rules),
        *policy_demands(parts.policy, tool, args),
        # An enforcement point's own step-up is the operator's, like a policy rule.
        *(Demand(rule, level, 0) for rule, level in state.request.step_up),
    ]
    if state.demands:
        state.approval_rules = tuple(d.rule for d in state.demands)


def _bind_caller(parts: Parts, state: _State) -> None:
    """The call token presented binds exactly this call, or the holder may sign one."""
    request, chain = state.request, state.verified
    if request.call_token is not None:
        # Checked in full now, its nonce spent only once the call may run.
        state.token = request.call_token
        state.presented = parts.verifier.verify_call_token(
            chain,
            request.call_token,
            tool=request.tool,
            args=state.args,
            consume=False,
            digest=state.digest,
        )
        return
    holder = request.holder
    if holder is None:
        raise DeniedError(
            "no call token and no holder identity to sign one", reason=Reason.MISSING_CALL_TOKEN
        )
    if holder.id != chain.holder.id or holder.kid != chain.holder.kid:
        raise DeniedError(
            f"{holder.id} (key {holder.kid[:8]}) is not the holder of this delegation",
            reason=Reason.CALL_TOKEN_SIGNER,
        )


def _settle_approval(parts: Parts, state: _State) -> Generator[Wait, Answer, bool]:
    """Find, file or wait for the approval the demands need; ``True`` ends a dry run."""
    chain, tool = state.verified, state.request.tool
    min_level = max(
        (d.assurance for d in state.demands), key=lambda lvl: ASSURANCE_LEVELS.index(lvl)
    )
    excluded = excluded_for(parts.policy, chain, state.demands)
    assert state.digest is not None  # noqa: S101 (set by _verify)
    cdigest = call_digest(tool, state.digest, chain.delegation.leaf.link_id)
    row = _open_answer(parts, cdigest, min_level, state.now)
    if not state.request.enforce:
        return _settle_dry_run(parts, state, row, cdigest, min_level, excluded)
    if row is None:
        fresh = new_request(parts, state, cdigest, min_level, excluded)
        # A racing call may have filed one first: join it (it is delivered already).
        request = parts.approvals.file(fresh)
        state.approval_request_id = request.id
        answer = yield Wait(request, deliver=request.id == fresh.id)
        if isinstance(answer, DeniedError) and answer.reason == Reason.NO_APPROVER:
            _withdraw(parts, request.id)  # nobody may answer it: leave nothing pending
    elif row.status == "pending":
        state.approval_request_id = row.id
        answer = yield Wait(ApprovalRequest.from_row(row), deliver=False)
    else:
        answer = row
    state.approval = _use_answer(parts, state, answer, cdigest, min_level, excluded)
    state.approval_request_id = state.approval.request_id
    state.approver = state.approval.approver
    state.approval_receipt = state.approval.receipt
    # Checked again at the answer's time, which may be in a later window; an edited
    # call is the one that runs, so its amounts are what is charged.
    edited = state.approval.edited_args
    _check_budgets(parts, state, state.args if edited is None else edited, parts.clock.now())
    return False


def _withdraw(parts: Parts, request_id: str) -> None:
    try:
        parts.approvals.withdraw(request_id)
    except AgentGuardError as exc:  # the refusal stands; the request times out on its own
        log.warning("could not withdraw approval request %s: %s", request_id, exc)


def _settle_dry_run(
    parts: Parts,
    state: _State,
    row: ApprovalRow | None,
    cdigest: str,
    min_level: str,
    excluded: frozenset[str],
) -> bool:
    """A dry run reports what would happen; it spends nothing (it may file a request)."""
    rules = "; ".join(state.approval_rules)
    if row is None and state.request.request_approval:
        fresh = new_request(parts, state, cdigest, min_level, excluded)
        if not parts.approvals.who_may_approve(fresh):
            # Filing it would leave a request nobody can answer (as a real call is refused).
            state.decide(Outcome.DENY, Reason.NO_APPROVER, no_approver_text(fresh))
            return True
        request = parts.approvals.file(fresh)
        state.decide(
            Outcome.APPROVAL_REQUIRED,
            Reason.APPROVAL_REQUIRED,
            f"approval request {request.id} filed: {rules}",
            approval_request_id=request.id,
        )
    elif row is not None and row.status in ("approved", "used"):
        receipt = parts.approvals.verify_receipt(
            row, expected_digest=cdigest, chain=state.verified, required=min_level,
            excluded=excluded,
        )  # fmt: skip
        state.decide(
            Outcome.ALLOW,
            Reason.APPROVED,
            f"approved by {receipt.approver} (receipt not used by a dry run)",
            approval_request_id=row.id,
            approver=receipt.approver,
        )
    else:
        state.decide(
            Outcome.APPROVAL_REQUIRED,
            Reason.APPROVAL_REQUIRED,
            f"needs approval: {rules}",
            approval_request_id=row.id if row is not None else None,
        )
    return True


def _bind_call_token(parts: Parts, state: _State) -> None:
    """Mint (or spend) the call token, spend the approval's receipt: the call may run."""
    chain, request = state.verified, state.request
    if not request.enforce:
        # A dry run mints and spends nothing single-use: _bind_caller checked the
        # holder (or the presented token, and that it was not spent).
        pass
    elif state.token is None and request.holder is not None:
        minted = mint_call(
            request.holder,
            leaf_link_id=chain.delegation.leaf.link_id,
            tool=request.tool,
            args=state.args,
            now=state.now,
            ttl=min(parts.policy.limits.call_token_ttl, MINTED_TOKEN_TTL),
            digest=state.digest,
        )
        state.token = minted.token
        parts.verifier.accept_minted(
            chain, minted, tool=request.tool, args=state.args, digest=state.digest
        )
    elif state.presented is not None:
        # Checked already: no second signature check, only nonce and expiry remain.
        parts.verifier.consume(state.presented)
    # The approval's receipt is used in the decision record's own transaction (_record).
    approval = state.approval
    if approval is not None:
        state.decide(
            Outcome.ALLOW,
            Reason.APPROVED,
            f"approved by {approval.approver} via {approval.channel}",
        )
    else:
        state.decide(Outcome.ALLOW, Reason.ALLOWED, f"every link admits {request.tool}")


def _record(parts: Parts, state: _State, error: DeniedError | None = None) -> Result:
    """Write the decision's audit record; what it says is what happens."""
    dry_run = not state.request.enforce
    shadow = parts.policy.shadow and state.outcome != Outcome.ALLOW and not dry_run
    decision = state.decision(shadow=shadow)
    if shadow:
        log.warning(
            "SHADOW MODE: %s would be %s (%s) but runs anyway [decision %s]",
            decision.tool,
            decision.outcome,
            decision.reason,
            decision.id,
        )
    digest = state.digest if error is None else _safe_digest(state.args)
    approval = state.approval if error is None else None
    effective = state.args
    if approval is not None and approval.edited_args is not None:
        # Without an edit the approved call runs with the arguments asked for.
        effective = approval.edited_args
    record = decision_record(
        decision,
        time=parts.clock.now(),
        args=effective,
        digest=digest,
        redact_fields=parts.policy.redact,
        approval=approval.as_record() if approval is not None else None,
        call_token=state.token,
        enforcement_point=parts.enforcement_point,
        trace=tracing.audit_ids(),
    )
    # Budgets are charged with an allowed call's record (all or none); a refused
    # call, a dry run and a shadow-mode refusal that runs anyway are not charged.
    # They are charged in the window the call runs in: an approval may have been
    # answered after the window it was asked in ended (and was purged).
    charge = None
    if state.charges and error is None and not dry_run and decision.outcome == Outcome.ALLOW:
        charge = (state.charges, parts.clock.now())
    elif state.budget_view is not None:
        record["budget"] = state.budget_view
    try:
        # A dry run is not a use: it must not hide a stale grant from the inventory.
        used = () if dry_run else decision.link_ids
        # An allowed call's receipt is used up with its record, or neither happens.
        burn = approval.request_id if approval is not None and error is None else None
        if charge is None:
            entry = parts.audit.append(record, link_ids=used, at=parts.clock.now(), burn=burn)
        else:
            entry = parts.audit.append(
                record, link_ids=used, at=parts.clock.now(), burn=burn, charge=charge
            )
            state.budget_view = _charged_view(entry.body)
    except StoreError as exc:
        state.decide(Outcome.DENY, Reason.AUDIT_ERROR, str(exc))
        refusal = DeniedError(str(exc), reason=Reason.AUDIT_ERROR, decision_id=decision.id)
        return Result(state.decision(), refusal, {})
    if error is not None:
        error.decision_id = decision.id
    if state.budget_view:
        tracing.annotate(_budget_attributes(state.budget_view, error))
    # Built by state.decision above and not handed out yet: numbered in place, not copied.
    decision.__dict__["audit_seq"] = entry.seq
    return Result(decision, None if shadow else error, dict(effective))


def _charged_view(body: str) -> list[dict[str, Any]] | None:
    """The budgets' state the store wrote into a charged record."""
    view = json.loads(body).get("budget")
    return view if isinstance(view, list) else None


# -- budgets ------------------------------------------------------------------------------


def _check_budgets(parts: Parts, state: _State, args: Mapping[str, Any], now: float) -> None:
    """Every budget the call would be charged to has room at ``now`` (read only;
    charged in _record).

    Checked before an approval is filed, so nobody is asked to approve a call
    its budget refuses, and again when it is answered; the store charges them
    again, exactly, with the record.
    """
    policed = bool(parts.policy.budgets)
    if not (state.budgeted or policed):
        # No rule of the chain that selects the tool has a budget (remembered with
        # the scope plan), and the policy has none: nothing to charge.
        return
    delegation, tool = state.verified.delegation, state.request.tool
    extra = parts.policy.budget_charges(tool, args, delegation) if policed else ()
    state.charges = charges_for(delegation.grants, tool, args, extra)
    if not state.charges:
        return
    read = getattr(parts.store, "budget_states", None)
    if read is None:
        raise DeniedError(
            f"the chain has budgets, but store {parts.store.location} cannot keep them",
            reason=Reason.STORE_ERROR,
        )
    states = read(state.charges, now)
    state.budget_view = [s.as_record(charged=False) for s in states]
    refuse_unless_fits(states, now)


def _budget_attributes(
    view: Sequence[Mapping[str, Any]], error: DeniedError | None
) -> dict[str, Any]:
    """The ``agentguard.budget.*`` span attributes of a decision's budgets."""
    attributes: dict[str, Any] = {
        tracing.AGENTGUARD_BUDGET_NAMES: [str(b["budget"]) for b in view],
        tracing.AGENTGUARD_BUDGET_RESETS_AT: min(int(b["resets_at"]) for b in view),
    }
    left = []
    for b in view:
        pieces = []
        if "calls" in b:
            pieces.append(f"{b['calls']['limit'] - b['calls']['used']} calls left")
        for name, sums in b.get("sum", {}).items():
            pieces.append(f"{name} {sums['used']} of {sums['limit']}")
        left.append(f"{b['budget']}: {', '.join(pieces)}")
    attributes[tracing.AGENTGUARD_BUDGET_STATE] = left
    if isinstance(error, BudgetExhausted):
        attributes[tracing.AGENTGUARD_BUDGET_EXHAUSTED] = error.budget
        attributes[tracing.AGENTGUARD_BUDGET_RESETS_AT] = int(error.resets_at)
    return attributes


# -- approval helpers ---------------------------------------------------------------------


def grant_demands(
    policy: Policy, chain: VerifiedChain, rules: Sequence[tuple[int, int]]
) -> list[Demand]:
    """The approval demands of the grants' approval rules (``(link, rule)`` pairs)."""
    return [
        Demand(
            f"link {link} rule {rule} ({chain.delegation.grants[link].scope[rule].describe()})",
            policy.approval.grant_rule_assurance,
            link,
        )
        for link, rule in rules
    ]


def policy_demands(policy: Policy, tool: str, args: Mapping[str, Any]) -> list[Demand]:
    """The policy's step-up demands on this call."""
    return [
        Demand(
            f"policy step_up rule {index} ({rule.describe()})",
            rule.min_assurance,
            # A policy step-up is demanded "by link 0" unless the rule
            # explicitly allows the chain's own people to approve.
            None if rule.allow_self_approval else 0,
        )
        for index, rule in policy.step_up_rules(tool, args)
    ]


def excluded_for(policy: Policy, chain: VerifiedChain, demands: Sequence[Demand]) -> frozenset[str]:
    """Approvers separation of duties rules out for these demands (none when it is off)."""
    if not policy.approval.separation_of_duties:
        return frozenset()
    links = [d.link for d in demands if d.link is not None]
    return excluded_approvers(chain.delegation.grants, links)


def _open_answer(parts: Parts, cdigest: str, min_level: str, now: float) -> ApprovalRow | None:
    """The open request for this exact call, unless its answer no longer counts."""
    row = parts.store.approval_open(cdigest, now)
    if row is None or row.status not in ("approved", "used"):
        return row
    level = receipt_assurance(row)
    if level is not None and not assurance_at_least(level, min_level):
        # An answer given at less assurance than the call demands now (the policy
        # was tightened, or a weaker channel answered) is set aside and burned; a
        # new request is filed rather than refusing this call forever. Anything
        # else about the receipt is judged by verify_receipt, which fails closed.
        log.info("approval %s (assurance %s) is below %s: asking again", row.id, level, min_level)
        if row.status == "approved":
            parts.store.approval_burn(row.id, now)
        return None
    if (
        row.answered_at is not None
        and now
        >= int(row.answered_at) + receipt_lifetime(parts.policy) + parts.policy.limits.leeway
    ):
        # Its receipt expired unused (or past reuse): ask again rather than
        # refuse this exact call forever with approval_expired.
        return None
    return row


def new_request(
    parts: Parts, state: _State, cdigest: str, min_level: str, excluded: frozenset[str]
) -> ApprovalRequest:
    """A new approval request for this call; refused if its arguments cannot be shown whole."""
    chain, tool, now = state.verified, state.request.tool, parts.clock.now()
    limit = parts.policy.approval.display_limit
    try:
        shown = approval_arguments(state.args, parts.policy.redact)
        size: int | None = display_size(shown, stop_after=limit)
    except ValueError:
        size = None
    if size is None or size > limit:
        # The approver sees every argument and character, or the call is refused.
        too_big = "nest too deeply" if size is None else f"take more than {limit} characters"
        raise DeniedError(
            f"{tool} needs approval, but its arguments {too_big} to show "
            "(approval.display_limit); refused rather than shown in part",
            reason=Reason.APPROVAL_DISPLAY_LIMIT,
        )
    links = link_assertions(chain.delegation.grants)
    # The summary fields hold only what no agent asserted; every link's claims
    # are in ``links``, shown with who asserted them.
    sponsor, purpose = accountable_claims(links)
    trace_id, span_id = tracing.current_ids()
    return ApprovalRequest(
        id=ApprovalBook.new_id(),
        decision_id=state.id,
        call_digest=cdigest,
        tool=tool,
        args_display=shown,
        path=chain.path,
        requester=chain.holder.id,
        on_behalf_of=sponsor,
        purpose=purpose,
        links=links,
        rules=state.approval_rules,
        min_assurance=min_level,
        excluded=tuple(sorted(excluded)),
        budgets=tuple(request_budgets(state.charges)),
        created_at=now,
        deadline=now + parts.policy.approval.timeout,
        trace_id=trace_id,
        span_id=span_id,
    )


def _use_answer(
    parts: Parts,
    state: _State,
    answer: Answer,
    cdigest: str,
    min_level: str,
    excluded: frozenset[str],
) -> Approval:
    """The verified approval in ``answer``, or the refusal it amounts to."""
    if isinstance(answer, BaseException):
        if isinstance(answer, DeniedError):
            raise answer
        if isinstance(answer, StoreError):  # who may answer, or the row, could not be read
            raise DeniedError(str(answer), reason=Reason.STORE_ERROR)
        raise DeniedError(
            f"approval channel failed: {type(answer).__name__}",
            reason=Reason.APPROVAL_UNAVAILABLE,
        )
    if answer is None or answer.status == "pending":
        raise DeniedError("no approval arrived before the deadline", reason=Reason.APPROVAL_TIMEOUT)
    chain = state.verified
    receipt = parts.approvals.verify_receipt(
        answer, expected_digest=cdigest, chain=chain, required=min_level, excluded=excluded
    )
    rejected = answer.status == "rejected" or receipt.decision != "approve"
    tracing.approval_resolved(
        answer.id, "rejected" if rejected else "approved", receipt.channel, answer.request
    )
    if rejected:
        parts.store.approval_burn(answer.id, parts.clock.now())
        message = f": {receipt.message}" if receipt.message else ""
        raise ApprovalRejected(
            f"{receipt.approver} rejected the call{message}",
            request_id=answer.id,
            message=receipt.message,
            approver=receipt.approver,
        )
    edited: dict[str, Any] | None = None
    if receipt.edited_args is not None:
        edited = restore_redacted(receipt.edited_args, state.args, parts.policy.redact)
        _check_edit(parts, chain, state.request.tool, edited, receipt.approver, receipt.assurance)
    return Approval(
        request_id=answer.id,
        approver=receipt.approver,
        channel=receipt.channel,
        assurance=receipt.assurance,
        message=receipt.message,
        receipt=answer.receipt,
        edited_args=edited,
        edited_digest=_digest_of_edit(edited),
    )


def _check_edit(
    parts: Parts,
    chain: VerifiedChain,
    tool: str,
    edited: Mapping[str, Any],
    approver: str,
    assurance: str,
) -> None:
    """An edit re-runs the decision on the edited arguments; this receipt must meet it."""
    match = parts.verifier.authorize(chain, tool, edited)
    parts.policy.check_deny(tool, edited)
    demands = [
        *grant_demands(parts.policy, chain, match.approval_rules),
        *policy_demands(parts.policy, tool, edited),
    ]
    if approver in excluded_for(parts.policy, chain, demands):
        raise DeniedError(
            f"{approver} may not approve the edited call (separation of duties)",
            reason=Reason.SEPARATION_OF_DUTIES,
        )
    for rule, level, _ in demands:
        if not assurance_at_least(assurance, level):
            raise DeniedError(
                f"the edited call needs assurance '{level}' ({rule}), but the "
                f"approval has '{assurance}'",
                reason=Reason.APPROVAL_ASSURANCE,
            )


def _digest_of_edit(edited: Mapping[str, Any] | None) -> str | None:
    if edited is None:
        return None
    try:
        return args_digest(edited)
    except ValueError as exc:
        raise DeniedError(
            "the approved edit is not canonical JSON", reason=Reason.INVALID_ARGUMENTS
        ) from exc


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
