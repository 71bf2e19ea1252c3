"""What the scenarios of one run share, and how they narrate on the console."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from agentguard.guard import Guard

from .rendering import decision_line
from .world import Cast


@dataclass
class ScenarioOutcome:
    """One line of the final summary."""

    scenario: int
    ok: bool
    text: str

    def line(self, style: str = "") -> Text:
        mark = Text("✔ " if self.ok else "✘ ", style="bold green" if self.ok else "bold red")
        return mark + Text(f"scenario {self.scenario}: {self.text}", style=style)


@dataclass
class Run:
    """What the scenarios share."""

    console: Console
    home: Path
    policy_file: Path
    cast: Cast
    guard: Guard
    interactive: bool
    seen: int = 0
    outcomes: list[ScenarioOutcome] = field(default_factory=list)

    def step(self, title: str) -> None:
        self.console.print()
        self.console.rule(Text(title, style="bold"), align="left")

    def say(self, text: str, style: str = "") -> None:
        self.console.print(Text(text, style=style))

    def decisions(self) -> list[tuple[int, dict[str, Any]]]:
        """Every decision record of the audit log, with its sequence number."""
        out = []
        for entry in self.guard.store.audit_entries():
            record = json.loads(entry.body)
            if record.get("type") == "decision":
                out.append((entry.seq, record))
        return out

    def show_new_decisions(self) -> list[dict[str, Any]]:
        """Print the decisions recorded since the last call (by any process) and return them."""
        fresh = [(seq, r) for seq, r in self.decisions() if seq > self.seen]
        for seq, record in fresh:
            self.console.print(decision_line(record))
            self.seen = seq
        return [r for _, r in fresh]

    def outcome(self, scenario: int, ok: bool, text: str) -> None:
        told = ScenarioOutcome(scenario, ok, text)
        self.outcomes.append(told)
        self.console.print(told.line(style="bold"))
