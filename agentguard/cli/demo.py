"""``agentguard demo``: the core-only tour, in a temporary directory, in a few seconds.

Issue, attenuate, inspect, an allowed call, denied calls naming link and rule,
a revocation that kills the descendant, and the audit log verified. No network;
the keys live in memory and the state directory is deleted afterwards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from agentguard.cli._common import fail, out
from agentguard.cli.check import render_decision
from agentguard.cli.inspect import chain_tree, verify_here
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity

__all__ = ["demo_command"]


def _step(console: Console, title: str) -> None:
    console.print()
    console.rule(Text(title, style="bold"), align="left")


def _read_ticket(id: int) -> str:
    return f"ticket {id}: 'printer on fire' (open)"


def _attempt(
    console: Console,
    guard: Guard,
    chain: Delegation,
    holder: Identity,
    tool: str,
    args: dict[str, Any],
) -> None:
    """Run a guarded call of a toy tool and show what happened."""
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    console.print(Text(f"{holder.id} calls {tool}({shown})", style="cyan"))
    try:
        result = guard.call(chain, tool, args, _read_ticket, holder=holder)
    except DeniedError as exc:
        line = Text("  DENIED", style="bold red")
        line.append(f" ({exc.reason}): {exc.explanation}")
        console.print(line)
        return
    line = Text("  ALLOWED", style="bold green")
    line.append(f" -> {result}")
    console.print(line)


def demo_command() -> None:
    """A two-second tour of the core: delegation, per-call checks, revocation, audit."""
    console = out()
    with tempfile.TemporaryDirectory(prefix="agentguard-demo-") as tmp:
        org = Identity.generate("org:acme")
        alice = Identity.generate("user:alice")
        bot = Identity.generate("agent:support-bot")
        sub = Identity.generate("agent:ticket-reader")
        policy = {
            "trusted_roots": [{"id": org.id, "public_key": org.principal.public_jwk()}],
            "limits": {"max_root_ttl": "7d", "max_link_ttl": "24h", "max_chain_length": 5},
        }
        guard = Guard(policy, home=Path(tmp) / ".agentguard")
        try:
            console.print(
                Text("agentguard demo", style="bold")
                + Text(f"  (temporary state in {tmp}, removed at the end)", style="dim")
            )

            _step(console, "1. The organisation grants Alice support tools for her shift")
            to_alice = guard.issue(
                org,
                alice,
                [
                    "tickets/*",
                    {"tool": "billing/refund", "where": {"amount": {"<=": 100}}},
                ],
                ttl="8h",
                purpose="customer support shift",
                on_behalf_of=alice.id,
            )
            console.print(Text(f"{org.id} -> {alice.id}: tickets/*, billing/refund <= 100, 8h"))

            _step(console, "2. Alice attenuates to her agent, which attenuates to a sub-agent")
            to_bot = guard.attenuate(
                to_alice,
                alice,
                bot,
                ["tickets/*", {"tool": "billing/refund", "where": {"amount": {"<=": 50}}}],
                ttl="2h",
            )
            to_sub = guard.attenuate(to_bot, bot, sub, ["tickets/read"], ttl="30m")
            console.print(
                Text(
                    f"delegation string: {len(to_sub.serialize())} bytes, "
                    f"{len(to_sub)} signed links (fits an HTTP header)"
                )
            )

            _step(console, "3. Inspect the chain (verified offline against the trusted root)")
            console.print(chain_tree(to_sub, guard.clock.now(), verify_here(guard, to_sub)))

            _step(console, "4. An allowed call: every link admits it")
            _attempt(console, guard, to_sub, sub, "tickets/read", {"id": 42})

            _step(console, "5. Denied calls: the explanation names the link and the rule")
            _attempt(console, guard, to_sub, sub, "tickets/close", {"id": 42})
            _attempt(console, guard, to_bot, bot, "billing/refund", {"amount": 80})
            decision = guard.check(to_bot, "billing/refund", {"amount": 30}, holder=bot)
            console.print(Text("dry run of a smaller refund:", style="cyan"))
            console.print(render_decision(decision))

            _step(console, "6. Revoke the agent's link: the sub-agent's chain dies with it")
            guard.revoke("link", to_bot.leaf.link_id, reason="shift over")
            console.print(Text(f"revoked link {to_bot.leaf.link_id[:12]} ({alice.id} -> {bot.id})"))
            _attempt(console, guard, to_sub, sub, "tickets/read", {"id": 42})
            console.print(chain_tree(to_sub, guard.clock.now(), verify_here(guard, to_sub)))

            _step(console, "7. The audit log is hash-chained; verify it")
            problem = guard.audit.verify()
            records = len(guard.store.audit_entries())
            if problem is not None:
                fail(f"audit log is NOT intact: {problem}")
            console.print(Text(f"audit log intact: {records} records", style="bold green"))
        finally:
            guard.close()
    console.print()
    console.print(
        Text(
            "That was the core alone. For the full story (LangChain agent, MCP proxy, "
            "step-up approval, tracing) run 'make demo' or 'python examples/demo.py'.",
            style="bold",
        )
    )
