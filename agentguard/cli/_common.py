"""What every command shares: where state lives, output, exit codes and small file helpers.

Primary output (tables, trees, decisions, JSON) goes to stdout; notes, warnings
and errors go to stderr, each error on one line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from agentguard.clock import format_duration, parse_duration
from agentguard.decision import Reason
from agentguard.delegation import MAX_DELEGATION_BYTES
from agentguard.errors import ConfigError, TokenFormatError
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring, read_trusted_file
from agentguard.policy import Policy, load_policy
from agentguard.resolve import STATE_FILE, resolve_home
from agentguard.store.memory import MemoryStore
from agentguard.store.postgres import DEFAULT_TIMEOUT_S, PostgresStore, database_url
from agentguard.store.sqlite import SQLiteStore

__all__ = [
    "EXIT_APPROVAL",
    "EXIT_DENIED",
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_USAGE",
    "HomeOption",
    "JsonOption",
    "PolicyOption",
    "READ_MAX_LINKS",
    "Settings",
    "Workspace",
    "err",
    "fail",
    "note",
    "out",
    "parse_duration_option",
    "print_json",
    "read_delegation",
    "relative",
    "say",
    "stamp",
    "workspace",
    "write_private",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 3
EXIT_APPROVAL = 4

DEFAULT_POLICY = "agentguard.yaml"
#: Longest chain a command reads to show, explain or revoke it. Generous on
#: purpose: the guard applies the policy's own cap and says why it refuses.
READ_MAX_LINKS = 64

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="State directory (keys/, state.db); default $AGENTGUARD_HOME or ./.agentguard.",
        show_default=False,
    ),
]
PolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="Policy file; default ./agentguard.yaml.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


@dataclass
class Settings:
    """Options given before the subcommand (``agentguard --home DIR ...``)."""

    home: Path | None = None
    policy: Path | None = None


def out() -> Console:
    """A console on stdout; wide when not a terminal so piped lines stay whole."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def err() -> Console:
    """A console on stderr."""
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def say(message: str) -> None:
    """Plain text on stdout (never interpreted as Rich markup)."""
    out().print(Text(message))


def note(message: str) -> None:
    """A one-line note on stderr."""
    typer.echo(_one_line(message), err=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    """JSON on stdout, alone."""
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def stamp(seconds: float | None) -> str:
    """UTC timestamp for humans (``-`` for none)."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def relative(seconds: float | None, now: float) -> str:
    """``in 2h 5m`` / ``3m ago`` (``never`` for none)."""
    if seconds is None:
        return "never"
    delta = seconds - now
    if abs(delta) < 1:
        return "now"
    return f"in {format_duration(delta)}" if delta > 0 else f"{format_duration(-delta)} ago"


def parse_duration_option(value: str, option: str) -> float:
    """Parse a duration option or raise a usage error naming it."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def read_delegation(path: Path) -> str:
    """The delegation string in ``path`` (``-`` reads stdin).

    Raises:
        TokenFormatError: the file is far too large or not text.
        OSError: the file cannot be read.
    """
    limit = MAX_DELEGATION_BYTES * 2
    if str(path) == "-":
        raw = sys.stdin.buffer.read(limit + 1) if hasattr(sys.stdin, "buffer") else b""
    else:
        try:
            raw = read_trusted_file(path, limit=limit)
        except ValueError as exc:  # a FIFO, a device, or far too large: refused unread
            raise TokenFormatError(f"cannot read a delegation: {exc}") from None
    if len(raw) > limit:
        raise TokenFormatError(f"{path} is too large to hold a delegation", reason=Reason.OVERSIZED)
    try:
        return raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFormatError(f"{path} does not hold a delegation (not ASCII text)") from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (mode 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


class Workspace:
    """The state directory and policy file a command works with."""

    def __init__(self, home: Path | None, policy: Path | None) -> None:
        self._home = home
        self.explicit_policy = policy is not None
        self.policy_path = policy if policy is not None else Path(DEFAULT_POLICY)
        self._policy: Policy | None = None

    @property
    def explicit_home(self) -> Path | None:
        """The state directory given by option or environment, if any."""
        return self._home

    @property
    def has_policy_file(self) -> bool:
        """Whether the policy file exists (a missing default means built-in defaults)."""
        return self.explicit_policy or self.policy_path.is_file()

    def policy(self) -> Policy:
        """The policy: the file when there is one, else the built-in defaults.

        Raises:
            ConfigError: the file is unreadable or invalid.
        """
        if self._policy is None:
            if self.has_policy_file:
                self._policy = load_policy(self.policy_path)
            else:
                note(
                    f"note: no {self.policy_path} here; using built-in defaults "
                    "(no trusted roots; run 'agentguard init')"
                )
                self._policy = Policy()
        return self._policy

    @property
    def home(self) -> Path:
        """--home, $AGENTGUARD_HOME, the policy's ``storage.home``, or ./.agentguard."""
        policy = self.policy() if self.policy_path.is_file() else Policy()
        home = resolve_home(self._home, policy, only_existing_default=False)
        assert home is not None  # noqa: S101 (only_existing_default=False always names one)
        return home

    @property
    def keyring(self) -> Keyring:
        """The keyring under ``<home>/keys``."""
        return Keyring(self.home / "keys")

    def require_home(self) -> Path:
        """The state directory, which must exist.

        Raises:
            ConfigError: it does not.
        """
        home = self.home
        if not home.is_dir():
            raise ConfigError(
                f"no agentguard state directory at {home} "
                "(run 'agentguard init', or pass --home DIR / set AGENTGUARD_HOME)"
            )
        return home

    @contextmanager
    def guard(self, *, require_home: bool = True) -> Iterator[Guard]:
        """A guard over this workspace; without a state directory (and not required) in memory.

        Raises:
            ConfigError: the policy or state directory is missing or invalid.
            StoreError: the store cannot be opened.
        """
        policy = self.policy()
        if require_home or self.home.is_dir():
            guard = Guard(policy, home=self.require_home())
        else:
            guard = Guard(policy, store=MemoryStore())
        try:
            yield guard
        finally:
            guard.close()

    @contextmanager
    def read_guard(self, *, require_home: bool = True, need_key: bool = False) -> Iterator[Guard]:
        """A guard for a read-only command: it creates no directory, key or database.

        Without a state directory (and not required) everything is in memory.
        The guard's key is loaded when it exists; a command that signs nothing
        and checks no signed head uses a throwaway key when it does not, and one
        that does (``need_key``) refuses, naming the missing file.

        With a database URL (``$AGENTGUARD_DATABASE_URL`` or ``storage.url``)
        the guard reads the shared PostgreSQL store, read-only (no schema is
        created or migrated); the state directory is optional then, and with
        ``guard_keys`` in the policy the guard's own key is not needed.

        Raises:
            ConfigError: the policy is invalid, or the state directory, its
                database or (with ``need_key``) the guard's key is missing.
            IdentityError: the guard's key file is unreadable or unsafe.
            StoreError: the store cannot be opened.
        """
        policy = self.policy()
        home = self.home
        url = database_url(policy.storage.url)
        if url is not None:
            guard = self._shared_read_guard(policy, home, url, need_key=need_key)
        elif not home.is_dir():
            if require_home:
                self.require_home()
            guard = Guard(
                policy, store=MemoryStore(), guard_identity=Identity.generate(policy.guard_id)
            )
        else:
            database = home / STATE_FILE
            if not database.is_file():
                raise ConfigError(
                    f"no agentguard state database at {database} (this command creates none; "
                    "run 'agentguard init', or pass --home DIR for another state directory)"
                )
            keyring = Keyring(home / "keys")
            if keyring.has_private(policy.guard_id):
                identity = keyring.identity(policy.guard_id)
            elif need_key:
                raise ConfigError(
                    f"the guard's key {keyring.private_path(policy.guard_id)} is missing "
                    "(this command creates no key; restore the file from a backup: a new key "
                    "cannot check the heads the old one signed)"
                )
            else:
                identity = Identity.generate(policy.guard_id)  # signs nothing here
            store = SQLiteStore(database, durability=policy.storage.durability)
            try:
                guard = Guard(policy, home=home, store=store, guard_identity=identity)
            except BaseException:
                store.close()
                raise
        try:
            yield guard
        finally:
            guard.close()

    @staticmethod
    def _shared_read_guard(policy: Policy, home: Path, url: str, *, need_key: bool) -> Guard:
        """A guard reading the PostgreSQL store at ``url`` (see :meth:`read_guard`)."""
        store = PostgresStore(
            url, timeout=policy.storage.busy_timeout or DEFAULT_TIMEOUT_S, read_only=True
        )
        try:
            local = home.is_dir()
            keyring = Keyring(home / "keys")
            if local and keyring.has_private(policy.guard_id):
                identity = keyring.identity(policy.guard_id)
            elif need_key and not policy.guard_keys:
                raise ConfigError(
                    f"the guard's key {keyring.private_path(policy.guard_id)} is missing and "
                    "the policy lists no guard_keys: nothing could check the signed heads (list "
                    "every replica's key under guard_keys, or run this where the guard's key is)"
                )
            else:
                identity = Identity.generate(policy.guard_id)  # signs nothing here
            return Guard(policy, home=home if local else None, store=store, guard_identity=identity)
        except BaseException:
            store.close()
            raise


def workspace(
    ctx: typer.Context, home: Path | None = None, policy: Path | None = None
) -> Workspace:
    """Combine per-command options with the global ones (command options win)."""
    settings = ctx.find_object(Settings) or Settings()
    return Workspace(home or settings.home, policy or settings.policy)
