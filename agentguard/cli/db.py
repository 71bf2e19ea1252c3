"""``agentguard db``: create, migrate and inspect the shared PostgreSQL store.

The database is the one ``$AGENTGUARD_DATABASE_URL`` or the policy's
``storage.url`` names; without either there is nothing to manage (the state is
the SQLite file under the state directory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from agentguard.audit import verify_log
from agentguard.cli._common import (
    HomeOption,
    JsonOption,
    PolicyOption,
    fail,
    note,
    print_json,
    say,
    workspace,
)
from agentguard.keys import Keyring, KeySet
from agentguard.store.migrate import migrate_sqlite
from agentguard.store.postgres import DATABASE_URL_ENV, SCHEMA_VERSION, PostgresStore, database_url

__all__ = ["app"]

app = typer.Typer(help="The shared PostgreSQL store: create or migrate its schema, show its state.")


def _url(ctx: typer.Context, home: HomeOption, policy: PolicyOption) -> str:
    ws = workspace(ctx, home, policy)
    url = database_url(ws.policy().storage.url)
    if url is None:
        fail(
            f"no database URL: set {DATABASE_URL_ENV} or storage.url in the policy "
            "(without one the state is the SQLite file under the state directory)"
        )
    return url


@app.command("upgrade")
def upgrade(
    ctx: typer.Context,
    home: HomeOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create the schema, or migrate it to this release's version (safe to repeat).

    A schema from a newer agentguard release is refused and left untouched.
    """
    store = PostgresStore(_url(ctx, home, policy))
    try:
        before = store.found_version
        if as_json:
            print_json(
                {"location": store.location, "from_version": before, "version": SCHEMA_VERSION}
            )
        elif before == SCHEMA_VERSION:
            say(f"{store.location}: schema already at version {SCHEMA_VERSION}; nothing to do")
        elif before == 0:
            say(f"{store.location}: schema created at version {SCHEMA_VERSION}")
        else:
            say(f"{store.location}: schema migrated from version {before} to {SCHEMA_VERSION}")
    finally:
        store.close()


@app.command("status")
def status(
    ctx: typer.Context,
    home: HomeOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the database (without its password), its schema version and row counts."""
    store = PostgresStore(_url(ctx, home, policy), create=False)
    try:
        version, counts = store.schema_version(), store.counts()
    finally:
        store.close()
    if as_json:
        print_json({"location": store.location, "version": version, "counts": counts})
        return
    say(f"database: {store.location}")
    say(f"schema version: {version}")
    for label, count in counts.items():
        say(f"{label}: {count}")


@app.command("migrate")
def migrate(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Option(
            "--from",
            help="The SQLite state file to copy (PATH/state.db); it is only read.",
        ),
    ],
    home: HomeOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Copy an SQLite state file into the database, verifying the audit chain before and after.

    Revocations, call-token ids still live, approvals, the grant inventory and
    the audit chain with its signed heads are copied in one transaction. The
    target must be empty; a target that already holds this chain is left as it
    is (nothing to do).
    """
    ws = workspace(ctx, home, policy)
    loaded = ws.policy()
    url = _url(ctx, home, policy)
    keyring = Keyring(source.parent / "keys")
    own = None
    if keyring.has_private(loaded.guard_id) or keyring.public_path(loaded.guard_id).exists():
        own = keyring.principal(loaded.guard_id)
    if own is None and not loaded.guard_keys:
        fail(
            f"no guard key {keyring.private_path(loaded.guard_id)} next to {source}, and the "
            "policy lists no guard_keys: the chain's signed heads cannot be checked"
        )
    keys = loaded.guard_key_set(own) if own is not None else KeySet(loaded.listed_guard_keys())
    store = PostgresStore(url)

    def progress(table: str, done: int, total: int) -> None:
        if not as_json:
            note(f"{table}: {done}/{total}")

    try:
        result = migrate_sqlite(
            source,
            store,
            lambda entries, signed: verify_log(entries, signed, keys),
            now=time.time(),
            progress=progress,
        )
    finally:
        store.close()
    if as_json:
        print_json(
            {
                "location": store.location,
                "already": result.already,
                "records": result.records,
                "copied": result.copied,
                "expired_nonces_left_behind": result.expired_nonces,
            }
        )
        return
    if result.already:
        say(
            f"{store.location} already holds this audit chain ({result.records} records): "
            "nothing copied"
        )
        return
    say(f"copied into {store.location}; the audit chain verifies before and after")
    for table, count in result.copied.items():
        say(f"{table}: {count}")
    if result.expired_nonces:
        say(f"expired call-token ids left behind: {result.expired_nonces}")
