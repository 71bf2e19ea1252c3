"""``agentguard db``: create, migrate and inspect the shared PostgreSQL store.

The database is the one ``$AGENTGUARD_DATABASE_URL`` or the policy's
``storage.url`` names; without either there is nothing to manage (the state is
the SQLite file under the state directory).
"""

from __future__ import annotations

import typer

from agentguard.cli._common import (
    HomeOption,
    JsonOption,
    PolicyOption,
    fail,
    print_json,
    say,
    workspace,
)
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
