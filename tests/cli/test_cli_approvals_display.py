"""``agentguard approvals show``: every argument, folded values, ``--full``, who asserted what."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from agentguard.cli.approvals import SERVE_PORT
from tests.display_support import EVIL, LONG, assert_shows_the_facts, shown_args

from .cli_support import CLI, add_approver, grant


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
    add_approver(scenario, "user:carol")  # someone who may answer it
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


_WITHOUT_WEB = """
import sys
sys.modules["starlette"] = None  # as if the 'web' extra were not installed
sys.modules["uvicorn"] = None
from agentguard.cli import main
sys.argv = ["agentguard", "approvals", "serve"]
main()
"""


def test_serve_without_the_web_extra_fails_before_announcing_a_url(cli: CLI) -> None:
    """Without the web extra: one error line naming the extra, and no URL printed as if serving."""
    cli.ok("init", "--org", "org:acme")
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_WEB], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "http://" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: the approval web page needs the 'web' extra: pip install 'agentguard[web]'"
    ]


def test_serve_default_port_is_not_the_mcp_proxy_example_port(cli: CLI) -> None:
    """The MCP README's --http examples use 8765; the approval page defaults to another port."""
    mcp_readme = (Path(__file__).resolve().parents[2] / "adapters/mcp/README.md").read_text()
    example_ports = set(re.findall(r"--http \S*?:(\d+)", mcp_readme))
    assert "8765" in example_ports
    shown = cli.ok("approvals", "serve", "--help").stdout
    assert f"[default: {SERVE_PORT}]" in " ".join(shown.split())
    assert str(SERVE_PORT) not in example_ports
