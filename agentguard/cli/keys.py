"""``agentguard keys``: the guard keys every replica trusts (``guard_keys`` in the policy),
and with ``--root ID`` the keys of a trusted root (``trusted_roots``).

Each guard process signs its audit heads and the approvals it attests with the
key in its own state directory. Replicas sharing a database list every such key
in the policy, so each accepts what the others signed. A trusted root may list
several keys too, each with a validity window, to rotate the key its grants are
signed with. ``add`` and ``retire`` edit only the policy's top-level
``guard_keys`` (or ``trusted_roots``) block: the new file is checked (it must
load, and everything else in it must read exactly as before) and then replaces
the old one atomically. Each command reads, checks and replaces the file under
its edit lock, so a concurrent edit (another ``keys`` command, a passkey
enrolment) is neither lost nor undone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
from agentguard.policy import GuardKey, Policy, TrustedRoot
from agentguard.policy_file import PolicyEdit, editing_policy

__all__ = ["app"]

app = typer.Typer(
    help="The guard keys every replica trusts, or a trusted root's keys (--root): "
    "list, add, retire."
)

#: An entry of either block: both carry a key and a validity window.
Entry = GuardKey | TrustedRoot

RootOption = Annotated[
    str | None,
    typer.Option(
        "--root",
        metavar="ID",
        help="Work on this trusted root's keys (trusted_roots) instead of the guard keys.",
        show_default=False,
    ),
]


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


def _entries(policy: Policy, root: str | None) -> list[tuple[Entry, str]]:
    """Each entry of the block (every trusted root's with ``root``) with its key id
    (key files are read)."""
    try:
        if root is None:
            guard = policy.listed_guard_keys()
            return [(e, k.principal.kid) for e, k in zip(policy.guard_keys, guard, strict=True)]
        roots = policy.root_keys()
    except ConfigError as exc:
        fail(str(exc))
    return [(e, k.principal.kid) for e, k in zip(policy.trusted_roots, roots, strict=True)]


def _mine(entries: list[tuple[Entry, str]], root: str | None) -> list[tuple[Entry, str]]:
    """The entries the command works on: every guard key, or ``root``'s keys."""
    return [(e, kid) for e, kid in entries if root is None or getattr(e, "id", None) == root]


@contextlib.contextmanager
def _editing(ws: Workspace) -> Iterator[PolicyEdit]:
    """The policy file's edit, under its lock: the command reads the policy from
    it and writes what it computed before the lock is released."""
    path = ws.policy_path
    if not path.is_file():
        fail(f"no policy file at {path} (run 'agentguard init' first)")
    try:
        with editing_policy(path) as edit:
            yield edit
    except ConfigError as exc:
        fail(str(exc))


def _rewrite(edit: PolicyEdit, root: str | None, keys: list[dict[str, Any]]) -> None:
    """Replace the policy file's top-level ``guard_keys`` (or, for a ``root``,
    ``trusted_roots``) block with ``keys``, safely.

    Raises:
        ConfigError: the result would not load, or would change anything else.
    """
    model: type[Entry] = GuardKey if root is None else TrustedRoot
    section = "guard_keys" if root is None else "trusted_roots"
    wanted = [model.model_validate(k).model_dump() for k in keys]

    def same_keys(after: Policy) -> bool:
        if [k.model_dump() for k in getattr(after, section)] != wanted:
            return False
        # Every key file loads.
        if root is None:
            after.listed_guard_keys()
        else:
            after.root_keys()
        return True

    edit.rewrite(section, keys, check=same_keys)


def _serialised(entry: Entry) -> dict[str, Any]:
    doc = entry.model_dump(exclude_none=True)
    for name in ("not_before", "retired_at"):
        if name in doc:
            doc[name] = _stamp(doc[name])
    return doc


@app.command("list")
def list_keys(
    ctx: typer.Context,
    root: RootOption = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the trusted guard keys (or a root's keys) with their key ids and windows."""
    ws = workspace(ctx, home, policy)
    loaded = ws.policy()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for entry, kid in _mine(_entries(loaded, root), root):
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
    if not rows and root is not None:
        say(f"{root} is not a trusted root in the policy")
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
            "directory's key of the guard, or of the --root).",
        ),
    ] = None,
    root: RootOption = None,
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="'now' or an ISO 8601 time.")
    ] = None,
    note_text: Annotated[str | None, typer.Option("--note", help="e.g. the replica.")] = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Add a guard key to the policy's trusted set, or a key to a trusted root (--root);
    the file is replaced atomically."""
    ws = workspace(ctx, home, policy)
    with _editing(ws) as edit:
        loaded = edit.policy
        owner = loaded.guard_id if root is None else root
        entries = _entries(loaded, root)
        mine = _mine(entries, root)
        if root is not None and not mine:
            fail(
                f"{root} is not a trusted root in the policy; 'keys add --root' adds keys to "
                "listed roots only (list a new root under trusted_roots by hand)"
            )
        try:
            if key_file is None:
                principal = ws.keyring.principal(owner)
            else:
                probe = Policy(
                    guard_id=loaded.guard_id,
                    guard_keys=[GuardKey(key_file=str(key_file.resolve()))],
                )
                principal = probe.listed_guard_keys()[0].principal
        except (IdentityError, ConfigError) as exc:
            fail(f"cannot read the key: {exc}")
        if principal.kid in [kid for _, kid in mine]:
            fail(f"key {principal.kid} is already listed")
        when = _when(not_before, "--not-before")
        added = {"public_key": principal.public_jwk(), "not_before": when, "note": note_text}
        entry: Entry = GuardKey(**added) if root is None else TrustedRoot(id=root, **added)
        keys = [_serialised(e) for e, _ in entries]
        # A root's new key goes right after its other keys.
        at = len(keys)
        if root is not None:
            at = 1 + max(i for i, (e, _) in enumerate(entries) if getattr(e, "id", None) == root)
        keys.insert(at, _serialised(entry))
        try:
            _rewrite(edit, root, keys)
        except ConfigError as exc:
            fail(str(exc))
        if root is not None:
            say(f"added key {principal.kid} of trusted root {root} to {ws.policy_path}")
            return
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
    root: RootOption = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Retire a guard key: what it signed before --at keeps verifying, nothing after.

    With --root, retire a key of that trusted root: from --at on, nothing it
    signed verifies, whenever it was signed.
    """
    ws = workspace(ctx, home, policy)
    with _editing(ws) as edit:
        loaded = edit.policy
        when = _when(at, "--at")
        entries = _entries(loaded, root)
        mine = _mine(entries, root)
        if kid not in [k for _, k in mine]:
            which = "guard key" if root is None else f"key of trusted root {root}"
            fail(f"no {which} {kid} in the policy ('agentguard keys list' shows them)")
        keys = []
        for entry, entry_kid in entries:
            if entry_kid == kid and (root is None or getattr(entry, "id", None) == root):
                if entry.retired_at is not None and when is not None and entry.retired_at <= when:
                    fail(f"key {kid} was already retired at {_stamp(entry.retired_at)}")
                entry = entry.model_copy(update={"retired_at": when})
            keys.append(_serialised(entry))
        try:
            _rewrite(edit, root, keys)
        except ConfigError as exc:
            fail(str(exc))
        if root is None:
            say(f"retired guard key {kid} at {_stamp(when)}")
            return
        say(f"retired key {kid} of trusted root {root} at {_stamp(when)}")
        if all(k == kid or (e.retired_at is not None) for e, k in mine):
            note(f"note: {root} has no other key that is not retired: no grant of it verifies then")
