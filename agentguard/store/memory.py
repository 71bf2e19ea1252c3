"""In-process store: everything lives in this object and dies with it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from agentguard._jws import canonical_json
from agentguard.store.base import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    GrantRecord,
    Revocation,
    RevocationKind,
    entry_hash,
)

__all__ = ["MemoryStore"]

#: Beyond this many live nonces, new ones are refused (fail closed) until some expire.
MAX_NONCES = 1_000_000


class MemoryStore:
    """Thread-safe in-memory implementation of every store protocol."""

    location = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revoked: dict[tuple[str, str], Revocation] = {}
        self._nonces: dict[str, float] = {}
        self._next_purge = 0.0
        self._grants: dict[str, GrantRecord] = {}
        self._usage: dict[str, float] = {}
        self._audit: list[AuditEntry] = []
        self._checkpoints: list[Checkpoint] = []

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
        """Mark ``key`` used; ``True`` the first time only."""
        with self._lock:
            if now >= self._next_purge or len(self._nonces) >= MAX_NONCES:
                self._nonces = {k: exp for k, exp in self._nonces.items() if exp > now}
                self._next_purge = now + 10
            if key in self._nonces:
                return False
            if len(self._nonces) >= MAX_NONCES:
                return False
            self._nonces[key] = expires_at
            return True

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
                )
                out.append(_with(rec, self._usage.get(rec.link_id), revoked))
            return out

    # -- audit ----------------------------------------------------------------------
    def audit_append(
        self, record: dict[str, Any], *, link_ids: Sequence[str] = (), at: float
    ) -> AuditEntry:
        """Append one record to the hash chain."""
        with self._lock:
            prev = self._audit[-1].hash if self._audit else GENESIS_HASH
            seq = len(self._audit) + 1
            body = canonical_json({**record, "seq": seq}).decode("utf-8")
            entry = AuditEntry(seq, body, prev, entry_hash(prev, body))
            self._audit.append(entry)
            for link in link_ids:
                self._usage[link] = max(at, self._usage.get(link, 0.0))
            return entry

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

    def close(self) -> None:
        """Nothing to release."""


def _with(record: GrantRecord, last_used: float | None, revoked: bool) -> GrantRecord:
    return replace(record, last_used=last_used, revoked=revoked)
