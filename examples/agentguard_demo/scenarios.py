"""The six scenarios of the story, each ending in one line of the summary."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import mcp_types as types
from agentguard_langchain import GuardedTool, guard_tools
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool
from mcp import Client
from rich.panel import Panel
from rich.text import Text

from agentguard import Delegation, DeniedError, ManualClock
from agentguard.guard import Guard
from agentguard.store.memory import MemoryStore

from .agents import (
    calls,
    collect_logs,
    deploy_release,
    mcp_tools,
    open_ticket,
    run_agent,
    search_articles,
    submit_events,
    tracer,
)
from .run import Run
from .world import GOOD_DIGEST, HOST, OTHER_DIGEST, PARTNER_SPONSOR


async def scenario_1(run: Run, chains: dict[str, Delegation]) -> list[BaseTool]:
    """The support agent in its unit and shift window; returns its guarded tools."""
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
    """A sub-agent's narrower delegation; its quarantine crosses the MCP proxy, waits for alice."""
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
    """The pipeline deploys the release digest its grant names, and no other."""
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
    """Revoking the partner programme's sponsor stops every chain made on its behalf."""
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
    """The grant inventory through the ``agentguard grants list`` command."""
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


def scenario_6(run: Run, chains: dict[str, Delegation], guard: Guard) -> None:
    """A payments agent under a signed daily budget is stopped at its total."""
    from agentguard.budgets import BudgetExhausted

    run.step("6. A payments agent is stopped at its daily total")
    c = run.cast
    run.say(f"{c.org.id} -> {c.payments.id}: billing/refund, budget: amount <= 500 per day (UTC)")

    def refund(customer: str, amount: int) -> str:
        return f"refunded {amount} to {customer}"

    paid: list[int] = []
    refused: BudgetExhausted | None = None
    with tracer.start_as_current_span("scenario 6: daily refund budget"):
        for customer, amount in (("c-1041", 200), ("c-2210", 250), ("c-0077", 80)):
            try:
                guard.call(
                    chains["payments"],
                    "billing/refund",
                    {"customer": customer, "amount": amount},
                    refund,
                    holder=c.payments,
                )
                paid.append(amount)
            except BudgetExhausted as exc:
                refused = exc
            run.show_new_decisions()
    run.outcome(
        6,
        paid == [200, 250] and refused is not None,
        "refunds of 200 and 250 paid; a third of 80 DENIED: the daily 500 is spent "
        "(budget_exhausted)",
    )


def cli(args: list[str]) -> None:
    """Run an ``agentguard`` command in this process (same code as the installed command)."""
    from agentguard.cli import app

    try:
        app(args, prog_name="agentguard", standalone_mode=False)
    except SystemExit as exc:  # the CLI exits with its documented codes
        if exc.code not in (0, None):
            raise
