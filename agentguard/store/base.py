"""The store protocols the verifier and the guard depend on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from agentguard.budgets import BudgetState, Charge
    from agentguard.delegation import Delegation

__all__ = [
    "GENESIS_HASH",
    "ApprovalRow",
    "ApprovalStore",
    "AuditEntry",
    "BudgetStore",
    "Checkpoint",
    "Durability",
    "GrantRecord",
    "HeadSigner",
    "PinStore",
    "ReplayStore",
    "Revocation",
    "RevocationKind",
    "RevocationStore",
    "Store",
    "entry_hash",
]

RevocationKind = Literal["link", "key", "principal"]
REVOCATION_KINDS: tuple[RevocationKind, ...] = ("link", "key", "principal")


@dataclass(frozen=True)
class Revocation:
    """One revoked link id, key thumbprint or principal id."""

    kind: RevocationKind
    value: str
    reason: str
    revoked_at: float


class RevocationStore(Protocol):
    """Where revocations are recorded and looked up (on every call)."""

    def revoke(self, kind: RevocationKind, value: str, *, reason: str, at: float) -> None:
        """Record a revocation (idempotent)."""
        ...

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        """The first revocation that hits any of the given values, if any."""
        ...

    def revocations(self) -> list[Revocation]:
        """Every revocation, oldest first."""
        ...


class ReplayStore(Protocol):
    """Remembers single-use ids (call tokens, receipts) until they expire."""

    def consume(self, key: str, expires_at: float, *, now: float) -> bool:
        """Mark ``key`` used; ``True`` the first time, ``False`` ever after (until expiry).

        ``now`` (from the caller's clock) decides which remembered ids have expired.
        """
        ...

    def is_consumed(self, key: str, *, now: float) -> bool:
        """Whether ``key`` was used and is still remembered (read only)."""
        ...


@dataclass(frozen=True)
class GrantRecord:
    """A grant as the issuer's inventory remembers it."""

    link_id: str
    parent: str | None
    issuer: str
    subject: str
    issued_at: int
    not_before: int
    expires_at: int
    purpose: str | None
    on_behalf_of: str | None
    rules: tuple[str, ...]
    chain: str
    last_used: float | None = None
    revoked: bool = False

    @classmethod
    def of_chain(cls, delegation: Delegation) -> list[GrantRecord]:
        """The inventory records of every link of ``delegation``, root first."""
        chain = delegation.serialize().split("~")
        return [
            cls(
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
                chain="~".join(chain[: index + 1]),
            )
            for index, grant in enumerate(delegation)
        ]

    def status(self, now: float) -> str:
        """``revoked``, ``expired``, ``pending`` (not yet valid) or ``active``."""
        if self.revoked:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if now < self.not_before:
            return "pending"
        return "active"

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-friendly view (no token material)."""
        return {
            "link_id": self.link_id,
            "parent": self.parent,
            "issuer": self.issuer,
            "subject": self.subject,
            "issued_at": self.issued_at,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
            "purpose": self.purpose,
            "on_behalf_of": self.on_behalf_of,
            "rules": list(self.rules),
            "last_used": self.last_used,
            "status": self.status(now),
        }


def entry_hash(prev_hash: str, body: str) -> str:
    """Hash of an audit entry: SHA-256 over the previous hash and the canonical body."""
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(body.encode("utf-8"))
    return digest.hexdigest()


GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """One stored audit row: its position, canonical JSON body and chain hashes."""

    seq: int
    body: str
    prev: str
    hash: str


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the log had ``seq`` entries ending in ``head``."""

    seq: int
    head: str
    signed_at: float
    token: str


#: How far a store's writes survive: ``memory`` dies with the process; ``normal``
#: survives a crash of the process but may lose the newest commits on power loss;
#: ``full`` is on disk when a write returns.
Durability = Literal["memory", "normal", "full"]

#: Signs the head of the audit chain (sequence number, hash) and returns the token;
#: called inside the append's transaction.
HeadSigner = Callable[[int, str], str]


@dataclass(frozen=True)
class ApprovalRow:
    """A stored approval request and, once answered, its receipt.

    ``status`` is ``pending``, ``approved``, ``rejected`` or ``used``; a pending
    request past its deadline counts as expired.
    """

    id: str
    created_at: float
    deadline: float
    status: str
    call_digest: str
    request: dict[str, Any]
    receipt: str | None = None
    answered_at: float | None = None
    reusable_until: float | None = None
    uses: int = 0


class ApprovalStore(Protocol):
    """Pending approval requests and their receipts; burning is atomic."""

    def approval_insert(self, row: ApprovalRow) -> None:
        """Persist a new pending request."""
        ...

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        """One request by id."""
        ...

    def approval_list(self, status: str | None = None) -> list[ApprovalRow]:
        """Requests, newest first, optionally of one status."""
        ...

    def approval_open(self, call_digest: str, now: float) -> ApprovalRow | None:
        """A pending (in time), usable approved or undelivered rejected request for this call."""
        ...

    def approval_answer(
        self,
        request_id: str,
        *,
        status: str,
        receipt: str,
        answered_at: float,
        reusable_until: float | None,
    ) -> bool:
        """Record an answer; ``False`` unless the request was pending and in time."""
        ...

    def approval_burn(self, request_id: str, now: float) -> bool:
        """Use an approved receipt once (or again within its reuse window), or close a
        delivered rejection; atomic."""
        ...


class BudgetStore(Protocol):
    """Budget counters (:mod:`agentguard.budgets`) every process on the store shares.

    A guard charges budgets with its decision record (``audit_append(charge=...)``);
    an enforcement point without an audit log of its own (an upstream verifier)
    charges them with :meth:`budget_charge`.
    """

    def budget_states(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Each charge judged against its window's usage (nothing is written).

        Raises:
            StoreError: the counters cannot be read.
        """
        ...

    def budget_charge(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Charge every budget, or none, atomically across processes.

        Raises:
            BudgetExhausted: a charge does not fit (nothing is written).
            StoreError: the counters cannot be read or written.
        """
        ...


class PinStore(Protocol):
    """Tool-definition pins that every process on the store shares (the MCP proxy's
    rug-pull defence). Optional: a store without ``pin_tools`` leaves pins in memory."""

    def pin_tools(self, fingerprints: Mapping[str, str]) -> dict[str, str]:
        """Pin each tool address in ``fingerprints`` to its fingerprint unless it is
        pinned already, atomically; returns the pinned fingerprint of every given address
        (the first one any process pinned, which differs from the given one when the
        tool's definition changed since).

        Raises:
            StoreError: the pins cannot be read or written.
        """
        ...

    def unpin_tools(self, addresses: Sequence[str]) -> int:
        """Forget the pins of ``addresses`` (the operator accepts their new definitions:
        the next listing pins them afresh); returns how many pins were removed.

        Raises:
            StoreError: the pins cannot be written.
        """
        ...


class Store(RevocationStore, ReplayStore, ApprovalStore, Protocol):
    """Everything the guard keeps: revocations, nonces, inventory, audit log."""

    #: Where the data lives, for messages (``"memory"`` or a file path).
    location: str
    #: Whether committed writes survive a crash (``normal``) or power loss (``full``).
    durability: Durability

    def record_grant(self, record: GrantRecord) -> None:
        """Remember a grant in the issuer's inventory (idempotent by link id)."""
        ...

    def grant_records(self) -> list[GrantRecord]:
        """Every recorded grant with its last use and revocation status."""
        ...

    def audit_append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: HeadSigner | None = None,
    ) -> AuditEntry:
        """Append one record to the hash chain atomically and mark ``link_ids`` used at ``at``.

        With ``anchor``, the new head (sequence number and hash) is signed by it and
        stored as the log's signed head in the same transaction as the record.

        Raises:
            StoreError: the record could not be written durably.
        """
        ...

    def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after`` in order."""
        ...

    def audit_tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries in order."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a signed checkpoint."""
        ...

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""
        ...

    def audit_head(self) -> Checkpoint | None:
        """The newest signed head written with an anchored append, if any."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...
