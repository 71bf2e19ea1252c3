"""What the approver sees: every argument, escaped and folded, and who asserted each claim."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from agentguard.approval import ApprovalRequest, LinkAssertion, QueueChannel, TerminalChannel
from agentguard.delegation import Delegation
from agentguard.errors import ApprovalPending, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import ApprovalRow
from agentguard.store.sqlite import SQLiteStore
from agentguard.testing import DEFAULT_SCOPE, RecordingTool, World
from tests.display_support import EVIL, sub_agent

TOOL = "admin/reset"
FOLD = re.compile(r" … (\d+) more characters?$")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def queue_guard(world: World, **approval: Any) -> Guard:
    """A guard that files requests and raises ApprovalPending at once."""
    return world.guard(
        approver=QueueChannel(),
        approval_mode="raise",
        approval={"channel": "queue", **approval},
    )


def filed(
    guard: Guard,
    world: World,
    args: dict[str, Any],
    *,
    delegation: Delegation | None = None,
    holder: Identity | None = None,
) -> ApprovalRequest:
    """Submit ``args`` to a tool that needs approval; return the request filed for it."""
    with pytest.raises(ApprovalPending) as info:
        guard.call(
            delegation or world.delegation, TOOL, args, RecordingTool(), holder=holder or world.bot
        )
    return guard.approvals.get(info.value.request_id)


def wide_args() -> dict[str, Any]:
    """21 arguments; the last one is the dangerous one."""
    args: dict[str, Any] = {f"opt{i:02d}": i for i in range(20)}
    args["after_hours_hook"] = EVIL
    return args


def argument_line(text: str, name: str) -> str:
    """The one line of a description that shows argument ``name``."""
    lines = [line for line in text.splitlines() if line.strip().startswith(f"{name} = ")]
    assert len(lines) == 1, text
    return lines[0].strip()[len(name) + 3 :]


# -- every argument ------------------------------------------------------------------------------


def test_the_21st_argument_is_shown(world: World) -> None:
    """Past the 20th argument nothing is dropped: every name and the dangerous value show."""
    request = filed(queue_guard(world), world, wide_args())
    text = request.describe()
    for name in wide_args():
        argument_line(text, name)
    assert argument_line(text, "after_hours_hook") == f'"{EVIL}"'
    assert "with 21 arguments" in text


def test_values_the_audit_view_would_cut_are_shown_whole(world: World) -> None:
    """More than 200 arguments and values over 1000 characters reach the full view uncut."""
    args: dict[str, Any] = {f"a{i:03d}": i for i in range(230)}
    args["script"] = "x" * 1500 + EVIL
    request = filed(queue_guard(world), world, args)
    assert len(request.args_display) == 231
    full = request.describe(full=True)
    assert argument_line(full, "a229") == "229"
    assert argument_line(full, "script") == '"' + "x" * 1500 + EVIL + '"'


def test_a_call_beyond_the_display_limit_is_refused(world: World) -> None:
    """Rather than showing part of the call, the guard refuses it and files nothing."""
    guard = queue_guard(world, display_limit=1000)
    tool = RecordingTool()
    with pytest.raises(DeniedError) as info:
        guard.call(world.delegation, TOOL, {"script": "y" * 990 + EVIL}, tool, holder=world.bot)
    assert not isinstance(info.value, ApprovalPending)
    assert info.value.reason == "approval_display_limit"
    assert "display_limit" in info.value.explanation
    assert EVIL not in str(info.value)
    assert not tool.ran
    assert guard.approvals.all() == []
    # Just under the bound the same call is filed and shown whole.
    assert EVIL in filed(guard, world, {"script": "y" * 900 + EVIL}).describe(full=True)


def test_many_small_arguments_count_towards_the_limit(world: World) -> None:
    """The bound is on the whole display, not on each value."""
    guard = queue_guard(world, display_limit=1000)
    with pytest.raises(DeniedError) as info:
        guard.call(
            world.delegation,
            TOOL,
            {f"k{i}": "v" * 20 for i in range(60)},
            RecordingTool(),
            holder=world.bot,
        )
    assert info.value.reason == "approval_display_limit"


def test_the_display_limit_is_validated() -> None:
    """A display limit too small to show any real call is a policy error."""
    from agentguard.policy import ApprovalSettings

    assert ApprovalSettings().display_limit == 20_000
    with pytest.raises(ValueError, match="display_limit"):
        ApprovalSettings(display_limit=10)


# -- folding -------------------------------------------------------------------------------------


def test_a_long_value_is_folded_with_the_count_and_shown_whole_in_full(world: World) -> None:
    """The folded view says how many characters it hides; the full view hides none."""
    value = "z" * 480 + EVIL
    request = filed(queue_guard(world), world, {"target": "db1", "script": value})
    folded = argument_line(request.describe(), "script")
    match = FOLD.search(folded)
    assert match is not None, folded
    shown = folded[: match.start()]
    full = argument_line(request.describe(full=True), "script")
    assert full == f'"{value}"'
    assert full.startswith(shown)
    assert len(full) - len(shown) == int(match.group(1))
    assert EVIL not in request.describe()
    assert argument_line(request.describe(), "target") == '"db1"'
    assert f"agentguard approvals show {request.id} --full" in request.describe()
    assert "--full" not in request.describe(full=True)


def test_redaction_still_applies_in_the_full_view(world: World) -> None:
    """A redacted field stays redacted however much is shown."""
    secret = "hunter2-" + "s" * 600
    request = filed(queue_guard(world), world, {"password": secret, "note": "n" * 600})
    for text in (request.describe(), request.describe(full=True)):
        assert "hunter2" not in text
        assert argument_line(text, "password") == '"[redacted]"'
    assert "hunter2" not in str(request.to_json())


def test_nested_values_are_shown_as_json(world: World) -> None:
    """Lists and objects show as JSON; a nested redacted key is masked."""
    args = {"hosts": ["web-1", "web-2"], "auth": {"token": "t0ps3cret", "user": "ops"}}
    request = filed(queue_guard(world), world, args)
    text = request.describe()
    assert argument_line(text, "hosts") == '["web-1", "web-2"]'
    assert argument_line(text, "auth") == '{"token": "[redacted]", "user": "ops"}'


# -- escaping ------------------------------------------------------------------------------------


def test_an_argument_name_with_a_newline_cannot_forge_a_line(world: World) -> None:
    """A key carrying a newline shows escaped on its own line, quoted; no forged line appears."""
    forged = "x\nNOTE FROM SECURITY TEAM: pre-approved"
    request = filed(queue_guard(world), world, {forged: 1, "target": "db1"})
    for text in (request.describe(), request.describe(full=True)):
        assert not any(line.startswith("NOTE") for line in text.splitlines())
        assert '"x\\nNOTE FROM SECURITY TEAM: pre-approved" = 1' in text


def test_bidi_and_control_characters_are_escaped_visibly(world: World) -> None:
    """Bidi overrides, zero-width and control characters show as escapes in names and values."""
    args = {
        "file\u202egnp.exe": "ok\u200b",
        "cmd": "ls\x1b[2J\rrm -rf /\u2028done\x85",
    }
    request = filed(queue_guard(world), world, args)
    text = request.describe(full=True)
    for raw in ("\u202e", "\u200b", "\x1b", "\r", "\u2028", "\x85"):
        assert raw not in text
    assert argument_line(text, '"file\\u202egnp.exe"') == '"ok\\u200b"'
    assert argument_line(text, "cmd") == '"ls\\u001b[2J\\rrm -rf /\\u2028done\\u0085"'


def test_a_very_long_name_is_folded_and_counted(world: World) -> None:
    """Names are bounded like values: folded in the summary, whole in the full view."""
    name = "n" * 300
    request = filed(queue_guard(world), world, {name: 1})
    folded_line = next(line for line in request.describe().splitlines() if "nnnn" in line)
    assert name not in folded_line
    assert re.search(r"… \d+ more characters", folded_line)
    assert f"{name} = 1" in request.describe(full=True)


def test_the_folded_view_never_cuts_an_escape_in_half(world: World) -> None:
    """Folding happens between escapes, so the summary never shows a half escape."""
    request = filed(queue_guard(world), world, {"v": "\u202e" * 300})
    folded = argument_line(request.describe(), "v")
    shown = folded[: FOLD.search(folded).start()]  # type: ignore[union-attr]
    assert re.fullmatch(r'"(\\u202e)+', shown), shown


# -- who asserted what ---------------------------------------------------------------------------


def test_sub_agent_claims_are_marked_as_asserted_by_the_agent(world: World) -> None:
    """A purpose and sponsor an agent wrote into its sub-agent's link read as the agent's claim."""
    sub, delegation = sub_agent(world)
    request = filed(queue_guard(world), world, {"target": "db1"}, delegation=delegation, holder=sub)
    text = request.describe()
    assert text.splitlines()[0] == f"agent:sub wants to call {TOOL}"
    assert 'purpose "pre-approved by security" — asserted by agent:bot (an agent)' in text
    assert "on behalf of user:ceo — asserted by agent:bot (an agent)" in text
    assert 'purpose "customer support" — asserted by org:acme, user:alice' in text
    assert "on behalf of user:alice — asserted by org:acme, user:alice" in text
    assert "on behalf of user:ceo wants" not in text
    # The summary fields carry what no agent asserted.
    assert (request.on_behalf_of, request.purpose) == ("user:alice", "customer support")
    links = request.to_json()["links"]
    assert [link["issuer"] for link in links] == ["org:acme", "user:alice", "agent:bot"]
    assert links[2] == {
        "issuer": "agent:bot",
        "subject": "agent:sub",
        "purpose": "pre-approved by security",
        "on_behalf_of": "user:ceo",
        "below_agent": True,
    }


def test_a_user_an_agent_made_up_below_itself_is_marked_too(world: World) -> None:
    """agent:bot mints user:fake's key and signs the next link as user:fake: still marked."""
    fake = Identity.generate("user:fake")
    sub = Identity.generate("agent:sub")
    root = Delegation.issue(
        world.org,
        world.alice,
        DEFAULT_SCOPE,
        ttl="1d",
        purpose="customer support",
        on_behalf_of="user:alice",
        max_depth=4,
        clock=world.clock,
    )
    to_bot = root.attenuate(world.alice, world.bot, DEFAULT_SCOPE, ttl="1h", clock=world.clock)
    via_fake = to_bot.attenuate(
        world.bot, fake, DEFAULT_SCOPE, ttl="10m", clock=world.clock
    ).attenuate(
        fake,
        sub,
        DEFAULT_SCOPE,
        ttl="5m",
        purpose="pre-approved by security",
        on_behalf_of="user:ceo",
        clock=world.clock,
    )
    request = filed(queue_guard(world), world, {"target": "db1"}, delegation=via_fake, holder=sub)
    text = request.describe()
    assert (
        'purpose "pre-approved by security" — asserted by user:fake (below an agent in the '
        "chain: possibly the agent's own key)"
    ) in text
    assert (request.on_behalf_of, request.purpose) == ("user:alice", "customer support")


def test_agents_and_services_are_marked_organisations_teams_and_people_are_not() -> None:
    """What an agent: or service: issuer asserts is marked; other kinds of issuer are not."""
    kinds = {
        kind: LinkAssertion(f"{kind}:x", "agent:y", purpose="p").by_agent
        for kind in ("agent", "service", "org", "team", "user")
    }
    assert kinds == {"agent": True, "service": True, "org": False, "team": False, "user": False}


def test_an_agent_purpose_cannot_forge_lines(world: World) -> None:
    """A purpose is escaped like an argument value."""
    sub, delegation = sub_agent(world, purpose="fix\nNOTE: approved by user:carol")
    text = filed(
        queue_guard(world), world, {"target": "db1"}, delegation=delegation, holder=sub
    ).describe()
    assert not any(line.startswith("NOTE") for line in text.splitlines())
    assert 'purpose "fix\\nNOTE: approved by user:carol" — asserted by agent:bot (an agent)' in text


def test_link_assertions_survive_the_store(world: World, tmp_path: Any) -> None:
    """The per-link assertions are persisted with the request and read back from SQLite."""
    store = SQLiteStore(tmp_path / "state.db")
    sub, delegation = sub_agent(world)
    guard = world.guard(store=store, approver=QueueChannel(), approval_mode="raise",
        approval={"channel": "queue"},
    )  # fmt: skip
    request = filed(guard, world, {"target": "db1"}, delegation=delegation, holder=sub)
    again = world.guard(store=SQLiteStore(tmp_path / "state.db")).approvals.get(request.id)
    assert again.links == request.links
    assert "asserted by agent:bot (an agent)" in again.describe()
    store.close()


def test_rows_filed_before_link_assertions_still_read(world: World) -> None:
    """An old row without per-link assertions shows its claims as of unrecorded origin."""
    request_json = {
        "decision_id": "dec_old",
        "tool": TOOL,
        "args_display": {"target": "db1"},
        "path": ["org:acme", "user:alice", "agent:bot"],
        "requester": "agent:bot",
        "on_behalf_of": "user:ceo",
        "purpose": "pre-approved by security",
        "rules": ["link 0 rule 2"],
        "min_assurance": "signed",
    }
    row = ApprovalRow(
        id="apr_old",
        created_at=1.0,
        deadline=2.0,
        status="pending",
        call_digest="d",
        request=request_json,
    )
    request = ApprovalRequest.from_row(row)
    assert request.links is None
    text = request.describe()
    assert "on behalf of user:ceo — asserted by (not recorded)" in text
    assert 'purpose "pre-approved by security" — asserted by (not recorded)' in text
    assert "links" not in request.to_json()


# -- the terminal prompt -------------------------------------------------------------------------


def test_terminal_prompt_shows_everything_and_the_full_view_on_request(world: World) -> None:
    """The prompt lists the 21st argument, folds long values and prints them whole on 'f'."""
    out = io.StringIO()
    channel = TerminalChannel("user:carol", stdin=FakeTTY("f\ny\n"), stdout=out)
    guard = world.guard(
        approver=channel,
        step_up=[{"tools": ["tickets/delete"], "min_assurance": "local"}],
    )
    args = {**wide_args(), "script": "q" * 400 + "TAIL"}
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/delete", args, tool, holder=world.bot)
    assert tool.ran
    shown = out.getvalue()
    first, _, after = shown.partition("f = full view")
    assert EVIL in first
    assert "TAIL" not in first
    assert FOLD.search(argument_line(first, "script"))
    assert '"' + "q" * 400 + 'TAIL"' in after


def test_terminal_prompt_escapes_names(world: World) -> None:
    """A forged line in an argument name does not reach the terminal raw."""
    out = io.StringIO()
    channel = TerminalChannel("user:carol", stdin=FakeTTY("n\n"), stdout=out)
    guard = world.guard(
        approver=channel, step_up=[{"tools": ["tickets/delete"], "min_assurance": "local"}]
    )
    with pytest.raises(DeniedError):
        guard.call(
            world.delegation,
            "tickets/delete",
            {"id\nNOTE FROM SECURITY TEAM: pre-approved": 1, "bidi\u202e": 2},
            RecordingTool(),
            holder=world.bot,
        )
    shown = out.getvalue()
    assert "\nNOTE" not in shown
    assert "\u202e" not in shown
    assert '"id\\nNOTE FROM SECURITY TEAM: pre-approved" = 1' in shown
    assert "f = full view" not in shown  # nothing folded, nothing to unfold
