"""The tamper-evident audit log (DESIGN §6).

Each entry's body is RFC 8785 JSON holding its own sequence number; its hash
covers the previous entry's hash and the body. Every ``checkpoint_every``
entries the guard signs a checkpoint (sequence number and head hash) with its
key; checkpoints also go to a side file next to the database so that cutting
the tail of the log after a checkpoint is detected. :func:`verify_log` finds
the first broken entry and says what is wrong with it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentguard import _jws
from agentguard.errors import AgentGuardError, DeniedError, StoreError, TokenFormatError
from agentguard.keys import Identity, Principal
from agentguard.store.base import GENESIS_HASH, AuditEntry, Checkpoint, Store, entry_hash

__all__ = [
    "REDACTED",
    "TYP_CHECKPOINT",
    "AuditLog",
    "AuditProblem",
    "redact",
    "restore_redacted",
    "sets_redacted_field",
    "verify_log",
]

TYP_CHECKPOINT = "agentguard-checkpoint+jwt"
REDACTED = "[redacted]"


def redact(value: Any, fields: Iterable[str], *, depth: int = 0) -> Any:
    """A copy of ``value`` in which every mapping key named in ``fields`` is masked.

    Matching is case-insensitive and applies at any depth; very deep or very
    large structures are summarised rather than copied.
    """
    names = {f.lower() for f in fields}
    return _redact(value, names, depth)


def _redact(value: Any, names: set[str], depth: int) -> Any:
    if depth > 16:
        return "[too deep]"
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if str(k).lower() in names else _redact(v, names, depth + 1))
            for k, v in list(value.items())[:200]
        }
    if isinstance(value, list | tuple):
        return [_redact(v, names, depth + 1) for v in value[:200]]
    if isinstance(value, str) and len(value) > 1000:
        return value[:1000] + "...[truncated]"
    return value


def sets_redacted_field(edited: Any, fields: Iterable[str]) -> bool:
    """Whether an edit writes a value (other than the marker) under a redacted key."""
    names = {f.lower() for f in fields}

    def walk(value: Any, depth: int) -> bool:
        if depth > 16:
            return True
        if isinstance(value, Mapping):
            return any(
                (str(k).lower() in names and v != REDACTED) or walk(v, depth + 1)
                for k, v in value.items()
            )
        if isinstance(value, list | tuple):
            return any(walk(v, depth + 1) for v in value)
        return False

    return walk(edited, 0)


def restore_redacted(edited: Any, original: Any, fields: Iterable[str]) -> Any:
    """``edited`` with every redaction marker under a redacted key replaced by the
    caller's original value at the same place (dropped when there is none).

    Approvers only ever see redacted values, so an edit keeps the marker where
    it leaves a secret alone; the secret itself never travels through the
    approval path or its receipt.
    """
    names = {f.lower() for f in fields}
    missing = object()

    def walk(value: Any, source: Any) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                before = source.get(key, missing) if isinstance(source, Mapping) else missing
                if str(key).lower() in names and item == REDACTED:
                    if before is not missing:
                        out[key] = before
                    continue
                out[key] = walk(item, None if before is missing else before)
            return out
        if isinstance(value, list):
            items = source if isinstance(source, list) else []
            return [walk(v, items[i] if i < len(items) else None) for i, v in enumerate(value)]
        return value

    return walk(edited, original)


@dataclass(frozen=True)
class AuditProblem:
    """The first thing wrong with a log: where and what."""

    seq: int
    kind: str  # edited | deleted | reordered | truncated | bad_checkpoint
    detail: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.kind}: {self.detail}"


class AuditLog:
    """Appends decisions and completions to a store's hash chain and signs checkpoints."""

    def __init__(
        self,
        store: Store,
        signer: Identity,
        *,
        checkpoint_every: int = 100,
        side_file: Path | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.side_file = side_file
        self._lock = threading.Lock()

    def append(
        self, record: dict[str, Any], *, link_ids: Sequence[str] = (), at: float
    ) -> AuditEntry:
        """Append one record; a checkpoint follows every ``checkpoint_every`` entries.

        Raises:
            StoreError: the record was not written (the caller must not run the tool).
        """
        try:
            entry = self.store.audit_append(record, link_ids=link_ids, at=at)
        except StoreError:
            raise
        except Exception as exc:  # a failed write is a reason to refuse, whatever failed
            raise StoreError(f"audit write failed: {type(exc).__name__}") from exc
        if self.checkpoint_every and entry.seq % self.checkpoint_every == 0:
            try:
                self.checkpoint(entry, at=at)
            except StoreError:
                raise
            except Exception as exc:  # e.g. an unwritable side file: refuse, never crash
                raise StoreError(f"audit checkpoint failed: {type(exc).__name__}") from exc
        return entry

    def checkpoint(self, entry: AuditEntry | None = None, *, at: float) -> Checkpoint | None:
        """Sign and store a checkpoint at ``entry`` (default: the current head)."""
        if entry is None:
            tail = self.store.audit_tail(1)
            if not tail:
                return None
            entry = tail[0]
        token = _jws.sign(
            {"ver": 1, "iss": self.signer.id, "seq": entry.seq, "head": entry.hash, "iat": int(at)},
            self.signer,
            TYP_CHECKPOINT,
        )
        checkpoint = Checkpoint(entry.seq, entry.hash, at, token)
        with self._lock:
            self.store.add_checkpoint(checkpoint)
            if self.side_file is not None:
                with self.side_file.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"seq": entry.seq, "token": token}) + "\n")
        return checkpoint

    def side_checkpoints(self) -> list[Checkpoint]:
        """Checkpoints read back from the side file (skipping unreadable lines)."""
        if self.side_file is None or not self.side_file.exists():
            return []
        out = []
        for line in self.side_file.read_text(encoding="utf-8").splitlines():
            try:
                doc = json.loads(line)
                _, claims = _jws.peek(doc["token"], TYP_CHECKPOINT)
                out.append(Checkpoint(int(claims["seq"]), str(claims["head"]), 0.0, doc["token"]))
            except (ValueError, KeyError, TypeError, AgentGuardError):
                continue
        return out

    def verify(self, guard_key: Principal | None = None) -> AuditProblem | None:
        """Check the whole log; ``None`` when intact."""
        checkpoints = [*self.store.checkpoints(), *self.side_checkpoints()]
        return verify_log(
            self.store.audit_entries(), checkpoints, guard_key or self.signer.principal
        )

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` records as dictionaries."""
        return [json.loads(e.body) for e in self.store.audit_tail(n)]


def verify_log(
    entries: Sequence[AuditEntry], checkpoints: Sequence[Checkpoint], guard_key: Principal
) -> AuditProblem | None:
    """Find the first problem in a log and its checkpoints; ``None`` when intact."""
    prev = GENESIS_HASH
    expected = 1
    hashes: dict[int, str] = {}
    for entry in entries:
        if entry.seq != expected:
            return AuditProblem(expected, "deleted", f"missing; the next record is {entry.seq}")
        try:
            body_seq = json.loads(entry.body).get("seq")
        except ValueError:
            return AuditProblem(entry.seq, "edited", "body is not valid JSON")
        if body_seq != entry.seq:
            return AuditProblem(
                entry.seq, "reordered", f"body says it is record {body_seq}, found at {entry.seq}"
            )
        if entry.prev != prev:
            return AuditProblem(entry.seq, "edited", "link to the previous record is broken")
        if entry_hash(prev, entry.body) != entry.hash:
            return AuditProblem(entry.seq, "edited", "content does not match its hash")
        hashes[entry.seq] = entry.hash
        prev = entry.hash
        expected += 1
    last = expected - 1
    for checkpoint in checkpoints:
        try:
            claims = _jws.verify(checkpoint.token, guard_key, TYP_CHECKPOINT)
        except (DeniedError, TokenFormatError):
            return AuditProblem(checkpoint.seq, "bad_checkpoint", "checkpoint signature is invalid")
        seq, head = claims.get("seq"), claims.get("head")
        if not isinstance(seq, int):
            return AuditProblem(checkpoint.seq, "bad_checkpoint", "checkpoint has no sequence")
        if seq > last:
            return AuditProblem(
                last + 1,
                "truncated",
                f"a signed checkpoint covers record {seq}, the log ends at {last}",
            )
        if hashes.get(seq) != head:
            return AuditProblem(seq, "edited", "record differs from the signed checkpoint")
    return None
