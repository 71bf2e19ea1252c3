"""PostgresStore against a real PostgreSQL server (the session's throwaway cluster).

The store contract itself runs in tests/test_store.py on every implementation;
here: what only a database server has (its clock, its errors, its schema
versions) and the guarantees across processes: four real processes behind a
barrier spend each call token and each approval receipt exactly once, append
one hash chain, and see a revocation made by another process on their next call.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, ConfigError, DeniedError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring
from agentguard.store.base import GENESIS_HASH, ApprovalRow, entry_hash
from agentguard.store.postgres import (
    DATABASE_URL_ENV,
    SCHEMA_VERSION,
    PostgresStore,
    database_url,
    redact_url,
)
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import START, RecordingTool, World
from tests.pg_support import Cluster

WORKERS = 4
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pg(pg_url: str) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_url)
    yield store
    store.close()


# --- the server's clock ----------------------------------------------------------------------


def _server_now(url: str) -> float:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def test_expired_nonces_are_purged_by_the_server_clock_not_the_callers(
    pg: PostgresStore, pg_url: str
) -> None:
    """A process whose clock runs a day ahead does not make live nonces forgettable."""
    server = _server_now(pg_url)
    assert pg.consume("expired", server - 60, now=server)
    assert pg.consume("live", server + 600, now=server)
    ahead = server + 86_400  # this caller's clock is wrong by a day
    for index in range(600):  # enough consumes to trigger the periodic purge
        assert pg.consume(f"filler-{index}", ahead + 60, now=ahead)
    assert pg.nonce_count() == 601  # "expired" is gone; "live" is still remembered
    assert not pg.consume("live", server + 600, now=ahead)
    assert not pg.consume("filler-0", ahead + 60, now=ahead)
    pg.purge_expired()
    assert pg.nonce_count() == 601


def test_a_purge_leaves_a_watermark_no_callers_clock_undoes(pg: PostgresStore, pg_url: str) -> None:
    """An id expiring at or before the last purge (server time) is refused as expired."""
    assert pg.nonce_watermark() is None
    server = _server_now(pg_url)
    assert pg.consume("old", server - 5, now=server - 10)
    pg.purge_expired()
    mark = pg.nonce_watermark()
    assert mark is not None
    assert mark >= server
    for caller_now in (server - 3600, server, server + 3600):  # whatever the caller believes
        with pytest.raises(DeniedError) as info:
            pg.consume("old", server - 5, now=caller_now)
        assert info.value.reason == "call_token_expired"
    assert pg.consume("new", mark + 60, now=server)
    assert not pg.consume("new", mark + 60, now=server)  # above the mark: a replay, not expiry


def test_a_checkpoint_token_commits_with_its_entry(pg: PostgresStore) -> None:
    def every_second(seq: int, head: str) -> str | None:
        return f"tok-{seq}-{head[:8]}" if seq % 2 == 0 else None

    entries = [pg.audit_append({"n": n}, at=START, checkpoint=every_second) for n in range(4)]
    assert [(c.seq, c.head, c.token) for c in pg.checkpoints()] == [
        (e.seq, e.hash, f"tok-{e.seq}-{e.hash[:8]}") for e in entries if e.seq % 2 == 0
    ]


# --- errors name their cause, never the password -------------------------------------------


def test_location_has_no_user_or_password(pg_url: str, pg_cluster: Cluster) -> None:
    store = PostgresStore(pg_url)
    database = pg_url.rsplit("/", 1)[1]
    assert store.location == f"postgresql://127.0.0.1:{pg_cluster.port}/{database}"
    assert pg_cluster.password not in repr(vars(store).get("location"))
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@[::1/db",
        "postgresql://u:p@host:notaport/db",
        "postgresql://host/db",
        "postgresql://u:p@[::1]:5/db",
    ],
)
def test_redact_url_meets_hostile_input(url: str) -> None:
    shown = redact_url(url)
    assert shown.startswith("postgresql://")
    assert ":p@" not in shown
    assert "u:" not in shown


def test_a_wrong_password_is_named_and_never_shown(pg_cluster: Cluster) -> None:
    wrong = "Wr0ng-" + secrets.token_hex(8)
    with pytest.raises(StoreError) as info:
        PostgresStore(pg_cluster.url(password=wrong))
    message = str(info.value)
    assert "refused the user name or password" in message
    assert wrong not in message
    assert pg_cluster.password not in message
    assert "psycopg" not in type(info.value).__module__


def test_an_unreachable_server_is_named(pg_cluster: Cluster) -> None:
    with socket_closed_port() as port:
        url = f"postgresql://agentguard:{pg_cluster.password}@127.0.0.1:{port}/postgres"
        with pytest.raises(StoreError) as info:
            PostgresStore(url, timeout=2)
    message = str(info.value)
    assert "unreachable" in message
    assert pg_cluster.password not in message


def test_a_missing_database_is_named(pg_cluster: Cluster) -> None:
    with pytest.raises(StoreError, match="does not exist; create it first"):
        PostgresStore(pg_cluster.url("no_such_db"))


def test_a_newer_schema_is_refused_naming_both_versions(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE ag_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(StoreError) as info:
        PostgresStore(pg_url)
    message = str(info.value)
    assert "999" in message
    assert f"up to version {SCHEMA_VERSION}" in message
    assert "upgrade agentguard" in message


def test_a_version_1_database_is_upgraded_with_its_data_kept(pg_url: str) -> None:
    """Version 2 adds the shared tool pins; a version 1 database keeps its rows."""
    store = PostgresStore(pg_url)
    store.audit_append({"n": 1}, at=START)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to what version 1 made
        conn.execute("DROP TABLE ag_tool_pins")
        conn.execute("UPDATE ag_meta SET value = '1' WHERE key = 'schema_version'")
    store = PostgresStore(pg_url)
    assert (store.found_version, store.schema_version()) == (1, SCHEMA_VERSION)
    assert store.counts()["audit entries"] == 1
    assert store.pin_tools({"crm/lookup": "f1"}) == {"crm/lookup": "f1"}
    store.close()


def test_without_create_an_empty_database_is_refused(pg_url: str) -> None:
    with pytest.raises(StoreError, match="agentguard db upgrade"):
        PostgresStore(pg_url, create=False)


def test_upgrade_is_idempotent_and_records_the_version(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    assert store.schema_version() == SCHEMA_VERSION
    assert store.upgrade() == SCHEMA_VERSION  # already there: nothing to do
    store.audit_append({"n": 1}, at=START)
    assert store.upgrade() == SCHEMA_VERSION
    assert store.counts()["audit entries"] == 1
    store.close()


def test_a_closed_store_refuses_work(pg: PostgresStore) -> None:
    pg.close()
    with pytest.raises(StoreError, match="closed"):
        pg.consume("k", START + 1, now=START)


def test_a_stopped_server_refuses_calls_with_a_store_error(pg_cluster: Cluster) -> None:
    """Fail closed: with the server gone a consume raises StoreError (never True)."""
    url = pg_cluster.create_database(f"t_{secrets.token_hex(6)}")
    store = PostgresStore(url, timeout=2)
    assert store.consume("before", START + 60, now=START)
    pg_cluster.stop()
    try:
        with pytest.raises(StoreError, match="unreachable") as info:
            store.consume("during", START + 60, now=START)
        assert pg_cluster.password not in str(info.value)
    finally:
        pg_cluster.start()
    assert not store.consume("before", START + 60, now=START)  # recovered, nothing lost
    store.close()


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A loopback port nothing listens on (bound, not listening, for the block)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


# --- four processes, one database --------------------------------------------------------------


def _open(target: str) -> PostgresStore | SQLiteStore:
    return PostgresStore(target) if target.startswith("postgresql://") else SQLiteStore(target)


def _race(target: str, work: str, arg: Any, barrier: Any, out: Any) -> None:
    """One worker process: open the store, wait for all, run ``work``, report."""
    try:
        out.put(_work(target, work, arg, barrier))
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out.put(f"worker failed: {exc!r}")


def _work(target: str, work: str, arg: Any, barrier: Any) -> list[Any]:
    store = _open(target)
    barrier.wait(timeout=60)
    result: list[Any]
    if work == "nonces":
        result = [k for k in range(arg) if store.consume(f"agent:bot/{k}", 2e9, now=1.8e9)]
    elif work == "burn":
        result = [rid for rid in arg if store.approval_burn(rid, 1.8e9)]
    elif work == "file":
        result = [
            store.approval_file(
                ApprovalRow(secrets.token_hex(6), START, START + 60, "pending", digest, {})
            ).id
            for digest in arg
        ]
    elif work == "tokens":
        result = []
        guard = _guard(store, arg)
        delegation = Delegation.parse(arg["delegation"])
        for token in arg["tokens"]:
            try:
                guard.call(delegation, "tickets/read", {"id": 1}, RecordingTool(), call_token=token)
            except DeniedError as exc:
                if exc.reason != "call_token_replayed":
                    raise
            else:
                result.append(token)
    else:
        result = [store.audit_append({"n": k}, at=1.8e9).seq for k in range(arg)]
    store.close()
    return result


def _run_race(target: str, work: str, arg: Any) -> list[list[Any]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    out = context.Queue()
    workers = [
        context.Process(target=_race, args=(target, work, arg, barrier, out))
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        results = [out.get(timeout=120) for _ in workers]
        failures = [result for result in results if isinstance(result, str)]
        assert not failures, failures
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
        return results
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()


def test_four_processes_spend_each_nonce_exactly_once(pg_url: str) -> None:
    results = _run_race(pg_url, "nonces", 150)
    spent = [k for result in results for k in result]
    assert sorted(spent) == list(range(150))  # every nonce once, none twice
    store = PostgresStore(pg_url)
    assert store.nonce_count() == 150
    store.close()


def test_four_processes_burn_each_approval_receipt_exactly_once(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    ids = [f"req-{n}" for n in range(60)]
    for rid in ids:
        store.approval_insert(
            ApprovalRow(rid, START, START + 3600, "pending", f"digest-{rid}", {"tool": "t"})
        )
        assert store.approval_answer(
            rid, status="approved", receipt="r", answered_at=START, reusable_until=None
        )
    results = _run_race(pg_url, "burn", ids)
    burned = [rid for result in results for rid in result]
    assert sorted(burned) == sorted(ids)
    assert {row.uses for row in store.approval_list("used")} == {1}
    store.close()


def test_four_processes_append_one_unbroken_audit_chain(pg_url: str) -> None:
    results = _run_race(pg_url, "audit", 60)
    assert sorted(seq for result in results for seq in result) == list(range(1, 241))
    store = PostgresStore(pg_url)
    prev = GENESIS_HASH
    for position, entry in enumerate(store.audit_entries(), start=1):
        assert (entry.seq, entry.prev) == (position, prev)
        assert entry.hash == entry_hash(entry.prev, entry.body)
        prev = entry.hash
    store.close()


def _world_files(tmp_path: Path) -> tuple[World, dict[str, Any]]:
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    files = {
        "policy": str(policy),
        "home": str(tmp_path),
        "delegation": world.delegation.serialize(),
        "bot": world.bot.private_jwk(),
    }
    return world, files


def _guard(store: PostgresStore | SQLiteStore, files: dict[str, Any]) -> Guard:
    home = Path(files["home"]) / f"home-{secrets.token_hex(4)}"
    return Guard(Path(files["policy"]), home=home, store=store, clock=ManualClock(START))


def test_four_processes_accept_each_call_token_exactly_once(pg_url: str, tmp_path: Path) -> None:
    """The same external call tokens presented to four guards: each runs once in total."""
    world, files = _world_files(tmp_path)
    files["tokens"] = [
        world.delegation.mint_call_token(world.bot, "tickets/read", {"id": 1}, clock=world.clock)
        for _ in range(30)
    ]
    results = _run_race(pg_url, "tokens", files)
    accepted = [token for result in results for token in result]
    assert sorted(accepted) == sorted(files["tokens"])


def _replica(target: str, files: dict[str, Any], commands: Any, out: Any) -> None:
    """A guard process that runs commands: ``call`` (answers allow or the deny reason) or
    ``revoke`` (answers once the revocation is committed)."""
    store = _open(target)
    guard = _guard(store, files)
    delegation = Delegation.parse(files["delegation"])
    bot = Identity.from_private_jwk("agent:bot", files["bot"])
    out.put("ready")
    for command in iter(commands.get, "quit"):
        if command == "call":
            try:
                guard.call(delegation, "tickets/read", {"id": 1}, RecordingTool(), holder=bot)
            except DeniedError as exc:
                out.put(exc.reason)
            else:
                out.put("allow")
        else:
            _, kind, value = command.split(" ", 2)
            guard.revoke(kind, value, reason="compromised")
            out.put("revoked")
    store.close()


@pytest.mark.parametrize(
    ("backend", "kind"),
    [("postgres", "principal"), ("postgres", "link"), ("postgres", "key"), ("sqlite", "principal")],
)
def test_a_revocation_in_one_process_stops_the_next_call_in_every_other(
    backend: str, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each guard checks revocations in the store on every call: its caches (verified
    link signatures, verified chains) never answer for revocation, so another process's
    revoke needs no invalidation. Every replica's caches are warm when the revoke lands."""
    target = (
        request.getfixturevalue("pg_url") if backend == "postgres" else str(tmp_path / "state.db")
    )
    world, files = _world_files(tmp_path)
    revoked = {
        "principal": "agent:bot",
        "link": world.delegation.leaf.link_id,
        "key": world.bot.principal.kid,
    }[kind]
    context = multiprocessing.get_context("spawn")
    channels = [(context.Queue(), context.Queue()) for _ in range(WORKERS)]
    workers = [
        context.Process(target=_replica, args=(target, files, commands, out))
        for commands, out in channels
    ]
    for worker in workers:
        worker.start()

    def ask(index: int, command: str) -> str:
        commands, out = channels[index]
        commands.put(command)
        try:
            return str(out.get(timeout=60))
        except queue.Empty:
            pytest.fail(f"replica {index} did not answer {command!r}")

    try:
        assert [channels[i][1].get(timeout=120) for i in range(WORKERS)] == ["ready"] * WORKERS
        # Every replica allows the call first (and caches the chain's signatures).
        assert [ask(i, "call") for i in range(WORKERS)] == ["allow"] * WORKERS
        assert [ask(i, "call") for i in range(WORKERS)] == ["allow"] * WORKERS  # cache hits
        assert ask(0, f"revoke {kind} {revoked}") == "revoked"
        # Every call that starts after revoke returned is refused, in every replica.
        assert [ask(i, "call") for i in range(WORKERS)] == ["revoked"] * WORKERS
        for commands, _ in channels:
            commands.put("quit")
        deadline = time.monotonic() + 60
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()


# --- configuration: storage.url, ${VAR}, AGENTGUARD_DATABASE_URL ---------------------------------


def test_database_url_expands_variables_and_the_environment_overrides_it() -> None:
    env = {"PGPASS": "s3cret", "PGHOST": "db.internal"}
    configured = "postgresql://guard:${PGPASS}@${PGHOST}:5432/agentguard"
    assert database_url(configured, env) == "postgresql://guard:s3cret@db.internal:5432/agentguard"
    assert database_url(None, env) is None
    assert database_url("", env) is None
    override = {**env, DATABASE_URL_ENV: "postgresql://other/db"}
    assert database_url(configured, override) == "postgresql://other/db"
    assert database_url(None, override) == "postgresql://other/db"


@pytest.mark.parametrize(
    ("configured", "message"),
    [
        ("postgresql://u:${MISSING}@h/db", "environment variable MISSING is not set"),
        ("postgresql://u:${1BAD}@h/db", "is not a variable name"),
        ("postgresql://u:${}@h/db", "is not a variable name"),
        ("postgresql://u:${PGPASS@h/db", "without its closing"),
        ("postgresql://u:${PGPASS}${@h/db", "without its closing"),
        ("mysql://u:${PGPASS}@h/db", "must be a postgresql:// URL"),
        ("${PGPASS}", "must be a postgresql:// URL"),
    ],
)
def test_a_bad_storage_url_is_a_config_error_that_never_shows_a_value(
    configured: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        database_url(configured, {"PGPASS": "s3cret"})
    assert "s3cret" not in str(info.value)


def test_a_guard_with_storage_url_keeps_its_state_in_postgres_without_showing_the_password(
    pg_url: str,
    pg_cluster: Cluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    monkeypatch.setenv("TEST_PG_PASSWORD", pg_cluster.password)
    configured = pg_url.replace(pg_cluster.password, "${TEST_PG_PASSWORD}")
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml", storage={"url": configured})
    guard = Guard(policy, home=tmp_path / "home", clock=world.clock)
    assert isinstance(guard.store, PostgresStore)
    guard.call(world.delegation, "tickets/read", {"id": 1}, RecordingTool(), holder=world.bot)
    shown = [guard.describe(), guard.store.location, repr(guard.store), caplog.text]
    shown.append("".join(capsys.readouterr()))
    assert all(pg_cluster.password not in text for text in shown)
    assert guard.store.location in guard.describe()
    # The guard's own key stays in the process's state directory, not in the database.
    assert Keyring(tmp_path / "home" / "keys").has_private(guard.policy.guard_id)
    guard.store.close()
    # Another store on the same database (as another replica would) sees the call's records.
    other = PostgresStore(pg_url)
    assert any('"tickets/read"' in entry.body for entry in other.audit_entries())
    other.close()


def test_agentguard_database_url_overrides_the_policy(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World()
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        storage={"url": "postgresql://nobody@127.0.0.1:1/none", "busy_timeout": "2s"},
    )
    monkeypatch.setenv(DATABASE_URL_ENV, pg_url)
    guard = Guard(policy, clock=world.clock)
    assert isinstance(guard.store, PostgresStore)
    assert guard.store.location == redact_url(pg_url)
    assert guard.store.timeout == 2.0  # storage.busy_timeout bounds every wait
    guard.store.close()


# --- the rest of the contract, side by side with SQLite ----------------------------------------


def _approval_script(store: PostgresStore | SQLiteStore) -> list[Any]:
    """One approval life cycle; the same calls must give the same answers on every store."""
    seen: list[Any] = []
    for rid, created in (("a", START), ("b", START + 1), ("c", START + 2)):
        store.approval_insert(ApprovalRow(rid, created, created + 60, "pending", "d1", {"r": rid}))
    seen.append(store.approval_get("a"))
    seen.append(store.approval_get("missing"))
    seen.append([row.id for row in store.approval_list()])
    seen.append(store.approval_open("d1", START + 10))
    seen.append(store.approval_answer("a", status="approved", receipt="R", answered_at=START + 5,
                                      reusable_until=START + 30))  # fmt: skip
    seen.append(store.approval_answer("a", status="rejected", receipt="X", answered_at=START + 6,
                                      reusable_until=None))  # fmt: skip
    seen.append(
        store.approval_answer(
            "b", status="approved", receipt="R", answered_at=START + 99, reusable_until=None
        )
    )  # fmt: skip  (past its deadline)
    seen.append(store.approval_answer("c", status="rejected", receipt="N", answered_at=START + 7,
                                      reusable_until=None))  # fmt: skip
    seen.append([row.id for row in store.approval_list("approved")])
    seen.append(store.approval_burn("a", START + 10))  # used
    seen.append(store.approval_burn("a", START + 20))  # again, within the reuse window
    seen.append(store.approval_burn("a", START + 31))  # window over
    seen.append(store.approval_burn("c", START + 10))  # a rejection is delivered once
    seen.append(store.approval_burn("c", START + 11))
    seen.append(store.approval_burn("b", START + 11))  # never answered
    seen.append(store.approval_get("a"))
    seen.append(store.approval_get("c"))
    seen.append(store.approval_open("d1", START + 200))
    return seen


def test_approvals_behave_as_on_sqlite(pg: PostgresStore, tmp_path: Path) -> None:
    sqlite = SQLiteStore(tmp_path / "s.db")
    expected = _approval_script(sqlite)
    sqlite.close()
    assert _approval_script(pg) == expected
    assert expected[9:15] == [True, True, False, True, False, False]


def test_an_audit_head_is_signed_in_the_append(pg: PostgresStore) -> None:
    assert pg.audit_head() is None
    pg.audit_append({"n": 1}, at=START, anchor=lambda seq, head: f"signed-{seq}")
    second = pg.audit_append({"n": 2}, at=START + 1, anchor=lambda seq, head: f"signed-{seq}")
    head = pg.audit_head()
    assert head is not None
    assert (head.seq, head.head, head.signed_at, head.token) == (
        2,
        second.hash,
        START + 1,
        "signed-2",
    )


def test_a_failing_head_signer_leaves_no_record(pg: PostgresStore) -> None:
    def broken(seq: int, head: str) -> str:
        raise StoreError("signer unavailable")

    with pytest.raises(StoreError, match="signer unavailable"):
        pg.audit_append({"n": 1}, at=START, anchor=broken)
    assert pg.audit_entries() == []
    assert pg.audit_append({"n": 2}, at=START).seq == 1  # the chain did not move


def test_a_held_lock_refuses_the_call_within_the_timeout(pg_url: str) -> None:
    """Another session holding the chain's tip: the append is refused, not hung."""
    store = PostgresStore(pg_url, timeout=1)
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM ag_audit_tip WHERE id = 1 FOR UPDATE")
        with pytest.raises(StoreError, match=r"did not answer within 1 s"):
            store.audit_append({"n": 1}, at=START)
        holder.rollback()
    assert store.audit_append({"n": 1}, at=START).seq == 1
    store.close()


def test_a_damaged_schema_version_is_named(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE ag_meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="'one', which is not a number"):
        PostgresStore(pg_url)


def test_a_dropped_table_is_a_store_error_naming_postgres_message(
    pg: PostgresStore, pg_url: str
) -> None:
    with psycopg.connect(pg_url) as conn:
        conn.execute("DROP TABLE ag_revocations")
    with pytest.raises(StoreError, match='relation "ag_revocations" does not exist'):
        pg.revocations()


@pytest.mark.parametrize(
    ("timeout", "pool_size"),
    [(0, 1), (-1, 1), (True, 1), (float("nan"), 1), ("5", 1), (1, 0), (1, True), (1, 1.5)],
)
def test_bad_timeouts_and_pool_sizes_are_refused(timeout: Any, pool_size: Any) -> None:
    with pytest.raises(ValueError, match=r"timeout|pool_size"):
        PostgresStore("postgresql://127.0.0.1:1/x", timeout=timeout, pool_size=pool_size)


def test_four_processes_file_one_approval_request_for_one_call(pg_url: str) -> None:
    """Racing calls needing the same approval file one request and all join it."""
    digests = [f"digest-{n}" for n in range(30)]
    results = _run_race(pg_url, "file", digests)
    assert all(result == results[0] for result in results)  # every racer joined one request
    store = PostgresStore(pg_url)
    assert sorted(row.id for row in store.approval_list()) == sorted(results[0])
    later = ApprovalRow("after", START + 100, START + 160, "pending", "digest-0", {})
    assert store.approval_file(later).id == "after"  # the first one's deadline has passed
    store.close()


def test_a_receipt_burned_with_its_record_is_used_once(pg: PostgresStore) -> None:
    pg.approval_insert(ApprovalRow("r1", START, START + 60, "pending", "d", {}))
    assert pg.approval_answer(
        "r1", status="approved", receipt="R", answered_at=START + 1, reusable_until=None
    )
    entry = pg.audit_append({"n": 1}, at=START + 2, burn=("r1", START + 2))
    row = pg.approval_get("r1")
    assert row is not None
    assert (row.status, row.uses) == ("used", 1)
    with pytest.raises(DeniedError) as info:
        pg.audit_append({"n": 2}, at=START + 3, burn=("r1", START + 3))
    assert info.value.reason == "approval_replayed"
    assert pg.audit_entries() == [entry]  # the refused record was not written


def _approval_replica(url: str, files: dict[str, Any], commands: Any, out: Any) -> None:
    """A guard process (approval channel ``queue``, non-blocking) running commands:
    ``call`` answers ``ran``, ``pending <id>`` or the deny reason; ``approve <id>``
    signs the approval as ``user:carol`` through this process's approval book."""
    try:
        store = PostgresStore(url)
        guard = Guard(
            Path(files["policy"]),
            home=Path(files["home"]) / f"home-{secrets.token_hex(4)}",
            store=store,
            clock=ManualClock(START),
            approval_mode="raise",
        )
        delegation = Delegation.parse(files["delegation"])
        bot = Identity.from_private_jwk("agent:bot", files["bot"])
        carol = Identity.from_private_jwk("user:carol", files["carol"])
        for command in iter(commands.get, "quit"):
            if command == "call":
                tool = RecordingTool()
                try:
                    guard.call(delegation, "admin/reset", {"target": "db1"}, tool, holder=bot)
                except ApprovalPending as exc:
                    out.put(f"pending {exc.request_id}")
                except DeniedError as exc:
                    out.put(str(exc.reason))
                else:
                    out.put("ran" if tool.ran else "not run")
            else:
                guard.approvals.approve(command.split()[1], carol)
                out.put("approved")
        store.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out.put(f"replica failed: {exc!r}")


def test_an_approval_filed_on_one_replica_is_answered_on_another_and_used_on_a_third(
    pg_url: str, tmp_path: Path
) -> None:
    """Three guard processes on one database: A files, B approves, C runs the call once."""
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml", approval={"channel": "queue"})
    files = {
        "policy": str(policy),
        "home": str(tmp_path),
        "delegation": world.delegation.serialize(),
        "bot": world.bot.private_jwk(),
        "carol": world.carol.private_jwk(),
    }
    context = multiprocessing.get_context("spawn")
    channels = [(context.Queue(), context.Queue()) for _ in range(3)]
    workers = [
        context.Process(target=_approval_replica, args=(pg_url, files, commands, out))
        for commands, out in channels
    ]
    for worker in workers:
        worker.start()

    def ask(index: int, command: str) -> str:
        commands, out = channels[index]
        commands.put(command)
        return str(out.get(timeout=120))

    try:
        filed = ask(0, "call")
        assert filed.startswith("pending apr_"), filed
        request_id = filed.split()[1]
        assert ask(1, "call") == filed  # B joins the request A filed
        assert ask(1, f"approve {request_id}") == "approved"
        assert ask(2, "call") == "ran"  # C uses the receipt
        assert ask(0, "call").startswith("pending ")  # used once: A must ask again
        for commands, _ in channels:
            commands.put("quit")
        for worker in workers:
            worker.join(timeout=60)
            assert worker.exitcode == 0
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
