"""``agentguard revoke``: revoke a link (and so its descendants), a principal or a key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentguard.cli._common import (
    READ_MAX_LINKS,
    HomeOption,
    PolicyOption,
    fail,
    read_delegation,
    say,
    workspace,
)
from agentguard.delegation import Delegation
from agentguard.keys import b64url_decode, validate_principal_id
from agentguard.store.base import GrantRecord, RevocationKind

__all__ = ["revoke_command"]

_DIGEST_LENGTH = 43  # unpadded base64url of 32 bytes


def _is_digest(value: str) -> bool:
    try:
        return len(value) == _DIGEST_LENGTH and len(b64url_decode(value)) == 32
    except ValueError:
        return False


def _resolve_link(value: str, records: list[GrantRecord]) -> str:
    """A full link id, or the one inventory link id starting with ``value`` (8+ characters)."""
    if _is_digest(value):
        return value
    if len(value) < 8:
        raise typer.BadParameter(
            "give a link id (43 characters) or at least 8 characters of one from "
            "'agentguard grants list'",
            param_hint="LINK_ID",
        )
    matches = sorted({r.link_id for r in records if r.link_id.startswith(value)})
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)}"
        fail(f"{found} link ids in the grant inventory start with {value!r}")
    return matches[0]


def revoke_command(
    ctx: typer.Context,
    link_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[LINK_ID]",
            help="A link id (or a unique prefix; put -- before one that starts with -).",
        ),
    ] = None,
    grant: Annotated[
        Path | None,
        typer.Option("--grant", metavar="FILE", help="Revoke the leaf link of this delegation."),
    ] = None,
    principal: Annotated[
        str | None, typer.Option("--principal", metavar="ID", help="Revoke a principal.")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", metavar="KID", help="Revoke a key by its thumbprint.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT")] = "",
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Revoke exactly one of: LINK_ID, --grant FILE, --principal ID, --key KID.

    Revoking a link kills every delegation below it without touching them;
    revoking a principal kills every chain it issues, holds or sponsors
    (``on_behalf_of`` in any link).
    """
    given = [v for v in (link_id, grant, principal, key) if v is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of LINK_ID, --grant, --principal or --key")
    ws = workspace(ctx, home, policy)
    kind: RevocationKind
    with ws.guard() as guard:
        if grant is not None:
            delegation = Delegation.parse(read_delegation(grant), max_links=READ_MAX_LINKS)
            kind, value = "link", delegation.leaf.link_id
            what = f"link {value} ({delegation.leaf.issuer} -> {delegation.leaf.subject})"
        elif principal is not None:
            kind, value = "principal", validate_principal_id(principal)
            what = f"principal {value} (also as a sponsor: on_behalf_of)"
        elif key is not None:
            if not _is_digest(key):
                raise typer.BadParameter(
                    "a key id is a 43-character thumbprint", param_hint="--key"
                )
            kind, value = "key", key
            what = f"key {value}"
        else:
            assert link_id is not None  # noqa: S101 - exactly one was given
            kind, value = "link", _resolve_link(link_id, guard.grants())
            what = f"link {value}"
        guard.revoke(kind, value, reason=reason)
    suffix = f" ({reason})" if reason else ""
    say(f"revoked {what}{suffix}; every delegation through it is refused from now on")
