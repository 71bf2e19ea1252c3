"""``agentguard identity new|list|export|import``: keys in the keyring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentguard.cli._common import HomeOption, fail, note, out, say, workspace
from agentguard.errors import IdentityError
from agentguard.keys import KEY_FILE_LIMIT, Principal, read_trusted_file, validate_principal_id

__all__ = ["app"]

app = typer.Typer(help="Create, list, export and import identities (Ed25519 keys).")


@app.command("new")
def new(
    ctx: typer.Context,
    principal_id: Annotated[str, typer.Argument(metavar="ID", help="e.g. user:alice")],
    home: HomeOption = None,
) -> None:
    """Create a new identity with a fresh key (private file mode 0600)."""
    keyring = workspace(ctx, home).keyring
    validate_principal_id(principal_id)
    if keyring.has_private(principal_id):
        fail(f"{principal_id} has a private key already ({keyring.private_path(principal_id)})")
    identity = keyring.create(principal_id)
    say(f"created {identity.id} (kid {identity.kid}) in {keyring.private_path(identity.id)}")


@app.command("list")
def list_identities(ctx: typer.Context, home: HomeOption = None) -> None:
    """List the identities and public keys in the keyring."""
    keyring = workspace(ctx, home).keyring
    table = Table("id", "key", "kid", box=None)
    count = 0
    for principal_id, private in keyring:
        try:
            kid = keyring.principal(principal_id).kid
        except IdentityError as exc:
            kid = f"(unusable: {exc})"
        table.add_row(Text(principal_id), Text("private" if private else "public only"), Text(kid))
        count += 1
    if not count:
        note(f"no identities in {keyring.directory} (create one with 'agentguard identity new ID')")
        return
    out().print(table)


@app.command("export")
def export(
    ctx: typer.Context,
    principal_id: Annotated[str, typer.Argument(metavar="ID")],
    public: Annotated[
        bool, typer.Option("--public", help="Export only the public key (safe to share).")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print a key as JSON: the public key with --public, otherwise the private key."""
    keyring = workspace(ctx, home).keyring
    validate_principal_id(principal_id)
    if public:
        principal = keyring.principal(principal_id)
        typer.echo(json.dumps({"id": principal.id, "jwk": principal.public_jwk()}, indent=2))
        return
    identity = keyring.identity(principal_id)
    note(f"warning: this is the PRIVATE key of {principal_id}; keep it secret")
    typer.echo(json.dumps({"id": identity.id, "jwk": identity.private_jwk()}, indent=2))


def _read_public(path: Path, principal_id: str) -> Principal:
    try:
        raw = read_trusted_file(path, limit=KEY_FILE_LIMIT)
    except ValueError as exc:  # a FIFO, a device, or too large: refused unread
        raise IdentityError(f"refusing key file: {exc}") from None
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        raise IdentityError(f"{path} is not a JSON key file") from None
    if not isinstance(doc, dict):
        raise IdentityError(f"{path} is not a JSON key file")
    jwk = doc.get("jwk", doc)
    if "id" in doc and doc["id"] != principal_id:
        raise IdentityError(f"{path} holds the key of {doc['id']}, not {principal_id}")
    if isinstance(jwk, dict) and "d" in jwk:
        raise IdentityError(f"{path} holds a private key; import only public keys")
    return Principal.from_jwk(principal_id, jwk)


@app.command("import")
def import_(
    ctx: typer.Context,
    principal_id: Annotated[str, typer.Argument(metavar="ID")],
    public_key: Annotated[
        Path,
        typer.Option("--public-key", help="A file written by 'identity export ID --public'."),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different stored key for ID.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Store the public key of a principal whose private key lives elsewhere."""
    keyring = workspace(ctx, home).keyring
    validate_principal_id(principal_id)
    principal = _read_public(public_key, principal_id)
    if keyring.has_private(principal_id) and keyring.principal(principal_id).kid != principal.kid:
        fail(f"{principal_id} has a different private key here; refusing to shadow it")
    keyring.import_public(principal, overwrite=force)
    say(f"imported public key of {principal.id} (kid {principal.kid})")
