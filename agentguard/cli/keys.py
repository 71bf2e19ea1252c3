"""``agentguard keys``: the guard keys every replica trusts (``guard_keys`` in the policy).

Each guard process signs its audit heads and the approvals it attests with the
key in its own state directory. Replicas sharing a database list every such key
in the policy, so each accepts what the others signed. ``add`` and ``retire``
edit only the policy's top-level ``guard_keys`` block: the new file is checked
(it must load, and everything else in it must read exactly as before) and then
replaces the old one atomically.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentguard.cli._common import (
    HomeOption,
    JsonOption,
    PolicyOption,
    Workspace,
    fail,
    note,
    out,
    print_json,
    say,
    workspace,
)
from agentguard.errors import ConfigError, IdentityError
from agentguard.policy import GuardKey, Policy
from agentguard.policy_file import rewrite_policy_section

__all__ = ["app"]

app = typer.Typer(help="The guard keys every replica trusts: list, add, retire.")

def _when(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    if value == "now":
        return datetime.now(UTC).replace(microsecond=0)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        fail(f"{option} must be 'now' or an ISO 8601 time such as 2027-01-31T12:00:00Z")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _entries(policy: Policy) -> list[tuple[GuardKey, str]]:
    """Each listed key with its key id (key files are read)."""
    try:
        loaded = policy.listed_guard_keys()
    except ConfigError as exc:
        fail(str(exc))
    return [(e, k.principal.kid) for e, k in zip(policy.guard_keys, loaded, strict=True)]


def _rewrite(ws: Workspace, keys: list[dict[str, Any]]) -> None:
    """Replace the policy file's top-level ``guard_keys`` block with ``keys``, safely.

    Raises:
        ConfigError: the result would not load, or would change anything else.
    """
    path = ws.policy_path
    if not path.is_file():
        fail(f"no policy file at {path} (run 'agentguard init' first)")
    wanted = [GuardKey.model_validate(k).model_dump() for k in keys]

    def same_keys(after: Policy) -> bool:
        if [k.model_dump() for k in after.guard_keys] != wanted:
            return False
        after.listed_guard_keys()  # every key file loads
        return True

    rewrite_policy_section(path, "guard_keys", keys, check=same_keys)


def _serialised(entry: GuardKey) -> dict[str, Any]:
    doc = entry.model_dump(exclude_none=True)
    for name in ("not_before", "retired_at"):
        if name in doc:
            doc[name] = _stamp(doc[name])
    return doc


@app.command("list")
def list_keys(
    ctx: typer.Context,
    home: HomeOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the trusted guard keys with their key ids and validity windows."""
    ws = workspace(ctx, home, policy)
    loaded = ws.policy()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for entry, kid in _entries(loaded):
        valid = (entry.not_before is None or entry.not_before <= now) and (
            entry.retired_at is None or now < entry.retired_at
        )
        rows.append(
            {
                "kid": kid,
                "not_before": _stamp(entry.not_before) or None,
                "retired_at": _stamp(entry.retired_at) or None,
                "valid_now": valid,
                "note": entry.note,
            }
        )
    if as_json:
        print_json(rows)
        return
    if not rows:
        say(
            "no guard_keys in the policy: each process trusts only its own guard key "
            "(add every replica's key with 'agentguard keys add')"
        )
        return
    table = Table("kid", "not before", "retired at", "valid now", "note")
    for row in rows:
        table.add_row(
            Text(str(row["kid"])),
            Text(str(row["not_before"] or "-")),
            Text(str(row["retired_at"] or "-")),
            Text("yes" if row["valid_now"] else "no"),
            Text(str(row["note"] or "")),
        )
    out().print(table)


@app.command("add")
def add(
    ctx: typer.Context,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="A file written by 'identity export ID --public' (default: this state "
            "directory's guard key).",
        ),
    ] = None,
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="'now' or an ISO 8601 time.")
    ] = None,
    note_text: Annotated[str | None, typer.Option("--note", help="e.g. the replica.")] = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Add a guard key to the policy's trusted set (the file is replaced atomically)."""
    ws = workspace(ctx, home, policy)
    loaded = ws.policy()
    try:
        if key_file is None:
            principal = ws.keyring.principal(loaded.guard_id)
        else:
            probe = Policy(
                guard_id=loaded.guard_id, guard_keys=[GuardKey(key_file=str(key_file.resolve()))]
            )
            principal = probe.listed_guard_keys()[0].principal
    except (IdentityError, ConfigError) as exc:
        fail(f"cannot read the key: {exc}")
    listed = [kid for _, kid in _entries(loaded)]
    if principal.kid in listed:
        fail(f"key {principal.kid} is already listed")
    entry = GuardKey(
        public_key=principal.public_jwk(),
        not_before=_when(not_before, "--not-before"),
        note=note_text,
    )
    keys = [_serialised(e) for e in loaded.guard_keys] + [_serialised(entry)]
    try:
        _rewrite(ws, keys)
    except ConfigError as exc:
        fail(str(exc))
    say(f"added guard key {principal.kid} to {ws.policy_path}")
    if not loaded.guard_keys:
        note(
            "note: the policy now lists guard keys: every process trusts only the listed "
            "keys, so add each replica's key (and this one's, if it signs too)"
        )


@app.command("retire")
def retire(
    ctx: typer.Context,
    kid: Annotated[str, typer.Argument(help="The key id, as 'keys list' shows it.")],
    at: Annotated[str, typer.Option("--at", help="'now' or an ISO 8601 time.")] = "now",
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Retire a guard key: what it signed before --at keeps verifying, nothing after."""
    ws = workspace(ctx, home, policy)
    loaded = ws.policy()
    when = _when(at, "--at")
    entries = _entries(loaded)
    if kid not in [k for _, k in entries]:
        fail(f"no guard key {kid} in the policy ('agentguard keys list' shows them)")
    keys = []
    for entry, entry_kid in entries:
        if entry_kid == kid:
            if entry.retired_at is not None and when is not None and entry.retired_at <= when:
                fail(f"key {kid} was already retired at {_stamp(entry.retired_at)}")
            entry = entry.model_copy(update={"retired_at": when})
        keys.append(_serialised(entry))
    try:
        _rewrite(ws, keys)
    except ConfigError as exc:
        fail(str(exc))
    say(f"retired guard key {kid} at {_stamp(when)}")
