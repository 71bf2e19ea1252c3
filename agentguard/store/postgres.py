"""PostgreSQL store: one database that several guard processes and hosts share.

Needs the ``postgres`` extra (psycopg 3 and psycopg_pool). Every operation is
one short transaction on a pooled connection, so the store may be used from
many threads at once:

* a call token's nonce or an approval receipt is spent by one ``INSERT ... ON
  CONFLICT DO NOTHING`` or one conditional ``UPDATE``: PostgreSQL's row locks
  let exactly one of several concurrent processes succeed;
* an audit append locks the chain's tip row (``SELECT ... FOR UPDATE``), so
  appends from every process form one hash chain; the record, the tip, the
  links' last use and the signed head commit together;
* expired nonces are purged by the database server's clock, so replicas whose
  clocks disagree do not forget a nonce early.

Every failure is a :class:`~agentguard.errors.StoreError` naming its cause
(unreachable, authentication, missing database, newer schema); the URL's
password never appears in a message or in :attr:`PostgresStore.location`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from agentguard.budgets import BudgetState, Charge, Usage, charged_record, judge, settle
from agentguard.canonical import canonical_json
from agentguard.decision import Reason
from agentguard.errors import ConfigError, DeniedError, StoreError
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

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["DATABASE_URL_ENV", "SCHEMA_VERSION", "PostgresStore", "database_url", "redact_url"]

#: The environment variable whose URL overrides ``storage.url``.
DATABASE_URL_ENV = "AGENTGUARD_DATABASE_URL"

#: The schema version this release writes and understands.
SCHEMA_VERSION = 3
#: Seconds a call waits for a connection (or a statement) before it is refused.
DEFAULT_TIMEOUT_S = 5.0
_PURGE_EVERY = 512
#: How many times a transaction the server rolled back for a serialization failure
#: or a deadlock is tried again before the call is refused.
SERIALIZATION_RETRIES = 6
_RETRYABLE = frozenset({"40001", "40P01"})
# The isolation every statement here is written for (row locks, ON CONFLICT, conditional
# UPDATE), whatever the database's default_transaction_isolation says: under a stricter
# default, replicas opening the store together failed on the schema check.
_ISOLATION = "SET default_transaction_isolation = 'read committed'"
#: The NOTIFY channel on which an answered approval request's id is announced.
APPROVAL_CHANNEL = "agentguard_approval"
# How often the listener thread looks up from its connection (to notice close()).
_LISTEN_TICK = 0.5
# A pooled connection unused for this long is checked (one round trip) before it is
# used; one used more recently is not. A server restart within that time makes the
# next call on it fail with a StoreError (fail closed), and the pool drops it.
_CHECK_AFTER_IDLE_S = 1.0
#: How a store operation talks to the server: ``tx``, statements one by one in a
#: transaction; ``pipeline``, a transaction whose BEGIN, statements and COMMIT are
#: sent without waiting for answers until one is needed; ``single``, one statement
#: that is its own transaction (no BEGIN or COMMIT round trips).
_Mode = Literal["tx", "pipeline", "single"]
# Taken (per transaction) while the schema is created or migrated, so replicas
# starting together do not race on CREATE TABLE.
_SCHEMA_LOCK = 0x6167_6775_6172_6400 & 0x7FFF_FFFF_FFFF_FFFF
_T = TypeVar("_T")
log = logging.getLogger("agentguard")

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS ag_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ag_revocations (
    kind TEXT NOT NULL, value TEXT NOT NULL, reason TEXT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, value));
CREATE TABLE IF NOT EXISTS ag_nonces (key TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS ag_nonces_expiry ON ag_nonces (expires_at);
CREATE TABLE IF NOT EXISTS ag_nonce_watermark (
    id INTEGER PRIMARY KEY CHECK (id = 1), mark DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS ag_grants (
    link_id TEXT PRIMARY KEY, parent TEXT, issuer TEXT NOT NULL, subject TEXT NOT NULL,
    issued_at BIGINT NOT NULL, not_before BIGINT NOT NULL, expires_at BIGINT NOT NULL,
    purpose TEXT, on_behalf_of TEXT, rules TEXT NOT NULL, chain TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ag_link_usage (
    link_id TEXT PRIMARY KEY, last_used DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS ag_audit (
    seq BIGINT PRIMARY KEY, body TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ag_audit_tip (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL);
INSERT INTO ag_audit_tip (id, seq, hash) VALUES (1, 0, '{genesis}') ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS ag_audit_checkpoints (
    seq BIGINT NOT NULL, head TEXT NOT NULL, signed_at DOUBLE PRECISION NOT NULL,
    token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ag_audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, head TEXT NOT NULL,
    signed_at DOUBLE PRECISION NOT NULL, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ag_approvals (
    id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL,
    deadline DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, call_digest TEXT NOT NULL,
    request TEXT NOT NULL, receipt TEXT, answered_at DOUBLE PRECISION,
    reusable_until DOUBLE PRECISION, uses INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS ag_approvals_digest ON ag_approvals (call_digest, status);
""".replace("{genesis}", GENESIS_HASH)

# Version 2: the MCP proxy's tool pins, shared by every proxy on the database.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS ag_tool_pins (address TEXT PRIMARY KEY, fingerprint TEXT NOT NULL);
"""

# Version 3: budget counters, one row per budget and fixed window (agentguard.budgets).
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS ag_budget_usage (
    key TEXT NOT NULL, window_start BIGINT NOT NULL, window_end BIGINT NOT NULL,
    calls BIGINT NOT NULL, sums TEXT NOT NULL, PRIMARY KEY (key, window_start));
CREATE INDEX IF NOT EXISTS ag_budget_usage_end ON ag_budget_usage (window_end);
"""

#: Schema steps: version N is reached by running ``_MIGRATIONS[N - 1]``.
_MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)

#: The tables ``agentguard db status`` counts, with the label it shows.
COUNTED_TABLES: tuple[tuple[str, str], ...] = (
    ("revocations", "ag_revocations"),
    ("nonces", "ag_nonces"),
    ("grants", "ag_grants"),
    ("audit entries", "ag_audit"),
    ("checkpoints", "ag_audit_checkpoints"),
    ("approvals", "ag_approvals"),
    ("tool pins", "ag_tool_pins"),
    ("budget counters", "ag_budget_usage"),
)


def redact_url(url: str) -> str:
    """``postgresql://host:port/database`` from ``url``, without user name or password.

    A URL that cannot be parsed is shown as ``postgresql://<unparseable URL>``.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port
    except ValueError:
        return "postgresql://<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    where = f"{host}:{port}" if port is not None else host
    return f"postgresql://{where}{parts.path or '/'}"


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def database_url(configured: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The database URL in force: ``$AGENTGUARD_DATABASE_URL``, else ``configured`` expanded.

    ``${NAME}`` in ``configured`` (the policy's ``storage.url``) is replaced by the
    environment variable ``NAME``, so a password can stay out of the policy file.
    ``None`` (no URL anywhere) means the SQLite or in-memory store as before.

    Raises:
        ConfigError: a ``${...}`` names no valid variable or an unset one (the
            message names the variable, never a value), or the URL is not a
            ``postgresql://`` or ``postgres://`` URL.
    """
    env = os.environ if environ is None else environ
    override = env.get(DATABASE_URL_ENV)
    if override:
        url = override
        source = DATABASE_URL_ENV
    elif configured:
        source = "storage.url"

        def expand(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _NAME.fullmatch(name):
                raise ConfigError(f"storage.url: ${{{name}}} is not a variable name")
            value = env.get(name)
            if value is None:
                raise ConfigError(f"storage.url: environment variable {name} is not set")
            return value

        if "${" in _VARIABLE.sub("", configured):
            raise ConfigError("storage.url: a ${ without its closing }")
        url = _VARIABLE.sub(expand, configured)
    else:
        return None
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{source} must be a postgresql:// URL")
    return url


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class PostgresStore:
    """Implementation of every store protocol over one PostgreSQL database.

    Args:
        url: a ``postgresql://user:password@host:port/database`` URL (or any
            libpq connection string).
        timeout: seconds a call waits to connect, for a pooled connection or for
            a statement before it is refused with a :class:`StoreError`.
        pool_size: the most connections this process holds open.
        create: create the schema when the database has none (``agentguard db
            upgrade`` does the same explicitly); with ``False`` a database
            without the schema is refused.
        read_only: only read (``agentguard audit verify``, ``tail``, ``export``):
            nothing is created or migrated, a database without the schema is
            refused, and every transaction is read-only, so the server refuses
            any write.

    Raises:
        StoreError: the database is unreachable, refuses the credentials, does
            not exist, has no schema (with ``create=False``) or has a schema from
            a newer release. The message never contains the password.
        ValueError: ``timeout`` or ``pool_size`` is out of range.
    """

    #: Committed transactions survive a crash and power loss (PostgreSQL's WAL).
    durability: Durability = "full"
    #: Many processes append to one chain, so a process's audit side file holds
    #: only the heads that process signed (see ``agentguard audit verify --head``).
    shared = True

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        pool_size: int = 8,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError("pool_size must be a positive integer")
        self.location = redact_url(url)
        self.timeout = float(timeout)
        self._url = url
        self._secret = _password(url)
        self._closed = False
        self._consumed = 0
        self._count_lock = threading.Lock()
        #: How many transactions were tried again after a serialization failure or deadlock.
        self.retries = 0
        #: How many answer notifications this process's listener has received.
        self.notifications = 0
        self._waiters: dict[str, set[threading.Event]] = {}
        self._waiters_lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listen_ready = threading.Event()
        try:
            import psycopg
            from psycopg_pool import ConnectionPool
        except ImportError as exc:
            raise StoreError(
                "a PostgreSQL store needs the postgres extra: pip install 'agentguard[postgres]'"
            ) from exc
        self._psycopg = psycopg
        # One direct connection first: its error says why (auth, unreachable, no database),
        # where a pool would only say it timed out.
        with self._direct() as conn:
            version = self._read_version(conn)
            if version is None and (read_only or not create):
                raise StoreError(
                    f"store {self.location} has no agentguard schema; run `agentguard db upgrade`"
                )
            if version is not None and version > SCHEMA_VERSION:
                raise self._newer(version)
            #: The schema version found when the store was opened (0: none).
            self.found_version = version or 0
            if not read_only and (version is None or version < SCHEMA_VERSION):
                self._upgrade(conn)
        statement_ms = int(self.timeout * 1000)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"SET statement_timeout = {statement_ms}")
            conn.execute(f"SET lock_timeout = {statement_ms}")
            conn.execute(_ISOLATION)
            if read_only:
                conn.execute("SET default_transaction_read_only = on")
            conn.commit()

        # When each pooled connection was last given back (see _CHECK_AFTER_IDLE_S).
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

        def check(conn: psycopg.Connection[Any]) -> None:
            returned = self._returned.get(conn)
            if returned is None or time.monotonic() - returned >= _CHECK_AFTER_IDLE_S:
                ConnectionPool.check_connection(conn)

        # Autocommit: a transaction is opened explicitly (``_tx``), so a single
        # statement costs one round trip instead of three (BEGIN, it, COMMIT).
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=self.timeout,
            kwargs={"connect_timeout": max(1, int(self.timeout)), "autocommit": True},
            configure=configure,
            check=check,
            open=False,
            name="agentguard",
        )
        try:
            self._pool.open(wait=False)
        except Exception as exc:  # any pool failure is a store failure
            raise self._explain(exc, "open") from exc

    # -- errors -------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text.replace(self._url, self.location)

    def _explain(self, exc: BaseException, action: str) -> StoreError:
        """A :class:`StoreError` naming why ``exc`` happened (never the password)."""
        psycopg = self._psycopg
        raw = self._scrub(str(exc).strip())
        where = f"cannot {action} store {self.location}"
        sqlstate = getattr(exc, "sqlstate", None)
        lowered = raw.lower()
        if sqlstate in ("28P01", "28000") or "authentication failed" in lowered:
            cause = "the server refused the user name or password in the storage URL"
        elif sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
            cause = "the database in the storage URL does not exist; create it first"
        elif sqlstate in _RETRYABLE:
            cause = (
                "the transaction kept colliding with concurrent ones (serialization failure "
                f"or deadlock, retried {SERIALIZATION_RETRIES} times)"
            )
        elif sqlstate in ("57014", "55P03"):
            cause = f"the database did not answer within {self.timeout:g} s (storage timeout)"
        elif type(exc).__name__ == "PoolTimeout" or isinstance(exc, psycopg.OperationalError):
            cause = (
                f"the database server is unreachable or went away (no working connection "
                f"within {self.timeout:g} s); check that it runs and the URL's host and port"
            )
        else:
            return StoreError(f"{where}: {raw}")
        return StoreError(f"{where}: {cause} (PostgreSQL: {raw})")

    def _newer(self, version: int) -> StoreError:
        return StoreError(
            f"store {self.location} uses store schema version {version}, but this agentguard "
            f"understands up to version {SCHEMA_VERSION}; upgrade agentguard"
        )

    # -- connections and transactions -------------------------------------------------
    @contextmanager
    def _direct(self) -> Iterator[psycopg.Connection[Any]]:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self._url, connect_timeout=max(1, int(self.timeout)))
            conn.execute(_ISOLATION)
            conn.commit()
        except psycopg.Error as exc:
            raise self._explain(exc, "open") from exc
        try:
            yield conn
        except psycopg.Error as exc:
            raise self._explain(exc, "open") from exc
        finally:
            conn.close()

    def _read_version(self, conn: psycopg.Connection[Any]) -> int | None:
        exists = conn.execute("SELECT to_regclass('ag_meta') IS NOT NULL").fetchone()
        conn.commit()
        if not exists or not exists[0]:
            return None
        row = conn.execute("SELECT value FROM ag_meta WHERE key = 'schema_version'").fetchone()
        conn.commit()
        if row is None:
            return None
        value = row[0]
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        raise StoreError(
            f"store {self.location} records store schema version {value!r}, which is not a "
            "number: the database is damaged or its ag_meta table is not agentguard's"
        )

    def _upgrade(self, conn: psycopg.Connection[Any]) -> int:
        """Bring the schema to :data:`SCHEMA_VERSION` in one transaction; returns the old one."""
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS ag_meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM ag_meta WHERE key = 'schema_version'").fetchone()
            before = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
            if before > SCHEMA_VERSION:
                raise self._newer(before)
            for step in _MIGRATIONS[before:]:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement.encode("utf-8"))
            conn.execute(
                "INSERT INTO ag_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
        return before

    def upgrade(self) -> int:
        """Create or migrate the schema to this release's version (idempotent).

        Returns:
            The version found before (``0`` for an empty database).

        Raises:
            StoreError: the database is unreachable or its schema is newer.
        """
        with self._direct() as conn:
            return self._upgrade(conn)

    @contextmanager
    def _tx(self, action: str, mode: _Mode = "tx") -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection (see :data:`_Mode`); any database
        error is a StoreError."""
        if self._closed:
            raise StoreError(f"store {self.location} is closed")
        psycopg = self._psycopg
        try:
            with self._pool.connection() as conn:
                if mode == "pipeline":
                    with self._pipelined(conn):
                        yield conn
                else:
                    block: AbstractContextManager[Any] = (
                        nullcontext() if mode == "single" else conn.transaction()
                    )
                    with block:
                        yield conn
                # Answered just now: the next use soon after needs no liveness check.
                self._returned[conn] = time.monotonic()
        except StoreError:
            raise
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                # Perhaps the server restarted: check every idle pooled connection now,
                # so only this call fails on one that died unchecked.
                with suppress(Exception):
                    self._pool.check()
            raise self._explain(exc, action) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):
                raise self._explain(exc, action) from exc
            raise

    @contextmanager
    def _pipelined(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """A transaction in pipeline mode: BEGIN goes out with the first statement whose
        answer is needed, COMMIT with the last ones; anything raised rolls it back."""
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                yield
                conn.execute("COMMIT")
        except BaseException:
            if not conn.closed:
                # A broken connection cannot roll back: the pool drops it.
                with suppress(self._psycopg.Error):
                    conn.rollback()
            raise

    def _run(
        self, action: str, fn: Callable[[psycopg.Connection[Any]], _T], mode: _Mode = "tx"
    ) -> _T:
        """``fn`` in one transaction (see :data:`_Mode`); a serialization failure or
        deadlock (the server rolled the transaction back) is retried up to
        :data:`SERIALIZATION_RETRIES` times."""
        attempt = 0
        while True:
            try:
                with self._tx(action, mode) as conn:
                    return fn(conn)
            except StoreError as exc:
                cause = getattr(exc.__cause__, "sqlstate", None)
                if cause not in _RETRYABLE or attempt >= SERIALIZATION_RETRIES:
                    raise
            attempt += 1
            with self._count_lock:
                self.retries += 1
            # Jittered backoff, so the transactions that collided do not collide again.
            time.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311 - jitter, not a secret

    def schema_version(self) -> int:
        """The schema version recorded in the database."""
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT value FROM ag_meta WHERE key = 'schema_version'"
            ).fetchone(),
        )
        return int(row[0]) if row is not None else 0

    def counts(self) -> dict[str, int]:
        """How many rows each kind of state has (for ``agentguard db status``)."""

        def run(db: psycopg.Connection[Any]) -> dict[str, int]:
            result = {}
            for label, table in COUNTED_TABLES:
                row = db.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - constant table names
                result[label] = int(row[0]) if row else 0
            return result

        return self._run("read", run)

    # -- revocations ------------------------------------------------------------------------
    def revoke(self, kind: RevocationKind, value: str, *, reason: str, at: float) -> None:
        """Record a revocation (idempotent); effective in every process once it returns."""
        if kind not in REVOCATION_KINDS:
            raise ValueError(f"unknown revocation kind {kind!r}")
        self._run(
            "write to",
            lambda db: db.execute(
                "INSERT INTO ag_revocations (kind, value, reason, revoked_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (kind, value, reason, at),
            ),
        )

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        """The first revocation that hits any of the given values, if any."""
        if not (link_ids or kids or principals):
            return None
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT kind, value, reason, revoked_at FROM ag_revocations WHERE "
                "(kind = 'link' AND value = ANY(%s)) OR (kind = 'key' AND value = ANY(%s)) "
                "OR (kind = 'principal' AND value = ANY(%s)) ORDER BY revoked_at LIMIT 1",
                (list(link_ids), list(kids), list(principals)),
            ).fetchone(),
            "single",
        )
        return None if row is None else Revocation(row[0], row[1], row[2], row[3])

    def revocations(self) -> list[Revocation]:
        """Every revocation, oldest first."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT kind, value, reason, revoked_at FROM ag_revocations ORDER BY revoked_at"
            ).fetchall(),
        )
        return [Revocation(r[0], r[1], r[2], r[3]) for r in rows]

    # -- replay -----------------------------------------------------------------------------
    def consume(self, key: str, expires_at: float, *, now: float) -> bool:
        """Mark ``key`` used; ``True`` the first time only, across every process.

        ``now`` is not used to purge: expired ids are deleted by the database
        server's clock, which every replica shares. A purge leaves a watermark
        (the server's time): an id expiring at or before it may have been
        forgotten, so it is refused as expired whatever any caller's clock says.

        Raises:
            DeniedError: ``call_token_expired``: ``expires_at`` is at or before
                the purge watermark.
            StoreError: the database cannot be written.
        """
        del now
        with self._count_lock:
            self._consumed += 1
            purge = self._consumed % _PURGE_EVERY == 0

        def run(db: psycopg.Connection[Any]) -> bool | None:
            if purge:
                self._purge(db)
            # One statement in the common case: inserted only above the watermark.
            cur = db.execute(
                "INSERT INTO ag_nonces (key, expires_at) SELECT %s, %s WHERE %s > COALESCE("
                "(SELECT mark FROM ag_nonce_watermark WHERE id = 1), '-infinity'::float8) "
                "ON CONFLICT DO NOTHING",
                (key, expires_at, expires_at),
            )
            if cur.rowcount == 1:
                return True
            # (Without a purge here this reads after the insert's own transaction: the
            # watermark only rises, so a later one refuses as expired, which it is.)
            mark = self._watermark(db)
            return None if mark is not None and expires_at <= mark else False

        # The purge and its watermark commit together; the insert alone is one statement.
        fresh = self._run("write to", run, "tx" if purge else "single")
        if fresh is None:
            raise DeniedError(
                f"call token expired at {expires_at:.0f}, at or before the time up to which "
                "this store has forgotten spent tokens (its purge watermark, by the database "
                "server's clock)",
                reason=Reason.CALL_TOKEN_EXPIRED,
            )
        return fresh

    @staticmethod
    def _watermark(db: psycopg.Connection[Any]) -> float | None:
        row = db.execute("SELECT mark FROM ag_nonce_watermark WHERE id = 1").fetchone()
        return None if row is None else float(row[0])

    @staticmethod
    def _purge(db: psycopg.Connection[Any]) -> None:
        row = db.execute(
            "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t), "
            "gone AS (DELETE FROM ag_nonces WHERE expires_at <= (SELECT t FROM now)) "
            "SELECT t FROM now"
        ).fetchone()
        if row is None:  # pragma: no cover - the CTE always yields one row
            raise StoreError("the database did not report its clock")
        db.execute(
            "INSERT INTO ag_nonce_watermark (id, mark) VALUES (1, %s) ON CONFLICT (id) "
            "DO UPDATE SET mark = GREATEST(ag_nonce_watermark.mark, excluded.mark)",
            (row[0],),
        )

    def nonce_watermark(self) -> float | None:
        """Ids expiring at or before this time are refused as expired (``None``: no purge yet)."""
        return self._run("read", self._watermark)

    def purge_expired(self) -> None:
        """Delete the single-use ids that expired by the database server's clock."""
        self._run("write to", self._purge)

    def is_consumed(self, key: str, *, now: float) -> bool:
        """Whether ``key`` is remembered as used (and not expired at ``now``)."""
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT 1 FROM ag_nonces WHERE key = %s AND expires_at > %s", (key, now)
            ).fetchone(),
        )
        return row is not None

    def nonce_count(self) -> int:
        """How many single-use ids are remembered right now."""
        row = self._run("read", lambda db: db.execute("SELECT count(*) FROM ag_nonces").fetchone())
        return int(row[0]) if row else 0

    # -- inventory -------------------------------------------------------------------------
    def record_grant(self, record: GrantRecord) -> None:
        """Remember a grant (idempotent by link id)."""
        self._run(
            "write to",
            lambda db: db.execute(
                "INSERT INTO ag_grants (link_id, parent, issuer, subject, issued_at, "
                "not_before, expires_at, purpose, on_behalf_of, rules, chain) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
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
            ),
        )

    def grant_records(self) -> list[GrantRecord]:
        """Every recorded grant with its last use (from any process) and revocation status."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT g.link_id, g.parent, g.issuer, g.subject, g.issued_at, g.not_before, "
                "g.expires_at, g.purpose, g.on_behalf_of, g.rules, g.chain, u.last_used, "
                "EXISTS (SELECT 1 FROM ag_revocations r WHERE (r.kind = 'link' AND "
                "r.value = g.link_id) OR (r.kind = 'principal' AND r.value IN "
                "(g.subject, g.issuer, g.on_behalf_of))) "
                "FROM ag_grants g LEFT JOIN ag_link_usage u ON u.link_id = g.link_id "
                "ORDER BY g.issued_at, g.link_id"
            ).fetchall(),
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

    # -- audit -------------------------------------------------------------------------------
    def audit_append(
        self,
        record: dict[str, Any],
        *,
        link_ids: Sequence[str] = (),
        at: float,
        anchor: HeadSigner | None = None,
        checkpoint: Callable[[int, str], str | None] | None = None,
        burn: tuple[str, float] | None = None,
        charge: tuple[Sequence[Charge], float] | None = None,
    ) -> AuditEntry:
        """Append one record to the one hash chain every process shares (atomic).

        The chain's tip row is locked for the transaction, so concurrent appends
        from any process are serialised; with ``anchor`` the signed head commits
        with the record, and so does a token ``checkpoint`` returns (as a checkpoint).
        With ``burn`` (request id, now) that approval's receipt is used in the
        same transaction: never used up without the record that used it. With
        ``charge`` (charges, now) those budgets are charged in that transaction
        too, all or none, by the database server's clock (its windows), while the
        tip row's lock serialises every charge; their new state goes into the
        record (``budget``).

        Raises:
            DeniedError: ``approval_replayed``: the receipt in ``burn`` was used
                already, or ``budget_exhausted``: a budget in ``charge`` does not
                fit (nothing is written).

        Raises:
            StoreError: the record could not be written.
        """

        def run(db: psycopg.Connection[Any]) -> AuditEntry:
            # Pipelined: BEGIN, the burn and the tip's lock go in one round trip; the
            # writes and COMMIT in another.
            nonlocal record
            if burn is not None and self._burn(db, *burn) != 1:
                raise DeniedError(
                    "approval receipt was used already", reason=Reason.APPROVAL_REPLAYED
                )
            tip = db.execute(
                "SELECT seq, hash FROM ag_audit_tip WHERE id = 1 FOR UPDATE"
            ).fetchone()
            if tip is None:
                raise StoreError(f"store {self.location} has lost its audit tip row")
            if charge is not None:
                # After the tip's lock: every other charge has committed or waits.
                record = _charge(db, record, charge[0])
            seq, prev = int(tip[0]) + 1, str(tip[1])
            body = canonical_json({**record, "seq": seq}).decode("utf-8")
            digest = entry_hash(prev, body)
            db.execute(
                "INSERT INTO ag_audit (seq, body, prev, hash) VALUES (%s, %s, %s, %s)",
                (seq, body, prev, digest),
            )
            db.execute("UPDATE ag_audit_tip SET seq = %s, hash = %s WHERE id = 1", (seq, digest))
            for link in link_ids:
                db.execute(
                    "INSERT INTO ag_link_usage (link_id, last_used) VALUES (%s, %s) "
                    "ON CONFLICT (link_id) DO UPDATE SET last_used = "
                    "GREATEST(ag_link_usage.last_used, excluded.last_used)",
                    (link, at),
                )
            if anchor is not None:
                db.execute(
                    "INSERT INTO ag_audit_head (id, seq, head, signed_at, token) "
                    "VALUES (1, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "seq = excluded.seq, head = excluded.head, signed_at = excluded.signed_at, "
                    "token = excluded.token",
                    (seq, digest, at, anchor(seq, digest)),
                )
            token = checkpoint(seq, digest) if checkpoint is not None else None
            if token is not None:
                db.execute(
                    "INSERT INTO ag_audit_checkpoints (seq, head, signed_at, token) "
                    "VALUES (%s, %s, %s, %s)",
                    (seq, digest, at, token),
                )
            return AuditEntry(seq, body, prev, digest)

        return self._run("write to", run, "pipeline")

    def audit_entries(self, *, after: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Entries with ``seq > after`` in order."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT seq, body, prev, hash FROM ag_audit WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit),
            ).fetchall(),
            "single",
        )
        return [AuditEntry(*r) for r in rows]

    def audit_tail(self, n: int) -> list[AuditEntry]:
        """The last ``n`` entries in order."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT seq, body, prev, hash FROM ag_audit ORDER BY seq DESC LIMIT %s",
                (max(n, 0),),
            ).fetchall(),
        )
        return [AuditEntry(*r) for r in reversed(rows)]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Store a signed checkpoint."""
        self._run(
            "write to",
            lambda db: db.execute(
                "INSERT INTO ag_audit_checkpoints (seq, head, signed_at, token) "
                "VALUES (%s, %s, %s, %s)",
                (checkpoint.seq, checkpoint.head, checkpoint.signed_at, checkpoint.token),
            ),
        )

    def checkpoints(self) -> list[Checkpoint]:
        """Every stored checkpoint, oldest first."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                "SELECT seq, head, signed_at, token FROM ag_audit_checkpoints ORDER BY seq"
            ).fetchall(),
        )
        return [Checkpoint(*r) for r in rows]

    def audit_head(self) -> Checkpoint | None:
        """The newest signed head written with an anchored append, if any."""
        row = self._run(
            "read",
            lambda db: db.execute(
                "SELECT seq, head, signed_at, token FROM ag_audit_head WHERE id = 1"
            ).fetchone(),
        )
        return None if row is None else Checkpoint(*row)

    # -- tool pins ---------------------------------------------------------------------------
    def pin_tools(self, fingerprints: Mapping[str, str]) -> dict[str, str]:
        """Pin each address unless any process pinned it already (one transaction; a
        concurrent first pin of the same address wins once, the other reads it); the
        pinned fingerprint of each."""
        items = sorted(fingerprints.items())  # one lock order for every process
        if not items:
            return {}

        def run(db: psycopg.Connection[Any]) -> dict[str, str]:
            addresses = [a for a, _ in items]
            db.execute(
                "INSERT INTO ag_tool_pins (address, fingerprint) "
                "SELECT * FROM unnest(%s::text[], %s::text[]) ON CONFLICT DO NOTHING",
                (addresses, [f for _, f in items]),
            )
            rows = db.execute(
                "SELECT address, fingerprint FROM ag_tool_pins WHERE address = ANY(%s)",
                (addresses,),
            ).fetchall()
            return {str(r[0]): str(r[1]) for r in rows}

        return self._run("write to", run)

    def unpin_tools(self, addresses: Sequence[str]) -> int:
        """Forget the pins of ``addresses`` (for every process); how many were removed."""
        unique = sorted(set(addresses))
        return int(
            self._run(
                "write to",
                lambda db: (
                    db.execute(
                        "DELETE FROM ag_tool_pins WHERE address = ANY(%s)", (unique,)
                    ).rowcount
                ),
            )
        )

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
        self._run(
            "write to",
            lambda db: db.execute(
                "INSERT INTO ag_approvals (id, created_at, deadline, status, call_digest, "
                "request) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    row.id,
                    row.created_at,
                    row.deadline,
                    row.status,
                    row.call_digest,
                    json.dumps(row.request),
                ),
            ),
        )

    def approval_file(self, row: ApprovalRow) -> ApprovalRow:
        """Persist ``row`` as a new pending request, unless one for the same call is
        pending still (at ``row.created_at``): then that one, and nothing is written.

        A transaction-scoped advisory lock on the call's digest makes racing
        processes file one request and join it.
        """

        def run(db: psycopg.Connection[Any]) -> ApprovalRow:
            db.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (row.call_digest,))
            found = db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM ag_approvals "  # noqa: S608 - constant column list
                "WHERE call_digest = %s AND status = 'pending' AND deadline > %s "
                "ORDER BY created_at, id LIMIT 1",
                (row.call_digest, row.created_at),
            ).fetchone()
            if found is not None:
                return self._approval(found)
            db.execute(
                "INSERT INTO ag_approvals (id, created_at, deadline, status, call_digest, "
                "request) VALUES (%s, %s, %s, %s, %s, %s)",
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

        return self._run("write to", run)

    def approval_get(self, request_id: str) -> ApprovalRow | None:
        """One request by id."""
        row = self._run(
            "read",
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM ag_approvals WHERE id = %s",  # noqa: S608 - constant column list
                (request_id,),
            ).fetchone(),
        )
        return None if row is None else self._approval(row)

    def approval_list(self, status: str | None = None) -> list[ApprovalRow]:
        """Requests, newest first, optionally of one status."""
        rows = self._run(
            "read",
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM ag_approvals "  # noqa: S608 - constant column list
                "WHERE %s::text IS NULL OR status = %s ORDER BY created_at DESC",
                (status, status),
            ).fetchall(),
        )
        return [self._approval(r) for r in rows]

    def approval_open(self, call_digest: str, now: float) -> ApprovalRow | None:
        """The open request for this call (see :meth:`ApprovalStore.approval_open`)."""
        row = self._run(
            "read",
            lambda db: db.execute(
                f"SELECT {self._APPROVAL_COLUMNS} FROM ag_approvals "  # noqa: S608 - constant column list
                "WHERE call_digest = %s AND ((status = 'pending' AND deadline > %s) OR status "
                "IN ('approved', 'rejected') OR (status = 'used' AND reusable_until > %s)) "
                "ORDER BY created_at DESC LIMIT 1",
                (call_digest, now, now),
            ).fetchone(),
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

        def run(db: psycopg.Connection[Any]) -> int:
            count = db.execute(
                "UPDATE ag_approvals SET status = %s, receipt = %s, answered_at = %s, "
                "reusable_until = %s WHERE id = %s AND status = 'pending' AND deadline > %s",
                (status, receipt, answered_at, reusable_until, request_id, answered_at),
            ).rowcount
            if count == 1:
                # Delivered to every listening process when this transaction commits.
                db.execute("SELECT pg_notify(%s, %s)", (APPROVAL_CHANNEL, request_id))
            return int(count)

        return self._run("write to", run) == 1

    def approval_wait(self, request_id: str, timeout: float) -> bool:
        """Block until an answer to ``request_id`` is committed by any process, or ``timeout``.

        The store keeps one connection listening (``LISTEN``) for answers (opened on
        the first wait); :meth:`approval_answer` notifies it in the answer's
        transaction. Returns ``True`` when woken by an answer, when the request
        is no longer pending, or when the listener lost its connection (so the
        caller looks again at once); ``False`` after ``timeout`` or when nothing
        is listening (the database is unreachable). The caller reads the row
        either way, so a lost notification only delays it to the next read.
        Never raises.
        """
        limit = max(0.0, float(timeout))
        until = time.monotonic() + limit
        event = threading.Event()
        with self._waiters_lock:
            self._waiters.setdefault(request_id, set()).add(event)
        try:
            if not self._listening(limit):
                # No listener: a plain pause (to ``timeout`` in all), the next read decides.
                event.wait(max(0.0, until - time.monotonic()))
                return False
            # Listening before this read: an answer committed after it is notified.
            try:
                row = self._run(
                    "read",
                    lambda db: db.execute(
                        "SELECT status FROM ag_approvals WHERE id = %s", (request_id,)
                    ).fetchone(),
                )
            except StoreError:
                return False
            if row is None or row[0] != "pending":
                return True
            return event.wait(max(0.0, until - time.monotonic()))
        finally:
            with self._waiters_lock:
                events = self._waiters.get(request_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[request_id]

    def _listening(self, limit: float) -> bool:
        """Start the listener thread if needed; whether it is listening (waits up to ``limit``)."""
        with self._waiters_lock:
            if self._closed:
                return False
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="agentguard-pg-listen", daemon=True
                )
                self._listener.start()
        return self._listen_ready.wait(min(limit, self.timeout))

    def _listen(self) -> None:
        """The listener thread: LISTEN, wake the waiters of each notified request, and
        reconnect after a failure (waking every waiter, who then reads the row)."""
        psycopg = self._psycopg
        while not self._closed:
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self.timeout))
                ) as conn:
                    conn.execute(f"LISTEN {APPROVAL_CHANNEL}")
                    self._listen_ready.set()
                    while not self._closed:
                        for note in conn.notifies(timeout=_LISTEN_TICK):
                            self.notifications += 1
                            self._wake(note.payload)
                        conn.execute("SELECT 1")  # notices a server that went away
            except Exception:  # reconnect; waiters fall back to reading the row
                log.debug("agentguard: approval listener lost its connection", exc_info=True)
            self._listen_ready.clear()
            self._wake(None)
            if not self._closed:
                time.sleep(_LISTEN_TICK)

    def _wake(self, request_id: str | None) -> None:
        with self._waiters_lock:
            if request_id is None:
                events = [event for group in self._waiters.values() for event in group]
            else:
                events = list(self._waiters.get(request_id, ()))
        for event in events:
            event.set()

    def budget_states(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Each charge judged against its window's usage by the server's clock (``now``,
        the caller's clock, is not used: every replica judges by the same time)."""
        return self._run(
            "read",
            lambda db: judge(charges, _server_now(db), lambda k, s: _usage(db, k, s)),
        )

    def budget_charge(self, charges: Sequence[Charge], now: float) -> list[BudgetState]:
        """Charge every budget, or none, by the server's clock (``now`` is not used).

        The audit tip's row lock serialises it with the charges appends make.
        Raises ``BudgetExhausted`` (see :class:`~agentguard.store.base.BudgetStore`).
        """

        def run(db: psycopg.Connection[Any]) -> list[BudgetState]:
            db.execute("SELECT 1 FROM ag_audit_tip WHERE id = 1 FOR UPDATE")
            at = _server_now(db)
            db.execute("DELETE FROM ag_budget_usage WHERE window_end <= %s", (at,))
            return settle(
                charges, at, lambda k, s: _usage(db, k, s), lambda st, u: _write(db, st, u)
            )

        return self._run("write to", run)

    def approval_burn(self, request_id: str, now: float) -> bool:
        """Use an approved receipt once (or again within its reuse window); atomic
        across processes (the row lock makes a concurrent burn re-check the status)."""
        return self._run("write to", lambda db: self._burn(db, request_id, now)) == 1

    @staticmethod
    def _burn(db: psycopg.Connection[Any], request_id: str, now: float) -> int:
        # A rejection is delivered once (closed); an approval is used. The rows are
        # fetched, not counted: in a pipeline a row count is known only after a sync.
        return len(
            db.execute(
                "UPDATE ag_approvals SET uses = uses + 1, status = CASE status WHEN "
                "'rejected' THEN 'closed' ELSE 'used' END WHERE id = %s AND (status IN "
                "('approved', 'rejected') OR (status = 'used' AND reusable_until > %s)) "
                "RETURNING 1",
                (request_id, now),
            ).fetchall()
        )

    def close(self) -> None:
        """Close the connection pool and the answer listener; later calls are refused."""
        self._closed = True
        self._pool.close()
        listener = self._listener
        if listener is not None:
            listener.join(timeout=_LISTEN_TICK + self.timeout)


def _server_now(db: psycopg.Connection[Any]) -> float:
    row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    if row is None:
        raise StoreError("the database did not say what time it is")
    return float(row[0])


def _usage(db: psycopg.Connection[Any], key: str, start: int) -> Usage | None:
    row = db.execute(
        "SELECT calls, sums FROM ag_budget_usage WHERE key = %s AND window_start = %s",
        (key, start),
    ).fetchone()
    return None if row is None else Usage.from_row(int(row[0]), str(row[1]))


def _charge(
    db: psycopg.Connection[Any], record: dict[str, Any], charges: Sequence[Charge]
) -> dict[str, Any]:
    """Charge the budgets in the append's transaction, by the server's clock."""
    now = _server_now(db)
    db.execute("DELETE FROM ag_budget_usage WHERE window_end <= %s", (now,))
    return charged_record(
        record, charges, now, lambda k, s: _usage(db, k, s), lambda st, u: _write(db, st, u)
    )


def _write(db: psycopg.Connection[Any], state: BudgetState, usage: Usage) -> None:
    db.execute(
        "INSERT INTO ag_budget_usage (key, window_start, window_end, calls, sums) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key, window_start) DO UPDATE SET "
        "calls = excluded.calls, sums = excluded.sums",
        (state.charge.key, state.start, state.end, usage.calls, usage.to_text()),
    )
