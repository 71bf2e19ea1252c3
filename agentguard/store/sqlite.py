"""SQLite store: one WAL-mode file that several processes may share.

Every write that must be atomic across processes runs in ``BEGIN IMMEDIATE``:
a nonce is inserted once (primary key), an audit entry reads the previous hash
and appends under the same write lock, together with the signed head that
covers it when the entry is anchored. Each thread uses its own connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from agentguard.canonical import canonical_json
from agentguard.errors import StoreError
from agentguard.store.base import (
    GENESIS_HASH,
    REVOCATION_KINDS,
    ApprovalRow,
    AuditEntry,
    Checkpoint,
    Durability,
    GrantRecord,
    HeadSigner,
    Revocation,
    RevocationKind,
    entry_hash,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (
    kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL, revoked_at REAL NOT NULL,
    PRIMARY KEY (kind, value));
CREATE TABLE IF NOT EXISTS nonces (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS grants (
    link_id TEXT PRIMARY KEY, parent TEXT, issuer TEXT NOT NULL, subject TEXT NOT NULL,
    issued_at INTEGER NOT NULL, not_before INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    purpose TEXT, on_behalf_of TEXT, rules TEXT NOT NULL, chain TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS link_usage (link_id TEXT PRIMARY KEY, last_used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, body TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq INTEGER NOT NULL, head TEXT NOT NULL, signed_at REAL NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, head TEXT NOT NULL,
    signed_at REAL NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, deadline REAL NOT NULL,
    status TEXT NOT NULL, call_digest TEXT NOT NULL, request TEXT NOT NULL,
    receipt TEXT, answered_at REAL, reusable_until REAL, uses INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS approvals_digest ON approvals (call_digest, status);
"""

_PURGE_EVERY = 512
_BUSY_TIMEOUT_S = 30.0


def _is_lock_contention(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds a lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SQLiteStore:
    """Implementation of every store protocol over one SQLite file (WAL).

    Raises:
        StoreError: the file cannot be opened, or was written by a newer release.
    """

    def __init__(self, path: Path | str, *, durability: str = "normal") -> None:
        self.path = Path(path)
        self.location = str(self.path)
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        self.durability = cast(Durability, durability)
        self._sync = durability.upper()
        self._local = threading.local()
        # Each connection with the thread that opened it: a connection whose thread
        # has ended is closed when the next one opens (threads come and go, e.g.
        # the audit log's side-file writer), so they cannot pile up.
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._consumed = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot initialise store {self.location}: {exc}") from exc
        self._while_locked(self._create_schema, "initialise")

    def _create_schema(self) -> None:
        # One write transaction: several processes creating the same fresh file
        # queue on the write lock, and the later ones find the schema in place.
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} uses store schema version {row[0]}, but this agentguard "
                    f"understands up to version {SCHEMA_VERSION}; upgrade agentguard"
                )

    def _while_locked(self, step: Callable[[], _T], action: str) -> _T:
        """Run ``step``, retrying while another process holds the lock it needs.

        SQLite's busy handler does not wait for every lock: switching a new file
        to WAL and recovering its index can fail at once with "database is
        locked" while another process does the same. Those are retried with a
        short, growing pause until the store's timeout runs out.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        pause = 0.001
        while True:
            try:
                return step()
            except (StoreError, sqlite3.OperationalError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if not _is_lock_contention(cause) or time.monotonic() >= deadline:
                    if isinstance(exc, StoreError):
                        raise
                    raise StoreError(f"cannot {action} store {self.location}: {exc}") from exc
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot {action} store {self.location}: {exc}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- connections ------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.location} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._while_locked(self._open_connection, "open")
            self._local.conn = conn
            with self._all_lock:
                ended = [c for thread, c in self._all if not thread.is_alive()]
                self._all = [(t, c) for t, c in self._all if t.is_alive()]
                self._all.append((threading.current_thread(), conn))
            for old in ended:
                old.close()
        return conn

    def _open_connection(self) -> sqlite3.Connection:
        # ``timeout`` installs the busy handler before the first statement runs.
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.location} is unavailable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError(f"store {self.location} could not commit: {exc}") from exc

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return fn(self._connection())
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.location} could not be read: {exc}") from exc

    def _run_write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            with self._write() as db:
                return fn(db)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.location} could not be written: {exc}") from exc

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self._read(
            lambda db: db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        )
        return int(row[0])

    # -- revocations ----------------------------------------------------------------
    def revoke(self, kind: RevocationKind, value: str, *, reason: str, at: float) -> None:
        """Record a revocation (idempotent)."""
        if kind not in REVOCATION_KINDS:
            raise ValueError(f"unknown revocation kind {kind!r}")
        self._run_write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO revocations (kind, value, reason, revoked_at) "
                "VALUES (?, ?, ?, ?)",
                (kind, value, reason, at),
            )
        )

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        """The first revocation that hits any of the given values, if any."""
        pairs = [("link", v) for v in link_ids] + [("key", v) for v in kids]
        pairs += [("principal", v) for v in principals]
        if not pairs:
            return None
        clause = " OR ".join("(kind = ? AND value = ?)" for _ in pairs)
        params = [item for pair in pairs for item in pair]
        row = self._read(
            lambda db: db.execute(
                "SELECT kind, value, reason, revoked_at FROM revocations "  # noqa: S608 - only placeholders are interpolated
                f"WHERE {clause} ORDER BY revoked_at LIMIT 1",
                params,
            ).fetchone()
        )
        return None if row is None else Revocation(row[0], row[1], row[2], row[3])

    def revocations(self) -> list[Revocation]:
        """Every revocation, oldest first."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT kind, value, reason, revoked_at FROM revocations ORDER BY revoked_at"
            ).fetchall()
        )
        return [Revocation(r[0], r[1], r[2], r[3]) for r in rows]

    # -- replay -----------------------------------------------------------------------
    def consume(self, key: str, expires_at: float, *, now: float) -> bool:
        """Mark ``key`` used; ``True`` the first time only (across processes)."""
        self._consumed += 1
        purge = self._consumed % _PURGE_EVERY == 0

        def run(db: sqlite3.Connection) -> bool:
            if purge:
                db.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            cur = db.execute(
                "INSERT OR IGNORE INTO nonces (key, expires_at) VALUES (?, ?)", (key, expires_at)
            )
            return cur.rowcount == 1

        return self._run_write(run)

    def is_consumed(self, key: str, *, now: float) -> bool:
        """Whether ``key`` is remembered as used (and not expired), in any process."""
        row = self._read(
            lambda db: db.execute(
                "SELECT 1 FROM nonces WHERE key = ? AND expires_at > ?", (key, now)
            ).fetchone()
        )
        return row is not None

    def nonce_count(self) -> int:
        """How many single-use ids are remembered right now."""
        return int(self._read(lambda db: db.execute("SELECT count(*) FROM nonces").fetchone()[0]))

    # -- inventory ----------------------------------------------------------------------
    def record_grant(self, record: GrantRecord) -> None:
        """Remember a grant (idempotent by link id)."""
        self._run_write(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO grants (link_id, parent, issuer, subject, issued_at, "
                "not_before, expires_at, purpose, on_behalf_of, rules, chain) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.link_id,
                    record.parent,
                    record.issuer,
                    record.subject,
                    record.issued_at,
                    record.not_before,
                    record.expires_at,
                    record.purpose,
                    record.on_behalf_of,
                    json.dumps(list(record.rules)),
                    record.chain,
                ),
            )
        )

    def grant_records(self) -> list[GrantRecord]:
        """Every recorded grant with its last use and revocation status."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT g.link_id, g.parent, g.issuer, g.subject, g.issued_at, g.not_before, "
                "g.expires_at, g.purpose, g.on_behalf_of, g.rules, g.chain, u.last_used, "
                "EXISTS (SELECT 1 FROM revocations r WHERE (r.kind = 'link' AND "
                "r.value = g.link_id) OR (r.kind = 'principal' AND r.value IN "
                "(g.subject, g.issuer, g.on_behalf_of))) "
                "FROM grants g LEFT JOIN link_usage u ON u.link_id = g.link_id "
                "ORDER BY g.issued_at, g.link_id"
            ).fetchall()
        )
        return [
            GrantRecord(
                link_id=r[0],
                parent=r[1],
                issuer=r[2],
                subject=r[3],
                issued_at=r[4],
                not_before=r[5],
                expires_at=r[6],
                purpose=r[7],
                on_behalf_of=r[8],
                rules=tuple(json.loads(r[9])),
                chain=r[10],
                last_used=r[11],
                revoked=bool(r[12]),
            )
            for r in rows
        ]

    # -- audit -----------------------------------------------------------------------------
    def audit_append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: HeadSigner | None = None,
    ) -> AuditEntry:
        """Append one record to the hash chain atomically (across processes).

        With ``anchor`` the new head is signed and replaces the stored signed head
        in the same transaction: a head never exists without its record, and the
        record is not committed without its head.
        """

        def run(db: sqlite3.Connection) -> AuditEntry:
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
            body = canonical_json({**record, "seq": seq}).decode("utf-8")
            digest = entry_hash(prev, body)
            db.execute(
                "INSERT INTO audit (seq, body, prev, hash) VALUES (?, ?, ?, ?)",
                (seq, body, prev, digest),
            )
            for link in link_ids:
                db.execute(
                    "INSERT INTO link_usage (link_id, last_used) VALUES (?, ?) "
                    "ON CONFLICT (link_id) DO UPDATE SET last_used = "
                    "max(last_used, excluded.last_used)",
                    (link, at),
                )
            if anchor is not None:
                db.execute(
                    "INSERT INTO audit_head (id, seq, head, signed_at, token) "
                    "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, "
                    "head = excluded.head, signed_at = excluded.signed_at, token = excluded.token",
                    (seq, digest, at, anchor(seq, digest)),
                )
            return AuditEntry(seq, body, prev, digest)

        return self._run_write(run)

    def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after`` in order."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT seq, body, prev, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
        )
        return [AuditEntry(*r) for r in rows]

    def audit_tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries in order."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT seq, body, prev, hash FROM audit ORDER BY seq DESC LIMIT ?", (max(n, 0),)
            ).fetchall()
        )
        return [AuditEntry(*r) for r in reversed(rows)]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a signed checkpoint."""
        self._run_write(
            lambda db: db.execute(
                "INSERT INTO audit_checkpoints (seq, head, signed_at, token) VALUES (?, ?, ?, ?)",
                (checkpoint.seq, checkpoint.head, checkpoint.signed_at, checkpoint.token),
            )
        )

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""
        rows = self._read(
            lambda db: db.execute(
                "SELECT seq, head, signed_at, token FROM audit_checkpoints ORDER BY seq"
            ).fetchall()
        )
        return [Checkpoint(*r) for r in rows]

    def audit_head(self) -> Checkpoint | None:
        """The newest signed head written with an anchored append, if any."""
        row = self._read(
            lambda db: db.execute(
                "SELECT seq, head, signed_at, token FROM audit_head WHERE id = 1"
            ).fetchone()
        )
        return None if row is None else Checkpoint(*row)

    # -- approvals ---------------------------------------------------------------------------
    _APPROVAL_COLUMNS = (
        "id, created_at, deadline, status, call_digest, request, receipt, answered_at, "
        "reusable_until, uses"
    )

    @staticmethod
    def _approval(row: Sequence[Any]) -> ApprovalRow:
        return ApprovalRow(
            id=row[0],
            created_at=row[1],
            deadline=row[2],
            status=row[3],
            call_digest=row[4],
            request=json.loads(row[5]),
            receipt=row[6],
            answered_at=row[7],
            reusable_until=row[8],
            uses=row[9],
        )

    def approval_insert(self, row: ApprovalRow) -> None:
        """Persist a new pending request."""
        self._run_write(
            lambda db: db.execute(
                "INSERT INTO approvals (id, created_at, deadline, status, call_digest, request) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.created_at,
                    row.deadline,
                    row.status,
                    row.call_digest,
                    json.dumps(row.request),
                ),
            )
        )

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        """One request by id."""
        row = self._read(
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM approvals WHERE id = ?",  # noqa: S608 - constant column list
                (request_id,),
            ).fetchone()
        )
        return None if row is None else self._approval(row)

    def approval_list(self, status: str | None = None) -> list[ApprovalRow]:
        """Requests, newest first, optionally of one status."""
        rows = self._read(
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM approvals "  # noqa: S608 - constant column list
                "WHERE ? IS NULL OR status = ? ORDER BY created_at DESC",
                (status, status),
            ).fetchall()
        )
        return [self._approval(r) for r in rows]

    def approval_open(self, call_digest: str, now: float) -> ApprovalRow | None:
        """The open request for this call (see :meth:`ApprovalStore.approval_open`)."""
        row = self._read(
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM approvals "  # noqa: S608 - constant column list
                "WHERE call_digest = ? AND ((status = 'pending' AND deadline > ?) OR status IN "
                "('approved', 'rejected') OR (status = 'used' AND reusable_until > ?)) "
                "ORDER BY created_at DESC LIMIT 1",
                (call_digest, now, now),
            ).fetchone()
        )
        return None if row is None else self._approval(row)

    def approval_answer(
        self,
        request_id: str,
        *,
        status: str,
        receipt: str,
        answered_at: float,
        reusable_until: float | None,
    ) -> bool:
        """Record an answer if the request is still pending and in time (atomic)."""
        cur = self._run_write(
            lambda db: db.execute(
                "UPDATE approvals SET status = ?, receipt = ?, answered_at = ?, "
                "reusable_until = ? WHERE id = ? AND status = 'pending' AND deadline > ?",
                (status, receipt, answered_at, reusable_until, request_id, answered_at),
            )
        )
        return bool(cur.rowcount == 1)

    def approval_burn(self, request_id: str, now: float) -> bool:
        """Use an approved receipt once (or again within its reuse window); atomic."""
        cur = self._run_write(
            lambda db: db.execute(
                # A rejection is delivered once (closed); an approval is used.
                "UPDATE approvals SET uses = uses + 1, status = CASE status WHEN 'rejected' "
                "THEN 'closed' ELSE 'used' END WHERE id = ? AND (status IN ('approved', "
                "'rejected') OR (status = 'used' AND reusable_until > ?))",
                (request_id, now),
            )
        )
        return bool(cur.rowcount == 1)

    def close(self) -> None:
        """Close every connection this object opened."""
        self._closed = True
        with self._all_lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()
