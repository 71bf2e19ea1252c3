"""A small world for guard, approval and audit tests: identities, a delegation, a policy.

The delegation is ``org:acme -> user:alice -> agent:bot`` (``agent:bot`` holds it):

* ``tickets/*`` — no conditions;
* ``billing/refund`` — ``amount <= 1000``;
* ``admin/*`` — needs approval (the link rules ask for it, so assurance ``signed``);
* ``fs/*`` — no conditions.

``user:carol`` is the policy's approver; her public key is in the policy.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentguard.approval import Channel
from agentguard.clock import Clock, ManualClock
from agentguard.delegation import Delegation
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import Store

#: Where every ManualClock in these tests starts (2027-01-15T08:00:00Z).
START = 1_800_000_000.0

SCOPE: list[str | dict[str, Any]] = [
    "tickets/*",
    {"tool": "billing/refund", "where": {"amount": {"<=": 1000}}},
    {"tool": "admin/*", "approval": True},
    "fs/*",
]

PYTHON = str(Path(sys.executable))


@dataclass
class World:
    """Identities, the delegation ``org -> alice -> bot`` and the clock it was issued with."""

    clock: Clock
    org: Identity = field(default_factory=lambda: Identity.generate("org:acme"))
    alice: Identity = field(default_factory=lambda: Identity.generate("user:alice"))
    bot: Identity = field(default_factory=lambda: Identity.generate("agent:bot"))
    carol: Identity = field(default_factory=lambda: Identity.generate("user:carol"))
    delegation: Delegation = field(init=False)

    def __post_init__(self) -> None:
        self.delegation = self.chain(self.bot)

    def chain(
        self,
        holder: Identity,
        *,
        scope: list[str | dict[str, Any]] | None = None,
        root_ttl: str = "1d",
        leaf_ttl: str = "1h",
        purpose: str | None = "customer support",
        sponsor: str | None = "user:alice",
    ) -> Delegation:
        """A fresh ``org -> alice -> holder`` delegation."""
        root = Delegation.issue(
            self.org,
            self.alice,
            scope or SCOPE,
            ttl=root_ttl,
            purpose=purpose,
            on_behalf_of=sponsor,
            max_depth=2,
            clock=self.clock,
        )
        return root.attenuate(self.alice, holder, scope or SCOPE, ttl=leaf_ttl, clock=self.clock)


def manual_world() -> World:
    """A world on a :class:`ManualClock` at :data:`START`."""
    return World(ManualClock(START))


def policy_doc(world: World, **overrides: Any) -> dict[str, Any]:
    """A policy trusting ``org:acme``, ``user:carol`` approving; top-level keys overridable."""
    doc: dict[str, Any] = {
        "version": 1,
        "trusted_roots": [{"id": "org:acme", "public_key": world.org.principal.public_jwk()}],
        "approvers": [
            {
                "id": "user:carol",
                "tools": ["*/*"],
                "min_assurance": "local",
                "public_key": world.carol.principal.public_jwk(),
            }
        ],
    }
    doc.update(overrides)
    return doc


def make_guard(
    world: World,
    *,
    store: Store | None = None,
    home: Path | None = None,
    approver: Channel | None = None,
    approval_mode: str | None = None,
    **policy: Any,
) -> Guard:
    """A guard over ``world`` (in memory unless ``store`` or ``home`` is given)."""
    from agentguard.store.memory import MemoryStore

    if store is None and home is None:
        store = MemoryStore()
    return Guard(
        policy_doc(world, **policy),
        home=home,
        store=store,
        clock=world.clock,
        approver=approver,
        approval_mode=approval_mode,
    )


def write_policy(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write ``doc`` as YAML to ``path``."""
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False), encoding="utf-8")
    return path


class Recorder:
    """A tool that remembers how it was called."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return "done"

    @property
    def ran(self) -> bool:
        """Whether the tool ran at all."""
        return bool(self.calls)


def run_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter of this venv; fail loudly on a non-zero exit."""
    proc = subprocess.run(
        [PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def audit_records(guard: Guard) -> list[dict[str, Any]]:
    """Every audit record of ``guard`` as dictionaries, oldest first."""
    import json

    return [json.loads(e.body) for e in guard.store.audit_entries()]
