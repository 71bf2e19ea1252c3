"""The full agentguard story in one run: ``make demo`` (or ``python examples/demo.py``).

Five scenarios of delegated machine identity, on embedded defaults, in a
temporary directory (no API key, no network, no service to start):

1. an AI support agent acting for the incident-response team opens tickets and
   searches the knowledge base for its own business unit only, within its
   shift window; an out-of-unit ticket is denied, naming the link and rule;
2. it hands a log-collection sub-agent a narrower delegation; the sub-agent's
   attempt to quarantine a host crosses the MCP proxy to a real MCP server
   process and waits for step-up approval from user:alice through the queue;
3. a CI/CD pipeline deploys only the release digest its short-lived grant names;
4. the team sponsoring a partner integration is revoked, and every chain made
   on its behalf stops (the team never signed a link: naming it is enough);
5. the grant inventory shows an expired grant and a stale one.

The agents are LangChain ``create_agent`` agents driven by a scripted chat
model. The output ends with the delegation tree, the decisions, the trace
(OpenTelemetry spans in memory, joined with what the proxy process recorded)
and the audit log verified.

    python examples/demo.py [--interactive] [--keep DIR]

``--interactive`` lets the person at the terminal answer the approval as
user:alice; ``--keep DIR`` keeps the state in DIR and prints commands to explore it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import mcp_types as types
import yaml
from agentguard_langchain import GuardedTool, attenuate_for, guard_tools
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool
from langgraph.checkpoint.memory import InMemorySaver
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agentguard import Delegation, DeniedError, Identity, ManualClock
from agentguard.cli.grants import effective_status
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.store.memory import MemoryStore

HERE = Path(__file__).resolve().parent
EDR_SERVER = HERE / "servers" / "edr_server.py"

HOST = "web-17.emea"
#: The internal team on whose behalf the partner integration acts (scenario 4).
PARTNER_SPONSOR = "team:partnerships"
GOOD_DIGEST = "sha256:9f2c4e7a1b"
OTHER_DIGEST = "sha256:5d01b8c3e2"

tracer = trace.get_tracer("agentguard.demo")


# -- a scripted chat model ------------------------------------------------------------


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that plays a script; ``bind_tools`` makes it usable by create_agent."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self


def calls(*items: tuple[str, dict[str, Any]], prefix: str) -> AIMessage:
    """One model turn asking for several tool calls at once."""
    return AIMessage(
        content="",
        tool_calls=[
            {"name": name, "args": args, "id": f"{prefix}-{index}"}
            for index, (name, args) in enumerate(items, 1)
        ],
    )


# -- the tools (canned answers: nothing real happens) -------------------------------------


@tool
def search_articles(query: str, business_unit: str) -> str:
    """Search the knowledge base of one business unit."""
    return f"KB-311 'VPN concentrator failover' ({business_unit})"


@tool
def open_ticket(title: str, business_unit: str, severity: str) -> str:
    """Open an incident ticket in one business unit's queue."""
    return f"INC-{4100 + len(title) % 97} opened in {business_unit} ({severity})"


@tool
def collect_logs(host: str, since: str) -> str:
    """Collect a host's system and network logs."""
    return f"collected 18 412 log lines from {host} (last {since})"


def deploy_release(service: str, digest: str) -> str:
    """The pipeline's deploy step."""
    return f"{service} rolled out at {digest}"


def submit_events(source: str, count: int) -> str:
    """The partner event intake."""
    return f"accepted {count} events from {source}"


# -- state of one run -----------------------------------------------------------------------


@dataclass
class Cast:
    """Every identity in the story, created in the run's keyring."""

    org: Identity
    team: Identity
    bot: Identity
    collector: Identity
    alice: Identity
    ci: Identity
    partner: Identity
    partner_events: Identity
    enricher: Identity
    backup: Identity
    reporter: Identity

    @classmethod
    def create(cls, keyring: Keyring) -> Cast:
        return cls(
            org=keyring.create("org:acme"),
            team=keyring.create("team:incident-response"),
            bot=keyring.create("agent:support-bot"),
            collector=keyring.create("agent:log-collector"),
            alice=keyring.create("user:alice"),
            ci=keyring.create("service:ci-deployer"),
            partner=keyring.create("org:partner-co"),
            partner_events=keyring.create("service:partner-events"),
            enricher=keyring.create("agent:event-enricher"),
            backup=keyring.create("service:legacy-backup"),
            reporter=keyring.create("agent:quarterly-report"),
        )


@dataclass
class Outcome:
    """One line of the final summary."""

    scenario: int
    ok: bool
    text: str


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
    outcomes: list[Outcome] = field(default_factory=list)

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
        self.outcomes.append(Outcome(scenario, ok, text))
        mark = Text("✔ " if ok else "✘ ", style="bold green" if ok else "bold red")
        self.console.print(mark + Text(f"scenario {scenario}: {text}", style="bold"))


OUTCOME_STYLE = {"allow": "bold green", "deny": "bold red", "approval_required": "bold yellow"}


def holder_of(record: Mapping[str, Any]) -> str:
    """The holder a decision names; a chain refused before verification names none."""
    path = record.get("path") or []
    return str(path[-1]) if path else "(unverified chain)"


def decision_line(record: Mapping[str, Any]) -> Text:
    """One decision as the operator sees it: outcome, tool, holder, reason and explanation."""
    outcome = str(record["outcome"])
    label = {"allow": "ALLOWED", "deny": "DENIED", "approval_required": "NEEDS APPROVAL"}.get(
        outcome, outcome.upper()
    )
    where = record.get("enforcement_point", "?")
    holder = holder_of(record)
    line = Text("  ")
    line.append(f"{label:<14}", style=OUTCOME_STYLE.get(outcome, "bold"))
    line.append(f" {record['tool']}", style="cyan")
    line.append(f"  by {holder} via {where}", style="dim")
    if record.get("dry_run"):
        line.append("  (dry run)", style="dim")
    if outcome != "allow":
        line.append(f"\n                 {record['reason']}: {record['explanation']}")
    elif record.get("approval"):
        approval = record["approval"]
        line.append(
            f"\n                 approved by {approval['approver']} "
            f"({approval['channel']}, assurance {approval['assurance']})"
        )
    return line


# -- agents ---------------------------------------------------------------------------------


async def run_agent(
    run: Run,
    name: str,
    tools: Sequence[BaseTool],
    script: Iterable[BaseMessage],
    turns: list[str],
    between: Callable[[], None] | None = None,
) -> list[ToolMessage]:
    """Drive a create_agent agent, one human message per turn; return the tool results.

    ``between`` runs after every turn but the last (a human answering, say).
    """
    model = ScriptedChatModel(messages=iter(script))
    agent = create_agent(model, tools=list(tools), checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": name}}
    results: list[ToolMessage] = []
    for number, turn in enumerate(turns, 1):
        with tracer.start_as_current_span(
            f"invoke_agent {name}",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name},
        ):
            run.say(f'{name} <- "{turn}"', "italic")
            state = await agent.ainvoke({"messages": [HumanMessage(turn)]}, config)
        fresh = [m for m in state["messages"] if isinstance(m, ToolMessage)][len(results) :]
        results.extend(fresh)
        run.show_new_decisions()
        for message in fresh:
            style = "green" if message.status == "success" else "red"
            run.console.print(
                Text(f"    model sees {message.name}: ", style="dim")
                + Text(str(message.content), style=style)
            )
        run.say(f"{name}: {state['messages'][-1].content}", "italic")
        if between is not None and number < len(turns):
            between()
    return results


def mcp_tools(client: Client, listed: Sequence[types.Tool]) -> list[BaseTool]:
    """LangChain tools that call the MCP proxy (which is their enforcement point)."""

    def make(spec: types.Tool) -> BaseTool:
        async def call(**args: Any) -> str:
            with tracer.start_as_current_span(
                f"execute_tool edr/{spec.name}",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": spec.name},
            ):
                result = await client.call_tool(spec.name, args)
            text = " ".join(b.text for b in result.content if isinstance(b, types.TextContent))
            if result.is_error:
                raise ToolException(text)
            return text

        return StructuredTool(
            name=spec.name,
            description=spec.description or spec.name,
            args_schema=dict(spec.input_schema),
            coroutine=call,
            handle_tool_error=True,
        )

    return [make(spec) for spec in listed]


@asynccontextmanager
async def edr_proxy(
    run: Run, delegation: Delegation, holder: Identity, errlog: TextIO
) -> AsyncIterator[tuple[Client, list[types.Tool]]]:
    """``python -m agentguard_mcp proxy`` in front of the EDR server, both real processes."""
    path = run.home / "log-collector.delegation"
    path.write_text(delegation.serialize())
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "agentguard_mcp",
            "proxy",
            "--delegation",
            str(path),
            "--as",
            holder.id,
            "--namespace",
            "edr",
            "--home",
            str(run.home),
            "--policy",
            str(run.policy_file),
            "--trusted",
            "--",
            sys.executable,
            str(EDR_SERVER),
        ],
        cwd=str(run.home),
    )
    async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
        listed = (await client.list_tools()).tools
        yield client, listed


# -- the scenarios ------------------------------------------------------------------------------


def set_up(run: Run) -> dict[str, Delegation]:
    """Issue every grant of the story (the inventory records each link)."""
    c, guard = run.cast, run.guard
    now = guard.clock.now()
    chains: dict[str, Delegation] = {}
    chains["team"] = guard.issue(
        c.org,
        c.team,
        ["tickets/*", "kb/*", "logs/*", "edr/*"],
        ttl="7d",
        purpose="incident response",
        on_behalf_of=c.org.id,
    )
    emea = {"business_unit": "emea"}
    chains["bot"] = guard.attenuate(
        chains["team"],
        c.team,
        c.bot,
        [
            {"tool": "tickets/open_ticket", "where": emea},
            {"tool": "kb/search_articles", "where": emea},
            "logs/collect_logs",
            "edr/get_host_status",
            {"tool": "edr/quarantine_host", "approval": True},
        ],
        ttl="8h",
        purpose="EMEA support shift",
        on_behalf_of=c.team.id,
    )
    chains["ci"] = guard.issue(
        c.org,
        c.ci,
        [{"tool": "deploy/release", "where": {"digest": GOOD_DIGEST}}],
        ttl="10m",
        purpose="roll out checkout 2.4.1",
        on_behalf_of="team:platform",
    )
    chains["partner"] = guard.issue(
        c.org,
        c.partner,
        ["events/submit"],
        ttl="7d",
        purpose="partner event programme",
        on_behalf_of=PARTNER_SPONSOR,
    )
    chains["partner_events"] = guard.attenuate(
        chains["partner"], c.partner, c.partner_events, ["events/submit"], ttl="24h"
    )
    chains["enricher"] = guard.attenuate(
        chains["partner_events"], c.partner_events, c.enricher, ["events/submit"], ttl="1h"
    )
    # Two grants issued in the past: one that has expired, one nobody has used.
    expired = Delegation.issue(
        c.org,
        c.backup,
        ["backups/*"],
        ttl="1d",
        purpose="nightly backups (retired system)",
        on_behalf_of="team:platform",
        clock=ManualClock(now - 2 * 86400),
    )
    stale = Delegation.issue(
        c.org,
        c.reporter,
        ["kb/search_articles"],
        ttl="24h",
        purpose="quarterly report",
        on_behalf_of="team:finance",
        clock=ManualClock(now - 3 * 3600),
    )
    for delegation in (expired, stale):
        guard.record(delegation)
    return chains


async def scenario_1(run: Run, chains: dict[str, Delegation]) -> list[BaseTool]:
    run.step("1. A support agent acts for the incident-response team, in its unit and window")
    c = run.cast
    run.say(
        f"{c.org.id} -> {c.team.id} -> {c.bot.id}: tickets and KB only where "
        'business_unit == "emea", for an 8 h shift',
    )
    tools = [
        *guard_tools(
            [open_ticket],
            guard=run.guard,
            delegation=chains["bot"],
            holder=c.bot,
            namespace="tickets",
        ),
        *guard_tools(
            [search_articles],
            guard=run.guard,
            delegation=chains["bot"],
            holder=c.bot,
            namespace="kb",
        ),
    ]
    script: list[BaseMessage] = [
        calls(
            ("search_articles", {"query": "VPN outage", "business_unit": "emea"}),
            (
                "open_ticket",
                {"title": "VPN outage Frankfurt", "business_unit": "emea", "severity": "high"},
            ),
            (
                "open_ticket",
                {"title": "VPN outage Singapore", "business_unit": "apac", "severity": "high"},
            ),
            prefix="s1",
        ),
        AIMessage(content="Opened the EMEA ticket; the APAC one is not mine to open."),
    ]
    with tracer.start_as_current_span("scenario 1: support agent in its unit"):
        results = await run_agent(
            run,
            c.bot.id,
            tools,
            script,
            ["VPN is down in Frankfurt and Singapore, open tickets and find the runbook"],
        )
    statuses = [m.status for m in results]
    denied = [r for _, r in run.decisions() if r["tool"] == "tickets/open_ticket"]
    stopped = next((r for r in denied if r["outcome"] == "deny"), None)

    run.say("\nThe same call 9 hours later, after the shift window (dry run on a moved clock):")
    late = Guard(
        run.guard.policy,
        store=MemoryStore(),
        clock=ManualClock(run.guard.clock.now() + 9 * 3600),
    )
    try:
        after = late.check(
            chains["bot"],
            "kb/search_articles",
            {"query": "VPN outage", "business_unit": "emea"},
            holder=c.bot,
        )
    finally:
        late.close()
    run.console.print(
        Text("  DENIED        ", style="bold red")
        + Text("kb/search_articles", style="cyan")
        + Text(f"\n                 {after.reason}: {after.explanation}")
    )
    ok = (
        sorted(statuses) == ["error", "success", "success"]
        and stopped is not None
        and not after.allowed
    )
    where = f"link {stopped['link']} rule {stopped['rule']}" if stopped else "?"
    reason = stopped["reason"] if stopped else "?"
    run.outcome(
        1,
        ok,
        f"in-unit ticket and KB search allowed; out-of-unit ticket DENIED by {where} ({reason}); "
        f"outside the window DENIED ({after.reason})",
    )
    return tools


async def scenario_2(
    run: Run,
    chains: dict[str, Delegation],
    bot_tools: Sequence[BaseTool],
    client: Client,
    listed: Sequence[types.Tool],
) -> None:
    run.step("2. A narrower delegation for a sub-agent; quarantine needs a human (via MCP proxy)")
    c = run.cast
    collector_chain = chains["collector"]
    run.say(
        f"{c.bot.id} -> {c.collector.id}: collect_logs, get_host_status, quarantine_host "
        "(approval), 30 min",
    )
    guarded = {t.name: t for t in bot_tools if isinstance(t, GuardedTool)}
    own = guard_tools(
        [collect_logs],
        guard=run.guard,
        delegation=collector_chain,
        holder=c.collector,
        namespace="logs",
    )
    # The sub-agent also gets the ticket tool, rebound to its own delegation: it stays useless.
    tickets = guarded["open_ticket"].rebind(delegation=collector_chain, holder=c.collector)
    tools = [*own, tickets, *mcp_tools(client, listed)]
    quarantine = {"host": HOST, "reason": "beaconing to a known C2 address"}
    approved: list[bool] = []

    def script() -> Iterator[BaseMessage]:
        yield calls(
            ("collect_logs", {"host": HOST, "since": "1h"}),
            ("get_host_status", {"host": HOST}),
            ("quarantine_host", quarantine),
            (
                "open_ticket",
                {"title": "web-17 compromised", "business_unit": "emea", "severity": "critical"},
            ),
            prefix="s2a",
        )
        yield AIMessage(content="Logs collected; the quarantine waits for an approval.")
        yield calls(("quarantine_host", quarantine), prefix="s2b")
        yield AIMessage(
            content=f"{HOST} is quarantined."
            if approved and approved[0]
            else f"The approver said no: {HOST} stays online."
        )

    def answer() -> None:
        pending = [r for r in run.guard.approvals.pending() if r.tool == "edr/quarantine_host"]
        if pending:
            approved.append(decide(run, pending[0].id))

    with tracer.start_as_current_span("scenario 2: sub-agent and step-up over MCP"):
        results = await run_agent(
            run,
            c.collector.id,
            tools,
            script(),
            [f"Investigate {HOST} and contain it", "The approver has answered: go on"],
            between=answer,
        )
    by_name = {m.name: m.status for m in results[:4]}
    quarantined = len(results) == 5 and results[4].status == "success"
    ok = (
        by_name.get("collect_logs") == "success"
        and by_name.get("get_host_status") == "success"
        and by_name.get("quarantine_host") == "error"
        and by_name.get("open_ticket") == "error"
        and len(approved) == 1
        and quarantined == approved[0]
    )
    run.outcome(
        2,
        ok,
        "sub-agent collected logs; ticket outside its delegation DENIED; quarantine "
        + (
            "APPROVED by user:alice and run through the MCP proxy"
            if quarantined
            else "REFUSED by the approver"
        ),
    )


def decide(run: Run, request_id: str) -> bool:
    """The human side of the queue (``agentguard approvals approve|deny`` does the same)."""
    alice = run.cast.alice
    request = run.guard.approvals.get(request_id)
    run.console.print(
        Panel(
            Text(request.describe(run.guard.clock.now())),
            title=f"approval queue: {request_id}",
            border_style="yellow",
        )
    )
    if run.interactive:
        run.say(f"You are {alice.id}, the approver the policy lists for edr/*.", "bold")
        try:
            answer = run.console.input(Text("Approve this quarantine? [y/N] ")).strip().lower()
        except EOFError:
            answer = "n"
        approve = answer in ("y", "yes")
    else:
        run.say(
            f"[simulated] {alice.id} answers from her own session (a second identity held by "
            "this demo; run with --interactive to decide yourself)",
            "bold magenta",
        )
        approve = True
    if approve:
        run.guard.approvals.approve(request_id, alice, message="contain it")
        run.say(f"{alice.id} approved {request_id}, signed with her own key", "green")
    else:
        run.guard.approvals.deny(request_id, alice, message="not without a second look")
        run.say(f"{alice.id} denied {request_id}", "red")
    return approve


def scenario_3(run: Run, chains: dict[str, Delegation], guard: Guard) -> None:
    run.step("3. A CI/CD pipeline deploys only the release its 10-minute grant names")
    c = run.cast
    run.say(f'{c.org.id} -> {c.ci.id}: deploy/release where digest == "{GOOD_DIGEST}", 10 min')
    results = []
    with tracer.start_as_current_span("scenario 3: pinned release"):
        for digest in (GOOD_DIGEST, OTHER_DIGEST):
            try:
                guard.call(
                    chains["ci"],
                    "deploy/release",
                    {"service": "checkout", "digest": digest},
                    deploy_release,
                    holder=c.ci,
                )
                results.append(True)
            except DeniedError:
                results.append(False)
            run.show_new_decisions()
    run.outcome(
        3,
        results == [True, False],
        f"release {GOOD_DIGEST} deployed; release {OTHER_DIGEST} DENIED (predicate_failed)",
    )


def scenario_4(run: Run, chains: dict[str, Delegation], guard: Guard) -> None:
    run.step("4. The partner programme's sponsor is revoked: everything done for it stops")
    c = run.cast
    run.say(
        f"{c.org.id} -> {c.partner.id} (on behalf of {PARTNER_SPONSOR}) -> "
        f"{c.partner_events.id} -> {c.enricher.id}"
    )
    holders = [(chains["partner_events"], c.partner_events), (chains["enricher"], c.enricher)]

    def attempt() -> list[bool]:
        done = []
        for chain, holder in holders:
            try:
                guard.call(
                    chain,
                    "events/submit",
                    {"source": holder.id, "count": 12},
                    submit_events,
                    holder=holder,
                )
                done.append(True)
            except DeniedError:
                done.append(False)
        run.show_new_decisions()
        return done

    with tracer.start_as_current_span("scenario 4: revoke the sponsor"):
        before = attempt()
        (run.home / "partner-events.delegation").write_text(chains["partner_events"].serialize())
        guard.revoke("principal", PARTNER_SPONSOR, reason="partner programme ended")
        run.say(
            f"revoked principal {PARTNER_SPONSOR} (it signed nothing; it is named as the "
            "sponsor of the partner's link): programme ended",
            "bold",
        )
        after = attempt()
    run.outcome(
        4,
        before == [True, True] and after == [False, False],
        "partner-events and event-enricher submitted events; after revoking their sponsor "
        f"{PARTNER_SPONSOR} both are DENIED (revoked)",
    )


def scenario_5(run: Run) -> None:
    run.step("5. The grant inventory: an expired grant and a stale one")
    base = ["--home", str(run.home), "--policy", str(run.policy_file)]
    run.say("$ agentguard grants list --principal org:acme ...", "cyan")
    cli(["grants", "list", "--principal", "org:acme", *base])
    run.say("$ agentguard grants list --stale 1h ...", "cyan")
    cli(["grants", "list", "--stale", "1h", *base])
    now = run.guard.clock.now()
    records = {r.subject: r for r in run.guard.grants()}
    expired = records["service:legacy-backup"].status(now) == "expired"
    stale = records["agent:quarterly-report"]
    is_stale = stale.status(now) == "active" and stale.last_used is None
    run.outcome(
        5,
        expired and is_stale,
        "grants list shows service:legacy-backup expired and agent:quarterly-report "
        "stale (active, never used for 3 h)",
    )


def cli(args: list[str]) -> None:
    """Run an ``agentguard`` command in this process (same code as the installed command)."""
    from agentguard.cli import app

    try:
        app(args, prog_name="agentguard", standalone_mode=False)
    except SystemExit as exc:  # the CLI exits with its documented codes
        if exc.code not in (0, None):
            raise


# -- rendering --------------------------------------------------------------------------------


def delegation_tree(guard: Guard) -> Tree:
    """Every recorded grant as a tree from the trusted root, with status and rules.

    A revoked link (by id, key, issuer, subject or sponsor) and everything below it
    show ``[revoked]``.
    """
    now = guard.clock.now()
    records = guard.grants()
    children: dict[str | None, list[Any]] = {}
    for record in records:
        children.setdefault(record.parent, []).append(record)
    colour = {"active": "green", "expired": "dim", "revoked": "red", "pending": "yellow"}
    tree = Tree(Text("org:acme (trusted root)", style="bold"))

    def add(node: Tree, parent: str | None, parent_revoked: bool = False) -> None:
        for record in sorted(children.get(parent, []), key=lambda r: r.issued_at):
            status = "revoked" if parent_revoked else effective_status(guard, record, now)
            label = Text(record.subject, style="bold")
            label.append(f"  [{status}]", style=colour.get(status, ""))
            label.append(f"  link {record.link_id[:10]}", style="dim")
            if record.on_behalf_of:
                label.append(f"  for {record.on_behalf_of}", style="magenta")
            if record.purpose:
                label.append(f"  “{record.purpose}”", style="italic")
            branch = node.add(label)
            for rule in record.rules:
                branch.add(Text(rule, style="cyan"))
            add(branch, record.link_id, status == "revoked")

    add(tree, None)
    return tree


def decisions_table(run: Run) -> Table:
    """Every decision of the run, whichever process took it."""
    table = Table(
        title="Decisions (one audit log, written by this process and by the MCP proxy process)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("#", justify="right")
    table.add_column("point", no_wrap=True)
    table.add_column("holder", overflow="fold")
    table.add_column("tool", no_wrap=True)
    table.add_column("outcome / reason", overflow="fold", min_width=17)
    table.add_column("link/rule", no_wrap=True)
    table.add_column("decision", no_wrap=True, min_width=20)
    for seq, record in run.decisions():
        outcome = str(record["outcome"])
        where = "-"
        if record.get("link") is not None:
            where = f"link {record['link']}"
            if record.get("rule") is not None:
                where += f" rule {record['rule']}"
        elif record.get("approval_rules"):
            where = "step-up"
        verdict = Text(outcome, style=OUTCOME_STYLE.get(outcome, ""))
        if record["reason"] not in ("allowed", outcome):
            verdict.append(f"\n{record['reason']}", style="dim")
        table.add_row(
            str(seq),
            str(record.get("enforcement_point", "")),
            holder_of(record),
            str(record["tool"]),
            verdict,
            where,
            str(record["decision_id"]),
        )
    return table


SPAN_KEYS = (
    ("agentguard.enforcement.point", "at"),
    ("agentguard.decision.outcome", "outcome"),
    ("agentguard.decision.reason", "reason"),
    ("agentguard.approval.outcome", "approval"),
    ("agentguard.decision.id", "decision"),
)


def trace_tree(spans: Sequence[ReadableSpan], decisions: Sequence[dict[str, Any]]) -> Group:
    """Spans as trees by parent id; decisions the proxy process recorded hang off their span."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in by_id else None, []).append(span)
    remote: dict[str, list[dict[str, Any]]] = {}
    for record in decisions:
        if record.get("enforcement_point") == "mcp_proxy" and record.get("span_id"):
            remote.setdefault(str(record["span_id"]), []).append(record)

    def label(span: ReadableSpan) -> Text:
        attrs = span.attributes or {}
        text = Text(span.name, style="bold" if span.parent is None else "")
        keys = SPAN_KEYS[1:4] if span.name.startswith("agentguard.") else SPAN_KEYS
        extras = [short + "=" + str(attrs[key]) for key, short in keys if key in attrs]
        if extras:
            text.append("  " + " ".join(extras), style="dim")
        if span.status.status_code.name == "ERROR":
            text.append("  ERROR", style="red")
        return text

    def add(node: Tree, span: ReadableSpan) -> None:
        branch = node.add(label(span))
        for child in sorted(children.get(span.context.span_id, []), key=start):
            add(branch, child)
        for record in remote.get(trace.format_span_id(span.context.span_id), []):
            outcome = str(record["outcome"])
            text = Text("proxy process: ", style="magenta")
            text.append(f"agentguard decision {record['tool']} ")
            text.append(outcome, style=OUTCOME_STYLE.get(outcome, ""))
            text.append(f" reason={record['reason']} decision={record['decision_id']}", style="dim")
            text.append(f"  chain {' -> '.join(record.get('path', []))}", style="dim")
            branch.add(text)

    trees = []
    for root in sorted(children.get(None, []), key=start):
        if not root.name.startswith("scenario"):
            continue
        trace_id = trace.format_trace_id(root.context.trace_id)
        tree = Tree(Text(f"trace {trace_id[:16]}…", style="dim"))
        add(tree, root)
        trees.append(tree)
    return Group(*trees)


def start(span: ReadableSpan) -> int:
    return span.start_time or 0


# -- main ---------------------------------------------------------------------------------------


def write_policy(home: Path, cast: Cast) -> Path:
    """The organisation's policy: the trusted root, alice as approver, the approval queue."""
    policy = {
        "version": 1,
        "trusted_roots": [{"id": cast.org.id, "public_key": cast.org.principal.public_jwk()}],
        "approvers": [
            {
                "id": cast.alice.id,
                "tools": ["edr/*"],
                "min_assurance": "signed",
                "public_key": cast.alice.principal.public_jwk(),
            }
        ],
        "approval": {"channel": "queue", "mode": "raise", "timeout": "15m"},
        "limits": {"max_root_ttl": "7d", "max_link_ttl": "24h", "max_chain_length": 5},
    }
    path = home / "agentguard.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


@contextmanager
def state_dir(keep: Path | None) -> Iterator[Path]:
    """The run's state directory: ``keep`` when given (kept), else a temporary one (removed)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise SystemExit(f"--keep {keep}: the directory is not empty")
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="agentguard-demo-") as tmp:
        yield Path(tmp)


async def story(console: Console, home: Path, *, interactive: bool, kept: bool) -> int:
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
    console.print(
        Panel(
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
    )
    try:
        chains = set_up(run)
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
        guard.record(chains["collector"])
        run.step("The delegation tree (signed links; each issuer signs the next)")
        console.print(delegation_tree(guard))

        with (home / "proxy-stderr.log").open("w") as errlog:
            # Start the MCP proxy (and the server behind it) while scenario 1 runs.
            ready: dict[str, Any] = {}
            connected = anyio.Event()
            finished = anyio.Event()

            async def hold_proxy() -> None:
                try:
                    async with edr_proxy(run, chains["collector"], cast.collector, errlog) as pair:
                        ready["pair"] = pair
                        connected.set()
                        await finished.wait()
                except Exception as exc:
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
                        told = (home / "proxy-stderr.log").read_text()
                        raise RuntimeError(f"the MCP proxy did not start: {ready['error']}\n{told}")
                    client, listed = ready["pair"]
                    await scenario_2(run, chains, bot_tools, client, listed)
                finally:
                    finished.set()

        scenario_3(run, chains, pipeline)
        scenario_4(run, chains, pipeline)
        scenario_5(run)

        run.step("The delegation tree now")
        console.print(delegation_tree(guard))
        console.print()
        console.print(decisions_table(run))
        run.step("The trace: one chain across LangChain and the MCP proxy")
        run.say(
            "OpenTelemetry spans of this process (in-memory exporter). The MCP client carries the "
            "trace context to the proxy in _meta.traceparent; the proxy process exports no spans "
            "of its own here, so its decisions are joined from the audit log by trace/span id.",
            "dim",
        )
        console.print(trace_tree(exporter.get_finished_spans(), [r for _, r in run.decisions()]))

        run.step("The audit log")
        problem = guard.audit.verify()
        records = len(guard.store.audit_entries())
        if problem is None:
            console.print(Text(f"audit verify: intact, {records} records", style="bold green"))
        else:
            console.print(Text(f"audit verify: BROKEN: {problem}", style="bold red"))
    finally:
        pipeline.close()
        guard.close()

    run.step("Summary")
    for item in run.outcomes:
        mark = Text("✔ " if item.ok else "✘ ", style="bold green" if item.ok else "bold red")
        console.print(mark + Text(f"scenario {item.scenario}: {item.text}"))
    elapsed = time.monotonic() - started
    age = process_age()
    total = f" ({age:.1f} s with start-up and imports)" if age is not None else ""
    console.print(Text(f"demo finished in {elapsed:.1f} s{total}", style="bold"))
    explore(console, home if kept else None, policy_file.name)
    ok = problem is None and len(run.outcomes) == 5 and all(o.ok for o in run.outcomes)
    return 0 if ok else 1


def explore(console: Console, home: Path | None, policy_name: str) -> None:
    """The commands to look further, pointing at the kept state when there is one."""
    where = shlex.quote(str(home)) if home is not None else "DIR"
    opts = f"--home {where} --policy {where}/{policy_name}"
    lines = [
        (f"agentguard inspect {opts} {where}/log-collector.delegation", "the sub-agent's chain"),
        (f"agentguard inspect {opts} {where}/partner-events.delegation", "revoked: exit 3"),
        (f"agentguard grants list {opts} --stale 1h", "unused grants"),
        (f"agentguard audit tail {opts}", "the last records"),
        (f"agentguard audit verify {opts}", "the hash chain"),
        (f"agentguard approvals list --all {opts}", "alice's answer"),
    ]
    console.print()
    if home is None:
        console.print(
            Text(
                "Explore further: keep the state with '.venv/bin/python examples/demo.py "
                "--keep DIR', then:"
            )
        )
    else:
        console.print(Text(f"Explore further (state kept in {home}):"))
    for line, why in lines:
        text = Text("  " + line, style="cyan") + Text(f"  # {why}", style="dim")
        console.print(text, soft_wrap=True)


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), else ``None``."""
    try:
        stat = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--interactive", action="store_true", help="answer the approval yourself, as user:alice"
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the state in DIR")
    opts = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    with state_dir(opts.keep) as home:
        told = functools.partial(
            story, console, home, interactive=opts.interactive, kept=opts.keep is not None
        )
        code: int = anyio.run(told)
    return code


if __name__ == "__main__":
    sys.exit(main())
