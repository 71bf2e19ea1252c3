"""Move a guard's SQLite state file into a PostgreSQL database (``agentguard db migrate``).

Everything a guard keeps is copied: revocations, call-token ids still live,
approvals, the grant inventory with each link's last use, the MCP proxy's
tool pins, budget counters, and the audit chain
with its checkpoints and signed head, row for row (the hashes and signatures
stay valid because nothing is re-encoded). The source chain is verified
against the guard's trusted keys before anything is written; the copy is one
transaction that verifies the chain again as the database holds it and
commits only when it is intact and ends at the source's newest hash.

The source is opened read-only. A target that already holds state is refused
(copying into it would splice two histories), except a target that already
holds this chain (the same hash at the source's newest record, whatever
guards appended since): then nothing is copied and the result says so, so a
second run is harmless.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard.errors import ConfigError, StoreError
from agentguard.store.base import AuditEntry, Checkpoint

if TYPE_CHECKING:
    from agentguard.store.postgres import PostgresStore

__all__ = ["ChainCheck", "MigrationResult", "migrate_sqlite"]

#: Rows copied between two progress reports.
PROGRESS_EVERY = 10_000

#: (SQLite table, PostgreSQL table, columns) in copy order.
_TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("revocations", "ag_revocations", ("kind", "value", "reason", "revoked_at")),
    ("nonces", "ag_nonces", ("key", "expires_at")),
    (
        "grants",
        "ag_grants",
        (
            "link_id",
            "parent",
            "issuer",
            "subject",
            "issued_at",
            "not_before",
            "expires_at",
            "purpose",
            "on_behalf_of",
            "rules",
            "chain",
        ),
    ),
    ("link_usage", "ag_link_usage", ("link_id", "last_used")),
    (
        "approvals",
        "ag_approvals",
        (
            "id",
            "created_at",
            "deadline",
            "status",
            "call_digest",
            "request",
            "receipt",
            "answered_at",
            "reusable_until",
            "uses",
        ),
    ),
    ("tool_pins", "ag_tool_pins", ("address", "fingerprint")),
    (
        "budget_usage",
        "ag_budget_usage",
        ("key", "window_start", "window_end", "calls", "sums"),
    ),
    ("audit", "ag_audit", ("seq", "body", "prev", "hash")),
    ("audit_checkpoints", "ag_audit_checkpoints", ("seq", "head", "signed_at", "token")),
    ("audit_head", "ag_audit_head", ("id", "seq", "head", "signed_at", "token")),
)

#: Source tables a file from an earlier release may lack (copied as empty).
_OPTIONAL = frozenset({"tool_pins", "budget_usage"})

#: Tables that must be empty in the target (the tip row always exists).
_TARGET_TABLES = tuple(pg for _, pg, _ in _TABLES)


@dataclass(frozen=True)
class MigrationResult:
    """What :func:`migrate_sqlite` did.

    Attributes:
        copied: rows copied per source table (all zero when nothing was copied).
        records: audit records in the chain (source and target alike).
        already: the target already held this chain, so nothing was copied.
        expired_nonces: call-token ids left behind because they had expired.
    """

    copied: dict[str, int]
    records: int
    already: bool
    expired_nonces: int


def _source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ConfigError(f"no SQLite state file at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not an agentguard state file: {exc}") from exc
    missing = [name for name, _, _ in _TABLES if name not in tables and name not in _OPTIONAL]
    if missing:
        db.close()
        raise ConfigError(f"{path} is not an agentguard state file (no {', '.join(missing)})")
    return db


def _chain(rows: Iterator[Any]) -> list[AuditEntry]:
    return [AuditEntry(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def _signed(checkpoints: Iterator[Any], head: Iterator[Any]) -> list[Checkpoint]:
    out = [Checkpoint(int(r[0]), str(r[1]), float(r[2]), str(r[3])) for r in checkpoints]
    out += [Checkpoint(int(r[0]), str(r[1]), float(r[2]), str(r[3])) for r in head]
    return out


def _count(conn: Any, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row is not None else 0


#: Checks a chain against its signed heads: the first problem, or ``None`` when intact
#: (:func:`agentguard.audit.verify_log` with the guard's keys; the store layer
#: does not import the audit module).
ChainCheck = Callable[[list[AuditEntry], list[Checkpoint]], object | None]


def _check(
    where: str, entries: list[AuditEntry], signed: list[Checkpoint], keys: ChainCheck
) -> None:
    problem = keys(entries, signed)
    if problem is not None:
        raise StoreError(f"the audit chain in {where} does not verify: {problem}")


def migrate_sqlite(
    path: Path,
    target: PostgresStore,
    check: ChainCheck,
    *,
    now: float,
    progress: Callable[[str, int, int], None] | None = None,
) -> MigrationResult:
    """Copy the SQLite state file ``path`` into ``target`` (see the module docstring).

    Args:
        path: the source ``state.db`` (opened read-only).
        target: the PostgreSQL store to fill (its schema is created if missing).
        check: finds the first problem in a chain and its signed heads
            (``None`` when intact), e.g. :func:`agentguard.audit.verify_log`
            with the guard's trusted keys.
        now: the current time; call-token ids expired by then are not copied.
        progress: called as ``progress(table, copied, total)`` every
            :data:`PROGRESS_EVERY` rows and at the end of each table.

    Raises:
        ConfigError: ``path`` is missing or not an agentguard state file.
        StoreError: the source chain does not verify; the target already holds
            other state; the copy does not verify (nothing is committed); or
            the database fails.
    """
    with closing(_source(path)) as db:
        entries = _chain(db.execute("SELECT seq, body, prev, hash FROM audit ORDER BY seq"))
        signed = _signed(
            db.execute("SELECT seq, head, signed_at, token FROM audit_checkpoints ORDER BY seq"),
            db.execute("SELECT seq, head, signed_at, token FROM audit_head"),
        )
        _check(str(path), entries, signed, check)
        tip = (entries[-1].seq, entries[-1].hash) if entries else None
        with target._direct() as conn, conn.transaction():
            # Appends lock the tip row first: holding it keeps every guard out.
            conn.execute("SELECT seq FROM ag_audit_tip WHERE id = 1 FOR UPDATE")
            held = {t: _count(conn, t) for t in _TARGET_TABLES}
            if any(held.values()):
                # The same hash at the source's newest seq means the same chain
                # (each hash covers everything before it), perhaps continued since.
                row = None
                if tip is not None:
                    found = conn.execute("SELECT hash FROM ag_audit WHERE seq = %s", (tip[0],))
                    row = found.fetchone()
                if tip is not None and row is not None and str(row[0]) == tip[1]:
                    return MigrationResult({n: 0 for n, _, _ in _TABLES}, len(entries), True, 0)
                shown = ", ".join(f"{t.removeprefix('ag_')} {n}" for t, n in held.items() if n)
                raise StoreError(
                    f"the database {target.location} already holds state ({shown}); "
                    "copying into it would mix two histories: migrate into an empty database"
                )
            copied: dict[str, int] = {}
            expired = 0
            present = {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            for name, table, columns in _TABLES:
                if name not in present:
                    copied[name] = 0
                    continue
                total = int(db.execute(f"SELECT count(*) FROM {name}").fetchone()[0])  # noqa: S608
                select = f"SELECT {', '.join(columns)} FROM {name}"  # noqa: S608
                if name == "nonces":
                    select += " WHERE expires_at > ?"
                    rows = db.execute(select, (now,))
                    live = int(
                        db.execute(
                            "SELECT count(*) FROM nonces WHERE expires_at > ?", (now,)
                        ).fetchone()[0]
                    )
                    expired, total = total - live, live
                else:
                    rows = db.execute(select + (" ORDER BY seq" if name == "audit" else ""))
                done = 0
                with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        done += 1
                        if progress is not None and done % PROGRESS_EVERY == 0:
                            progress(name, done, total)
                if progress is not None:
                    progress(name, done, total)
                copied[name] = done
            if tip is not None:
                conn.execute("UPDATE ag_audit_tip SET seq = %s, hash = %s WHERE id = 1", tip)
            # The chain again, as the database now holds it, before it commits.
            copy_entries = _chain(
                iter(
                    conn.execute(
                        "SELECT seq, body, prev, hash FROM ag_audit ORDER BY seq"
                    ).fetchall()
                )
            )
            copy_signed = _signed(
                iter(
                    conn.execute(
                        "SELECT seq, head, signed_at, token FROM ag_audit_checkpoints ORDER BY seq"
                    ).fetchall()
                ),
                iter(
                    conn.execute("SELECT seq, head, signed_at, token FROM ag_audit_head").fetchall()
                ),
            )
            if copy_entries != entries or len(copy_signed) != len(signed):
                raise StoreError(
                    "the copied audit chain differs from the source; nothing was committed"
                )
            _check(target.location, copy_entries, copy_signed, check)
    return MigrationResult(copied, len(entries), False, expired)
