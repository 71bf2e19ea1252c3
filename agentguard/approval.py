"""Step-up approval: requests, signed receipts and the channels that collect them.

A request is persisted as *pending* with the exact call digest (tool, argument
digest, leaf link id), a redacted view of the arguments, the delegation path,
the rules that asked for approval and a deadline. The answer is a receipt, a
JWS of type ``agentguard-approval+jwt``:

* signed by the approver's own key (the CLI queue; assurance ``signed``), or
* signed by the guard's key on behalf of a channel that authenticated the
  human in its own way (terminal: ``local``; web page with a per-approver
  token: ``authenticated``; an answer typed into the agent's own client:
  ``agent``).

Before a tool runs the guard verifies the receipt (:meth:`ApprovalBook.verify_receipt`)
and burns it atomically. A resume value from a framework is never trusted by
itself: only the stored, signed receipt counts.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agentguard import _jws
from agentguard.addresses import pattern_matches
from agentguard.audit import REDACTED, sets_redacted_field
from agentguard.clock import Clock, format_duration
from agentguard.errors import AgentGuardError, DeniedError, IdentityError, TokenFormatError
from agentguard.keys import Identity, Keyring, Principal
from agentguard.policy import ASSURANCE_LEVELS, Policy, assurance_at_least
from agentguard.store.base import ApprovalRow, ApprovalStore
from agentguard.tokens import TYP_APPROVAL, args_digest, new_jti

if TYPE_CHECKING:
    from agentguard.verify import VerifiedChain

__all__ = [
    "ApprovalBook",
    "ApprovalRequest",
    "CallbackChannel",
    "Channel",
    "NoChannel",
    "QueueChannel",
    "Receipt",
    "TerminalChannel",
    "call_digest",
    "receipt_lifetime",
]

RECEIPT_TTL = 600


def receipt_lifetime(policy: Policy) -> int:
    """How long a receipt lives: ten minutes, or the reuse window when that is longer."""
    return int(max(RECEIPT_TTL, policy.approval.reusable_for))


def call_digest(tool: str, args_hash: str, leaf_link_id: str) -> str:
    """Digest an approval binds: the tool, the canonical arguments and the leaf link."""
    return _jws.canonical_digest({"tool": tool, "args": args_hash, "link": leaf_link_id})


@dataclass(frozen=True)
class ApprovalRequest:
    """What a human reviewer is asked to approve, in words they can judge."""

    id: str
    decision_id: str
    call_digest: str
    tool: str
    args_display: dict[str, Any]
    path: tuple[str, ...]
    requester: str
    on_behalf_of: str | None
    purpose: str | None
    rules: tuple[str, ...]
    min_assurance: str
    created_at: float
    deadline: float
    status: str = "pending"
    reusable_until: float | None = None
    message: str | None = None
    approver: str | None = None
    #: Trace and span (hex) of the call that filed the request, for a span link.
    trace_id: str | None = None
    span_id: str | None = None

    @classmethod
    def from_row(cls, row: ApprovalRow) -> ApprovalRequest:
        """Rebuild a request from its stored row (status from the row)."""
        data = row.request
        receipt = _peek_receipt(row.receipt) if row.receipt else {}
        return cls(
            id=row.id,
            decision_id=str(data.get("decision_id", "")),
            call_digest=row.call_digest,
            tool=str(data.get("tool", "")),
            args_display=dict(data.get("args_display", {})),
            path=tuple(data.get("path", ())),
            requester=str(data.get("requester", "")),
            on_behalf_of=data.get("on_behalf_of"),
            purpose=data.get("purpose"),
            rules=tuple(data.get("rules", ())),
            min_assurance=str(data.get("min_assurance", "signed")),
            created_at=row.created_at,
            deadline=row.deadline,
            status=row.status,
            reusable_until=row.reusable_until,
            message=receipt.get("msg"),
            approver=receipt.get("approver"),
            trace_id=data.get("trace_id"),
            span_id=data.get("span_id"),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored/transported form (no secrets: arguments are redacted)."""
        data: dict[str, Any] = {
            "decision_id": self.decision_id,
            "tool": self.tool,
            "args_display": self.args_display,
            "path": list(self.path),
            "requester": self.requester,
            "on_behalf_of": self.on_behalf_of,
            "purpose": self.purpose,
            "rules": list(self.rules),
            "min_assurance": self.min_assurance,
        }
        if self.trace_id and self.span_id:
            data["trace_id"], data["span_id"] = self.trace_id, self.span_id
        return data

    def state(self, now: float) -> str:
        """``pending``, ``expired``, ``approved``, ``rejected``, ``used`` or ``closed``."""
        if self.status == "pending" and now >= self.deadline:
            return "expired"
        return self.status

    def describe(self, now: float | None = None) -> str:
        """A reviewer-friendly paragraph: who wants to do what, for whom, and why it asks."""
        sponsor = f" on behalf of {self.on_behalf_of}" if self.on_behalf_of else ""
        lines = [
            f"{self.requester}{sponsor} wants to call {self.tool}",
            "  with " + (_show_args(self.args_display) or "no arguments"),
            "  delegated by " + " -> ".join(self.path),
        ]
        if self.purpose:
            lines.append(f"  purpose: {self.purpose}")
        lines.append("  approval required by " + "; ".join(self.rules))
        if now is not None:
            left = self.deadline - now
            lines.append(
                f"  answer within {format_duration(left)}" if left > 0 else "  deadline passed"
            )
        return "\n".join(lines)


def _show_args(args: Mapping[str, Any]) -> str:
    parts = []
    for key, value in list(args.items())[:20]:
        text = repr(value)
        parts.append(f"{key}={text if len(text) <= 80 else text[:77] + '...'}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Receipt:
    """A verified approval receipt."""

    request_id: str
    approver: str
    decision: str
    assurance: str
    channel: str
    message: str | None
    edited_args: dict[str, Any] | None = field(default=None)


def _peek_receipt(token: str) -> dict[str, Any]:
    try:
        return _jws.peek(token, TYP_APPROVAL)[1]
    except AgentGuardError:
        return {}


class Channel(Protocol):
    """Where approval requests go. ``deliver`` must return quickly unless it is
    the channel's nature to ask interactively (terminal); answers come back
    through the :class:`ApprovalBook` (possibly from another process).

    A channel may declare ``assurance``, the highest level its answers carry;
    the guard then refuses at once a request that needs more, instead of
    letting a human answer in vain until the deadline.
    """

    name: str

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Hand the request to the humans (or refuse with ``DeniedError``)."""
        ...


class NoChannel:
    """The default: nobody can be asked, so approval-required calls are denied."""

    name = "none"

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Refuse at once with reason ``approval_unavailable``."""
        raise DeniedError(
            f"{request.tool} needs approval and no approval channel is configured",
            reason="approval_unavailable",
        )


class QueueChannel:
    """Requests wait in the store; humans answer with ``agentguard approvals approve|deny``."""

    name = "queue"
    assurance = "signed"

    def __init__(self, announce: Callable[[ApprovalRequest], None] | None = None) -> None:
        self._announce = announce

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Nothing to send: the pending request is in the store already."""
        if self._announce is not None:
            self._announce(request)


class CallbackChannel:
    """Calls a function with each request; for tests and custom integrations.

    The function may answer at once through the book (``book.answer(...)`` or
    ``book.approve(...)``), later from elsewhere, or raise to refuse. An async
    function is awaited by the async driver (and run to completion by the sync
    one in a private event loop).
    """

    name = "callback"

    def __init__(
        self,
        callback: Callable[[ApprovalRequest, ApprovalBook], Awaitable[None] | None],
        *,
        name: str = "callback",
    ) -> None:
        self._callback = callback
        self.name = name

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Run the callback (an async one is driven to completion here)."""
        result = self._callback(request, book)
        if result is not None:
            import anyio

            async def wait() -> None:
                await result

            anyio.run(wait)

    async def adeliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Run the callback, awaiting it when it is async."""
        result = self._callback(request, book)
        if result is not None:
            await result


class TerminalChannel:
    """Asks the person at this terminal; only when stdin is a TTY (assurance ``local``)."""

    name = "terminal"
    #: The highest assurance an answer through this channel can carry.
    assurance = "local"

    def __init__(self, approver: str, *, stdin: Any = None, stdout: Any = None) -> None:
        self.approver = approver
        self._stdin = stdin
        self._stdout = stdout

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Prompt and record the answer, or refuse when there is no terminal."""
        stdin = self._stdin or sys.stdin
        stdout = self._stdout or sys.stderr
        if not (hasattr(stdin, "isatty") and stdin.isatty()):
            raise DeniedError(
                "approval by terminal prompt needs an interactive terminal (stdin is not a TTY)",
                reason="approval_unavailable",
            )
        stdout.write("\n" + request.describe(book.clock.now()) + "\n")
        stdout.write(f"Approve as {self.approver}? [y/N/message to deny] ")
        stdout.flush()
        answer = (stdin.readline() or "").strip()
        approve = answer.lower() in ("y", "yes")
        book.answer(
            request.id,
            approver=self.approver,
            approve=approve,
            message=None if approve or answer.lower() in ("", "n", "no") else answer,
            channel="terminal",
            assurance="local",
        )


class ApprovalBook:
    """The approval side of a guard: files requests, records answers, checks receipts.

    It is reachable as ``guard.approvals``; the CLI builds one over the same
    store to approve from another process.
    """

    def __init__(
        self,
        store: ApprovalStore,
        *,
        policy: Policy,
        guard_identity: Identity,
        clock: Clock,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.guard_identity = guard_identity
        self.clock = clock
        self.keyring = keyring

    # -- reading --------------------------------------------------------------
    def get(self, request_id: str) -> ApprovalRequest:
        """One request by id.

        Raises:
            AgentGuardError: no such request.
        """
        row = self.store.approval_get(request_id)
        if row is None:
            raise AgentGuardError(f"no approval request {request_id!r}")
        return ApprovalRequest.from_row(row)

    def pending(self) -> list[ApprovalRequest]:
        """Requests still waiting for an answer (deadline not passed)."""
        now = self.clock.now()
        rows = self.store.approval_list("pending")
        return [ApprovalRequest.from_row(r) for r in rows if r.deadline > now]

    def all(self) -> list[ApprovalRequest]:
        """Every request, newest first."""
        return [ApprovalRequest.from_row(r) for r in self.store.approval_list()]

    # -- filing -----------------------------------------------------------------
    def file(self, request: ApprovalRequest) -> ApprovalRequest:
        """Persist a new pending request."""
        self.store.approval_insert(
            ApprovalRow(
                id=request.id,
                created_at=request.created_at,
                deadline=request.deadline,
                status="pending",
                call_digest=request.call_digest,
                request=request.to_json(),
            )
        )
        return request

    @staticmethod
    def new_id() -> str:
        """A short, unguessable request id."""
        return "apr_" + secrets.token_urlsafe(9)

    def withdraw(self, request_id: str) -> bool:
        """Close a pending request without an answer (its call will ask again).

        Returns ``False`` when the request was no longer pending.
        """
        return self.store.approval_answer(
            request_id,
            status="closed",
            receipt="",
            answered_at=self.clock.now(),
            reusable_until=None,
        )

    # -- answering ----------------------------------------------------------------
    def approve(
        self,
        request_id: str,
        approver: Identity,
        *,
        message: str | None = None,
        edited_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Approve with the approver's own key (assurance ``signed``); returns the receipt.

        Raises:
            DeniedError: the approver may not approve this request, or it is
                no longer pending.
        """
        return self._sign_answer(
            request_id,
            signer=approver,
            approver_id=approver.id,
            approve=True,
            message=message,
            edited_args=edited_args,
            channel="queue",
            assurance="signed",
        )

    def deny(self, request_id: str, approver: Identity, *, message: str | None = None) -> str:
        """Reject with the approver's own key; the message goes back to the caller.

        Raises:
            DeniedError: the approver may not answer this request, or it is
                no longer pending.
        """
        return self._sign_answer(
            request_id,
            signer=approver,
            approver_id=approver.id,
            approve=False,
            message=message,
            edited_args=None,
            channel="queue",
            assurance="signed",
        )

    def answer(
        self,
        request_id: str,
        *,
        approver: str,
        approve: bool,
        channel: str,
        assurance: str,
        message: str | None = None,
        edited_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Record an answer a channel collected; the guard's key attests it.

        ``assurance`` says how the channel identified the human; it is checked
        against the policy when the receipt is used.

        Raises:
            DeniedError: the approver may not answer this request, or it is
                no longer pending.
        """
        if assurance not in ASSURANCE_LEVELS or assurance == "signed":
            raise ValueError("a channel attests at most 'authenticated' assurance")
        return self._sign_answer(
            request_id,
            signer=self.guard_identity,
            approver_id=approver,
            approve=approve,
            message=message,
            edited_args=edited_args,
            channel=channel,
            assurance=assurance,
        )

    def _sign_answer(
        self,
        request_id: str,
        *,
        signer: Identity,
        approver_id: str,
        approve: bool,
        message: str | None,
        edited_args: Mapping[str, Any] | None,
        channel: str,
        assurance: str,
    ) -> str:
        request = self.get(request_id)
        now = self.clock.now()
        if request.state(now) != "pending":
            raise DeniedError(
                f"approval request {request_id} is {request.state(now)}, not pending",
                reason="approval_closed",
            )
        # Refuse at once what the guard would refuse later, so humans are not misled.
        self._check_approver(request, approver_id, assurance)
        claims: dict[str, Any] = {
            "ver": 1,
            "iss": signer.id,
            "approver": approver_id,
            "req": request_id,
            "call": request.call_digest,
            "decision": "approve" if approve else "reject",
            "iat": int(now),
            "exp": int(now) + receipt_lifetime(self.policy),
            "jti": new_jti(),
            "channel": channel,
            "assurance": assurance,
        }
        if message:
            claims["msg"] = message[:500]
        if edited_args is not None:
            if sets_redacted_field(edited_args, self.policy.redact):
                raise DeniedError(
                    "an edit may not set a redacted field; leave it as "
                    f"{REDACTED!r} to keep the caller's value",
                    reason="approval_invalid",
                )
            claims["edited"] = args_digest(edited_args)
            claims["edited_args"] = dict(edited_args)
        token = _jws.sign(claims, signer, TYP_APPROVAL)
        reusable = self.policy.approval.reusable_for
        if not self.store.approval_answer(
            request_id,
            status="approved" if approve else "rejected",
            receipt=token,
            answered_at=now,
            reusable_until=now + reusable if approve and reusable else None,
        ):
            raise DeniedError(
                f"approval request {request_id} was answered or expired meanwhile",
                reason="approval_closed",
            )
        return token

    def _check_approver(self, request: ApprovalRequest, approver_id: str, assurance: str) -> None:
        entry = self.policy.approver(approver_id)
        if entry is None:
            raise DeniedError(
                f"{approver_id} is not an approver in the policy", reason="approver_not_authorized"
            )
        if not any(pattern_matches(p, request.tool) for p in entry.tools):
            raise DeniedError(
                f"{approver_id} may not approve {request.tool}", reason="approver_not_authorized"
            )
        if self._revoked(principals=[approver_id]):
            raise DeniedError(f"{approver_id} is revoked", reason="approver_not_authorized")
        needed = max(
            entry.min_assurance, request.min_assurance, key=lambda lvl: ASSURANCE_LEVELS.index(lvl)
        )
        if not assurance_at_least(assurance, needed):
            raise DeniedError(
                f"an answer through this channel has assurance '{assurance}', "
                f"but '{needed}' is required",
                reason="approval_assurance",
            )
        if self.policy.approval.separation_of_duties:
            if not approver_id.startswith("user:"):
                raise DeniedError(
                    f"{approver_id} is not a human (user:) principal",
                    reason="separation_of_duties",
                )
            acting = {p for p in request.path if p.split(":", 1)[0] in ("agent", "service")}
            if approver_id == request.requester or approver_id in acting:
                raise DeniedError(
                    f"{approver_id} acts in the requesting chain and may not approve it",
                    reason="separation_of_duties",
                )

    def _revoked(self, *, kids: Sequence[str] = (), principals: Sequence[str] = ()) -> bool:
        """Whether an approver's key or principal is revoked (if the store records revocations)."""
        find = getattr(self.store, "find_revoked", None)
        return find is not None and find([], list(kids), list(principals)) is not None

    # -- using ----------------------------------------------------------------------
    def _approver_key(self, approver_id: str) -> Principal:
        entry = self.policy.approver(approver_id)
        if entry is not None and entry.public_key is not None:
            return Principal.from_jwk(approver_id, entry.public_key)
        if self.keyring is not None:
            try:
                return self.keyring.principal(approver_id)
            except IdentityError:
                pass
        raise DeniedError(
            f"no public key known for approver {approver_id}", reason="approver_not_authorized"
        )

    def verify_receipt(
        self, row: ApprovalRow, *, expected_digest: str, chain: VerifiedChain | None = None
    ) -> Receipt:
        """Check a stored receipt completely (signature, binding, time, authority).

        Raises:
            DeniedError: the receipt does not authorise this call.
        """
        if row.receipt is None:
            raise DeniedError("approval has no receipt", reason="approval_invalid")
        try:
            _, unverified = _jws.peek(row.receipt, TYP_APPROVAL)
            signer_id = str(unverified.get("iss"))
            approver_id = str(unverified.get("approver"))
            if signer_id == self.guard_identity.id:
                key = self.guard_identity.principal
            elif signer_id == approver_id:
                key = self._approver_key(approver_id)
                if self._revoked(kids=[key.kid]):
                    raise DeniedError(f"the signing key of {approver_id} is revoked")
            else:
                raise DeniedError("receipt signer is neither guard nor approver")
            claims = _jws.verify(row.receipt, key, TYP_APPROVAL)
        except TokenFormatError as exc:
            raise DeniedError(
                f"receipt is malformed: {exc.explanation}", reason="approval_invalid"
            ) from None
        except DeniedError as exc:
            raise DeniedError(
                f"receipt rejected: {exc.explanation}", reason="approval_invalid"
            ) from None
        now = self.clock.now()
        if claims.get("call") != expected_digest or claims.get("req") != row.id:
            raise DeniedError("receipt is bound to another call", reason="approval_mismatch")
        if row.call_digest != expected_digest:
            raise DeniedError("approval is for another call", reason="approval_mismatch")
        exp, iat = claims.get("exp"), claims.get("iat")
        leeway = self.policy.limits.leeway
        if not isinstance(exp, int) or not isinstance(iat, int) or iat > now + leeway:
            raise DeniedError("receipt has no valid issue time", reason="approval_invalid")
        if exp - iat > receipt_lifetime(self.policy):
            raise DeniedError("receipt claims too long a lifetime", reason="approval_invalid")
        if now >= exp + leeway:
            raise DeniedError("receipt has expired", reason="approval_expired")
        assurance = str(claims.get("assurance"))
        if signer_id != self.guard_identity.id:
            assurance = "signed"
        request = ApprovalRequest.from_row(row)
        self._check_approver(request, approver_id, assurance)
        if chain is not None:
            self._check_chain(approver_id, chain)
        edited = claims.get("edited_args")
        try:  # args_digest raises ValueError on non-canonical JSON (found by tests/test_fuzz.py)
            edited_ok = edited is None or (
                isinstance(edited, dict) and args_digest(edited) == claims.get("edited")
            )
        except ValueError:
            edited_ok = False
        if not edited_ok:
            raise DeniedError(
                "edited arguments do not match the receipt", reason="approval_invalid"
            )
        return Receipt(
            request_id=row.id,
            approver=approver_id,
            decision=str(claims.get("decision")),
            assurance=assurance,
            channel=str(claims.get("channel")),
            message=claims.get("msg"),
            edited_args=edited,
        )

    def _check_chain(self, approver_id: str, chain: VerifiedChain) -> None:
        if not self.policy.approval.separation_of_duties:
            return
        acting = {p for p in chain.path if p.split(":", 1)[0] in ("agent", "service")}
        if approver_id in acting or approver_id == chain.holder.id:
            raise DeniedError(
                f"{approver_id} acts in the requesting chain and may not approve it",
                reason="separation_of_duties",
            )
