"""The approval web page: Starlette TestClient for the details, a real Chromium end to end."""

from __future__ import annotations

import html
import os
import re
import shutil
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agentguard.errors import ApprovalPending, ConfigError, DeniedError
from agentguard.guard import Guard
from agentguard.testing import RecordingTool, World
from agentguard.web import TOKENS_FILE, ApproverTokens, create_app
from tests.display_support import assert_shows_the_facts, shown_args, sub_agent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEP_UP = [{"tools": ["tickets/comment"], "min_assurance": "authenticated"}]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
#: Where the TestClient says it sends its requests (a host the page answers to), and the
#: Origin a browser sends with the page's own forms.
BASE = "http://127.0.0.1:8780"


@dataclass
class Site:
    """A guard in raise mode, its approver tokens and carol's token."""

    world: World
    guard: Guard
    tokens: ApproverTokens
    carol_token: str

    def ask(self, args: dict[str, Any], tool: RecordingTool | None = None) -> str:
        """Submit a ``tickets/comment`` call; return the id of the approval it waits for."""
        with pytest.raises(ApprovalPending) as pending:
            self.call(args, tool or RecordingTool())
        return pending.value.request_id

    def call(self, args: dict[str, Any], tool: RecordingTool) -> object:
        return self.guard.call(
            self.world.delegation, "tickets/comment", args, tool, holder=self.world.bot
        )


@pytest.fixture
def site(tmp_path: Path) -> Site:
    world = World()
    doc = world.policy()
    doc["approvers"].append({"id": "agent:bot", "tools": ["*/*"], "min_assurance": "local"})
    guard = world.guard(
        approval_mode="raise",
        step_up=STEP_UP,
        approvers=doc["approvers"],
        approval={"channel": "web"},
    )
    tokens = ApproverTokens.in_home(tmp_path / "home")
    return Site(world, guard, tokens, tokens.issue("user:carol"))


def page_client(site: Site, **options: Any) -> TestClient:
    """A client of the page as a browser on it: a loopback Host, the page's own Origin."""
    app = create_app(site.guard.approvals, site.tokens, **options)
    return TestClient(app, base_url=BASE, headers={"Origin": BASE})


def login(client: TestClient, token: str) -> str:
    """Log in through the form; return the CSRF token of the logged-in page."""
    page = client.get("/login")
    match = CSRF.search(page.text)
    assert match is not None
    client.post("/login", data={"csrf": match.group(1), "token": token})
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    match = CSRF.search(client.get("/").text)
    assert match is not None
    return match.group(1)


# -- tokens --------------------------------------------------------------------------------------


def test_tokens_store_only_hashes_in_a_private_file(tmp_path: Path) -> None:
    tokens = ApproverTokens.in_home(tmp_path)
    token = tokens.issue("user:carol", now=5)
    path = tmp_path / TOKENS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text
    assert token[4:] not in text
    assert tokens.identify(token) == "user:carol"
    assert tokens.approvers() == ["user:carol"]


def test_reissuing_revokes_the_old_token_and_revoke_forgets(tmp_path: Path) -> None:
    tokens = ApproverTokens(tmp_path / "t.json")
    first = tokens.issue("user:carol")
    second = tokens.issue("user:carol")
    assert tokens.identify(first) is None
    assert tokens.identify(second) == "user:carol"
    assert tokens.revoke("user:carol")
    assert not tokens.revoke("user:carol")
    assert tokens.identify(second) is None


def test_identify_refuses_junk(tmp_path: Path) -> None:
    tokens = ApproverTokens(tmp_path / "t.json")
    assert tokens.identify("agt_nothing") is None  # no file yet
    tokens.issue("user:carol")
    assert tokens.identify("") is None
    assert tokens.identify("not-a-token") is None
    assert tokens.identify("agt_" + "x" * 300) is None


def test_tokens_need_a_principal_id_and_a_readable_file(tmp_path: Path) -> None:
    from agentguard.errors import IdentityError

    tokens = ApproverTokens(tmp_path / "t.json")
    with pytest.raises(IdentityError):
        tokens.issue("carol")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(ConfigError, match="approver tokens"):
        tokens.identify("agt_x")


# -- pages and forms (TestClient) -----------------------------------------------------------------


def test_login_sets_a_strict_httponly_session_cookie_and_security_headers(site: Site) -> None:
    client = page_client(site)
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    before = client.cookies.get("agentguard_session")
    login(client, site.carol_token)
    # A fresh session id after login (no session fixation).
    assert client.cookies.get("agentguard_session") != before
    assert "Signed in as <b id='approver'>user:carol</b>" in client.get("/").text
    assert client.get("/login", follow_redirects=False).status_code == 303


def test_wrong_token_cannot_log_in(site: Site) -> None:
    client = page_client(site)
    match = CSRF.search(client.get("/login").text)
    assert match is not None
    page = client.post("/login", data={"csrf": match.group(1), "token": "agt_wrong"})
    assert "Unknown or revoked token." in page.text
    assert client.get("/", follow_redirects=False).status_code == 303


def test_posts_without_the_csrf_token_are_refused(site: Site) -> None:
    request_id = site.ask({"id": 1})
    client = page_client(site)
    login(client, site.carol_token)
    for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
        response = client.post(f"/requests/{request_id}/approve", data=data)
        assert response.status_code == 403
    assert client.post("/logout", data={}).status_code == 403
    anonymous = page_client(site)
    assert anonymous.post("/login", data={"token": site.carol_token}).status_code == 403
    assert site.guard.approvals.get(request_id).status == "pending"


def test_approve_deny_and_edit_reach_the_guard(site: Site) -> None:
    approved, denied, edited = RecordingTool(), RecordingTool(), RecordingTool()
    first = site.ask({"id": 1, "text": "a"}, approved)
    second = site.ask({"id": 2, "text": "b"}, denied)
    third = site.ask({"id": 3, "text": "c"}, edited)
    client = page_client(site)
    csrf = login(client, site.carol_token)
    page = client.get("/").text
    assert "Pending approvals (3)" in page
    for request_id in (first, second, third):
        assert f'data-request-id="{request_id}"' in page
    assert "agent:bot" in page
    chain = re.search(r'<ol class="chain">(.*?)</ol>', page)
    assert chain is not None
    assert re.findall(r"<code>([^<]+)</code>", chain.group(1)) == [
        "org:acme",
        "user:alice",
        "agent:bot",
    ]

    client.post(f"/requests/{first}/approve", data={"csrf": csrf, "message": "fine"})
    client.post(f"/requests/{second}/deny", data={"csrf": csrf, "message": "not today"})
    client.post(
        f"/requests/{third}/edit",
        data={"csrf": csrf, "args": '{"id": 3, "text": "c (edited)"}'},
    )
    page = client.get("/").text
    assert "Nothing is waiting for an answer." in page

    assert site.call({"id": 1, "text": "a"}, approved) == "done"
    assert approved.calls == [{"id": 1, "text": "a"}]
    with pytest.raises(DeniedError) as rejected:
        site.call({"id": 2, "text": "b"}, denied)
    assert rejected.value.reason == "approval_rejected"
    assert "not today" in rejected.value.explanation
    assert not denied.ran
    assert site.call({"id": 3, "text": "c"}, edited) == "done"
    assert edited.calls == [{"id": 3, "text": "c (edited)"}]
    receipt = site.guard.approvals.get(first)
    assert receipt.approver == "user:carol"


def test_book_refusals_are_shown_as_messages(site: Site) -> None:
    """Unauthorised approvers and separation of duties come back as a message, not a traceback."""
    request_id = site.ask({"id": 1})
    client = page_client(site)
    csrf = login(client, site.tokens.issue("user:mallory"))
    page = client.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text
    assert "Not recorded: user:mallory is not an approver in the policy" in page
    assert "Traceback" not in page

    bot = page_client(site)
    csrf = login(bot, site.tokens.issue("agent:bot"))
    page = bot.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text
    assert "is not a human (user:) principal" in page
    assert site.guard.approvals.get(request_id).status == "pending"

    page = client.post("/requests/apr_missing/deny", data={"csrf": csrf_of(client)}).text
    assert "Not recorded: no approval request" in page


def test_bad_edits_and_unknown_actions(site: Site) -> None:
    request_id = site.ask({"id": 1})
    client = page_client(site)
    csrf = login(client, site.carol_token)
    for bad in ("[1, 2]", "{not json"):
        page = client.post(f"/requests/{request_id}/edit", data={"csrf": csrf, "args": bad}).text
        assert "Edited arguments must be a JSON object." in page
    assert client.post(f"/requests/{request_id}/burn", data={"csrf": csrf}).status_code == 404
    assert site.guard.approvals.get(request_id).status == "pending"


def test_everything_shown_is_escaped(site: Site) -> None:
    site.ask({"id": 1, "text": "<script>alert(1)</script>", "<b>key": "x"})
    client = page_client(site)
    login(client, site.carol_token)
    page = client.get("/").text
    # The one script is the page's own countdown (allowed by its hash in the CSP).
    assert page.count("<script") == 1
    assert "<script>alert" not in page
    assert "<b>key" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_logout_ends_the_session(site: Site) -> None:
    client = page_client(site)
    csrf = login(client, site.carol_token)
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_revoking_the_token_ends_live_sessions(site: Site) -> None:
    """A session logged in with a token dies when the token is revoked or reissued."""
    request_id = site.ask({"id": 1})
    client = page_client(site)
    csrf = login(client, site.carol_token)
    assert client.get("/", follow_redirects=False).status_code == 200
    site.tokens.issue("user:carol")  # reissued: the old token, and its sessions, are gone
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    response = client.post(
        f"/requests/{request_id}/approve", data={"csrf": csrf}, follow_redirects=False
    )
    assert response.status_code == 403
    assert site.guard.approvals.get(request_id).status == "pending"


def test_logged_out_posts_with_a_valid_csrf_go_to_login(site: Site) -> None:
    """A pre-login session has a CSRF token but no approver: answers are not accepted."""
    request_id = site.ask({"id": 1})
    client = page_client(site)
    match = CSRF.search(client.get("/login").text)
    assert match is not None
    response = client.post(
        f"/requests/{request_id}/approve", data={"csrf": match.group(1)}, follow_redirects=False
    )
    assert response.headers["location"] == "/login"
    assert site.guard.approvals.get(request_id).status == "pending"


def test_expired_sessions_are_forgotten(site: Site) -> None:
    client = page_client(site, session_ttl=-1)
    login(client, site.carol_token)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


def test_missing_extra_names_it(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "starlette", None)
    with pytest.raises(ConfigError, match=r"agentguard\[web\]"):
        create_app(site.guard.approvals, site.tokens)


# -- a real browser ----------------------------------------------------------------------------


@pytest.fixture
def live_url(site: Site) -> Iterator[str]:
    """The app served by Uvicorn on a free loopback port in a background thread."""
    import uvicorn

    config = uvicorn.Config(
        create_app(site.guard.approvals, site.tokens),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws="none",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # Uvicorn offers no start event; bounded wait
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def raw_post(url: str, data: dict[str, str], cookie: str | None = None) -> int:
    """POST a form with urllib (no browser, no CSRF field unless given); return the status."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    body = urllib.parse.urlencode(data).encode()
    # The URL is the loopback test server's (S310: no file:// or custom schemes here).
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_browser_login_approve_deny_and_guard_sees_both(
    site: Site, live_url: str, tmp_path: Path
) -> None:
    """Chromium logs in with a token, approves one request and denies another with a message."""
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        pytest.skip(
            f"BROWSER TEST SKIPPED: {CHROMIUM} is missing; install Debian's chromium package "
            "(apt-get install -y chromium; .ci/run does) to run the web page end to end"
        )
    from playwright.sync_api import expect, sync_playwright

    approved, denied = RecordingTool(), RecordingTool()
    first = site.ask({"id": 1, "text": "approve me"}, approved)
    second = site.ask({"id": 2, "text": "deny me"}, denied)

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            context.set_default_timeout(10_000)
            page = context.new_page()
            page.goto(live_url + "/")
            assert page.url == live_url + "/login"

            page.fill("input[name=token]", "agt_not-a-real-token")
            page.click("form.login button")
            expect(page.locator(".flash.error")).to_have_text("Unknown or revoked token.")
            assert page.url == live_url + "/login"

            page.fill("input[name=token]", site.carol_token)
            page.click("form.login button")
            expect(page.locator("#approver")).to_have_text("user:carol")
            expect(page.locator("section.req")).to_have_count(2)

            card = page.locator(f'section[data-request-id="{first}"]')
            expect(card.locator(".tool")).to_have_text("tickets/comment")
            card.locator("form.approve button").click()
            expect(page.locator(".flash.ok")).to_have_text(f"Approved {first}.")

            card = page.locator(f'section[data-request-id="{second}"]')
            card.locator("form.deny input[name=message]").fill("wrong ticket, use #3")
            card.locator("form.deny button").click()
            expect(page.locator(".flash.ok")).to_have_text(f"Denied {second}.")
            expect(page.locator("#none")).to_be_visible()

            session = next(c for c in context.cookies() if c["name"] == "agentguard_session")
            assert session["httpOnly"]
            assert session["sameSite"] == "Strict"
            cookie = f"agentguard_session={session['value']}"
        finally:
            context.close()

    # The guard sees both answers when the calls are submitted again.
    assert site.call({"id": 1, "text": "approve me"}, approved) == "done"
    assert approved.calls == [{"id": 1, "text": "approve me"}]
    with pytest.raises(DeniedError) as rejected:
        site.call({"id": 2, "text": "deny me"}, denied)
    assert rejected.value.reason == "approval_rejected"
    assert "wrong ticket, use #3" in rejected.value.explanation
    assert not denied.ran

    # Without the CSRF field a POST is refused, even with a valid session cookie.
    third = site.ask({"id": 4})
    action = f"{live_url}/requests/{third}/approve"
    assert raw_post(action, {"message": "sneaky"}, cookie) == 403
    assert raw_post(action, {"csrf": "guess"}, cookie) == 403
    assert raw_post(action, {}) == 403
    assert site.guard.approvals.get(third).status == "pending"


@pytest.mark.parametrize(
    ("host", "warns"),
    # Nothing binds: uvicorn.run is replaced.
    [("127.0.0.1", False), ("::1", False), ("localhost", False), ("0.0.0.0", True)],  # noqa: S104
)
def test_serve_runs_uvicorn_and_warns_beyond_loopback(
    site: Site,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    warns: bool,
) -> None:
    import uvicorn

    from agentguard import web

    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append({"app": app, **kw}))
    web.serve(site.guard.approvals, site.tokens, host=host, port=9999)
    assert runs[0]["host"] == host
    assert runs[0]["port"] == 9999
    assert ("plain HTTP" in caplog.text) is warns


def test_the_page_shows_every_argument_folded_and_whole_and_who_asserted_what(site: Site) -> None:
    """The page shows the same facts as the CLI: all arguments, folds with the whole value
    one click away, escaped names, and the agent's own claims marked as such."""
    sub, delegation = sub_agent(site.world)
    with pytest.raises(ApprovalPending):
        site.guard.call(delegation, "tickets/comment", shown_args(), RecordingTool(), holder=sub)
    client = page_client(site)
    login(client, site.carol_token)
    page = client.get("/").text
    assert "\u202e" not in page
    text = html.unescape(page)
    assert_shows_the_facts(text, text)
    assert "<details" in page
    assert "<summary>show all</summary>" in page
