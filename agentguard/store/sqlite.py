"""SQLite store: one WAL-mode file that several processes may share.

Every write that must be atomic across processes runs in ``BEGIN IMMEDIATE``:
a nonce is inserted once (primary key), an audit entry reads the previous hash
and appends under the same write lock, together with the signed head that
covers it when the entry is anchored. Each thread uses its own connection.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar, cast

from agentguard.budgets import BudgetState, Charge, Usage, charged_record, judge, settle
from agentguard.canonical import canonical_json
from agentguard.decision import Reason
from agentguard.errors import DeniedError, StoreError
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

__all__ = ["DEFAULT_BUSY_TIMEOUT_S", "SCHEMA_VERSION", "SQLiteStore"]

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
CREATE TABLE IF NOT EXISTS tool_pins (address TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_usage (
    key TEXT NOT NULL, window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
    calls INTEGER NOT NULL, sums TEXT NOT NULL, PRIMARY KEY (key, window_start));
CREATE INDEX IF NOT EXISTS budget_usage_end ON budget_usage (window_end);
"""

_PURGE_EVERY = 512
#: How long a store call waits for another process's lock before it is refused.
DEFAULT_BUSY_TIMEOUT_S = 5.0
#: The longest busy timeout accepted (a call waits at most this long).
MAX_BUSY_TIMEOUT_S = 600.0
#: Below this much free space, a failed write is reported as a full disk.
_LOW_SPACE_BYTES = 1 << 20

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_NOTADB = 26


def _primary_code(exc: BaseException | None) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _is_lock_contention(exc: BaseException | None) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds a lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    if _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _rollback(db: sqlite3.Connection) -> None:
    """End the open transaction, if SQLite has not ended it already.

    After some errors (a full disk, an I/O error) SQLite rolls the transaction
    back itself; a second ``ROLLBACK`` would then fail with "no transaction is
    active" and hide the real cause.
    """
    if db.in_transaction:
        # If even this fails, the connection is unusable; the original error says why.
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


class SQLiteStore:
    """Implementation of every store protocol over one SQLite file (WAL).

    The store remembers which file it opened (device and inode, and an id kept
    inside the database): once the file at its path is deleted or replaced,
    every call is refused, because writes would go to a file nobody reads and
    single-use ids spent in the old file would be accepted again.

    Args:
        path: the database file (created if missing).
        durability: ``normal`` or ``full`` (see :data:`~agentguard.store.base.Durability`).
        busy_timeout: how long, in seconds, a call waits while another process
            holds the file's lock before it is refused.

    Raises:
        StoreError: the file cannot be opened, is not an agentguard database, or
            was written by a newer release (the message names the cause).
        ValueError: ``durability`` or ``busy_timeout`` is out of range.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        durability: str = "normal",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        if durability not in ("normal", "full"):
            raise ValueError("durability must be 'normal' or 'full'")
        if (
            not isinstance(busy_timeout, int | float)
            or isinstance(busy_timeout, bool)
            or not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT_S
        ):
            raise ValueError(f"busy_timeout must be between 0 and {MAX_BUSY_TIMEOUT_S:g} seconds")
        #: Seconds a call waits for another process's lock.
        self.busy_timeout = float(busy_timeout)
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
        # The file this store opened, and why it refuses every call once it is gone.
        self._identity: tuple[int, int] | None = None
        self.store_id = ""
        self._lost: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot initialise store {self.location}: {exc}") from exc
        self._while_locked(self._create_schema, "open")
        self._identity = self._stat()

    def _stat(self) -> tuple[int, int]:
        """The device and inode of the file at the store's path."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._lose("was deleted")
        except OSError as exc:
            raise StoreError(f"store {self.location} cannot be checked: {exc}") from exc
        return st.st_dev, st.st_ino

    def _lose(self, what: str) -> NoReturn:
        """Refuse this and every later call: the file this store opened is gone."""
        self._lost = (
            f"store {self.location} {what} while this process was using it: every call "
            "is refused, because records would go to a file nobody reads and single-use "
            "tokens spent in the old file could be accepted again; restore the file (or "
            "find what replaced it) and restart the process"
        )
        raise StoreError(self._lost)

    def _explain(self, exc: BaseException, action: str) -> StoreError:
        """A :class:`StoreError` naming the cause of ``exc`` and what to do about it."""
        code = _primary_code(exc)
        raw = str(exc)
        where = f"cannot {action} store {self.location}"
        if _is_lock_contention(exc):
            cause = (
                f"the database was locked for {self.busy_timeout:g} s by another process "
                "(storage.busy_timeout); find the process holding the lock, or raise the timeout"
            )
        elif code == _SQLITE_FULL:
            cause = f"the disk is full; free space on the volume holding {self.path.parent}"
        elif code == _SQLITE_IOERR:
            cause = self._io_cause()
        elif code in (_SQLITE_READONLY, _SQLITE_PERM):
            cause = (
                "the file or its directory is read-only for this process; give it write "
                f"access to {self.path.name}, its -wal and -shm files and their directory"
            )
        elif code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            cause = (
                "the file is corrupt or not an agentguard database; restore it from a backup, "
                "or move it aside to start with empty state"
            )
        elif code == _SQLITE_CANTOPEN:
            cause = "the file cannot be opened; check that its directory exists and is accessible"
        else:
            return StoreError(f"{where}: {raw}")
        return StoreError(f"{where}: {cause} (SQLite: {raw})")

    def _io_cause(self) -> str:
        """Why a write failed with an I/O error: a full disk, a file size limit, or the device.

        SQLite reports a write cut short by ``RLIMIT_FSIZE`` (or some file systems'
        quota) as a generic I/O error; the limit and the free space tell them apart.
        """
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if limit != resource.RLIM_INFINITY:
            sizes = []
            for suffix in ("", "-wal", "-shm"):
                try:
                    sizes.append(os.stat(f"{self.path}{suffix}").st_size)
                except OSError:
                    continue
            if sizes and max(sizes) + 65536 >= limit:
                return (
                    f"a write reached the process's file size limit (RLIMIT_FSIZE, {limit} "
                    "bytes); raise the limit (ulimit -f) for this process"
                )
        try:
            vfs = os.statvfs(self.path.parent)
        except OSError:
            vfs = None
        if vfs is not None and vfs.f_bavail * vfs.f_frsize < _LOW_SPACE_BYTES:
            return f"the disk is full; free space on the volume holding {self.path.parent}"
        return "a disk I/O error; check the device and the system log"

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
            elif _schema_number(row[0], self.path) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} uses store schema version {row[0]}, but this agentguard "
                    f"understands up to version {SCHEMA_VERSION}; upgrade agentguard"
                )
            # An id of its own: a replacement file has another one, even on a reused inode.
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)",
                (secrets.token_hex(16),),
            )
            (self.store_id,) = db.execute(
                "SELECT value FROM meta WHERE key = 'store_id'"
            ).fetchone()

    def _while_locked(self, step: Callable[[], _T], action: str) -> _T:
        """Run ``step``, retrying while another process holds the lock it needs.

        SQLite's busy handler does not wait for every lock: switching a new file
        to WAL and recovering its index can fail at once with "database is
        locked" while another process does the same. Those are retried with a
        short, growing pause until the store's timeout runs out.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                return step()
            except (StoreError, sqlite3.OperationalError) as exc:
                cause = exc.__cause__ if isinstance(exc, StoreError) else exc
                if not _is_lock_contention(cause) or time.monotonic() >= deadline:
                    if isinstance(exc, StoreError):
                        raise
                    raise self._explain(exc, action) from exc
            except sqlite3.Error as exc:
                raise self._explain(exc, action) from exc
            except OSError as exc:
                raise StoreError(f"cannot {action} store {self.location}: {exc}") from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- connections ------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.location} is closed")
        if self._lost is not None:
            raise StoreError(self._lost)
        if self._identity is not None and self._stat() != self._identity:
            self._lose("was replaced by another file")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._while_locked(self._open_connection, "open")
            if self.store_id:
                try:
                    row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
                except sqlite3.Error as exc:
                    conn.close()
                    raise self._explain(exc, "open") from exc
                if row is None or row[0] != self.store_id:
                    conn.close()
                    self._lose("was replaced by another database")
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
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
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
        """One ``BEGIN IMMEDIATE`` transaction; a SQLite error becomes a :class:`StoreError`
        naming its cause, and anything raised inside rolls the transaction back."""
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._explain(exc, "write to") from exc
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise self._explain(exc, "write to") from exc
        except BaseException:
            _rollback(db)
            raise

    def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return fn(self._connection())
        except sqlite3.Error as exc:
            raise self._explain(exc, "read") from exc

    def _run_write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._write() as db:
            return fn(db)

    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self._read(
            lambda db: db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        )
        return _schema_number(row[0], self.path)

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
        """Mark ``key`` used; ``True`` the first time only (across processes).

        Expired ids are purged now and then by the caller's clock, which may be
        wrong. The purge leaves a watermark in the file: an id expiring at or
        before it may have been forgotten, so it is refused as expired whatever
        the caller's clock says; stepping a clock back cannot bring it back.

        Raises:
            DeniedError: ``call_token_expired``: ``expires_at`` is at or before
                the purge watermark.
            StoreError: the store cannot be written.
        """
        self._consumed += 1
        purge = self._consumed % _PURGE_EVERY == 0

        def run(db: sqlite3.Connection) -> bool | None:
            if purge:
                db.execute("DELETE FROM nonces WHERE expires_at <= ?", (now,))
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('nonce_watermark', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = "
                    "max(CAST(value AS REAL), CAST(excluded.value AS REAL))",
                    (now,),
                )
            if expires_at <= self._watermark(db):
                return None
            cur = db.execute(
                "INSERT OR IGNORE INTO nonces (key, expires_at) VALUES (?, ?)", (key, expires_at)
            )
            return cur.rowcount == 1

        fresh = self._run_write(run)
        if fresh is None:
            raise _expired(expires_at)
        return fresh

    def _watermark(self, db: sqlite3.Connection) -> float:
        row = db.execute("SELECT value FROM meta WHERE key = 'nonce_watermark'").fetchone()
        if row is None:
            return -math.inf
        try:
            return float(row[0])
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"store {self.location} holds a damaged nonce watermark {row[0]!r}; restore "
                "the file from a backup"
            ) from exc

    def nonce_watermark(self) -> float | None:
        """Ids expiring at or before this time are refused as expired (``None``: no purge yet)."""
        mark = self._read(self._watermark)
        return None if mark == -math.inf else mark

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
        burn: tuple[str, float] | None = None,
        checkpoint: Callable[[int, str], str | None] | None = None,
        charge: tuple[Sequence[Charge], float] | None = None,
    ) -> AuditEntry:
        """Append one record to the hash chain atomically (across processes).

        With ``anchor`` the new head is signed and replaces the stored signed head
        in the same transaction: a head never exists without its record, and the
        record is not committed without its head. With ``burn`` (request id, now)
        the approval's receipt is used in that transaction too: a receipt is
        never used up without the decision that used it. A token ``checkpoint``
        returns for the new head is stored as a signed checkpoint in that
        transaction as well (``None``: no checkpoint is due there). With
        ``charge`` (charges, now) those budgets are charged in that transaction,
        all or none, and their new state is written into the record (``budget``).

        Raises:
            DeniedError: ``approval_replayed``: the receipt in ``burn`` was used
                already (nothing is written).
            BudgetExhausted: a budget in ``charge`` does not fit (nothing is written).
            StoreError: the record could not be written.
        """

        def run(db: sqlite3.Connection) -> AuditEntry:
            nonlocal record
            if burn is not None and self._burn(db, *burn).rowcount != 1:
                raise _replayed()
            if charge is not None:
                record = self._charge(db, record, *charge)
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
            token = checkpoint(seq, digest) if checkpoint is not None else None
            if token is not None:
                db.execute(
                    "INSERT INTO audit_checkpoints (seq, head, signed_at, token) "
                    "VALUES (?, ?, ?, ?)",
                    (seq, digest, at, token),
                )
            return AuditEntry(seq, body, prev, digest)

        return self._run_write(run)

    @staticmethod
    def _charge(
        db: sqlite3.Connection, record: dict[str, Any], charges: Sequence[Charge], now: float
    ) -> dict[str, Any]:
        """Charge the budgets inside the append's write transaction (see ``audit_append``)."""
        db.execute("DELETE FROM budget_usage WHERE window_end <= ?", (now,))
        return charged_record(
            record, charges, now, lambda k, s: _usage(db, k, s), lambda st, u: _write(db, st, u)
        )

    def budget_charge(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Charge every budget at ``now``, or none, in one write transaction
        (raises ``BudgetExhausted``; see :class:`~agentguard.store.base.BudgetStore`)."""

        def run(db: sqlite3.Connection) -> list[BudgetState]:
            db.execute("DELETE FROM budget_usage WHERE window_end <= ?", (now,))
            return settle(
                charges, now, lambda k, s: _usage(db, k, s), lambda st, u: _write(db, st, u)
            )

        return self._run_write(run)

    def budget_states(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Each charge judged against its window's usage at ``now`` (nothing is written)."""
        return self._read(lambda db: judge(charges, now, lambda k, s: _usage(db, k, s)))

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

    def approval_file(self, row: ApprovalRow) -> ApprovalRow:
        """Persist ``row`` as a new pending request, unless one for the same call is
        pending still (at ``row.created_at``): then that one, and nothing is written.

        One write transaction, so racing processes file one request and join it.
        """

        def run(db: sqlite3.Connection) -> ApprovalRow:
            found = db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM approvals "  # noqa: S608 - constant column list
                "WHERE call_digest = ? AND status = 'pending' AND deadline > ? "
                "ORDER BY created_at, id LIMIT 1",
                (row.call_digest, row.created_at),
            ).fetchone()
            if found is not None:
                return self._approval(found)
            db.execute(
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
            return row

        return self._run_write(run)

    def pin_tools(self, fingerprints: Mapping[str, str]) -> dict[str, str]:
        """Pin each address unless pinned already (one write transaction, so processes
        sharing the file agree on the first pin); the pinned fingerprint of each."""
        items = list(fingerprints.items())

        def pinned(db: sqlite3.Connection) -> dict[str, str]:
            found = {}
            for address, _ in items:
                row = db.execute(
                    "SELECT fingerprint FROM tool_pins WHERE address = ?", (address,)
                ).fetchone()
                if row is not None:
                    found[address] = str(row[0])
            return found

        def run(db: sqlite3.Connection) -> dict[str, str]:
            db.executemany(
                "INSERT OR IGNORE INTO tool_pins (address, fingerprint) VALUES (?, ?)", items
            )
            return pinned(db)

        # Pinned already (every listing after the first): a read, which another
        # process's write lock does not hold up.
        found = self._read(pinned)
        return found if len(found) == len(items) else self._run_write(run)

    def unpin_tools(self, addresses: Sequence[str]) -> int:
        """Forget the pins of ``addresses``; how many were removed."""
        unique = sorted(set(addresses))
        return self._run_write(
            lambda db: sum(
                db.execute("DELETE FROM tool_pins WHERE address = ?", (a,)).rowcount for a in unique
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
        cur = self._run_write(lambda db: self._burn(db, request_id, now))
        return bool(cur.rowcount == 1)

    @staticmethod
    def _burn(db: sqlite3.Connection, request_id: str, now: float) -> sqlite3.Cursor:
        return db.execute(
            # A rejection is delivered once (closed); an approval is used.
            "UPDATE approvals SET uses = uses + 1, status = CASE status WHEN 'rejected' "
            "THEN 'closed' ELSE 'used' END WHERE id = ? AND (status IN ('approved', "
            "'rejected') OR (status = 'used' AND reusable_until > ?))",
            (request_id, now),
        )

    def close(self) -> None:
        """Close every connection this object opened."""
        self._closed = True
        with self._all_lock:
            for _, conn in self._all:
                conn.close()
            self._all.clear()


def _schema_number(value: object, path: Path) -> int:
    """The schema version stored as ``value``, or a :class:`StoreError` saying it is damaged."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise StoreError(
        f"{path} records store schema version {value!r}, which is not a number: the file "
        "is damaged or not an agentguard database; restore it from a backup, or move it "
        "aside to start with empty state"
    )


def _expired(expires_at: float) -> DeniedError:
    return DeniedError(
        f"call token expired at {expires_at:.0f}, at or before the time up to which this "
        "store has forgotten spent tokens (its purge watermark); a clock that was stepped "
        "back cannot make it valid again",
        reason=Reason.CALL_TOKEN_EXPIRED,
    )


def _usage(db: sqlite3.Connection, key: str, start: int) -> Usage | None:
    row = db.execute(
        "SELECT calls, sums FROM budget_usage WHERE key = ? AND window_start = ?", (key, start)
    ).fetchone()
    return None if row is None else Usage.from_row(row[0], row[1])


def _write(db: sqlite3.Connection, state: BudgetState, usage: Usage) -> None:
    db.execute(
        "INSERT INTO budget_usage (key, window_start, window_end, calls, sums) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, window_start) DO UPDATE SET "
        "calls = excluded.calls, sums = excluded.sums",
        (state.charge.key, state.start, state.end, usage.calls, usage.to_text()),
    )


def _replayed() -> DeniedError:
    return DeniedError("approval receipt was used already", reason=Reason.APPROVAL_REPLAYED)
