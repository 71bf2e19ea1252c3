"""The exception hierarchy of agentguard.

Everything the library raises on purpose derives from :class:`AgentGuardError`.
:class:`DeniedError` is the family adapters catch: every way a call can be
refused (bad token, out of scope, revoked, approval missing) is a leaf of it and
carries a machine-readable ``reason`` code.

Messages never contain token text or argument values: they may reach a model or
a log the caller controls. Details for the operator go into ``explanation``
(audit log, CLI), which names links and rules but still no secret material.
"""

from __future__ import annotations

from agentguard.decision import Reason

__all__ = [
    "AgentGuardError",
    "ApprovalPending",
    "ApprovalRejected",
    "ConfigError",
    "DeniedError",
    "IdentityError",
    "InvalidAddressError",
    "IssuanceError",
    "PredicateError",
    "StoreError",
    "TokenFormatError",
]


class AgentGuardError(Exception):
    """Root of every error agentguard raises deliberately."""


class ConfigError(AgentGuardError):
    """A policy file, key file or setting is missing or malformed."""


class IdentityError(AgentGuardError):
    """A principal id, key or keyring entry is invalid or unusable."""


class StoreError(AgentGuardError):
    """The state store (revocations, nonces, audit, approvals) failed.

    The guard treats this as a reason to refuse the call: it fails closed.
    """


class IssuanceError(AgentGuardError, ValueError):
    """A grant cannot be issued as asked (it would widen its parent, or is malformed)."""


class InvalidAddressError(AgentGuardError, ValueError):
    """A tool address or tool pattern does not follow the ``namespace/tool`` grammar."""


class PredicateError(AgentGuardError, ValueError):
    """A predicate is malformed.

    ``path`` locates the offending part (e.g. ``$[1][2]`` in the canonical form
    or ``amount.<=`` in the friendly form).
    """

    def __init__(self, message: str, *, path: str = "$") -> None:
        super().__init__(f"{message} (at {path})")
        self.path = path
        self.detail = message


class DeniedError(AgentGuardError):
    """A call, token or approval was refused.

    Attributes:
        reason: low-cardinality machine-readable code, e.g. ``link_expired``.
        explanation: operator-facing detail naming the link and rule involved.
        link: index of the link (0 = root) that decided, when one did.
        rule: index of the rule inside that link, when one did.
        decision_id: the guard's decision id, once a decision was recorded.
    """

    default_reason = Reason.DENIED

    def __init__(
        self,
        explanation: str,
        *,
        reason: str | None = None,
        link: int | None = None,
        rule: int | None = None,
        decision_id: str | None = None,
    ) -> None:
        self.reason = reason or self.default_reason
        self.explanation = explanation
        self.link = link
        self.rule = rule
        self.decision_id = decision_id
        super().__init__(f"{self.reason}: {explanation}")

    @property
    def short(self) -> str:
        """What may be shown to an agent or model: the code and the decision id only."""
        if self.decision_id:
            return f"denied by agentguard ({self.reason}, decision {self.decision_id})"
        return f"denied by agentguard ({self.reason})"


class TokenFormatError(DeniedError):
    """A token or delegation string could not be parsed (before any cryptography)."""

    default_reason = Reason.MALFORMED_TOKEN


class ApprovalPending(DeniedError):
    """The call needs a human approval that has not arrived yet.

    Raised in non-blocking mode. ``request_id`` names the pending approval
    request; submit the same call again once it is approved.
    """

    default_reason = Reason.APPROVAL_PENDING

    def __init__(
        self,
        explanation: str,
        *,
        request_id: str,
        decision_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(explanation, reason=reason, decision_id=decision_id)
        self.request_id = request_id

    @property
    def short(self) -> str:
        return f"approval pending, id={self.request_id}"


class ApprovalRejected(DeniedError):
    """A human rejected the call; ``message`` carries their words back to the caller."""

    default_reason = Reason.APPROVAL_REJECTED

    def __init__(
        self,
        explanation: str,
        *,
        request_id: str,
        message: str | None = None,
        approver: str | None = None,
        decision_id: str | None = None,
    ) -> None:
        super().__init__(explanation, decision_id=decision_id)
        self.request_id = request_id
        self.message = message
        self.approver = approver

    @property
    def short(self) -> str:
        note = f": {self.message}" if self.message else ""
        return f"rejected by {self.approver or 'the approver'}{note} (request {self.request_id})"
