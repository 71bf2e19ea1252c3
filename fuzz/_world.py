"""Shared set-up for the atheris harnesses: a real world, and the outcomes we accept.

Each harness seeds its corpus directory with real inputs, then lets libFuzzer
mutate them. The only acceptable outcomes are a result or a clean
:class:`~agentguard.errors.AgentGuardError`; anything else is a finding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.tokens import Rule
from agentguard.verify import Verifier

START = 1_800_000_000.0


class World:
    """org -> alice -> bot, with a verifier trusting org."""

    def __init__(self) -> None:
        self.clock = ManualClock(START)
        self.org = Identity.generate("org:acme")
        self.alice = Identity.generate("user:alice")
        self.bot = Identity.generate("agent:bot")
        scope: list[str | Rule | dict[str, Any]] = [
            "tickets/*",
            {"tool": "billing/refund", "where": {"amount": {"<=": 1000}}},
            {"tool": "fs/read", "where": [["within", ".path", "/data"]]},
        ]
        root = Delegation.issue(self.org, self.alice, scope, ttl="1d", clock=self.clock)
        self.delegation = root.attenuate(self.alice, self.bot, scope, ttl="1h", clock=self.clock)
        self.store = MemoryStore()
        self.verifier = Verifier(
            [self.org.principal], revocations=self.store, replay=self.store, clock=self.clock
        )


def seed(seeds: Iterable[bytes], argv: list[str] | None = None) -> None:
    """Write ``seeds`` into the first corpus directory on the command line, if it is empty."""
    for arg in (argv or sys.argv)[1:]:
        if arg.startswith("-"):
            continue
        corpus = Path(arg)
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for index, data in enumerate(seeds):
                (corpus / f"seed-{index}").write_bytes(data)
        return
