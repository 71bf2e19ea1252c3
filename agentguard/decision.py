"""What the guard decided about one call: :class:`Decision`, :class:`Outcome`, :class:`Reason`.

Every refusal, audit record and span carries a ``reason``: a stable,
low-cardinality code from :class:`Reason`. Both enums are ``StrEnum`` s, so a
reason compares equal to its plain string (``Reason.REVOKED == "revoked"``)
and is written to JSON as that string.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Decision", "Outcome", "Reason"]


class Outcome(StrEnum):
    """What happens to the call."""

    ALLOW = "allow"
    DENY = "deny"
    #: A human must approve it first.
    APPROVAL_REQUIRED = "approval_required"


class Reason(StrEnum):
    """Every reason code agentguard emits (in decisions, errors, audit records, spans)."""

    # -- allowed ------------------------------------------------------------------
    ALLOWED = "allowed"
    """Every link of the chain admits the call and no rule demands approval."""
    APPROVED = "approved"
    """A human approved the call; the receipt was verified and spent."""
    # -- the delegation chain and its tokens ---------------------------------------
    MALFORMED_TOKEN = "malformed_token"
    """A token or delegation string does not parse."""
    BAD_VERSION = "bad_version"
    """A token of a format version this release does not read."""
    BAD_ALGORITHM = "bad_algorithm"
    """A token signed with an algorithm other than EdDSA."""
    BAD_SIGNATURE = "bad_signature"
    """A signature does not verify."""
    WRONG_TOKEN_TYPE = "wrong_token_type"
    """A token of another type where this one was expected."""
    OVERSIZED = "oversized"
    """A token, chain, argument set or MCP upstream answer larger than the limits allow."""
    DEPTH_EXCEEDED = "depth_exceeded"
    """Arguments or a predicate nested deeper than the limits allow."""
    CHAIN_TOO_LONG = "chain_too_long"
    """More links than the verifier accepts."""
    BROKEN_CHAIN = "broken_chain"
    """A link is not issued by the subject of the link before it."""
    UNTRUSTED_ROOT = "untrusted_root"
    """The root is not signed by a trusted root key."""
    WIDENED_WINDOW = "widened_window"
    """A link's validity window reaches outside its parent's."""
    LINK_EXPIRED = "link_expired"
    """A link has expired."""
    LINK_NOT_YET_VALID = "link_not_yet_valid"
    """A link is not valid yet."""
    REVOKED = "revoked"
    """A link, key, principal or sponsor of the chain is revoked."""
    POLICY_LIMIT = "policy_limit"
    """The chain breaks a policy limit (length, lifetime, purpose, sponsor)."""
    # -- the call ------------------------------------------------------------------
    INVALID_TOOL = "invalid_tool"
    """A tool address that is not well formed."""
    INVALID_ARGUMENTS = "invalid_arguments"
    """Arguments that are not canonical JSON, or do not fit the tool's input schema."""
    UNSUPPORTED_ARGUMENTS = "unsupported_arguments"
    """Arguments that are not JSON values at all."""
    OUT_OF_SCOPE = "out_of_scope"
    """No rule of some link names the tool."""
    PREDICATE_FAILED = "predicate_failed"
    """A rule names the tool, but its argument predicate is false or cannot be decided."""
    POLICY_DENIED = "policy_denied"
    """A policy deny rule forbids the call."""
    BUDGET_EXHAUSTED = "budget_exhausted"
    """The call would exceed a budget of its chain or policy in this window."""
    BUDGET_UNMEASURABLE = "budget_unmeasurable"
    """A budgeted sum's argument is missing, not a number, negative or not finite."""
    DENIED = "denied"
    """A refusal without a more specific code."""
    # -- call tokens ----------------------------------------------------------------
    MISSING_CALL_TOKEN = "missing_call_token"
    """No call token and no holder identity to sign one."""
    CALL_TOKEN_SIGNER = "call_token_signer"
    """The call token is not signed by the chain's holder."""
    CALL_TOKEN_MISMATCH = "call_token_mismatch"
    """The call token binds another tool, arguments or chain."""
    CALL_TOKEN_EXPIRED = "call_token_expired"
    """The call token has expired."""
    CALL_TOKEN_LIFETIME = "call_token_lifetime"
    """The call token lives longer than the policy allows."""
    CALL_TOKEN_REPLAYED = "call_token_replayed"
    """The call token was used already."""
    # -- approvals ------------------------------------------------------------------
    APPROVAL_REQUIRED = "approval_required"
    """A dry run: the call would need approval."""
    APPROVAL_PENDING = "approval_pending"
    """Approval was requested and has not arrived yet."""
    APPROVAL_REJECTED = "approval_rejected"
    """A human rejected the call."""
    APPROVAL_TIMEOUT = "approval_timeout"
    """No answer arrived before the request's deadline."""
    APPROVAL_EXPIRED = "approval_expired"
    """The approval's receipt expired before the call used it."""
    APPROVAL_REPLAYED = "approval_replayed"
    """The approval's receipt was used already."""
    APPROVAL_MISMATCH = "approval_mismatch"
    """The receipt approves another call."""
    APPROVAL_INVALID = "approval_invalid"
    """The receipt does not verify."""
    APPROVAL_CLOSED = "approval_closed"
    """The request was answered or closed already."""
    APPROVAL_UNAVAILABLE = "approval_unavailable"
    """No channel can ask a human, or the channel failed."""
    APPROVAL_ASSURANCE = "approval_assurance"
    """The answer's assurance is below what the call demands."""
    APPROVAL_DISPLAY_LIMIT = "approval_display_limit"
    """The arguments are too large to show an approver in full."""
    APPROVER_NOT_AUTHORIZED = "approver_not_authorized"
    """The answer comes from someone who may not approve this call."""
    NO_APPROVER = "no_approver"
    """Nobody in the policy could approve this call: it is refused without waiting."""
    SEPARATION_OF_DUTIES = "separation_of_duties"
    """The answer comes from someone in the chain below the demanding link."""
    # -- the guard itself -------------------------------------------------------------
    STORE_ERROR = "store_error"
    """The state store failed; nothing runs."""
    AUDIT_ERROR = "audit_error"
    """The audit record could not be written; nothing runs."""
    # -- adapters ---------------------------------------------------------------------
    NO_CREDENTIALS = "no_credentials"
    """An HTTP caller presented no delegation."""
    UNKNOWN_TOOL = "unknown_tool"
    """The call names no tool the enforcement point knows."""
    INJECTED_ARGUMENT = "injected_argument"
    """A model-written call sets a parameter only the application may set."""
    UNDECIDED_ARGUMENTS = "undecided_arguments"
    """What would run differs from what was decided; it does not run."""
    ALREADY_RAN = "already_ran"
    """The same call already ran in an earlier attempt of the same graph step."""
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    """The MCP proxy cannot reach the server behind it, or it did not answer in time."""
    NAME_COLLISION = "name_collision"
    """Two upstream tools would be exposed under one name; neither is."""
    TOOL_CHANGED = "tool_changed"
    """An upstream tool's definition changed since it was pinned."""


@dataclass(frozen=True)
class Decision:
    """What the guard decided about one call, and why.

    ``outcome`` is an :class:`Outcome`; ``reason`` a :class:`Reason` code;
    ``explanation`` operator text naming the link and rule (never token
    content; a refused predicate names the failing argument with its value
    redacted as the policy's ``redact`` says). Show a model only the reason
    code and decision id.
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
        return self.outcome == Outcome.ALLOW

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for ``--json`` output)."""
        return {
            "decision_id": self.id,
            "outcome": str(self.outcome),
            "reason": str(self.reason),
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
        color = {"allow": "#1a7f37", "deny": "#cf222e"}.get(self.outcome, "#9a6700")
        return (
            f'<div style="font-family:sans-serif"><b style="color:{color}">'
            f"{html.escape(self.outcome.upper())}</b> {html.escape(self.tool)} "
            f"<code>{html.escape(self.reason)}</code><br><small>"
            f"{html.escape(self.explanation)}<br>{html.escape(' -> '.join(self.path))} "
            f"&middot; decision {html.escape(self.id)}</small></div>"
        )


def with_audit_seq(decision: Decision, seq: int) -> Decision:
    """``dataclasses.replace(decision, audit_seq=seq)``, without its per-field work.

    Runs once per decision on the guard's hot path. :class:`Decision` has no
    ``__post_init__`` and no slots: a copy of the instance dictionary is the
    whole object (``tests/test_decision_copy.py`` holds the two equal).
    """
    copy = object.__new__(type(decision))
    copy.__dict__.update(decision.__dict__)
    copy.__dict__["audit_seq"] = seq
    return copy
