"""Safe edits of one top-level section of a policy file (``guard_keys``, ``approvers``).

The policy file is the organisation's trusted file, and people edit it by hand.
A program that writes into it (``agentguard keys add``, a passkey enrolment)
replaces exactly one top-level block, keeps comments at the left margin, checks
that the result loads and that everything else reads exactly as before, and
then replaces the old file atomically.

Programs that edit the file at the same time take turns: each edit holds an
exclusive lock on a sibling file (``.NAME.lock``) from reading the file to
replacing it, so an edit is computed from the text it replaces and none is
lost (:func:`editing_policy`). An edit by hand (which takes no lock) made while
a program's edit is under way is detected before the replace and that
program's edit is refused. The new file keeps the old one's permission bits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from agentguard.errors import ConfigError
from agentguard.keys import read_trusted_file
from agentguard.policy import POLICY_FILE_LIMIT, Policy, load_policy

__all__ = ["LOCK_WAIT", "PolicyEdit", "editing_policy", "rewrite_policy_section"]

_TOP_KEY = re.compile(r"^[^\s#-]")

#: Seconds an edit waits for another program's edit of the same file to finish.
LOCK_WAIT = 30.0


def _read(path: Path) -> bytes:
    try:
        return read_trusted_file(path, limit=POLICY_FILE_LIMIT)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read policy {path}: {exc}") from exc


class PolicyEdit:
    """One program's edit of a policy file, made while it holds the file's lock
    (see :func:`editing_policy`).

    Attributes:
        path: The policy file.
        text: Its text as read under the lock: the text the edit replaces.
        policy: That text, loaded.
    """

    def __init__(self, path: Path, raw: bytes, policy: Policy) -> None:
        self.path = path
        self._raw = raw
        self.text = raw.decode("utf-8")
        self.policy = policy
        self._done = False

    def document(self) -> Any:
        """The text parsed as plain YAML (for copying entries as written).

        Raises:
            ConfigError: it does not parse (it loaded as a policy, so only in theory).
        """
        try:
            return yaml.safe_load(self.text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc}") from None

    def rewrite(
        self, name: str, value: Any, *, check: Callable[[Policy], bool] | None = None
    ) -> Policy:
        """Replace the top-level ``name:`` block with ``value``, safely; once per edit.

        ``check`` is given the new policy and must say whether ``name`` reads as
        intended; every other field must read exactly as before. Returns the
        new policy.

        Raises:
            ConfigError: the result would not load, would change anything else
                or fails ``check``; the file changed since it was read (an
                edit by hand); or the new file cannot be written.
        """
        if self._done:
            raise ConfigError(f"one rewrite per edit of {self.path}: edit it again")
        self._done = True
        path = self.path
        kept: list[str] = []
        at: int | None = None  # where the old block was: the new one goes there
        inside = False
        for line in self.text.splitlines(keepends=True):
            if _TOP_KEY.match(line):
                inside = line.startswith(f"{name}:")
                if inside and at is None:
                    at = len(kept)
            # Comments at the left margin are kept wherever they are.
            if not inside or line.startswith("#"):
                kept.append(line if line.endswith("\n") else line + "\n")
        block = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False)
        kept.insert(len(kept) if at is None else at, block)
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError as exc:
            raise ConfigError(f"cannot edit {path}: {exc}") from exc
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        _write_new(tmp, "".join(kept).encode("utf-8"), mode)  # ours from here on
        try:
            try:
                after = load_policy(tmp)
            except ConfigError as exc:
                raise ConfigError(
                    f"cannot edit {path} safely: the result would not load ({exc}); "
                    f"edit {name} by hand"
                ) from None
            unchanged = self.policy.model_dump(exclude={name}) == after.model_dump(exclude={name})
            if not unchanged or (check is not None and not check(after)):
                raise ConfigError(
                    f"cannot edit {path} safely (its layout is not plain YAML with {name} "
                    f"at the top level); edit {name} by hand"
                )
            if _read(path) != self._raw:
                raise ConfigError(
                    f"{path} was changed by someone else while this edit was under way; "
                    "nothing was written: run the command again"
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return after


def _write_new(tmp: Path, data: bytes, mode: int) -> None:
    """Create ``tmp`` (never an existing file or link) with ``mode``, write ``data``, sync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {tmp}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)  # the old file's bits, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {tmp}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold an exclusive lock on ``.NAME.lock`` beside ``path`` (a lock file, never
    followed if a link), waiting at most ``wait`` seconds for another holder.

    Raises:
        ConfigError: the lock file cannot be opened, or the lock is not free in time.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot lock {path} for editing ({lock_path}: {exc})") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise ConfigError(f"cannot lock {path} for editing: {exc}") from None
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"another program is editing {path} (waited {wait:g} s for its lock "
                        f"{lock_path}); try again"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def editing_policy(path: str | Path, *, wait: float = LOCK_WAIT) -> Iterator[PolicyEdit]:
    """Hold the policy file's edit lock, read and load it, and yield the edit.

    Compute the change from ``edit.policy`` (or ``edit.document()``) and write it
    with ``edit.rewrite``: both happen under the lock, so a concurrent edit by
    another program (or thread) waits and then sees this one's result.

    Raises:
        ConfigError: the lock cannot be taken within ``wait`` seconds, or the
            file does not read or load.
    """
    path = Path(path)
    with exclusive_lock(path, wait):
        raw = _read(path)
        policy = load_policy(path)
        if _read(path) != raw:  # changed by hand between the two reads
            raise ConfigError(f"{path} changed while it was read; run the command again")
        yield PolicyEdit(path, raw, policy)


def rewrite_policy_section(
    path: str | Path,
    name: str,
    value: Any,
    *,
    check: Callable[[Policy], bool] | None = None,
) -> Policy:
    """Replace the top-level ``name:`` block of the policy at ``path`` with ``value``, safely.

    ``check`` is given the new policy and must say whether ``name`` reads as
    intended; every other field must read exactly as before. Returns the new
    policy. The edit holds the file's lock (:func:`editing_policy`); when
    ``value`` depends on what the file holds, compute it inside
    :func:`editing_policy` instead, so it is computed from the text it replaces.

    Raises:
        ConfigError: the file does not load, the result would not load, would
            change anything else, or fails ``check``; the file changed during
            the edit; or the lock cannot be taken.
    """
    with editing_policy(path) as edit:
        return edit.rewrite(name, value, check=check)
