"""``agentguard approvals show``: every argument, folded values, ``--full``, who asserted what."""

from __future__ import annotations

import json
import re

from tests.display_support import EVIL, LONG, assert_shows_the_facts, shown_args

from .cli_support import CLI, grant


def test_show_lists_every_argument_and_full_shows_folded_values(scenario: CLI) -> None:
    """The 21st argument shows, names are escaped, ``--full`` prints the folded value whole,
    redacted fields stay redacted, and the sub-agent's own claims are marked."""
    grant(
        scenario,
        "--from", "agent:bot", "--to", "agent:sub", "--tool", "billing/refund", "--ttl", "1h",
        "--purpose", "pre-approved by security", "--on-behalf-of", "user:ceo",
        out="sub2.dlg", parent="bot.dlg",
    )  # fmt: skip
    args = {"amount": 40, **shown_args(), "password": "canary-" + "p" * 300}
    filed = scenario(
        "check", "sub2.dlg", "billing/refund", json.dumps(args), "--as", "agent:sub",
        "--request-approval",
    )  # fmt: skip
    assert filed.exit_code == 4, filed.stdout + filed.stderr
    match = re.search(r"approval request (apr_[A-Za-z0-9_-]+)", filed.stdout)
    assert match is not None
    request_id = match.group(1)

    shown = scenario.ok("approvals", "show", request_id).stdout
    full = scenario.ok("approvals", "show", request_id, "--full").stdout
    assert_shows_the_facts(shown, full)
    assert f"agentguard approvals show {request_id} --full" in shown
    assert LONG not in shown
    assert EVIL in full
    for text in (shown, full):
        assert "canary" not in text
        assert 'password = "[redacted]"' in text

    doc = json.loads(scenario.ok("approvals", "show", request_id, "--json").stdout)
    assert doc["args"]["script"] == LONG
    assert [link["issuer"] for link in doc["links"]] == [
        "org:acme",
        "user:alice",
        "agent:bot",
    ]
    assert doc["links"][2]["purpose"] == "pre-approved by security"
