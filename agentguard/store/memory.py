"""In-process store: everything lives in this object and dies with it."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from agentguard.budgets import BudgetState, Charge, Usage, judge, refuse_unless_fits, settle
from agentguard.canonical import canonical_json
from agentguard.store.base import (
    GENESIS_HASH,
    ApprovalRow,
    AuditEntry,
    Checkpoint,
    Durability,
    GrantRecord,
    HeadSigner,
    Revocation,
    RevocationKind,
)
from agentguard.store.sqlite import _expired, _replayed

__all__ = ["MemoryStore"]

#: Beyond this many live nonces, new ones are refused (fail closed) until some expire.
MAX_NONCES = 1_000_000


class MemoryStore:
    """Thread-safe in-memory implementation of every store protocol."""

    location = "memory"
    durability: Durability = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revoked: dict[tuple[str, str], Revocation] = {}
        self._nonces: dict[str, float] = {}
        self._next_purge = 0.0
        self._watermark = -math.inf
        self._grants: dict[str, GrantRecord] = {}
        self._usage: dict[str, float] = {}
        self._audit: list[AuditEntry] = []
        self._checkpoints: list[Checkpoint] = []
        self._head: Checkpoint | None = None
        self._approvals: dict[str, ApprovalRow] = {}
        self._pins: dict[str, str] = {}
        # Budget counters: (key, window start) -> (window end, usage).
        self._budgets: dict[tuple[str, int], tuple[int, Usage]] = {}

    # -- revocations ----------------------------------------------------------
    def revoke(self, kind: RevocationKind, value: str, *, reason: str, at: float) -> None:
        """Record a revocation (idempotent)."""
        with self._lock:
            self._revoked.setdefault((kind, value), Revocation(kind, value, reason, at))

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        """The first revocation that hits any of the given values, if any."""
        if not self._revoked:
            return None
        for kind, values in (("link", link_ids), ("key", kids), ("principal", principals)):
            for value in values:
                hit = self._revoked.get((kind, value))
                if hit is not None:
                    return hit
        return None

    def revocations(self) -> list[Revocation]:
        """Every revocation, oldest first."""
        with self._lock:
            return sorted(self._revoked.values(), key=lambda r: r.revoked_at)

    # -- replay ------------------------------------------------------------------
    def consume(self, key: str, expires_at: float, *, now: float) -> bool:
        """Mark ``key`` used; ``True`` the first time only.

        Raises:
            DeniedError: ``call_token_expired``: ``expires_at`` is at or before the
                time up to which spent ids were purged (see :class:`SQLiteStore`).
        """
        with self._lock:
            if now >= self._next_purge or len(self._nonces) >= MAX_NONCES:
                self._nonces = {k: exp for k, exp in self._nonces.items() if exp > now}
                self._next_purge = now + 10
                # Forgotten ids expire at or before this, whatever a clock says later.
                self._watermark = max(self._watermark, now)
            if expires_at <= self._watermark:
                raise _expired(expires_at)
            if key in self._nonces:
                return False
            if len(self._nonces) >= MAX_NONCES:
                return False
            self._nonces[key] = expires_at
            return True

    def is_consumed(self, key: str, *, now: float) -> bool:
        """Whether ``key`` is remembered as used (and not expired)."""
        with self._lock:
            expires = self._nonces.get(key)
            return expires is not None and expires > now

    def nonce_count(self) -> int:
        """How many single-use ids are remembered right now."""
        return len(self._nonces)

    # -- inventory ----------------------------------------------------------------
    def record_grant(self, record: GrantRecord) -> None:
        """Remember a grant (idempotent by link id)."""
        with self._lock:
            self._grants.setdefault(record.link_id, record)

    def grant_records(self) -> list[GrantRecord]:
        """Every recorded grant with its last use and revocation status."""
        with self._lock:
            revoked_links = {v for (k, v) in self._revoked if k == "link"}
            revoked_principals = {v for (k, v) in self._revoked if k == "principal"}
            out = []
            for rec in sorted(self._grants.values(), key=lambda r: r.issued_at):
                revoked = (
                    rec.link_id in revoked_links
                    or rec.subject in revoked_principals
                    or rec.issuer in revoked_principals
                    or rec.on_behalf_of in revoked_principals
                )
                out.append(_with(rec, self._usage.get(rec.link_id), revoked))
            return out

    # -- audit ----------------------------------------------------------------------
    def audit_append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: HeadSigner | None = None,
        burn: tuple[str, float] | None = None,
        checkpoint: Callable[[int, str], str | None] | None = None,
        charge: tuple[Sequence[Charge], float] | None = None,
    ) -> AuditEntry:
        """Append one record to the hash chain (and sign the new head with ``anchor``);
        with ``burn`` (request id, now), use that approval's receipt with it; with
        ``charge`` (charges, now), charge those budgets with it (all or none) and
        write their new state into the record as ``budget``.

        Raises:
            DeniedError: ``approval_replayed``: the receipt was used already.
            BudgetExhausted: a budget in ``charge`` does not fit (nothing is written).
        """
        with self._lock:
            states: list[BudgetState] = []
            if charge is not None:
                states = judge(charge[0], charge[1], self._budget_read)
                refuse_unless_fits(states, charge[1])
            if burn is not None and not self._burn(*burn):
                raise _replayed()
            if charge is not None:
                self._budgets = {k: v for k, v in self._budgets.items() if v[0] > charge[1]}
                for state in states:
                    self._budgets[(state.charge.key, state.start)] = (state.end, state.after())
                record = {**record, "budget": [s.as_record(charged=True) for s in states]}
            audit = self._audit
            prev = audit[-1].hash if audit else GENESIS_HASH
            seq = len(audit) + 1
            raw = canonical_json({**record, "seq": seq})
            # entry_hash(prev, body), over the bytes as encoded rather than the
            # body decoded and encoded again.
            digest = hashlib.sha256(prev.encode("ascii"))
            digest.update(b"\n")
            digest.update(raw)
            entry = _entry(seq, raw.decode("utf-8"), prev, digest.hexdigest())
            head = (
                None if anchor is None else Checkpoint(seq, entry.hash, at, anchor(seq, entry.hash))
            )
            token = checkpoint(seq, entry.hash) if checkpoint is not None else None
            self._audit.append(entry)
            if head is not None:
                self._head = head
            if token is not None:
                self._checkpoints.append(Checkpoint(seq, entry.hash, at, token))
            usage = self._usage
            for link in link_ids:
                # max(at, last use), without the call.
                if not usage.get(link, 0.0) > at:
                    usage[link] = at
            return entry

    def _budget_read(self, key: str, start: int) -> Usage | None:
        found = self._budgets.get((key, start))
        return None if found is None else found[1]

    def budget_states(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Each charge judged against its window's usage at ``now`` (nothing is written)."""
        with self._lock:
            return judge(charges, now, self._budget_read)

    def budget_charge(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Charge every budget at ``now``, or none (raises ``BudgetExhausted``)."""
        with self._lock:
            return settle(charges, now, self._budget_read, self._budget_write)

    def _budget_write(self, state: BudgetState, usage: Usage) -> None:
        self._budgets[(state.charge.key, state.start)] = (state.end, usage)

    def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after`` in order."""
        with self._lock:
            rows = [e for e in self._audit if e.seq > after]
        return rows if limit is None else rows[:limit]

    def audit_tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries in order."""
        with self._lock:
            return list(self._audit[-n:]) if n > 0 else []

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a signed checkpoint."""
        with self._lock:
            self._checkpoints.append(checkpoint)

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""
        with self._lock:
            return list(self._checkpoints)

    def audit_head(self) -> Checkpoint | None:
        """The newest signed head written with an anchored append, if any."""
        with self._lock:
            return self._head

    # -- approvals ------------------------------------------------------------------
    def approval_insert(self, row: ApprovalRow) -> None:
        """Persist a new pending request."""
        with self._lock:
            self._approvals[row.id] = row

    def approval_file(self, row: ApprovalRow) -> ApprovalRow:
        """Persist ``row``, unless a request for the same call is pending still: then that one."""
        with self._lock:
            for other in sorted(self._approvals.values(), key=lambda r: (r.created_at, r.id)):
                if (
                    other.call_digest == row.call_digest
                    and other.status == "pending"
                    and other.deadline > row.created_at
                ):
                    return other
            self._approvals[row.id] = row
            return row

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        """One request by id."""
        return self._approvals.get(request_id)

    def approval_list(self, status: str | None = None) -> list[ApprovalRow]:
        """Requests, newest first, optionally of one status."""
        with self._lock:
            rows = [r for r in self._approvals.values() if status is None or r.status == status]
        return sorted(rows, key=lambda r: r.created_at, reverse=True)

    def approval_open(self, call_digest: str, now: float) -> ApprovalRow | None:
        """A pending (in time), usable approved or undelivered rejected request for this call."""
        with self._lock:
            for row in sorted(self._approvals.values(), key=lambda r: -r.created_at):
                if row.call_digest == call_digest and _open(row, now):
                    return row
        return None

    def approval_answer(
        self,
        request_id: str,
        *,
        status: str,
        receipt: str,
        answered_at: float,
        reusable_until: float | None,
    ) -> bool:
        """Record an answer if the request is still pending and in time."""
        with self._lock:
            row = self._approvals.get(request_id)
            if row is None or row.status != "pending" or answered_at >= row.deadline:
                return False
            self._approvals[request_id] = replace(
                row,
                status=status,
                receipt=receipt,
                answered_at=answered_at,
                reusable_until=reusable_until,
            )
            return True

    def approval_burn(self, request_id: str, now: float) -> bool:
        """Use an approved receipt once (or again within its reuse window)."""
        with self._lock:
            return self._burn(request_id, now)

    def _burn(self, request_id: str, now: float) -> bool:
        """Burn with the lock held (see :meth:`approval_burn`)."""
        row = self._approvals.get(request_id)
        if row is not None and row.status == "rejected":
            # A rejection is delivered once; the next attempt files a new request.
            self._approvals[request_id] = replace(row, status="closed")
            return True
        if row is None or row.status not in ("approved", "used"):
            return False
        if row.uses and not (row.reusable_until and now < row.reusable_until):
            return False
        self._approvals[request_id] = replace(row, status="used", uses=row.uses + 1)
        return True

    # -- tool pins ---------------------------------------------------------------
    def pin_tools(self, fingerprints: Mapping[str, str]) -> dict[str, str]:
        """Pin each address unless pinned already; the pinned fingerprint of each."""
        with self._lock:
            return {a: self._pins.setdefault(a, f) for a, f in fingerprints.items()}

    def unpin_tools(self, addresses: Sequence[str]) -> int:
        """Forget the pins of ``addresses``; how many were removed."""
        with self._lock:
            return sum(self._pins.pop(a, None) is not None for a in set(addresses))

    def close(self) -> None:
        """Nothing to release."""


def _open(row: ApprovalRow, now: float) -> bool:
    if row.status == "pending":
        return now < row.deadline
    # A rejection stays open until the resubmitted call has been told of it.
    if row.status in ("approved", "rejected"):
        return True
    return row.status == "used" and bool(row.reusable_until and now < row.reusable_until)


def _entry(seq: int, body: str, prev: str, digest: str) -> AuditEntry:
    """``AuditEntry(seq, body, prev, digest)`` without the frozen dataclass's per-field
    set-up (``tests/test_perf_memory_append.py`` holds the two equal)."""
    entry: AuditEntry = object.__new__(AuditEntry)
    fields = entry.__dict__
    fields["seq"], fields["body"], fields["prev"], fields["hash"] = seq, body, prev, digest
    return entry


def _with(record: GrantRecord, last_used: float | None, revoked: bool) -> GrantRecord:
    return replace(record, last_used=last_used, revoked=revoked)
