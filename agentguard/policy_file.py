"""Safe edits of one top-level section of a policy file (``guard_keys``, ``approvers``).

The policy file is the organisation's trusted file, and people edit it by hand.
A program that writes into it (``agentguard keys add``, a passkey enrolment)
replaces exactly one top-level block, keeps comments at the left margin, checks
that the result loads and that everything else reads exactly as before, and
then replaces the old file atomically.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agentguard.errors import ConfigError
from agentguard.policy import Policy, load_policy

__all__ = ["rewrite_policy_section"]

_TOP_KEY = re.compile(r"^[^\s#-]")


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
    policy.

    Raises:
        ConfigError: the file does not load, the result would not load, would
            change anything else, or fails ``check``.
    """
    path = Path(path)
    before = load_policy(path)
    text = path.read_text(encoding="utf-8")
    kept: list[str] = []
    at: int | None = None  # where the old block was: the new one goes there
    inside = False
    for line in text.splitlines(keepends=True):
        if _TOP_KEY.match(line):
            inside = line.startswith(f"{name}:")
            if inside and at is None:
                at = len(kept)
        # Comments at the left margin are kept wherever they are.
        if not inside or line.startswith("#"):
            kept.append(line if line.endswith("\n") else line + "\n")
    block = yaml.safe_dump({name: value}, sort_keys=False, default_flow_style=False)
    kept.insert(len(kept) if at is None else at, block)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text("".join(kept), encoding="utf-8")
        try:
            after = load_policy(tmp)
        except ConfigError as exc:
            raise ConfigError(
                f"cannot edit {path} safely: the result would not load ({exc}); edit {name} by hand"
            ) from None
        unchanged = before.model_dump(exclude={name}) == after.model_dump(exclude={name})
        if not unchanged or (check is not None and not check(after)):
            raise ConfigError(
                f"cannot edit {path} safely (its layout is not plain YAML with {name} "
                f"at the top level); edit {name} by hand"
            )
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return after
