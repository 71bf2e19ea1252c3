"""The approval page as people and other websites meet it.

- Every request must name a host the page answers to, and every form post must
  come from the page itself (DNS rebinding, cross-site forms).
- The page offers only the answers the book would accept from whoever is
  logged in, and says what would count instead.
- ``agentguard approvals serve`` follows the policy file while it runs, and
  refuses every answer while the file does not load.
- The page's structure in real Chromium: the request first, the chain with who
  asserted what, labelled forms with real buttons, keyboard, a phone screen,
  no JavaScript. The same test writes the README's screenshots.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from agentguard.errors import ApprovalPending, ConfigError, StoreError
from agentguard.guard import Guard
from agentguard.keys import Keyring
from agentguard.policy import load_policy
from agentguard.store import Revocation
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from agentguard.web import ApproverTokens, _refusal, _split_host, create_app
from tests.display_support import shown_args, sub_agent

from .cli.cli_support import CLI, grant

BASE = "http://127.0.0.1:8780"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"]
#: What the browser test writes (into $AGENTGUARD_SCREENSHOTS when set: `make screenshots`).
SCREENSHOTS = (
    "approval-login.png",
    "approval-page.png",
    "approval-phone.png",
    "approval-deny-only.png",
)


# -- a page over a guard whose policy lives in a real file ----------------------------------------


@dataclass
class Desk:
    """A guard built from a policy file, the page over its book, and carol's login token."""

    world: World
    policy_file: Path
    guard: Guard
    tokens: ApproverTokens
    carol: str

    def write(self, approvers: list[dict[str, Any]], level: str = "authenticated") -> None:
        """Rewrite the policy file (the page picks it up at its next request)."""
        write_policy(self.world, self.policy_file, approvers, level)

    def ask(self, n: int, tool: RecordingTool | None = None) -> str:
        with pytest.raises(ApprovalPending) as pending:
            self.call(n, tool or RecordingTool())
        return pending.value.request_id

    def call(self, n: int, tool: RecordingTool) -> object:
        return self.guard.call(
            self.world.delegation, "tickets/comment", {"id": n}, tool, holder=self.world.bot
        )

    def client(self, **options: Any) -> TestClient:
        app = create_app(self.guard.approvals, self.tokens, policy_file=self.policy_file, **options)
        return TestClient(app, base_url=BASE, headers={"Origin": BASE})


def entry(principal: str, level: str = "authenticated") -> dict[str, Any]:
    return {"id": principal, "tools": ["*/*"], "min_assurance": level}


def write_policy(world: World, path: Path, approvers: list[dict[str, Any]], level: str) -> None:
    keyed = [{"public_key": world.identity(a["id"]).principal.public_jwk(), **a} for a in approvers]
    doc = world.policy(
        approvers=keyed,
        step_up=[{"tools": ["tickets/comment"], "min_assurance": level}],
        approval={"channel": "web"},
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


class RevocationsUnreadable(MemoryStore):
    """A store whose revocation list cannot be read once ``broken`` is set."""

    broken = False

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        if self.broken and principals:
            raise StoreError("revocations cannot be read (injected)")
        return super().find_revoked(link_ids, kids, principals)


def make_desk(
    tmp_path: Path,
    approvers: list[str],
    level: str = "authenticated",
    store: MemoryStore | None = None,
) -> Desk:
    """Carol holds a login token; ``approvers`` are the policy's approvers."""
    world = World()
    policy_file = tmp_path / "agentguard.yaml"
    write_policy(world, policy_file, [entry(a) for a in approvers], level)
    guard = Guard(
        load_policy(policy_file),
        store=store or MemoryStore(),
        clock=world.clock,
        approval_mode="raise",
    )
    tokens = ApproverTokens(tmp_path / "t.json")
    return Desk(world, policy_file, guard, tokens, tokens.issue("user:carol"))


def login(client: TestClient, token: str) -> str:
    match = CSRF.search(client.get("/login").text)
    assert match is not None
    client.post("/login", data={"csrf": match.group(1), "token": token})
    match = CSRF.search(client.get("/").text)
    assert match is not None
    return match.group(1)


def card(page: str, request_id: str) -> str:
    match = re.search(
        rf'<section class="req" id="req-{re.escape(request_id)}".*?</section>', page, re.S
    )
    assert match is not None, page
    return match.group(0)


# -- 1. Host allow-list and same-origin forms ------------------------------------------------


ROUTES = [
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("POST", "/requests/apr_x/approve"),
    ("GET", "/no-such-page"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "attacker.example:8780",
        "127.0.0.1.attacker.example",
        "localhost.",
        "localhost@attacker.example",
        "[::2]:8780",
        "",
    ],
)
def test_a_foreign_host_is_refused_on_every_route(
    tmp_path: Path, method: str, path: str, host: str
) -> None:
    """A DNS-rebinding page reaches the server with its own host name: refused, whatever route."""
    desk = make_desk(tmp_path, ["user:carol"])
    client = desk.client()
    response = client.request(method, path, headers={"Host": host, "Origin": f"http://{host}"})
    assert response.status_code == 403
    assert "does not answer to that host name" in response.text or "Host" in response.text
    assert "agentguard_session" not in response.headers.get("set-cookie", "")


def test_the_loopback_names_and_configured_hosts_are_served(tmp_path: Path) -> None:
    desk = make_desk(tmp_path, ["user:carol"])
    client = desk.client(allowed_hosts=["approvals.example.com", "10.0.0.7", "[fd00::1]"])
    for host in (
        "127.0.0.1:8780",
        "localhost",
        "LOCALHOST:1",
        "[::1]:8780",
        "approvals.example.com",
        "10.0.0.7:80",
        "[fd00::1]:8780",
    ):
        assert client.get("/login", headers={"Host": host}).status_code == 200, host
    for bad in ("", "a:b", "host:80", "a/b", " "):
        with pytest.raises(ConfigError, match="not a host name"):
            create_app(desk.guard.approvals, desk.tokens, allowed_hosts=[bad])


@pytest.mark.parametrize(
    ("bind", "extra", "answers", "refuses"),
    [
        ("192.168.1.5", [], "192.168.1.5:8780", "attacker.example"),
        ("0.0.0.0", [], "127.0.0.1:8780", "0.0.0.0:8780"),  # noqa: S104 - nothing binds
        ("::", ["approvals.example.com"], "approvals.example.com", "[::]:8780"),
    ],
)
def test_serve_answers_to_the_host_it_binds_and_the_allowed_names(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bind: str,
    extra: list[str],
    answers: str,
    refuses: str,
) -> None:
    import uvicorn

    from agentguard import web

    desk = make_desk(tmp_path, ["user:carol"])
    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: apps.append(app))  # nothing binds
    web.serve(desk.guard.approvals, desk.tokens, host=bind, allowed_hosts=extra)
    assert ("answering only to loopback names" in caplog.text) is (bind == "0.0.0.0")  # noqa: S104
    client = TestClient(apps[0], base_url=BASE)
    assert client.get("/login", headers={"Host": answers}).status_code == 200
    assert client.get("/login", headers={"Host": refuses}).status_code == 403


def test_a_foreign_origin_is_refused_even_with_a_valid_session_and_csrf_token(
    tmp_path: Path,
) -> None:
    desk = make_desk(tmp_path, ["user:carol"])
    request_id = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.carol)
    action = f"/requests/{request_id}/approve"
    for headers in (
        {"Origin": "http://attacker.example"},
        {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:8780@attacker.example"},
        {"Origin": "http://[::1"},
        {"Origin": ""},
        {"Origin": None, "Sec-Fetch-Site": "cross-site"},
        {"Origin": None, "Sec-Fetch-Site": "same-site"},
        {"Origin": None, "Referer": "http://attacker.example/"},
        {"Origin": None},  # cannot tell: no
    ):
        sent = {k: v for k, v in headers.items() if v is not None}
        request = client.build_request("POST", action, data={"csrf": csrf})
        for name, value in headers.items():
            if value is None:
                del request.headers[name]
            else:
                request.headers[name] = value
        response = client.send(request)
        assert response.status_code == 403, sent
        assert desk.guard.approvals.get(request_id).status == "pending"

    # The page's own form, however the browser says so, is recorded.
    ok = client.post(action, data={"csrf": csrf})
    assert "Approved" in ok.text
    assert desk.guard.approvals.get(request_id).status == "approved"
    for same in ({"Sec-Fetch-Site": "same-origin"}, {"Referer": BASE + "/"}):
        other = desk.ask(2 + len(same["Referer" if "Referer" in same else "Sec-Fetch-Site"]))
        request = client.build_request("POST", f"/requests/{other}/deny", data={"csrf": csrf})
        del request.headers["Origin"]
        request.headers.update(same)
        assert "Denied" in client.send(request, follow_redirects=True).text
        assert desk.guard.approvals.get(other).status == "rejected"


@settings(max_examples=300, deadline=None, database=None)
@given(
    host=st.one_of(st.text(max_size=40), st.sampled_from(["127.0.0.1", "[::1]:1", "localhost:"])),
    origin=st.one_of(st.none(), st.text(max_size=60), st.just(BASE)),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
)
def test_hostile_host_and_origin_headers_never_raise_and_never_let_a_stranger_in(
    host: str, origin: str | None, method: str
) -> None:
    hosts = frozenset({"localhost", "127.0.0.1", "::1"})
    headers = [(b"host", host.encode("utf-8", "replace"))]
    if origin is not None:
        headers.append((b"origin", origin.encode("utf-8", "replace")))
    why = _refusal(headers, hosts, method)
    split = _split_host(host.encode("utf-8", "replace").decode("latin-1"))
    if why is None:
        assert split is not None
        assert split[0] in hosts
        if method != "GET":
            assert origin is not None
            parsed = urllib.parse.urlsplit(origin)
            assert parsed.hostname == split[0]


def test_duplicate_or_missing_host_headers_are_refused() -> None:
    hosts = frozenset({"127.0.0.1"})
    assert _refusal([], hosts, "GET") is not None
    assert _refusal([(b"host", b"127.0.0.1"), (b"host", b"127.0.0.1")], hosts, "GET") is not None
    two_origins = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1"), (b"origin", b"x")]
    assert _refusal(two_origins, hosts, "POST") is not None
    assert _refusal(two_origins[:2], hosts, "POST") is None


# -- 2. Only answers that count ------------------------------------------------------------------


def test_below_the_requests_assurance_the_page_offers_deny_only_and_says_what_counts(
    tmp_path: Path,
) -> None:
    """A rule demanding ``signed``: the page (``authenticated``) offers no Approve, names the
    CLI, and a forged approval is still refused. Deny is offered and counts: a rejection only
    restricts, so it needs no more than the approver checks."""
    desk = make_desk(tmp_path, ["user:carol"], level="signed")
    request_id = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.carol)
    shown = card(client.get("/").text, request_id)
    assert 'class="approve"' not in shown
    assert 'class="edit"' not in shown
    assert '<button type="submit" class="primary"' not in shown
    assert '<button type="submit" class="danger">Deny</button>' in shown
    assert "would not count" in shown
    assert "&#x27;signed&#x27; is required" in shown
    assert f"agentguard approvals approve {request_id} --as ID" in shown
    forged = client.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text
    assert "Not recorded" in forged
    assert desk.guard.approvals.get(request_id).status == "pending"
    assert "Denied" in client.post(f"/requests/{request_id}/deny", data={"csrf": csrf}).text
    assert desk.guard.approvals.get(request_id).status == "rejected"


def test_a_person_in_the_chain_is_offered_deny_only(tmp_path: Path) -> None:
    """Alice sponsors the link that asked: she may not approve, but a rejection never grants."""
    desk = make_desk(tmp_path, ["user:carol", "user:alice"])
    request_id = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.tokens.issue("user:alice"))
    shown = card(client.get("/").text, request_id)
    assert 'class="approve"' not in shown
    assert 'class="edit"' not in shown
    assert '<button type="submit" class="danger">Deny</button>' in shown
    assert "An approval from you on this page would not count" in shown
    assert "may not approve it" in shown
    assert (
        "Not recorded" in client.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text
    )
    assert "Denied" in client.post(f"/requests/{request_id}/deny", data={"csrf": csrf}).text
    assert desk.guard.approvals.get(request_id).status == "rejected"


def test_an_approver_who_counts_gets_both_buttons_and_no_note(tmp_path: Path) -> None:
    desk = make_desk(tmp_path, ["user:carol"])
    request_id = desk.ask(1)
    client = desk.client()
    login(client, desk.carol)
    shown = card(client.get("/").text, request_id)
    assert '<button type="submit" class="primary">Approve</button>' in shown
    assert '<button type="submit" class="danger">Deny</button>' in shown
    assert 'class="edit"' in shown
    assert "would not count" not in shown


def test_a_page_that_cannot_tell_whether_an_answer_counts_offers_nothing(tmp_path: Path) -> None:
    """Fail closed: revocations unreadable, so neither button; the answer is not recorded."""
    store = RevocationsUnreadable()
    desk = make_desk(tmp_path, ["user:carol"], store=store)
    request_id = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.carol)
    store.broken = True
    shown = card(client.get("/").text, request_id)
    assert "<button" not in shown
    assert "cannot tell whether this answer would count (StoreError)" in shown
    assert (
        "Not recorded" in client.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text
    )
    store.broken = False
    assert desk.guard.approvals.get(request_id).status == "pending"


# -- 3. The policy file is followed while serving --------------------------------------------------


def test_an_approver_added_to_the_policy_file_answers_without_a_restart_and_one_removed_cannot(
    tmp_path: Path,
) -> None:
    desk = make_desk(tmp_path, ["user:dave"])
    first = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.carol)
    assert "not an approver in the policy" in card(client.get("/").text, first)

    desk.write([entry("user:dave"), entry("user:carol")])
    assert 'class="approve"' in card(client.get("/").text, first)
    assert "Approved" in client.post(f"/requests/{first}/approve", data={"csrf": csrf}).text
    answered = desk.guard.approvals.get(first)
    assert (answered.status, answered.approver) == ("approved", "user:carol")
    # (The call itself runs in a guard whose policy lists carol: the served test below.)

    second = desk.ask(2)
    desk.write([entry("user:dave")])
    assert 'class="approve"' not in card(client.get("/").text, second)
    refused = client.post(f"/requests/{second}/approve", data={"csrf": csrf}).text
    assert "Not recorded: user:carol is not an approver in the policy" in refused
    assert desk.guard.approvals.get(second).status == "pending"


@pytest.mark.parametrize(
    "breakage",
    [
        "version: 1\napprovers: [oops\n",
        "version: 2\n",
        "guard_id: service:other\n",
        "storage:\n  durability: full\n",
        None,
    ],
)
def test_a_policy_that_no_longer_loads_refuses_every_answer_until_fixed(
    tmp_path: Path, breakage: str | None
) -> None:
    desk = make_desk(tmp_path, ["user:carol"])
    request_id = desk.ask(1)
    client = desk.client()
    csrf = login(client, desk.carol)
    good = desk.policy_file.read_text()
    if breakage is None:
        desk.policy_file.unlink()
    elif breakage.startswith(("guard_id", "storage")):  # valid, but only a restart applies it
        desk.policy_file.write_text(good + breakage)
    else:
        desk.policy_file.write_text(breakage)
    page = client.get("/")
    assert page.status_code == 503
    assert "No answer is recorded until the policy loads again" in page.text
    assert '<button type="submit" class="primary"' not in page.text
    for action in ("approve", "deny"):
        refused = client.post(f"/requests/{request_id}/{action}", data={"csrf": csrf}).text
        assert "Not recorded" in refused
    assert desk.guard.approvals.get(request_id).status == "pending"

    desk.policy_file.write_text(good)
    assert client.get("/").status_code == 200
    assert "Approved" in client.post(f"/requests/{request_id}/approve", data={"csrf": csrf}).text


# -- the real command ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    port: int
    cookie: str = ""
    csrf: str = ""

    def request(
        self, method: str, path: str, body: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            sent = {"Host": f"127.0.0.1:{self.port}", **headers}
            if self.cookie:
                sent["Cookie"] = self.cookie
            data = None
            if body is not None:
                data = urllib.parse.urlencode(body)
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            for value in response.headers.get_all("set-cookie") or []:
                self.cookie = value.split(";", 1)[0]
            text = response.read().decode()
            status = response.status
            if status == 303 and method == "POST":
                return self.request("GET", response.headers["location"])
            return status, text
        finally:
            conn.close()

    def login(self, token: str) -> None:
        _, page = self.request("GET", "/login")
        match = CSRF.search(page)
        assert match is not None
        origin = f"http://127.0.0.1:{self.port}"
        self.request("POST", "/login", {"csrf": match.group(1), "token": token}, Origin=origin)
        _, page = self.request("GET", "/")
        match = CSRF.search(page)
        assert match is not None
        self.csrf = match.group(1)

    def post(self, path: str, **fields: str) -> str:
        origin = f"http://127.0.0.1:{self.port}"
        return self.request("POST", path, {"csrf": self.csrf, **fields}, Origin=origin)[1]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


@pytest.fixture
def served(cli: CLI) -> Iterator[tuple[CLI, Served]]:
    """``agentguard approvals serve`` as its own process over an ``init --approver`` setup."""
    cli.ok("init", "--org", "org:acme", "--approver", "user:alice")
    cli.ok("identity", "new", "user:alice")  # her key: a 'signed' answer can count
    cli.ok("identity", "new", "agent:bot")
    cli.ok("identity", "new", "agent:helper")
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "admin/*",
        "--approval", "admin/*", "--ttl", "1h", "--purpose", "maintenance",
        out="bot.dlg",
    )  # fmt: skip
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:helper", "--tool", "tickets/*",
        "--ttl", "1h", "--purpose", "triage",
        out="helper.dlg",
    )  # fmt: skip
    port = free_port()
    env = {**os.environ, "AGENTGUARD_HOME": str(cli.home)}
    command = str(Path(sys.executable).parent / "agentguard")
    process = subprocess.Popen(
        [command, "approvals", "serve", "--port", str(port), "--allow-host", "approvals.test"],
        cwd=cli.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        site = Served(port)
        deadline = time.monotonic() + 30
        while True:  # bounded: the process prints nothing when it listens
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if site.request("GET", "/login")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, "approvals serve did not start"
                time.sleep(0.05)
        site.cookie = ""
        yield cli, site
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


def _call(cli: CLI, agent: str, dlg: str, tool_name: str, tool: RecordingTool) -> object:
    guard = Guard(cli.root / "agentguard.yaml", home=cli.home, approval_mode="raise")
    try:
        holder = Keyring(cli.home / "keys").identity(agent)
        delegation = (cli.root / dlg).read_text().strip()
        return guard.call(delegation, tool_name, {"target": "db1"}, tool, holder=holder)
    finally:
        guard.close()


def _ask(cli: CLI, agent: str, dlg: str, tool_name: str) -> str:
    with pytest.raises(ApprovalPending) as pending:
        _call(cli, agent, dlg, tool_name, RecordingTool())
    return pending.value.request_id


def _edit_policy(cli: CLI, change: Any) -> None:
    path = cli.root / "agentguard.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_served_init_policy_page_offers_what_counts_and_follows_the_policy_file(
    served: tuple[CLI, Served],
) -> None:
    cli, site = served
    # DNS rebinding against the real server: its host name is refused before any route.
    assert site.request("GET", "/login", Host=f"attacker.example:{site.port}")[0] == 403
    assert (
        site.request("GET", "/login", Host=f"approvals.test:{site.port}")[0] == 200
    )  # --allow-host
    site.cookie = ""

    # The init policy: a grant's approval rule demands 'signed'; the page offers no Approve.
    privileged = _ask(cli, "agent:bot", "bot.dlg", "admin/reset")
    alice = cli.ok("approvals", "token", "--for", "user:alice").stdout.strip()
    site.login(alice)
    _, page = site.request("GET", "/")
    shown = card(page, privileged)
    assert 'class="primary"' not in shown
    assert f"agentguard approvals approve {privileged} --as ID" in shown
    assert "Not recorded" in site.post(f"/requests/{privileged}/approve")

    # A policy step-up at 'authenticated' for tickets/*: carol is added while the page runs.
    def step_up(doc: dict[str, Any]) -> None:
        doc["step_up"] = [{"tools": ["tickets/*"], "min_assurance": "authenticated"}]

    _edit_policy(cli, step_up)
    tool = RecordingTool()
    ticket = _ask(cli, "agent:helper", "helper.dlg", "tickets/close")
    carol = cli.ok("approvals", "token", "--for", "user:carol").stdout.strip()
    site.cookie = ""
    site.login(carol)
    _, page = site.request("GET", "/")
    assert "user:carol is not an approver in the policy" in card(page, ticket)

    def add_carol(doc: dict[str, Any]) -> None:
        doc["approvers"].append(
            {"id": "user:carol", "tools": ["tickets/*"], "min_assurance": "authenticated"}
        )

    _edit_policy(cli, add_carol)
    _, page = site.request("GET", "/")
    assert 'class="approve"' in card(page, ticket)
    assert f"Approved {ticket}." in site.post(f"/requests/{ticket}/approve")
    assert _call(cli, "agent:helper", "helper.dlg", "tickets/close", tool) == "done"
    assert tool.calls == [{"target": "db1"}]

    # Removed again: her next approval is refused by the running page.
    again = _ask(cli, "agent:helper", "helper.dlg", "tickets/close")

    def drop_carol(doc: dict[str, Any]) -> None:
        doc["approvers"] = [a for a in doc["approvers"] if a["id"] != "user:carol"]

    _edit_policy(cli, drop_carol)
    refused = site.post(f"/requests/{again}/approve")
    assert "Not recorded: user:carol is not an approver in the policy" in refused

    # A broken policy: answers are refused with a clear message, not served from the old one.
    path = cli.root / "agentguard.yaml"
    good = path.read_text()
    path.write_text(good + "\nnot_a_key: 1\n")
    status, page = site.request("GET", "/")
    assert status == 503
    assert "No answer is recorded until the policy loads again" in page
    assert "Not recorded" in site.post(f"/requests/{again}/deny")
    path.write_text(good)
    assert site.request("GET", "/")[0] == 200


# -- 4. The page in real Chromium --------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Desk, str]]:
    import uvicorn

    desk = make_desk(tmp_path, ["user:carol", "user:alice"])
    config = uvicorn.Config(
        create_app(desk.guard.approvals, desk.tokens, policy_file=desk.policy_file),
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
        yield desk, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _chromium() -> None:
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        pytest.skip(
            f"BROWSER TEST SKIPPED: {CHROMIUM} is missing; install Debian's chromium package "
            "(apt-get install -y chromium; .ci/run does) to run the web page end to end"
        )


def test_the_page_in_chromium_request_first_chain_buttons_keyboard_phone_no_script(
    live: tuple[Desk, str], tmp_path: Path
) -> None:
    """Structure, not pixels; also writes the README's screenshots (AGENTGUARD_SCREENSHOTS=DIR)."""
    _chromium()
    from playwright.sync_api import expect, sync_playwright

    desk, url = live
    sub, delegation = sub_agent(desk.world)
    args = {"ticket": 4711, "text": "Closing as duplicate of #4702", "api_key": "sk-live-123"}
    tool = RecordingTool()
    with pytest.raises(ApprovalPending) as pending:
        desk.guard.call(delegation, "tickets/comment", args, tool, holder=sub)
    first = pending.value.request_id
    with pytest.raises(ApprovalPending):
        desk.guard.call(delegation, "tickets/comment", shown_args(), RecordingTool(), holder=sub)
    shots = Path(os.environ.get("AGENTGUARD_SCREENSHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.set_default_timeout(10_000)
            page.goto(url + "/")
            # The login page says where access comes from, and its field is labelled.
            expect(page.locator("#where")).to_contain_text(
                "agentguard approvals token --for user:YOU"
            )
            token_box = page.get_by_label("Approver token")
            expect(token_box).to_be_focused()
            page.screenshot(path=str(shots / "approval-login.png"))
            token_box.fill(desk.carol)
            page.keyboard.press("Enter")
            expect(page.locator("#approver")).to_have_text("user:carol")

            section = page.locator(f'section[data-request-id="{first}"]')
            expect(section.locator("h2 .tool")).to_have_text("tickets/comment")
            # The request first: tool, arguments (redacted), deadline; then who asks.
            order = section.evaluate(
                """s => ['h2', '.deadline', '.agentguard-args', '.chain', '.claims', '.answers']
                    .map(q => s.querySelector(q)).map((el, i, all) => i === 0 ||
                    !!(all[i - 1].compareDocumentPosition(el)
                       & Node.DOCUMENT_POSITION_FOLLOWING))"""
            )
            assert order == [True] * 6
            expect(section.locator(".agentguard-args")).to_contain_text("Closing as duplicate")
            expect(section.locator(".agentguard-args")).not_to_contain_text("sk-live-123")
            chain = section.locator(".chain li code")
            expect(chain).to_have_text(["org:acme", "user:alice", "agent:bot", "agent:sub"])
            expect(section.locator(".claims")).to_contain_text("asserted by agent:bot (an agent)")
            countdown = section.locator("time.countdown")
            before = countdown.inner_text()
            expect(countdown).not_to_have_text(before)  # it counts down (script on)
            # Real buttons in forms, labelled fields, the primary one first.
            approve = section.locator("form.approve button[type=submit]")
            deny = section.locator("form.deny button[type=submit]")
            expect(approve).to_have_class("primary")
            expect(deny).to_have_class("danger")
            expect(section.get_by_label("Note (optional)").first).to_be_visible()
            expect(section.get_by_label("Reason (sent back to the caller)")).to_be_visible()
            page.screenshot(path=str(shots / "approval-page.png"))

            # Keyboard only: Tab from the note reaches Approve; Enter answers.
            section.get_by_label("Note (optional)").first.focus()
            page.keyboard.type("ok, duplicate confirmed")
            page.keyboard.press("Tab")
            expect(approve).to_be_focused()
            page.keyboard.press("Enter")
            expect(page.locator(".flash.ok")).to_have_text(f"Approved {first}.")

            # A phone: nothing wider than the screen.
            phone = browser.new_page(
                viewport={"width": 375, "height": 740}, storage_state=page.context.storage_state()
            )
            phone.goto(url + "/")
            expect(phone.locator("section.req")).to_have_count(1)
            assert phone.evaluate("document.documentElement.scrollWidth") <= 375
            phone.screenshot(path=str(shots / "approval-phone.png"))

            # Alice sponsors the chain: Deny only, and the page says why there is no Approve.
            alice_page = browser.new_page()
            alice_page.goto(url + "/login")
            alice_page.get_by_label("Approver token").fill(desk.tokens.issue("user:alice"))
            alice_page.get_by_role("button", name="Log in").click()
            only = alice_page.locator("section.req").first
            expect(only.locator("form.approve")).to_have_count(0)
            expect(only.locator("form.deny button")).to_have_text("Deny")
            expect(only.locator(".cannot")).to_contain_text("would not count")
            only.screenshot(path=str(shots / "approval-deny-only.png"))
        finally:
            browser.close()

        # Without JavaScript the page still answers.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(java_script_enabled=False)
            page = context.new_page()
            page.set_default_timeout(10_000)
            page.goto(url + "/login")
            page.get_by_label("Approver token").fill(desk.carol)
            page.get_by_role("button", name="Log in").click()
            section = page.locator("section.req")
            expect(section).to_have_count(1)
            expect(section.locator("time.countdown")).to_contain_text("m")
            section.get_by_label("Reason (sent back to the caller)").fill("not this one")
            section.get_by_role("button", name="Deny").click()
            expect(page.locator(".flash.ok")).to_contain_text("Denied")
        finally:
            browser.close()

    assert desk.guard.call(delegation, "tickets/comment", args, tool, holder=sub) == "done"
    assert tool.calls == [args]
    for name in SCREENSHOTS:
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
