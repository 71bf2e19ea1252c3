"""The tamper-evident audit log (DESIGN §6).

Each entry's body is RFC 8785 JSON holding its own sequence number; its hash
covers the previous entry's hash and the body, so an edited, deleted or
reordered record breaks the chain. The end of the chain is anchored: every
record that lets a tool run is covered by a *signed head* (sequence number and
hash, signed with the guard's key) written in the same database transaction as
the record, before the tool runs, and the newest signed head also replaces a
side file next to the database. Cutting or rewriting the end of the log then
contradicts a signature, unless the side file is rolled back as well. Every
``checkpoint_every`` entries a signed checkpoint is also kept in the database.

What a contradiction means depends on where the signature was kept: the
database's own head and checkpoints are committed with (or after) the records
they cover, so a log that ends before them was cut. The side file is written
after the commit; at ``durability: full`` the records were on disk by then, so
the same verdict holds, but at ``normal`` a power failure can lose commits the
side file already covers, and that is reported as such (``unsynced``).
:func:`verify_log` finds the first problem and says what is wrong.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import inspect
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentguard import _jws
from agentguard.decision import Decision, Reason
from agentguard.errors import AgentGuardError, DeniedError, StoreError, TokenFormatError
from agentguard.keys import Identity, KeySet, Principal, b64url_encode, read_trusted_file
from agentguard.redaction import REDACTED, redact, restore_redacted, sets_redacted_field
from agentguard.store.base import GENESIS_HASH, AuditEntry, Checkpoint, Store, entry_hash

__all__ = [
    "REDACTED",
    "TYP_CHECKPOINT",
    "AuditLog",
    "AuditProblem",
    "AuditReport",
    "UnfinishedDecision",
    "completion_record",
    "decision_record",
    "head_files_in",
    "defaults_filled",
    "lets_tool_run",
    "redact",
    "restore_redacted",
    "sets_redacted_field",
    "verify_log",
]

log = logging.getLogger("agentguard.audit")

TYP_CHECKPOINT = "agentguard-checkpoint+jwt"
#: Heads the database contradicted when a newer one was published stay in the side
#: file as evidence; beyond this many, further ones are not added.
MAX_KEPT_HEADS = 16
#: A side-file writer thread with nothing to write for this long ends.
_WRITER_IDLE_S = 5.0
#: At durability normal the side file is rewritten at most this often; heads
#: arriving faster are coalesced (the newest one is written).
_WRITE_INTERVAL_S = 0.02
#: How long closing a log waits for its side-file writer.
_FLUSH_TIMEOUT_S = 10.0
#: The most bytes a side file or head file is read to (it holds at most
#: 1 + MAX_KEPT_HEADS heads of well under 1 KiB each); a larger one is unreadable.
_HEAD_FILE_LIMIT = 1 << 20

#: Problem kinds that mean the log was changed after it was written.
TAMPERING = ("edited", "deleted", "reordered", "truncated", "rewritten", "bad_checkpoint")


#: Arguments an adapter filled in from the tool's schema defaults (see defaults_filled).
_DEFAULTS_FILLED: ContextVar[tuple[str, ...]] = ContextVar("agentguard_defaults_filled", default=())


@contextlib.contextmanager
def defaults_filled(names: Iterable[str]) -> Iterator[None]:
    """Say, for the decisions made inside, which omitted arguments an enforcement point
    filled in from the tool's schema defaults: their records carry ``defaults_filled``.

    The guard judged those values (they are part of the arguments and their
    digest); the record names them so an investigator can tell them from
    values the caller sent.
    """
    token = _DEFAULTS_FILLED.set(tuple(sorted(names)))
    try:
        yield
    finally:
        _DEFAULTS_FILLED.reset(token)


def decision_record(
    decision: Decision,
    *,
    time: float,
    args: Mapping[str, Any],
    digest: str | None,
    redact_fields: Iterable[str],
    approval: Mapping[str, Any] | None,
    call_token: str | None,
    enforcement_point: str,
    trace: Mapping[str, Any],
) -> dict[str, Any]:
    """The audit record of one decision (``type: decision``).

    ``args`` are what runs (an approver's edit, if any), redacted; ``digest``
    is the digest of the arguments asked for, ``None`` when they are not
    canonical JSON (they are then not stored: the refusal must still be
    recordable).
    """
    record: dict[str, Any] = {
        "type": "decision",
        "decision_id": decision.id,
        "time": time,
        "outcome": str(decision.outcome),
        "reason": str(decision.reason),
        "explanation": decision.explanation,
        "tool": decision.tool,
        "call_id": decision.call_id,
        "args_digest": digest,
        "args": redact(args, redact_fields) if digest is not None else None,
        "path": list(decision.path),
        "claimed_path_unverified": list(decision.claimed_path) or None,
        "link_ids": list(decision.link_ids),
        "link": decision.link,
        "rule": decision.rule,
        "approval_rules": list(decision.approval_rules),
        "approval": dict(approval) if approval is not None else None,
        "approval_request_id": decision.approval_request_id,
        "call_token": call_token,
        "dry_run": decision.dry_run,
        "shadow": decision.shadow,
        "enforced": not decision.shadow,
        "enforcement_point": enforcement_point,
        **trace,
    }
    if filled := _DEFAULTS_FILLED.get():
        record["defaults_filled"] = list(filled)
    if decision.shadow:
        record["shadow_notice"] = "SHADOW MODE: this decision was NOT enforced"
    return record


def completion_record(
    decision: Decision,
    *,
    time: float,
    status: str,
    error: BaseException | None,
    duration_ms: float,
    enforcement_point: str,
) -> dict[str, Any]:
    """The audit record of a decided call's end (``type: completion``)."""
    return {
        "type": "completion",
        "decision_id": decision.id,
        "time": time,
        "tool": decision.tool,
        "call_id": decision.call_id,
        "status": status,
        "error_type": type(error).__name__ if error is not None else None,
        "duration_ms": round(duration_ms, 3),
        "enforcement_point": enforcement_point,
    }


def lets_tool_run(record: Mapping[str, Any]) -> bool:
    """Whether a record is a decision after which a tool runs: an enforced ``allow``,
    or a shadow-mode decision (not enforced, so the tool runs anyway)."""
    return (
        record.get("type") == "decision"
        and not record.get("dry_run")
        and (record.get("outcome") == "allow" or bool(record.get("shadow")))
    )


@dataclass(frozen=True)
class AuditProblem:
    """The first thing wrong with a log: where and what.

    ``kind`` is one of ``edited``, ``deleted``, ``reordered`` (the chain itself
    is broken), ``truncated`` (the log ends before a signed head),
    ``rewritten`` (the chain is consistent but contradicts a signed head),
    ``bad_checkpoint`` (a signed head or checkpoint does not verify) — all of
    which mean tampering — or ``unsynced``: the side file, written at
    ``durability: normal``, covers records the database does not hold, which a
    power failure can cause as well as a cut.
    """

    seq: int
    kind: str
    detail: str

    @property
    def tampering(self) -> bool:
        """Whether the problem can only come from changing the log after it was written."""
        return self.kind in TAMPERING

    def __str__(self) -> str:
        return f"record {self.seq}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class UnfinishedDecision:
    """A decision that let a tool run and has no completion record: not known to have run."""

    seq: int
    decision_id: str
    tool: str


@dataclass(frozen=True)
class AuditReport:
    """Everything :meth:`AuditLog.report` found."""

    records: int
    checkpoints: int
    #: Sequence number of the newest signed head in the database (``None``: none).
    anchored: int | None
    #: Sequence number of the newest signed head in the side file (``None``: none).
    side_file: int | None
    problem: AuditProblem | None
    #: Allowed decisions with no completion record (information, not a break).
    not_known_to_have_run: tuple[UnfinishedDecision, ...]
    #: Each head file checked (``head_files``) and its newest signed head's record
    #: (``None``: it holds none).
    head_files: tuple[tuple[Path, int | None], ...] = ()


@dataclass(frozen=True)
class _SideHead:
    """One line of the side file: a signed head, or one kept as evidence."""

    seq: int
    head: str
    token: str
    kept: bool = False

    def line(self) -> str:
        doc: dict[str, Any] = {"seq": self.seq, "token": self.token}
        if self.kept:
            doc["kept"] = True
        return json.dumps(doc, separators=(",", ":")) + "\n"


class _SideFile:
    """The side file next to the database: the newest signed head on its first line,
    followed by heads the database contradicted when a newer one was published.

    It is replaced as a whole (temporary file, then rename), under a lock file
    shared by every process writing it; with ``durable`` the new file and its
    directory are synced before the rename is relied on.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self._lock_path = path.with_name(path.name + ".lock")
        self._thread_lock = threading.Lock()

    def read(self) -> tuple[list[_SideHead], list[int]]:
        """The heads in the file and the numbers of the lines that could not be read."""
        try:
            raw = read_trusted_file(self.path, limit=_HEAD_FILE_LIMIT)
        except FileNotFoundError:
            return [], []
        except (OSError, ValueError):
            # Not a readable file at all (a directory, no permission, a FIFO, too large).
            return [], [0]
        text = raw.decode("utf-8", errors="replace")
        heads, unreadable = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                _, claims = _jws.peek(doc["token"], TYP_CHECKPOINT)
                seq, digest = claims["seq"], claims["head"]
                if not isinstance(seq, int) or not isinstance(digest, str):
                    raise TypeError("seq or head missing")
                heads.append(_SideHead(seq, digest, doc["token"], bool(doc.get("kept"))))
            except (ValueError, KeyError, TypeError, AgentGuardError):
                unreadable.append(number)
        return heads, unreadable

    def newest(self) -> _SideHead | None:
        """The head the file publishes (legacy files list checkpoints oldest first)."""
        current = [h for h in self.read()[0] if not h.kept]
        return max(current, key=lambda h: h.seq, default=None)

    def publish(
        self, head: Checkpoint, in_chain: Callable[[int, str], bool], *, durable: bool
    ) -> None:
        """Make ``head`` the published head unless a newer head of the same chain is.

        A published head that the database no longer holds (``in_chain`` says
        no) is kept in the file: replacing it would erase the evidence of a cut.
        """
        with self._locked():
            heads, _ = self.read()
            kept = [h for h in heads if h.kept]
            current = max((h for h in heads if not h.kept), key=lambda h: h.seq, default=None)
            if current is not None:
                if (current.seq, current.head) == (head.seq, head.head):
                    return
                if in_chain(current.seq, current.head):
                    if current.seq > head.seq:
                        return  # another writer published a newer head already
                elif len(kept) < MAX_KEPT_HEADS:
                    kept.append(_SideHead(current.seq, current.head, current.token, kept=True))
            lines = [_SideHead(head.seq, head.head, head.token).line(), *(h.line() for h in kept)]
            self._replace("".join(lines).encode("utf-8"), durable=durable)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the lock

    def _replace(self, data: bytes, *, durable: bool) -> None:
        # A writer killed after creating the temporary file leaves it behind; the
        # lock makes this the only writer now, so it is safe to remove.
        self._tmp.unlink(missing_ok=True)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        if durable:
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


class _Writer:
    """Publishes heads to the side file from a background thread (``durability: normal``).

    At ``normal`` the database itself does not sync a commit before it returns,
    so the side file need not either: the newest waiting head is written at
    most :data:`_WRITE_INTERVAL_S` after the previous write (heads arriving
    meanwhile are coalesced), which keeps the file's cost off the append path.
    A process killed in between leaves the side file behind the database,
    never ahead of it. The thread ends when idle and starts again on demand.
    """

    def __init__(self, publish: Callable[[Checkpoint], None]) -> None:
        self._publish = publish
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._pending: Checkpoint | None = None
        self._busy = False
        self._idle = False  # the thread waits for work (and wants a notify)
        self._flushing = 0
        self._next_write = 0.0
        self._thread: threading.Thread | None = None
        #: Set when a write failed, with the head it failed to write; cleared only
        #: by a later successful write.
        self.error: Exception | None = None
        self._failed: Checkpoint | None = None

    def submit(self, head: Checkpoint) -> None:
        """Queue ``head`` for the side file (replacing an older queued one)."""
        if os.getpid() != self._pid:  # a forked child inherits no thread
            self._reset()
        with self._cond:
            if self._pending is None or head.seq > self._pending.seq:
                self._pending = head
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="agentguard-audit-side-file", daemon=True
                )
                self._thread.start()
            elif self._idle:
                self._cond.notify_all()

    def _next(self) -> Checkpoint | None:
        """The head to write next (``None``: idle too long, the thread ends)."""
        with self._cond:
            give_up = time.monotonic() + _WRITER_IDLE_S
            while self._pending is None:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    self._thread = None
                    self._cond.notify_all()
                    return None
                self._idle = True
                self._cond.wait(remaining)
                self._idle = False
            while not self._flushing and (delay := self._next_write - time.monotonic()) > 0:
                self._cond.wait(delay)
            head, self._pending = self._pending, None
            self._busy = True
            return head

    def _run(self) -> None:
        while (head := self._next()) is not None:
            failure: Exception | None = None
            try:
                self._publish(head)
            except Exception as exc:  # noqa: BLE001 - reported by the next append, which then fails closed
                failure = exc
                log.error("agentguard: could not write the audit side file: %s", exc)
            with self._cond:
                self._busy = False
                self._next_write = time.monotonic() + _WRITE_INTERVAL_S
                self.error, self._failed = (failure, head) if failure is not None else (None, None)
                self._cond.notify_all()

    def retry(self) -> None:
        """Write the head whose write failed, here and now; raise if it fails again."""
        with self._cond:
            head = self._failed
        if head is not None:
            self._publish(head)
        with self._cond:
            if self._failed is head:
                self.error, self._failed = None, None

    def flush(self, timeout: float = _FLUSH_TIMEOUT_S) -> None:
        """Write the queued head now and wait for it (at most ``timeout`` seconds)."""
        if os.getpid() != self._pid:
            return
        with self._cond:
            self._flushing += 1
            try:
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)
            finally:
                self._flushing -= 1


_WRITERS: weakref.WeakSet[_Writer] = weakref.WeakSet()


@atexit.register
def _flush_writers() -> None:
    # Daemon threads stop without warning at exit; write the heads they hold first.
    for writer in list(_WRITERS):
        writer.flush()


class AuditLog:
    """Appends decisions and completions to a store's hash chain and anchors its end.

    With a persistent store, every record that lets a tool run (see
    :func:`lets_tool_run`) is covered by a head signed with ``signer`` in the
    append's own transaction, and the newest head replaces ``side_file``: at
    ``durability: full`` (synced) before :meth:`append` returns, at ``normal``
    from a background thread right after. An in-memory log is not anchored:
    it dies with the process, so there is nothing to cut.
    """

    def __init__(
        self,
        store: Store,
        signer: Identity,
        *,
        checkpoint_every: int = 100,
        side_file: Path | None = None,
        trusted_keys: KeySet | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        #: The keys whose heads :meth:`report` accepts (default: ``signer``'s alone).
        self.trusted_keys = trusted_keys
        # The signer's own entry in the trusted set, to warn once when it signs
        # heads that the set will refuse (not listed, or outside its window).
        self._own_entry = (
            None
            if trusted_keys is None
            else next((k for k in trusted_keys.keys if k.principal.kid == signer.kid), None)
        )
        self._key_warned = trusted_keys is None
        self.checkpoint_every = checkpoint_every
        self.side_file = side_file
        self.durability = store.durability
        # A store several processes append to: this process's side file holds only
        # the heads it signed, so its absence proves nothing about the others' records.
        self._shared = getattr(store, "shared", False) is True
        self._anchored = self.durability != "memory"
        header = {"alg": "EdDSA", "kid": signer.kid, "typ": TYP_CHECKPOINT}
        self._header = b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))
        # The head's claims in sorted order; head, iat and seq are filled in per head.
        dur, iss = json.dumps(self.durability), json.dumps(signer.id)
        self._claims = f'{{"dur":{dur},"head":"%s","iat":%d,"iss":{iss},"seq":%d,"ver":1}}'
        self._side = _SideFile(side_file) if side_file is not None and self._anchored else None
        self._writer: _Writer | None = None
        # Whether the side file was checked against the database (before the first append).
        self._side_checked = self._side is None
        # Whether the store uses a receipt in the record's transaction (``burn``).
        try:
            params = inspect.signature(store.audit_append).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self._burns_with_append = "burn" in params
        self._checkpoints_with_append = "checkpoint" in params
        # Whether the store can charge budgets in the record's transaction (``charge``).
        self._charges_with_append = "charge" in params
        self._side_conflict: str | None = None
        if self._side is not None and self.durability != "full":
            self._writer = _Writer(self._publish_now)
            _WRITERS.add(self._writer)

    def append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: bool | None = None,
        burn: str | None = None,
        charge: tuple[Sequence[Any], float] | None = None,
    ) -> AuditEntry:
        """Append one record; sign a head over it when it lets a tool run (or ``anchor``).

        With ``burn``, that approval request's receipt is used in the record's own
        transaction (when the store can; otherwise just before it). With
        ``charge`` (:class:`~agentguard.budgets.Charge` s, now), those budgets are
        charged in that transaction; a store that cannot do so refuses the record.

        A checkpoint also follows every ``checkpoint_every`` entries.

        Raises:
            StoreError: the record, its signed head or (at ``durability: full``) the
                side file was not written, or the side file could not be written
                since the last append: the caller must not run the tool.
            DeniedError: ``approval_replayed``: the receipt in ``burn`` was used
                already, or ``budget_exhausted``: a budget in ``charge`` does not fit
                (the record was not written).
        """
        if not self._side_checked:
            self._check_side_file()
        if self._side_conflict is not None:
            raise StoreError(self._side_conflict)
        if self._writer is not None and self._writer.error is not None:
            # A failed side-file write refuses every later record until a write
            # succeeds again: retried here, so fixing the file ends the refusals.
            try:
                self._writer.retry()
            except Exception as exc:
                raise StoreError(
                    f"audit side file could not be written: {type(exc).__name__}"
                ) from exc
        anchored = self._anchored and (lets_tool_run(record) if anchor is None else anchor)
        heads: list[Checkpoint] = []

        def sign(seq: int, digest: str) -> str:
            heads.append(self._sign(seq, digest, at))
            return heads[-1].token

        def checkpoint(seq: int, digest: str) -> str | None:
            if not self.checkpoint_every or seq % self.checkpoint_every:
                return None
            heads.append(self._sign(seq, digest, at))
            return heads[-1].token

        extra: dict[str, Any] = {}
        if self._checkpoints_with_append:
            # A checkpoint due at this record commits with it, or neither does.
            extra["checkpoint"] = checkpoint
        if charge is not None:
            if not self._charges_with_append:
                raise StoreError(f"store {self.store.location} cannot keep budgets")
            extra["charge"] = charge
        if burn is not None:
            if self._burns_with_append:
                extra["burn"] = (burn, at)
            elif not self.store.approval_burn(burn, at):
                raise DeniedError(
                    "approval receipt was used already", reason=Reason.APPROVAL_REPLAYED
                )
        try:
            if anchored:
                # Marked, so verify knows a signed head must cover this record.
                record = {**record, "anchored": True}
                entry = self.store.audit_append(
                    record, link_ids=link_ids, at=at, anchor=sign, **extra
                )
            else:
                entry = self.store.audit_append(record, link_ids=link_ids, at=at, **extra)
        except (StoreError, DeniedError):
            raise
        except Exception as exc:
            raise StoreError(f"audit write failed: {type(exc).__name__}") from exc
        try:
            if heads:
                self._publish(heads[-1])
            if (
                not self._checkpoints_with_append
                and self.checkpoint_every
                and entry.seq % self.checkpoint_every == 0
            ):
                self.checkpoint(entry, at=at)
        except Exception as exc:
            # The record is committed, but the caller is refused: say so in the log.
            self._not_run(record, at)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"audit checkpoint or side file could not be written: {type(exc).__name__}"
            ) from exc
        return entry

    def _not_run(self, record: Mapping[str, Any], at: float) -> None:
        """After a committed decision whose aftermath failed, record that its tool did not run.

        Best effort: when even this cannot be written (a full disk), the decision
        stays without a completion and verifies as not known to have run.
        """
        if not lets_tool_run(record):
            return
        try:
            self.store.audit_append(
                {
                    "type": "completion",
                    "decision_id": record.get("decision_id"),
                    "time": at,
                    "tool": record.get("tool"),
                    "call_id": record.get("call_id"),
                    "status": "not_run",
                    "error_type": "StoreError",
                    "duration_ms": 0.0,
                    "enforcement_point": record.get("enforcement_point"),
                },
                at=at,
            )
        except Exception as exc:  # noqa: BLE001 - the caller is refused either way
            log.error("agentguard: could not record that a refused tool did not run: %s", exc)

    def _check_side_file(self) -> None:
        """Refuse to write when the side file's signed head is not in the database.

        The head was signed by this guard's key over a record the database held;
        a database without that record is younger than the log it continues (it
        was deleted, replaced or rolled back). Appending to it would start a
        second history, and single-use tokens spent in the first would run again.
        """
        assert self._side is not None  # noqa: S101 - only called with a side file
        newest = self._side.newest()
        if newest is not None:
            try:
                _jws.verify(newest.token, self.signer.principal, TYP_CHECKPOINT)
            except (DeniedError, TokenFormatError):
                newest = None  # not this guard's signature: verify reports it
        if newest is not None and not self._in_chain(newest.seq, newest.head):
            self._side_conflict = (
                f"the audit side file {self._side.path} holds a head signed for record "
                f"{newest.seq}, which the database {self.store.location} does not hold: the "
                "database was deleted, replaced or rolled back after that record was "
                "written; every call is refused; restore the database from a backup; to "
                "start a new log on purpose, move the side file aside as well"
            )
        self._side_checked = True

    def checkpoint(self, entry: AuditEntry | None = None, *, at: float) -> Checkpoint | None:
        """Sign and store a checkpoint at ``entry`` (default: the current head) and
        publish it to the side file."""
        if entry is None:
            tail = self.store.audit_tail(1)
            if not tail:
                return None
            entry = tail[0]
        checkpoint = self._sign(entry.seq, entry.hash, at)
        self.store.add_checkpoint(checkpoint)
        self._publish(checkpoint)
        return checkpoint

    def _sign(self, seq: int, digest: str, at: float) -> Checkpoint:
        """A compact JWS (``typ`` :data:`TYP_CHECKPOINT`) over the head ``seq``/``digest``.

        Built here rather than with PyJWT, whose encoder costs as much as the
        signature itself: this runs inside the append's write transaction, once
        per allowed call. The claims are integers, a hex digest and strings
        encoded once (``self._claims``), in sorted order, so the payload is
        their canonical JSON. ``dur`` tells the verifier whether the records
        were on disk before the side file was written (see the module
        docstring). Verification is the ordinary :func:`agentguard._jws.verify`.
        """
        if len(digest) != 64 or not digest.isalnum() or not digest.isascii():
            raise ValueError("an audit head must be a hex SHA-256 digest")
        if not self._key_warned and (self._own_entry is None or not self._own_entry.valid_at(at)):
            self._key_warned = True
            why = "is not listed" if self._own_entry is None else "is outside its validity window"
            log.warning(
                "agentguard: this guard's key %s %s in the policy's guard_keys: the heads it "
                "signs will not verify (add it with 'agentguard keys add')",
                self.signer.kid,
                why,
            )
        text = self._claims % (digest, int(at), int(seq))
        payload = b64url_encode(text.encode("ascii"))
        signing_input = f"{self._header}.{payload}"
        signature = b64url_encode(self.signer.sign(signing_input.encode("ascii")))
        return Checkpoint(seq, digest, at, f"{signing_input}.{signature}")

    def _publish(self, head: Checkpoint) -> None:
        if self._side is None:
            return
        if self._writer is not None:
            self._writer.submit(head)
        else:
            self._publish_now(head)

    def _publish_now(self, head: Checkpoint) -> None:
        assert self._side is not None  # noqa: S101 - only called with a side file
        self._side.publish(head, self._in_chain, durable=self.durability == "full")

    def _in_chain(self, seq: int, digest: str) -> bool:
        found = self.store.audit_entries(after=seq - 1, limit=1)
        return bool(found) and found[0].seq == seq and found[0].hash == digest

    def flush(self) -> None:
        """Wait until the newest signed head is in the side file."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Write what is pending to the side file (call before closing the store)."""
        self.flush()
        if self._writer is not None:
            _WRITERS.discard(self._writer)

    def side_checkpoints(self) -> list[Checkpoint]:
        """The signed heads in the side file (unreadable lines skipped)."""
        if self._side is None:
            return []
        return [Checkpoint(h.seq, h.head, 0.0, h.token) for h in self._side.read()[0]]

    def verify(self, guard_key: Principal | KeySet | None = None) -> AuditProblem | None:
        """Check the whole log; ``None`` when intact (see :meth:`report`)."""
        return self.report(guard_key).problem

    def report(
        self, guard_key: Principal | KeySet | None = None, *, head_files: Sequence[Path] = ()
    ) -> AuditReport:
        """Check the whole log against its signed heads and checkpoints.

        A head counts when ``guard_key`` signed it (default: one of
        :attr:`trusted_keys` valid at the head's signed time, else this guard's key).

        ``head_files`` are other processes' side files (on a shared store, each
        replica's holds the newest head that replica signed): the log is checked
        against every head in each, so a cut of the records any of them wrote
        is found. A head file that is missing, unreadable or holds no head is a
        problem too (``bad_checkpoint``; ``unsynced`` below ``durability: full``,
        where a power failure can leave a file torn).
        """
        self.flush()
        checkpoints = self.store.checkpoints()
        head = self.store.audit_head()
        side, unreadable = self._side.read() if self._side is not None else ([], [])
        signed = [(_IN_DATABASE, c) for c in checkpoints]
        if head is not None:
            signed.append((_DATABASE_HEAD, head))
        signed += [(_SIDE_FILE, Checkpoint(h.seq, h.head, 0.0, h.token)) for h in side]
        # Each head file's heads and what is wrong with the file itself.
        unusable: list[AuditProblem] = []
        newest: list[tuple[Path, int | None]] = []
        for path in head_files:
            where = f"{_HEAD_FILE}{path}"
            heads, torn = _SideFile(path).read() if path.exists() else ([], [])
            signed += [(where, Checkpoint(h.seq, h.head, 0.0, h.token)) for h in heads]
            current_heads = [h.seq for h in heads if not h.kept]
            newest.append((path, max(current_heads) if current_heads else None))
            if not path.exists():
                finding = f"head file {path} does not exist"
            elif torn:
                line = f"line {torn[0]} of" if torn[0] else "the whole of"
                finding = f"{line} head file {path} cannot be read"
            elif not current_heads:
                finding = f"head file {path} holds no signed head"
            else:
                continue
            kind = "bad_checkpoint" if self.durability == "full" else "unsynced"
            unusable.append(AuditProblem(0, kind, finding))
        entries = self.store.audit_entries()
        keys = guard_key or self.trusted_keys or self.signer.principal
        problem, unfinished = _examine(entries, signed, keys)
        current = [h.seq for h in side if not h.kept]
        if problem is None and unreadable:
            where = f"line {unreadable[0]} of" if unreadable[0] else "the whole of"
            finding = f"{where} the side file cannot be read"
            # At normal the file is not synced before it replaces the old one, so a
            # power failure can leave it unreadable as well.
            problem = (
                AuditProblem(0, "bad_checkpoint", finding)
                if self.durability == "full"
                else AuditProblem(0, "unsynced", finding)
            )
        if problem is None:
            problem = self._missing_heads(entries, head, current)
        # Tampering first, wherever it was found.
        found = [p for p in (problem, *unusable) if p is not None]
        problem = next((p for p in found if p.tampering), found[0] if found else None)
        return AuditReport(
            records=len(entries),
            checkpoints=len(checkpoints),
            anchored=None if head is None else head.seq,
            side_file=max(current) if current else None,
            problem=problem,
            not_known_to_have_run=tuple(unfinished),
            head_files=tuple(newest),
        )

    def _missing_heads(
        self, entries: Sequence[AuditEntry], head: Checkpoint | None, side: Sequence[int]
    ) -> AuditProblem | None:
        """A signed head that should exist but does not: deleted along with a cut.

        Each record marked ``anchored`` was committed together with a signed head
        at least as new, so a missing or older head in the database is tampering.
        At ``full`` the side file was written before the tool ran; at ``normal``
        it may lag (a crash before the writer ran), so only ``full`` misses it.
        """
        # Parsed, not searched: an argument may be named "anchored" too.
        anchored = [e.seq for e in entries if json.loads(e.body).get("anchored") is True]
        if not anchored:
            return None
        newest = anchored[-1]
        if head is None or head.seq < newest:
            have = "no signed head" if head is None else f"a signed head for record {head.seq}"
            return AuditProblem(
                newest,
                "truncated",
                f"record {newest} was signed when written, but the database holds {have}: "
                "the head was deleted or rolled back, and records after it may have been cut",
            )
        if (
            self._side is not None
            and self.durability == "full"
            and not self._shared
            and len(anchored) > 1
            and not side
        ):
            return AuditProblem(
                newest,
                "bad_checkpoint",
                "the side file holds no signed head, although it was written before the "
                f"tools of records up to {newest} ran: it was deleted or emptied",
            )
        return None

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` records as dictionaries."""
        return [json.loads(e.body) for e in self.store.audit_tail(n)]


# Where a signature was kept decides what a contradiction means (module docstring).
_IN_DATABASE = "a signed checkpoint"
_DATABASE_HEAD = "the signed head in the database"
_SIDE_FILE = "the signed head in the side file"
_HEAD_FILE = "the signed head in head file "


def head_files_in(paths: Iterable[Path]) -> list[Path]:
    """The head files ``paths`` name: each file as given, each directory's ``*.jsonl``
    files (sorted; not recursive).

    Raises:
        ValueError: a directory holds no ``*.jsonl`` file (nothing would be checked).
    """
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.name.endswith(".jsonl"))
            if not inside:
                raise ValueError(f"directory {path} holds no head file (*.jsonl)")
            found += inside
        else:
            found.append(path)
    return found


def verify_log(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[Checkpoint],
    guard_key: Principal | KeySet,
    *,
    side_file: Sequence[Checkpoint] = (),
) -> AuditProblem | None:
    """Find the first problem in a log, the signatures kept in its database
    (``checkpoints``, including its signed head) and those of its side file;
    ``None`` when intact."""
    signed = [(_IN_DATABASE, c) for c in checkpoints] + [(_SIDE_FILE, c) for c in side_file]
    return _examine(entries, signed, guard_key)[0]


def _examine(
    entries: Sequence[AuditEntry],
    signed: Sequence[tuple[str, Checkpoint]],
    guard_key: Principal | KeySet,
) -> tuple[AuditProblem | None, list[UnfinishedDecision]]:
    prev = GENESIS_HASH
    expected = 1
    hashes: dict[int, str] = {}
    running: dict[str, UnfinishedDecision] = {}
    for entry in entries:
        if entry.seq != expected:
            return AuditProblem(expected, "deleted", f"missing; the next record is {entry.seq}"), []
        try:
            record = json.loads(entry.body)
        except ValueError:
            return AuditProblem(entry.seq, "edited", "body is not valid JSON"), []
        body_seq = record.get("seq") if isinstance(record, dict) else None
        if body_seq != entry.seq:
            detail = f"body says it is record {body_seq}, found at {entry.seq}"
            return AuditProblem(entry.seq, "reordered", detail), []
        if entry.prev != prev:
            return AuditProblem(entry.seq, "edited", "link to the previous record is broken"), []
        if entry_hash(prev, entry.body) != entry.hash:
            return AuditProblem(entry.seq, "edited", "content does not match its hash"), []
        _follow(record, entry.seq, running)
        hashes[entry.seq] = entry.hash
        prev = entry.hash
        expected += 1
    last = expected - 1
    problems = [
        p for where, c in signed if (p := _contradiction(where, c, hashes, last, guard_key))
    ]
    # Tampering first (the earliest record it concerns), then possible power loss.
    problems.sort(key=lambda p: (not p.tampering, p.seq))
    return (problems[0] if problems else None), sorted(running.values(), key=lambda d: d.seq)


def _follow(record: dict[str, Any], seq: int, running: dict[str, UnfinishedDecision]) -> None:
    """Track decisions that let a tool run until their completion record appears."""
    decision_id = record.get("decision_id")
    if not isinstance(decision_id, str):
        return
    if lets_tool_run(record):
        running[decision_id] = UnfinishedDecision(seq, decision_id, str(record.get("tool", "")))
    elif record.get("type") == "completion":
        running.pop(decision_id, None)


def _contradiction(
    where: str,
    checkpoint: Checkpoint,
    hashes: Mapping[int, str],
    last: int,
    key: Principal | KeySet,
) -> AuditProblem | None:
    """What a signed head or checkpoint says is wrong with a log ending at ``last``."""
    try:
        if isinstance(key, KeySet):
            claims = _jws.verify_with(checkpoint.token, key, TYP_CHECKPOINT)
        else:
            claims = _jws.verify(checkpoint.token, key, TYP_CHECKPOINT)
    except TokenFormatError:
        return AuditProblem(checkpoint.seq, "bad_checkpoint", f"{where} has an invalid signature")
    except DeniedError as exc:
        why = f" ({exc.explanation})" if isinstance(key, KeySet) else ""
        return AuditProblem(
            checkpoint.seq, "bad_checkpoint", f"{where} has an invalid signature{why}"
        )
    seq, head = claims.get("seq"), claims.get("head")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return AuditProblem(checkpoint.seq, "bad_checkpoint", f"{where} has no sequence number")
    # The database's own signatures are committed with or after what they cover;
    # a side file's (or head file's) only count as synced when the records were
    # (durability full).
    in_file = where == _SIDE_FILE or where.startswith(_HEAD_FILE)
    synced = not in_file or claims.get("dur") == "full"
    if seq > last:
        if synced:
            return AuditProblem(
                last + 1,
                "truncated",
                f"{where} covers record {seq}, but the log ends at record {last}: "
                f"records {last + 1} to {seq} (at least) were cut",
            )
        finding = f"covers record {seq}, but the log ends at record {last}"
        return AuditProblem(last + 1, "unsynced", _unsynced(where, finding))
    if hashes.get(seq) != head:
        if synced:
            return AuditProblem(
                seq,
                "rewritten",
                f"the log contradicts {where} at record {seq}: a record at or before "
                f"{seq} was rewritten and the hashes after it recomputed",
            )
        finding = f"for record {seq} does not match the log (which went on after it)"
        return AuditProblem(seq, "unsynced", _unsynced(where, finding))
    return None


def _unsynced(where: str, finding: str) -> str:
    return (
        f"{where} {finding}. It was written at durability "
        "normal, where a power failure loses the newest commits if they had not reached "
        "the disk yet: records may have been lost that way, or cut or rewritten with the "
        "database's signed head rolled back, which looks the same"
    )
