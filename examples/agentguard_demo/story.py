"""One run of the story: set the scene, play the five scenarios, show what happened, sum up."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
from agentguard_langchain import attenuate_for
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from agentguard import Delegation
from agentguard.audit import AuditProblem
from agentguard.guard import Guard
from agentguard.keys import Keyring

from .agents import edr_proxy
from .rendering import decisions_table, delegation_tree, explore, trace_tree
from .run import Run
from .scenarios import scenario_1, scenario_2, scenario_3, scenario_4, scenario_5, scenario_6
from .world import HOST, Cast, issue_grants, write_policy


async def story(console: Console, home: Path, *, interactive: bool, kept: bool) -> int:
    """Play the whole story with its state in ``home``; 0 when every scenario went as told."""
    started = time.monotonic()
    exporter = InMemorySpanExporter()
    from agentguard.telemetry import configure

    configure(
        exporter="none",
        service_name="agentguard-demo",
        span_processor=SimpleSpanProcessor(exporter),
    )

    keyring = Keyring(home / "keys")
    cast = Cast.create(keyring)
    policy_file = write_policy(home, cast)
    guard = Guard(policy_file, home=home, enforcement_point="langchain")
    pipeline = Guard(policy_file, home=home, enforcement_point="python")
    run = Run(console, home, policy_file, cast, guard, interactive)
    console.print(banner(home, kept=kept))
    try:
        chains = set_the_scene(run)
        await agent_scenarios(run, chains)
        scenario_3(run, chains, pipeline)
        scenario_4(run, chains, pipeline)
        scenario_5(run)
        scenario_6(run, chains, pipeline)
        problem = what_happened(run, exporter)
    finally:
        pipeline.close()
        guard.close()

    run.step("Summary")
    for item in run.outcomes:
        console.print(item.line())
    elapsed = time.monotonic() - started
    age = process_age()
    total = f" ({age:.1f} s with start-up and imports)" if age is not None else ""
    console.print(Text(f"demo finished in {elapsed:.1f} s{total}", style="bold"))
    explore(console, home if kept else None, policy_file.name)
    ok = problem is None and len(run.outcomes) == 6 and all(o.ok for o in run.outcomes)
    return 0 if ok else 1


def banner(home: Path, *, kept: bool) -> Panel:
    """The opening panel: what this is and where its state lives."""
    return Panel(
        Text.assemble(
            ("agentguard: delegated machine identity, end to end\n", "bold"),
            (
                f"state in {home} ({'kept' if kept else 'temporary, removed at the end'}); "
                "no API key, no network; agents are scripted LangChain agents",
                "dim",
            ),
        ),
        border_style="blue",
    )


def set_the_scene(run: Run) -> dict[str, Delegation]:
    """Issue every grant, delegate to the log collector, and show the delegation tree."""
    cast = run.cast
    chains = issue_grants(run.guard, cast)
    chains["collector"] = attenuate_for(
        chains["bot"],
        cast.bot,
        cast.collector,
        tools=[
            "logs/collect_logs",
            "edr/get_host_status",
            {"tool": "edr/quarantine_host", "approval": True},
        ],
        ttl="30m",
        purpose="collect evidence on " + HOST,
    )
    run.guard.record(chains["collector"])
    run.step("The delegation tree (signed links; each issuer signs the next)")
    run.console.print(delegation_tree(run.guard))
    return chains


async def agent_scenarios(run: Run, chains: dict[str, Delegation]) -> None:
    """Scenarios 1 and 2; the MCP proxy (and the server behind it) starts while 1 runs."""
    errlog_path = run.home / "proxy-stderr.log"
    with errlog_path.open("w") as errlog:
        ready: dict[str, Any] = {}
        connected = anyio.Event()
        finished = anyio.Event()

        async def hold_proxy() -> None:
            try:
                async with edr_proxy(run, chains["collector"], run.cast.collector, errlog) as pair:
                    ready["pair"] = pair
                    connected.set()
                    await finished.wait()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting scene, which reports it
                ready["error"] = exc
                connected.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold_proxy)
            try:
                bot_tools = await scenario_1(run, chains)
                with anyio.fail_after(30):
                    await connected.wait()
                if "error" in ready:
                    errlog.flush()
                    told = errlog_path.read_text()
                    raise RuntimeError(f"the MCP proxy did not start: {ready['error']}\n{told}")
                client, listed = ready["pair"]
                await scenario_2(run, chains, bot_tools, client, listed)
            finally:
                finished.set()


def what_happened(run: Run, exporter: InMemorySpanExporter) -> AuditProblem | None:
    """The tree, the decisions, the trace and the audit log after the scenarios.

    Returns what is wrong with the audit log, or ``None`` when it verifies.
    """
    console, guard = run.console, run.guard
    run.step("The delegation tree now")
    console.print(delegation_tree(guard))
    console.print()
    decisions = run.decisions()
    console.print(decisions_table(decisions))
    run.step("The trace: one chain across LangChain and the MCP proxy")
    run.say(
        "OpenTelemetry spans of this process (in-memory exporter). The MCP client carries the "
        "trace context to the proxy in _meta.traceparent; the proxy process exports no spans "
        "of its own here, so its decisions are joined from the audit log by trace/span id.",
        "dim",
    )
    console.print(trace_tree(exporter.get_finished_spans(), [r for _, r in decisions]))

    run.step("The audit log")
    problem = guard.audit.verify()
    records = len(guard.store.audit_entries())
    if problem is None:
        console.print(Text(f"audit verify: intact, {records} records", style="bold green"))
    else:
        console.print(Text(f"audit verify: BROKEN: {problem}", style="bold red"))
    return problem


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), else ``None``."""
    try:
        stat = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
