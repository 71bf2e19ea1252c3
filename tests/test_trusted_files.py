"""Trusted files (policy, keys, delegations) are read bounded, regular files only (issue 13 #10).

A FIFO, /dev/zero, a huge sparse file and a symlink to one are each refused
with a clear error, before more than the limit is read. The FIFO cases run in
a child process under a timeout, so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentguard.errors import ConfigError, IdentityError
from agentguard.keys import Identity, Keyring, read_trusted_file
from agentguard.policy import load_policy

BIG = 200 * 1024 * 1024


def _sparse(path: Path, size: int = BIG) -> Path:
    with path.open("wb") as fh:
        fh.truncate(size)  # sparse: costs no disk, reads as zeros
    return path


def test_a_regular_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    """The helper returns the bytes of a small regular file, up to exactly the limit."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_trusted_file(path, limit=10) == b"x" * 10
    with pytest.raises(ValueError, match="larger than 9 bytes"):
        read_trusted_file(path, limit=9)


@pytest.mark.parametrize("kind", ["dev_zero", "sparse", "symlink_to_sparse", "directory"])
def test_non_regular_or_oversized_files_are_refused(tmp_path: Path, kind: str) -> None:
    """/dev/zero, a 200 MB sparse file, a symlink to it and a directory: a clear ValueError."""
    if kind == "dev_zero":
        path = Path("/dev/zero")
    elif kind == "sparse":
        path = _sparse(tmp_path / "big")
    elif kind == "symlink_to_sparse":
        path = tmp_path / "link"
        path.symlink_to(_sparse(tmp_path / "big"))
    else:
        path = tmp_path
    expected = "not a regular file" if kind in ("dev_zero", "directory") else "larger than"
    with pytest.raises(ValueError, match=expected):
        read_trusted_file(path, limit=1_000_000)


@pytest.mark.parametrize("kind", ["dev_zero", "sparse", "symlink_to_sparse"])
def test_policy_and_key_loaders_refuse_them(tmp_path: Path, kind: str) -> None:
    """load_policy, Identity.load and the keyring's public keys refuse with their own errors."""
    if kind == "dev_zero":
        path = Path("/dev/zero")
    else:
        path = _sparse(tmp_path / "big")
        if kind == "symlink_to_sparse":
            (tmp_path / "link").symlink_to(path)
            path = tmp_path / "link"
    with pytest.raises(ConfigError, match="policy"):
        load_policy(path)
    if kind != "symlink_to_sparse":  # private keys refuse every symlink anyway
        if kind == "sparse":
            path.chmod(0o600)
        with pytest.raises(IdentityError):
            Identity.load(path)
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "user_alice.pub").symlink_to(path)
    with pytest.raises(IdentityError, match=r"user_alice\.pub"):
        Keyring(keys).principal("user:alice")


_FIFO_CHILD = r"""
import os, sys
from pathlib import Path
from agentguard.errors import AgentGuardError
from agentguard.keys import Identity, Keyring
from agentguard.policy import load_policy
from agentguard.cli._common import read_delegation

fifo = Path(sys.argv[1])
refused = []
for name, load in [
    ("policy", lambda: load_policy(fifo)),
    ("private key", lambda: Identity.load(fifo)),
    ("public key", lambda: Keyring(fifo.parent).principal("user:alice")),
    ("delegation", lambda: read_delegation(fifo)),
]:
    try:
        load()
    except (AgentGuardError, OSError) as exc:
        refused.append(f"{name}: {exc}")
print("\n".join(refused))
"""


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """A FIFO as policy, private key, public key or delegation: refused at once, never a hang."""
    fifo = tmp_path / "user_alice.pub"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-c", _FIFO_CHILD, str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,  # a hang fails the test here instead of stalling the suite
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line in lines:
        assert "not a regular file" in line, line
