"""Where a guard keeps its state and how it asks for approval: one resolver.

Used by :class:`~agentguard.Guard`, the ``agentguard`` CLI and the MCP proxy's
CLI, so they agree on the state directory for the same inputs. Precedence for
the state directory: an explicit ``home`` (``--home``), then
``$AGENTGUARD_HOME``, then the policy's ``storage.home`` (relative to the policy
file), then ``./.agentguard``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agentguard.approval import (
    ApprovalRequest,
    Channel,
    NoChannel,
    QueueChannel,
    TerminalChannel,
)
from agentguard.errors import ConfigError, IdentityError, StoreError
from agentguard.keys import Identity, Keyring
from agentguard.policy import Policy, Storage, load_policy
from agentguard.store.base import Store
from agentguard.store.memory import MemoryStore
from agentguard.store.postgres import DEFAULT_TIMEOUT_S, PostgresStore, database_url
from agentguard.store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_HOME",
    "STATE_FILE",
    "channel_for",
    "guard_identity_in",
    "open_store",
    "policy_home",
    "resolve_home",
]

#: The state directory when nothing names one.
DEFAULT_HOME = ".agentguard"
#: The SQLite database inside the state directory.
STATE_FILE = "state.db"


def resolve_home(
    explicit: str | Path | None, policy: Policy, *, only_existing_default: bool
) -> Path | None:
    """The state directory: ``explicit``, ``$AGENTGUARD_HOME``, ``storage.home``, ``./.agentguard``.

    With ``only_existing_default`` (the library), ``./.agentguard`` counts only
    when it exists, and ``None`` means "keep everything in memory"; the CLIs
    always get a path (``agentguard init`` creates it).
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("AGENTGUARD_HOME")
    if env:
        return Path(env)
    configured = policy_home(policy)
    if configured is not None:
        return configured
    default = Path.cwd() / DEFAULT_HOME
    if only_existing_default and not default.is_dir():
        return None
    return default


#: The policy file a bare ``Guard()`` reads from the working directory.
POLICY_FILE = "agentguard.yaml"


def guard_policy(
    policy: Policy | str | Path | Mapping[str, Any] | None, *, look_around: bool = True
) -> Policy:
    """The policy a guard runs under: as given, loaded, or ``./agentguard.yaml`` when present.

    Without ``look_around`` (``Guard.in_memory``), ``None`` is the embedded
    default and the policy's ``storage.home`` is dropped: nothing on disk is read.

    Raises:
        ConfigError: the policy cannot be loaded.
    """
    if policy is None and look_around and Path(POLICY_FILE).is_file():
        policy = Path(POLICY_FILE)
    if policy is None:
        loaded = Policy()
    else:
        loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    if look_around:
        return loaded
    storage = Storage(home=None, durability=loaded.storage.durability)
    return loaded.model_copy(update={"storage": storage})


def default_home(start: Path | None = None) -> Path | None:
    """The state directory a bare ``Guard()`` uses: ``$AGENTGUARD_HOME`` or ``./.agentguard``.

    Returns ``None`` when neither exists (the guard then runs in memory).
    """
    env = os.environ.get("AGENTGUARD_HOME")
    if env:
        return Path(env)
    candidate = (start or Path.cwd()) / DEFAULT_HOME
    return candidate if candidate.is_dir() else None


def policy_home(policy: Policy) -> Path | None:
    """The policy's ``storage.home``, relative to the policy file's directory."""
    configured = policy.storage.home
    if not configured:
        return None
    path = Path(configured)
    if not path.is_absolute() and policy.base_dir:
        path = Path(policy.base_dir) / path
    return path


def open_store(home: Path | None, policy: Policy) -> Store:
    """The store under ``home`` (created if needed), or an in-memory one without a home.

    With a database URL (``$AGENTGUARD_DATABASE_URL`` or ``storage.url``) the
    state lives in that PostgreSQL database instead, shared by every guard using it.

    Raises:
        StoreError: the directory cannot be created or the database opened.
        ConfigError: ``storage.url`` names an unset variable or is not a URL.
    """
    url = database_url(policy.storage.url)
    if url is not None:
        return PostgresStore(url, timeout=policy.storage.busy_timeout or DEFAULT_TIMEOUT_S)
    if home is None:
        return MemoryStore()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {home}: {exc.strerror or exc}") from exc
    return SQLiteStore(
        home / STATE_FILE,
        durability=policy.storage.durability,
        busy_timeout=policy.storage.busy_timeout,
    )


def channel_for(
    policy: Policy, *, announce: Callable[[ApprovalRequest], None] | None = None
) -> Channel:
    """The approval channel the policy names (``announce`` tells of queued requests).

    Raises:
        ConfigError: the terminal channel without ``approval.terminal_approver``,
            or a webhook channel without its settings.
    """
    settings = policy.approval
    if settings.channel == "terminal":
        if not settings.terminal_approver:
            raise ConfigError("approval.terminal_approver must name the user at the terminal")
        return TerminalChannel(settings.terminal_approver)
    if settings.channel == "webhook":
        from agentguard.webhook import WebhookChannel

        return WebhookChannel.from_settings(settings)
    if settings.channel in ("queue", "web", "callback"):
        # The web and callback channels answer through the queue; the web page
        # is started separately (``agentguard approvals serve``).
        return QueueChannel(announce=announce)
    return NoChannel()


def guard_identity_in(keyring: Keyring | None, policy: Policy) -> Identity:
    """The guard's own signing identity: kept in ``keyring``, made once; fresh without one."""
    if keyring is None:
        return Identity.generate(policy.guard_id)
    if keyring.has_private(policy.guard_id):
        return keyring.identity(policy.guard_id)
    try:
        return keyring.create(policy.guard_id)
    except IdentityError:
        # Another process sharing this home created the key first (Identity.save
        # publishes the file atomically, so it is complete once visible).
        return keyring.identity(policy.guard_id)
