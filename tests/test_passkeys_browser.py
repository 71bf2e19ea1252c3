"""Passkeys on the approval page, in real headless Chromium with a CDP virtual authenticator.

The page runs as ``agentguard approvals serve`` in its own process over the
policy ``agentguard init --approver user:alice`` writes (the ``served``
fixture of ``test_web_page.py``); the authenticator is Chromium's own
(``WebAuthn.addVirtualAuthenticator``: CTAP2, internal transport, user
verification on). Attacks with a captured assertion are made at the HTTP
level with the session of the browser that made it.

Without Chromium these tests skip loudly; under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from agentguard.errors import ApprovalRejected
from agentguard.passkeys import PasskeyEnrolments
from agentguard.testing import RecordingTool
from tests.test_web_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    CSRF,
    Served,
    _ask,
    _call,
    _chromium,
    cli,
    served,
)

from .cli.cli_support import CLI

__all__ = ["cli", "served"]  # fixtures from test_web_page, used here by name


def _browser_or_skip() -> None:
    """Skip loudly without Chromium or Playwright; in CI (``CI=true``) fail instead."""
    try:
        import playwright.sync_api  # noqa: F401 - only checks that Playwright is installed
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("passkey browser tests cannot run in CI: Playwright is not installed")
        pytest.skip("PASSKEY BROWSER TESTS SKIPPED: Playwright is not installed")
    if os.environ.get("CI") == "true" and not os.path.exists(CHROMIUM):
        pytest.fail(f"passkey browser tests cannot run in CI: {CHROMIUM} is missing")
    _chromium()


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def authenticator_page(browser: Any) -> Any:
    """A fresh page (own cookies) with its own virtual platform authenticator."""
    page = browser.new_context().new_page()
    page.set_default_timeout(15_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
            }
        },
    )
    return page


def origin(site: Served) -> str:
    """WebAuthn refuses IP addresses: the page is opened as localhost."""
    return f"http://localhost:{site.port}"


def enrol(cli: CLI, site: Served, page: Any, approver: str) -> None:
    """``approvals enroll`` prints a link; the page there makes the passkey."""
    from playwright.sync_api import expect

    link = cli.ok("approvals", "enroll", approver, "--url", origin(site)).stdout.strip()
    assert link.startswith(origin(site) + "/enroll#agp_")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    page.goto(link)
    expect(page.locator("#enrol-approver")).to_have_text(approver)
    assert "agp_" not in page.url  # taken out of the address bar too
    page.get_by_role("button", name="Create passkey").click()
    expect(page.locator("#enrol-status")).to_contain_text(f"Passkey enrolled for {approver}")
    token = link.rsplit("#", 1)[1]
    assert sent
    assert not [url for url in sent if token in url]  # never in a URL the server sees


def log_in(cli: CLI, site: Served, page: Any, approver: str) -> None:
    from playwright.sync_api import expect

    token = cli.ok("approvals", "token", "--for", approver).stdout.strip()
    page.goto(origin(site) + "/login")
    page.get_by_label("Approver token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#approver")).to_have_text(approver)


def policy_doc(cli: CLI) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((cli.root / "agentguard.yaml").read_text())
    return doc


def add_approver(cli: CLI, approver: str) -> None:
    path = cli.root / "agentguard.yaml"
    doc = policy_doc(cli)
    doc["approvers"].append({"id": approver, "tools": ["admin/*"], "min_assurance": "signed"})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_done_when_alice_approves_a_privileged_call_with_her_passkey_and_it_runs_once(
    served: tuple[CLI, Served],
) -> None:
    """Issue 17: on the policy `init --approver user:alice` writes, a privileged call whose
    chain (org:acme -> agent:bot) does not hold alice is approved on the page with a passkey
    in real Chromium and runs once; a passkey denial refuses the next one."""
    _browser_or_skip()
    from playwright.sync_api import expect

    cli, site = served
    with chromium() as browser:
        page = authenticator_page(browser)
        enrol(cli, site, page, "user:alice")
        entry = next(a for a in policy_doc(cli)["approvers"] if a["id"] == "user:alice")
        assert entry["passkey"]["rp_id"] == "localhost"
        assert entry["passkey"]["origin"] == origin(site)
        assert set(entry["passkey"]) == {"credential_id", "public_key", "rp_id", "origin"}

        request_id = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
        log_in(cli, site, page, "user:alice")
        section = page.locator(f'section[data-request-id="{request_id}"]')
        expect(section.locator(".rules")).to_contain_text("signed with your passkey")
        section.get_by_label("Note (optional)").first.fill("reset approved")
        section.get_by_role("button", name="Approve").first.click()
        expect(page.locator("div.flash.ok")).to_have_text(
            f"Approved {request_id} with your passkey."
        )

        tool = RecordingTool()
        assert _call(cli, "agent:bot", "bot.dlg", "admin/reset", tool) == "done"
        assert tool.calls == [{"target": "db1"}]
        shown = cli.ok("approvals", "show", request_id).stdout
        assert "receipt: passkey assertion by user:alice, verified (approve, assurance signed" in (
            shown
        )
        # Once: the same call asks again.
        again = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
        assert again != request_id
        assert tool.calls == [{"target": "db1"}]

        page.goto(origin(site) + "/")
        section = page.locator(f'section[data-request-id="{again}"]')
        section.get_by_label("Reason (sent back to the caller)").fill("not twice")
        section.get_by_role("button", name="Deny").click()
        expect(page.locator("div.flash.ok")).to_have_text(f"Denied {again} with your passkey.")
    with pytest.raises(ApprovalRejected, match="not twice"):
        _call(cli, "agent:bot", "bot.dlg", "admin/reset", RecordingTool())
    assert tool.calls == [{"target": "db1"}]


def test_an_enrolment_link_works_once_and_not_after_it_expired(
    served: tuple[CLI, Served],
) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect

    cli, site = served
    with chromium() as browser:
        page = authenticator_page(browser)
        link = cli.ok("approvals", "enroll", "user:alice", "--url", origin(site)).stdout.strip()
        page.goto(link)
        page.get_by_role("button", name="Create passkey").click()
        expect(page.locator("#enrol-status")).to_contain_text("Passkey enrolled")
        first = policy_doc(cli)["approvers"][0]["passkey"]

        # Reused: the page refuses the link, and so does its API.
        page.goto(origin(site) + "/")
        page.goto(link)
        expect(page.locator("#enrol-status")).to_contain_text("used already")
        expect(page.get_by_role("button", name="Create passkey")).to_be_disabled()
        token = link.rsplit("#", 1)[1]
        status, text = site.request(
            "POST", "/enroll/begin", {"token": token}, Origin=f"http://127.0.0.1:{site.port}"
        )
        assert status == 403
        assert "used already" in text

        # Expired (issued ten minutes ago, valid for one).
        old = PasskeyEnrolments.in_home(cli.home).issue("user:alice", ttl=60, now=time.time() - 600)
        page.goto(origin(site) + "/")
        page.goto(f"{origin(site)}/enroll#{old}")
        expect(page.locator("#enrol-status")).to_contain_text("expired")
        # The passkey enrolled first is still the one in the policy.
        assert policy_doc(cli)["approvers"][0]["passkey"] == first

    # Not an approver, or a relying party that is an IP address: refused up front.
    assert "not an approver" in cli("approvals", "enroll", "user:nobody").stderr
    assert "IP address" in cli("approvals", "serve", "--rp-id", "127.0.0.1").stderr


def test_an_enrolment_from_an_ip_address_origin_is_refused(served: tuple[CLI, Served]) -> None:
    """WebAuthn refuses IP addresses: the page says to open it on localhost."""
    _browser_or_skip()
    from playwright.sync_api import expect

    cli, site = served
    with chromium() as browser:
        page = authenticator_page(browser)
        link = cli.ok("approvals", "enroll", "user:alice", "--url", origin(site)).stdout.strip()
        page.goto(link.replace("localhost", "127.0.0.1"))
        page.get_by_role("button", name="Create passkey").click()
        expect(page.locator("#enrol-status")).to_contain_text("http://localhost:PORT")
    assert "passkey" not in policy_doc(cli)["approvers"][0]


class Captured:
    """The browser's session, and the assertion it sent (the request was stopped)."""

    def __init__(self, site: Served, page: Any) -> None:
        cookie = next(c for c in page.context.cookies() if c["name"] == "agentguard_session")
        self.site = site
        self.cookie = f"agentguard_session={cookie['value']}"
        match = CSRF.search(page.content())
        assert match is not None
        self.csrf = match.group(1)
        self.body: dict[str, str] = {}

    def post(self, path: str, **fields: str) -> tuple[int, dict[str, Any]]:
        self.site.cookie = self.cookie
        status, text = self.site.request(
            "POST", path, {"csrf": self.csrf, **fields}, Origin=f"http://127.0.0.1:{self.site.port}"
        )
        return status, json.loads(text)

    def begin(self, request_id: str, action: str, **fields: str) -> str:
        status, data = self.post(f"/requests/{request_id}/passkey/begin", action=action, **fields)
        assert status == 200, data
        return str(data["statement"])

    def finish(self, request_id: str, statement: str, credential: str) -> tuple[int, str]:
        status, data = self.post(
            f"/requests/{request_id}/passkey/finish", statement=statement, credential=credential
        )
        return status, str(data.get("error", data))


def capture(site: Served, page: Any, request_id: str, button: str = "Approve") -> Captured:
    """Click ``button`` on ``request_id``; the authenticator signs, the answer is held back."""
    seen = Captured(site, page)

    def hold(route: Any) -> None:
        seen.body = dict(urllib.parse.parse_qsl(route.request.post_data or ""))
        route.abort()

    page.route("**/passkey/finish", hold)
    page.locator(f'section[data-request-id="{request_id}"]').get_by_role(
        "button", name=button
    ).first.click()
    deadline = time.monotonic() + 15
    while not seen.body:  # bounded: Playwright delivers the route on this thread
        assert time.monotonic() < deadline, "the page sent no assertion"
        page.wait_for_timeout(50)
    page.unroute("**/passkey/finish")
    return seen


def test_a_captured_assertion_cannot_be_moved_rewrapped_replayed_or_used_by_another(
    served: tuple[CLI, Served],
) -> None:
    """One assertion signs one answer: as another decision, for other arguments (another
    request), again, or from a credential of another approver, it is refused."""
    _browser_or_skip()
    cli, site = served
    add_approver(cli, "user:bob")
    with chromium() as browser:
        alice, bob = authenticator_page(browser), authenticator_page(browser)
        enrol(cli, site, alice, "user:alice")
        enrol(cli, site, bob, "user:bob")
        first = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
        log_in(cli, site, alice, "user:alice")
        held = capture(site, alice, first)
        statement, credential = held.body["statement"], held.body["credential"]
        assert json.loads(credential)["type"] == "public-key"

        # Re-wrapped as a denial of the same request.
        deny = held.begin(first, "deny")
        status, why = held.finish(first, deny, credential)
        assert status == 400
        assert "does not verify" in why
        # Moved to other (edited) arguments of the same request.
        edit = held.begin(first, "edit", args=json.dumps({"target": "db2"}))
        status, why = held.finish(first, edit, credential)
        assert status == 400
        assert "does not verify" in why

        # Bob's credential signing alice's answer.
        log_in(cli, site, bob, "user:bob")
        bobs = capture(site, bob, first)
        other = held.begin(first, "approve")
        status, why = held.finish(first, other, bobs.body["credential"])
        assert status == 400
        assert "another credential" in why

        # The original, as it was signed: recorded once; the replay is refused.
        assert held.finish(first, statement, credential)[0] == 200
        status, why = held.finish(first, statement, credential)
        assert status == 400
        assert "unknown, used or expired" in why
        # A fresh statement for an answered request is refused at once.
        status, data = held.post(f"/requests/{first}/passkey/begin", action="approve")
        assert status == 400
        assert "not pending" in data["error"]

    tool = RecordingTool()
    assert _call(cli, "agent:bot", "bot.dlg", "admin/reset", tool) == "done"
    assert tool.calls == [{"target": "db1"}]


def test_an_assertion_for_one_request_does_not_answer_another(
    served: tuple[CLI, Served],
) -> None:
    """Other arguments are another request (another call digest): the assertion is refused."""
    _browser_or_skip()
    cli, site = served
    with chromium() as browser:
        page = authenticator_page(browser)
        enrol(cli, site, page, "user:alice")
        first = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
        second = _ask(cli, "agent:bot", "bot.dlg", "admin/drop")
        log_in(cli, site, page, "user:alice")
        held = capture(site, page, first)
        target = held.begin(second, "approve")
        status, why = held.finish(second, target, held.body["credential"])
        assert status == 400
        assert "does not verify" in why
        # And the statement of the first cannot be posted to the second's route.
        status, why = held.finish(second, held.body["statement"], held.body["credential"])
        assert status == 400
    rows = json.loads(cli.ok("approvals", "list", "--json").stdout)
    assert {r["id"]: r["status"] for r in rows} == {first: "pending", second: "pending"}


def test_a_revoked_approver_is_refused(served: tuple[CLI, Served]) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect

    cli, site = served
    with chromium() as browser:
        page = authenticator_page(browser)
        enrol(cli, site, page, "user:alice")
        request_id = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
        log_in(cli, site, page, "user:alice")
        held = Captured(site, page)
        cli.ok("revoke", "--principal", "user:alice", "--reason", "left")
        page.goto(origin(site) + "/")
        section = page.locator(f'section[data-request-id="{request_id}"]')
        expect(section.locator("form.approve")).to_have_count(0)
        expect(section.locator(".cannot").first).to_contain_text("user:alice is revoked")
        status, data = held.post(f"/requests/{request_id}/passkey/begin", action="approve")
        assert status == 400
        assert "revoked" in data["error"]
    assert re.search(r"pending", cli.ok("approvals", "show", request_id).stdout)


def test_an_enrolment_link_is_valid_ten_minutes_by_default(cli: CLI) -> None:
    """No browser needed: the link `approvals enroll` prints, and what the home keeps of it."""
    cli.ok("init", "--org", "org:acme", "--approver", "user:alice")
    before = time.time()
    link = cli.ok("approvals", "enroll", "user:alice").stdout.strip()
    assert link.startswith("http://localhost:8780/enroll#agp_")
    stored = json.loads((cli.home / "passkey-enrolments.json").read_text())["enrolments"]
    (entry,) = stored.values()
    assert entry["approver"] == "user:alice"
    assert before + 600 <= entry["expires"] <= time.time() + 600
    assert link.rsplit("/", 1)[1] not in json.dumps(stored)  # only its hash is kept
    assert cli("approvals", "enroll", "user:alice", "--ttl", "2d").exit_code == 2
