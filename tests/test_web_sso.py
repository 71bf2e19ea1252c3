"""Single sign-on on the approval page, against a real OpenID Provider (``oidc-provider``).

- The policy's ``approval.sso`` names a ``federation:`` provider; bad settings are refused
  with a clear message.
- A person signs in through the authorization code flow with PKCE (the provider's scripted
  login, driven by an HTTP client following its redirects), is named by the provider's
  ``subject`` template, and approves a call at ``authenticated``; it then runs once.
- Attacks: wrong ``state``, a replayed callback and a replayed code, a missing or wrong
  ``nonce``, ID tokens for another client, expired, forged, with an unknown key, ``alg: none``
  or HS256, an access token passed off as an ID token, a person not in the approver list, a
  revoked approver, a hostile return URL.
- The whole sign-in in real headless Chromium.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import jwt
import pytest
import yaml
from anyio.from_thread import start_blocking_portal
from starlette.testclient import TestClient

from agentguard import web_sso
from agentguard.errors import ApprovalPending, ConfigError
from agentguard.guard import Guard
from agentguard.policy import load_policy
from agentguard.store.memory import MemoryStore
from agentguard.testing import RecordingTool, World
from agentguard.web import ApproverTokens, create_app
from agentguard.web_sso import (
    MAX_PRE_LOGINS,
    PRE_LOGIN_TTL,
    PRE_LOGINS_PER_CLIENT,
    SignOn,
    SignOnRefused,
    client_of,
    client_secret,
    validate_id_token,
)
from tests.oidc.harness import IdentityProvider, SigningKey, running_provider

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
BASE = "http://127.0.0.1:8780"
CALLBACK = f"{BASE}/login/sso/callback"
RESOURCE = "http://127.0.0.1:9/mcp"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
#: alice is the provider's default user (the scripted login signs her in without a hint).
USERS = {"alice": ["ops"], "bob": ["ops"]}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run"]


# -- a real provider for the module, and clients registered at it ---------------------------------


@dataclass
class Idp:
    provider: IdentityProvider
    public: str  # a public client (PKCE, no secret) redirecting to CALLBACK
    confidential: tuple[str, str]  # (client id, secret), client_secret_basic

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    def register(self, redirect: str, *, secret: bool = False) -> dict[str, Any]:
        """A client registered through the provider's dynamic registration endpoint."""
        reply = httpx2.post(
            f"{self.issuer}/reg",
            json={
                "redirect_uris": [redirect],
                "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            },
        )
        assert reply.status_code == 201, reply.text
        client: dict[str, Any] = reply.json()
        return client


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    workdir = tmp_path_factory.mktemp("oidc")
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_provider(workdir, RESOURCE, USERS)) as provider,
    ):
        found = Idp(provider, "", ("", ""))
        found.public = found.register(CALLBACK)["client_id"]
        confidential = found.register(CALLBACK, secret=True)
        found.confidential = (confidential["client_id"], confidential["client_secret"])
        yield found


# -- a page over a guard whose policy names the provider -------------------------------------------


def federation(issuer: str, subject: str = "user:{alias}.{sub}") -> list[dict[str, Any]]:
    return [
        {
            "issuer": issuer,
            "audience": RESOURCE,
            "alias": "corp",
            "subject": subject,
            "rules": [{"claim": "groups", "equals": "ops", "tools": ["tickets/*"]}],
        }
    ]


def sso_policy(
    world: World,
    issuer: str,
    sso: dict[str, Any],
    approvers: list[str],
    level: str = "authenticated",
    subject: str = "user:{alias}.{sub}",
) -> dict[str, Any]:
    return world.policy(
        approvers=[
            {"id": a, "tools": ["*/*"], "min_assurance": "authenticated"} for a in approvers
        ],
        step_up=[{"tools": ["tickets/comment"], "min_assurance": level}],
        approval={"channel": "web", "sso": sso},
        federation=federation(issuer, subject),
    )


@dataclass
class Desk:
    world: World
    policy_file: Path
    guard: Guard
    store: MemoryStore
    tokens: ApproverTokens

    def ask(self, n: int = 1) -> str:
        with pytest.raises(ApprovalPending) as pending:
            self.call(n, RecordingTool())
        return pending.value.request_id

    def call(self, n: int, tool: RecordingTool) -> object:
        return self.guard.call(
            self.world.delegation, "tickets/comment", {"id": n}, tool, holder=self.world.bot
        )

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        doc = yaml.safe_load(self.policy_file.read_text())
        change(doc)
        self.policy_file.write_text(yaml.safe_dump(doc, sort_keys=False))

    def client(self, base: str = BASE) -> TestClient:
        app = create_app(self.guard.approvals, self.tokens, policy_file=self.policy_file)
        return TestClient(app, base_url=base, headers={"Origin": base}, follow_redirects=False)


def make_desk(
    tmp_path: Path,
    idp: Idp,
    approvers: list[str],
    level: str = "authenticated",
    subject: str = "user:{alias}.{sub}",
    **sso: Any,
) -> Desk:
    world = World()
    settings = {
        "issuer": idp.issuer,
        "client_id": idp.public,
        "redirect_uri": CALLBACK,
        "label": "Corp SSO",
        **sso,
    }
    policy_file = tmp_path / "agentguard.yaml"
    doc = sso_policy(world, idp.issuer, settings, approvers, level, subject)
    policy_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    store = MemoryStore()
    guard = Guard(load_policy(policy_file), store=store, clock=world.clock, approval_mode="raise")
    return Desk(world, policy_file, guard, store, ApproverTokens(tmp_path / "t.json"))


def csrf_of(page: str) -> str:
    match = CSRF.search(page)
    assert match is not None, page
    return match.group(1)


def start(client: TestClient, **extra: str) -> str:
    """Press 'Sign in with ...': the provider's authorization URL the page sends the browser to."""
    token = csrf_of(client.get("/login").text)
    reply = client.post("/login/sso", data={"csrf": token, **extra})
    assert reply.status_code == 200, reply.text
    assert "location" not in reply.headers
    refresh = reply.headers["refresh"]
    assert refresh.startswith("0; url=")
    cookie = reply.headers["set-cookie"]
    assert "agentguard_sso=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/login/sso" in cookie
    assert "Max-Age=600" in cookie  # 10 minutes to sign in
    return refresh.removeprefix("0; url=")


def at_provider(url: str, user: str = "alice", callback: str = CALLBACK) -> str:
    """The person at the provider (scripted login, fresh browser): the callback URL it returns."""
    url += "&" + urllib.parse.urlencode({"login_hint": user})
    with httpx2.Client() as browser:
        for _ in range(10):
            reply = browser.get(url)
            assert reply.status_code in (302, 303), (reply.status_code, reply.text[:300])
            location = reply.headers["location"]
            url = location if location.startswith("http") else str(reply.url.join(location))
            if url.startswith(callback):
                return url
    raise AssertionError("the provider never sent the browser back")


def back(client: TestClient, callback: str) -> Any:
    """The browser arrives at the page's callback."""
    parts = urllib.parse.urlsplit(callback)
    return client.get(f"{parts.path}?{parts.query}")


def sign_in(client: TestClient, user: str = "alice") -> Any:
    return back(client, at_provider(start(client), user))


def signed_in_as(client: TestClient) -> str | None:
    page = client.get("/")
    if page.status_code == 303:
        return None
    match = re.search(r"<b id='approver'>([^<]+)</b>", page.text)
    assert match is not None, page.text
    return match.group(1)


def card(page: str, request_id: str) -> str:
    match = re.search(
        rf'<section class="req" id="req-{re.escape(request_id)}".*?</section>', page, re.S
    )
    assert match is not None, page
    return match.group(0)


def with_param(url: str, name: str, value: str | None) -> str:
    """``url`` with query parameter ``name`` replaced (``None``: removed)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != name]
    if value is not None:
        query.append((name, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


# -- 1. settings --------------------------------------------------------------------------------


ISSUER = "https://login.example.com"
GOOD = {
    "issuer": ISSUER,
    "client_id": "approvals",
    "redirect_uri": "https://approvals.example.com/login/sso/callback",
}


def _load(**change: Any) -> Any:
    return load_policy({"federation": federation(ISSUER), "approval": {"sso": {**GOOD, **change}}})


def test_settings_name_a_federation_provider_and_load() -> None:
    policy = _load(client_secret="${APPROVALS_SECRET}", scope="openid email", label="Corp")
    found = SignOn.settings(policy)
    assert found is not None
    config, provider = found
    assert config.client_secret == "${APPROVALS_SECRET}"
    assert provider.alias == "corp"
    assert provider.person_id({"sub": "a.b"}) == "user:corp.a+2Eb"  # the federation escaping
    assert SignOn.settings(load_policy({})) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"issuer": "https://other.example.com"},
            "approval.sso.issuer: 'https://other.example.com' is not the issuer of a federation",
        ),
        ({"client_secret": "s3cret-literal"}, "never the secret itself"),
        (
            {"client_secret": "${A}", "client_secret_file": "secret.txt"},
            "give client_secret or client_secret_file, not both",
        ),
        (
            {"redirect_uri": "http://approvals.example.com/login/sso/callback"},
            "must be https (http only on a loopback address)",
        ),
        (
            {"redirect_uri": "https://approvals.example.com/elsewhere"},
            "path must be /login/sso/callback",
        ),
        (
            {"redirect_uri": "https://approvals.example.com/login/sso/callback?next=/x"},
            "no query, fragment or user part",
        ),
        ({"redirect_uri": "https://h:99999/login/sso/callback"}, "not a URL"),
        ({"scope": "email profile"}, "include openid"),
        ({"scope": "openid  email"}, "include openid"),
        ({"client_id": "has space"}, "printable ASCII characters without spaces"),
        ({"label": ""}, "1-64 printable characters"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(
    change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(**change)


def test_the_secret_comes_from_the_environment_or_an_owner_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _load().approval.sso
    assert client_secret(config) is None  # a public client
    env = _load(client_secret="${SSO_TEST_SECRET}").approval.sso
    monkeypatch.delenv("SSO_TEST_SECRET", raising=False)
    with pytest.raises(SignOnRefused, match=r"\$\{SSO_TEST_SECRET\} is not set"):
        client_secret(env)
    monkeypatch.setenv("SSO_TEST_SECRET", "from-env")
    assert client_secret(env) == "from-env"

    path = tmp_path / "secret.txt"
    path.write_text("from-file\n")
    path.chmod(0o644)
    from_file = _load(client_secret_file="secret.txt").approval.sso
    with pytest.raises(SignOnRefused, match="only its owner may read"):
        client_secret(from_file, str(tmp_path))
    path.chmod(0o600)
    assert client_secret(from_file, str(tmp_path)) == "from-file"
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    with pytest.raises(SignOnRefused, match="no symbolic link"):
        client_secret(_load(client_secret_file=str(link)).approval.sso)
    path.write_text("\n")
    with pytest.raises(SignOnRefused, match="is empty"):
        client_secret(from_file, str(tmp_path))
    with pytest.raises(SignOnRefused, match="cannot read"):
        client_secret(_load(client_secret_file="missing.txt").approval.sso, str(tmp_path))


# -- 2. sign in and approve -----------------------------------------------------------------------


def test_the_login_page_offers_sign_in_next_to_the_token(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    page = desk.client().get("/login").text
    assert "Sign in with Corp SSO</button>" in page
    assert 'action="/login/sso"' in page or "action='/login/sso'" in page
    assert 'name="token"' in page  # per-approver tokens stay
    assert "names you <code>user:corp.&hellip;</code>" in page


@pytest.mark.parametrize("kind", ["public", "confidential"])
def test_a_signed_in_approver_approves_at_authenticated_and_the_call_runs_once(
    tmp_path: Path, idp: Idp, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Public client with PKCE, or confidential (secret from ${VAR}): the same person, one id."""
    if kind == "public":
        desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    else:
        monkeypatch.setenv("SSO_TEST_SECRET", idp.confidential[1])
        desk = make_desk(
            tmp_path,
            idp,
            ["user:corp.alice"],
            client_id=idp.confidential[0],
            client_secret="${SSO_TEST_SECRET}",
        )
    request_id = desk.ask()
    client = desk.client()
    url = start(client)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert url.startswith(f"{idp.issuer}/auth?")
    assert query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == CALLBACK
    assert {"state", "nonce", "code_challenge"} <= query.keys()

    arrived = back(client, at_provider(url))
    assert arrived.status_code == 200
    assert arrived.headers["refresh"] == "0; url=/"
    cookie = arrived.headers["set-cookie"]
    assert "agentguard_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert signed_in_as(client) == "user:corp.alice"

    page = client.get("/").text
    shown = card(page, request_id)
    assert 'class="approve"' in shown
    assert "<code>authenticated</code>" in shown
    answer = client.post(f"/requests/{request_id}/approve", data={"csrf": csrf_of(page)})
    assert answer.status_code == 303
    assert f"Approved {request_id}." in client.get("/").text
    answered = desk.guard.approvals.get(request_id)
    assert answered.approver == "user:corp.alice"

    tool = RecordingTool()
    assert desk.call(1, tool) == "done"
    assert tool.calls == [{"id": 1}]
    again = client.post(f"/requests/{request_id}/approve", data={"csrf": csrf_of(page)})
    assert again.status_code == 303
    assert "Not recorded" in client.get("/").text  # one answer per request


def test_token_login_still_works_beside_single_sign_on(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:carol"])
    token = desk.tokens.issue("user:carol")
    client = desk.client()
    client.post("/login", data={"csrf": csrf_of(client.get("/login").text), "token": token})
    assert signed_in_as(client) == "user:carol"


def test_a_session_ended_by_a_revoked_token_gets_the_login_form_not_a_redirect_loop(
    tmp_path: Path, idp: Idp
) -> None:
    """Found here: /login sent an ended session to /, which sent it back to /login."""
    desk = make_desk(tmp_path, idp, ["user:carol"])
    client = desk.client()
    token = desk.tokens.issue("user:carol")
    client.post("/login", data={"csrf": csrf_of(client.get("/login").text), "token": token})
    assert signed_in_as(client) == "user:carol"
    desk.tokens.revoke("user:carol")
    assert client.get("/").headers["location"] == "/login"
    page = client.get("/login")
    assert page.status_code == 200
    assert 'name="token"' in page.text


def test_changing_or_removing_the_sso_settings_ends_sso_sessions(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    sign_in(client)
    assert signed_in_as(client) == "user:corp.alice"
    desk.edit(lambda doc: doc["approval"]["sso"].update(label="Renamed"))
    assert signed_in_as(client) is None

    sign_in(client)
    assert signed_in_as(client) == "user:corp.alice"
    desk.edit(lambda doc: doc["approval"].pop("sso"))
    assert signed_in_as(client) is None
    assert "Sign in with" not in client.get("/login").text
    token = csrf_of(client.get("/login").text)
    assert client.post("/login/sso", data={"csrf": token}).headers["location"] == "/login"
    assert "Single sign-on is not configured." in client.get("/login").text


def test_over_https_the_pre_login_and_session_cookies_are_secure(tmp_path: Path, idp: Idp) -> None:
    site = "https://127.0.0.1:8780"
    client_id = idp.register(f"{site}/login/sso/callback")["client_id"]
    desk = make_desk(
        tmp_path,
        idp,
        ["user:corp.alice"],
        client_id=client_id,
        redirect_uri=f"{site}/login/sso/callback",
    )
    client = desk.client(site)
    token = csrf_of(client.get("/login").text)
    begun = client.post("/login/sso", data={"csrf": token})
    assert "; Secure" in begun.headers["set-cookie"]
    url = begun.headers["refresh"].removeprefix("0; url=")
    arrived = back(client, at_provider(url, callback=f"{site}/login/sso/callback"))
    assert arrived.status_code == 200
    session = [c for c in arrived.headers.get_list("set-cookie") if "agentguard_session=" in c]
    assert len(session) == 1
    assert "; Secure" in session[0]
    assert "HttpOnly" in session[0]
    assert signed_in_as(client) == "user:corp.alice"


def test_the_claim_the_subject_template_names_must_be_in_the_id_token(
    tmp_path: Path, idp: Idp
) -> None:
    """The provider's ID tokens carry sub, not email: a template on email names nobody."""
    desk = make_desk(tmp_path, idp, ["user:corp.alice"], subject="user:{alias}.{email}")
    client = desk.client()
    reply = sign_in(client)
    assert reply.status_code == 403
    assert "the token&#x27;s &#x27;email&#x27; claim is not a non-empty string" in reply.text
    assert signed_in_as(client) is None


def test_the_readme_example_validates_and_a_written_secret_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.cli.cli_support import CLI

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("#### Single sign-on on the approval page", 1)[1]
    example = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    cli = CLI(tmp_path)
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(example))
    cli.ok("policy", "validate", "ok.yaml")
    found = SignOn.settings(load_policy(tmp_path / "ok.yaml"))
    assert found is not None
    assert found[1].person_id({"sub": "alice"}) == "user:corp.alice"
    assert load_policy(tmp_path / "ok.yaml").approver("user:corp.alice") is not None
    example["approval"]["sso"]["client_secret"] = "hunter2-the-real-secret"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(example))
    result = cli("policy", "validate", "bad.yaml")
    assert result.exit_code != 0
    assert "never the secret itself" in result.stderr


def test_sign_in_needs_the_csrf_token_and_settings_that_still_exist(
    tmp_path: Path, idp: Idp
) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    client.get("/login")
    assert client.post("/login/sso", data={"csrf": "forged"}).status_code == 403
    callback = at_provider(start(client))
    desk.edit(lambda doc: doc["approval"].pop("sso"))  # removed while the person signs in
    reply = back(client, callback)
    assert reply.status_code == 403
    assert "single sign-on is not configured now" in reply.text
    assert signed_in_as(client) is None


# -- 3. attacks through the flow ----------------------------------------------------------------


def refused(reply: Any, text: str) -> None:
    assert reply.status_code == 403, reply.text
    assert "Sign-in refused" in reply.text
    assert text in reply.text
    assert "agentguard_session=" not in reply.headers.get("set-cookie", "")


def test_a_wrong_state_is_refused_and_uses_up_the_sign_in(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    callback = at_provider(start(client))
    refused(
        back(client, with_param(callback, "state", "forged")), "does not belong to this sign-in"
    )
    # The right state afterwards does not help: each sign-in is tried once.
    refused(back(client, callback), "no sign-in was started from this browser")
    assert signed_in_as(client) is None


def test_an_answer_from_another_browser_is_refused(tmp_path: Path, idp: Idp) -> None:
    """Login CSRF: a victim's browser given the attacker's callback has no pre-login for it."""
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    attacker, victim = desk.client(), desk.client()
    callback = at_provider(start(attacker), "bob")
    refused(back(victim, callback), "no sign-in was started from this browser")
    assert signed_in_as(victim) is None


def test_a_replayed_callback_and_a_replayed_code_are_refused(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    callback = at_provider(start(client))
    assert back(client, callback).status_code == 200
    refused(back(client, callback), "no sign-in was started from this browser")
    # Someone who saw the code starts a sign-in of their own and brings it back under that
    # sign-in's state: the provider refuses to redeem a code twice.
    other = desk.client()
    fresh = start(other)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(fresh).query))["state"]
    refused(back(other, with_param(callback, "state", state)), "the provider refused the code")
    assert signed_in_as(other) is None


@pytest.mark.parametrize("nonce", [None, "chosen-by-the-attacker"])
def test_a_missing_or_wrong_nonce_is_refused(tmp_path: Path, idp: Idp, nonce: str | None) -> None:
    """The authorization request altered on its way: the ID token's nonce is not this sign-in's."""
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    callback = at_provider(with_param(start(client), "nonce", nonce))
    refused(back(client, callback), "does not carry this sign-in&#x27;s nonce")
    assert signed_in_as(client) is None


def test_a_provider_error_and_a_foreign_iss_are_refused(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    url = start(client)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
    reply = client.get(
        "/login/sso/callback", params={"state": state, "error": "access_denied<script>"}
    )
    refused(reply, "the identity provider answered access_deniedscript")
    callback = at_provider(start(client))
    refused(
        back(client, with_param(callback, "iss", "https://evil.example")), "from another issuer"
    )
    callback = at_provider(start(client))
    refused(back(client, callback + "&code=second"), "repeats a parameter")


def test_a_hostile_return_url_never_leaves_the_page(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    client = desk.client()
    hostile = "https://evil.example/steal"
    url = start(client, next=hostile, redirect_uri=hostile, return_to=hostile)
    assert "evil" not in url  # the configured redirect URI, whatever the form says
    callback = at_provider(url)
    arrived = back(client, callback + "&" + urllib.parse.urlencode({"next": hostile}))
    assert arrived.status_code == 200
    assert arrived.headers["refresh"] == "0; url=/"
    assert "location" not in arrived.headers
    assert "evil" not in arrived.text
    # Sent to the provider with another redirect URI, the browser is not sent there.
    with httpx2.Client() as browser:
        reply = browser.get(with_param(start(desk.client()), "redirect_uri", hostile))
    assert reply.status_code == 400
    assert "evil" not in reply.headers.get("location", "")


def test_a_person_not_in_the_approver_list_signs_in_but_cannot_approve(
    tmp_path: Path, idp: Idp
) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    request_id = desk.ask()
    client = desk.client()
    sign_in(client, "bob")
    assert signed_in_as(client) == "user:corp.bob"
    page = client.get("/").text
    shown = card(page, request_id)
    assert "<button" not in shown
    assert "user:corp.bob is not an approver in the policy" in shown
    client.post(f"/requests/{request_id}/approve", data={"csrf": csrf_of(page)})
    assert "Not recorded: user:corp.bob is not an approver" in client.get("/").text
    assert desk.guard.approvals.get(request_id).status == "pending"


def test_a_revoked_approver_is_refused(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    request_id = desk.ask()
    client = desk.client()
    sign_in(client)
    page = client.get("/").text
    assert 'class="approve"' in card(page, request_id)
    desk.store.revoke("principal", "user:corp.alice", reason="left", at=desk.world.clock.now())
    assert "<button" not in card(client.get("/").text, request_id)
    client.post(f"/requests/{request_id}/approve", data={"csrf": csrf_of(page)})
    assert "Not recorded: user:corp.alice is revoked" in client.get("/").text
    assert desk.guard.approvals.get(request_id).status == "pending"


def test_on_a_signed_rule_the_page_says_the_cli_is_needed(tmp_path: Path, idp: Idp) -> None:
    desk = make_desk(tmp_path, idp, ["user:corp.alice"], level="signed")
    request_id = desk.ask()
    client = desk.client()
    sign_in(client)
    shown = card(client.get("/").text, request_id)
    assert 'class="approve"' not in shown  # a denial needs less and is still offered
    note = re.search(r'<p class="cannot" role="note">An approval (.*?)</p>', shown, re.S)
    assert note is not None, shown
    assert "&#x27;signed&#x27; is required" in note.group(1)
    assert f"agentguard approvals approve {request_id} --as ID" in note.group(1)


# -- 4. the ID token itself, against the provider's real key set ------------------------------


def _keys(idp: Idp) -> Callable[[str], Any]:
    sign_on = SignOn()
    return sign_on._provider_keys(idp.issuer).key


def _id_token(
    idp: Idp,
    claims: dict[str, Any] | None = None,
    *,
    key: Any = None,
    algorithm: str = "RS256",
    headers: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": idp.issuer,
        "sub": "alice",
        "aud": idp.public,
        "iat": now,
        "exp": now + 300,
        "nonce": "n-1",
    }
    body.update(claims or {})
    body = {k: v for k, v in body.items() if v is not None}
    signer = idp.provider.keys[0]
    header = {k: v for k, v in {"kid": signer.kid, **(headers or {})}.items() if v is not None}
    return jwt.encode(body, key or signer.private, algorithm=algorithm, headers=header)


def _check(idp: Idp, token: str) -> dict[str, Any]:
    return validate_id_token(
        token, issuer=idp.issuer, client_id=idp.public, nonce="n-1", key=_keys(idp)
    )


def _unsigned(header: dict[str, Any], body: dict[str, Any]) -> str:
    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(body)}."


def test_a_well_formed_id_token_signed_by_the_provider_validates(idp: Idp) -> None:
    assert _check(idp, _id_token(idp))["sub"] == "alice"
    two = _id_token(idp, {"aud": [idp.public, "another"], "azp": idp.public})
    assert _check(idp, two)["azp"] == idp.public


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda i: _id_token(i, {"aud": "another-client"}), "wrong_audience"),
        (lambda i: _id_token(i, {"aud": [i.public, "another"]}), "wrong_audience"),
        (lambda i: _id_token(i, {"azp": "another-client"}), "wrong_audience"),
        (lambda i: _id_token(i, {"exp": int(time.time()) - 3600}), "token_expired"),
        (lambda i: _id_token(i, {"iss": "https://evil.example"}), "wrong_issuer"),
        (lambda i: _id_token(i, {"nonce": "n-2"}), "wrong_nonce"),
        (lambda i: _id_token(i, {"nonce": None}), "wrong_nonce"),
        (lambda i: _id_token(i, {"sub": None}), "missing_claim"),
        (lambda i: _id_token(i, {"iat": None}), "missing_claim"),
        # Signed with a key of our own under the provider's key id: the signature fails.
        (lambda i: _id_token(i, key=SigningKey.generate().private), "bad_signature"),
        (
            lambda i: _id_token(
                i, key=(k := SigningKey.generate()).private, headers={"kid": k.kid}
            ),
            "unknown_key",
        ),
        (lambda i: _id_token(i, headers={"kid": None}), "unknown_key"),
        (
            lambda i: _unsigned(
                {"alg": "none", "kid": i.provider.keys[0].kid},
                {"iss": i.issuer, "sub": "alice", "aud": i.public, "nonce": "n-1"},
            ),
            "algorithm_not_allowed",
        ),
        (lambda i: _id_token(i, key=b"k" * 32, algorithm="HS256"), "algorithm_not_allowed"),
        (lambda i: _id_token(i, algorithm="PS256"), "algorithm_not_allowed"),  # key says RS256
        (lambda i: _id_token(i, headers={"typ": "at+jwt"}), "wrong_token_type"),
        (lambda i: "not.a.jwt", "malformed_token"),
        (lambda i: "x" * 20_000, "malformed_token"),
    ],
)
def test_a_hostile_id_token_is_refused(idp: Idp, make: Callable[[Idp], str], reason: str) -> None:
    token = make(idp)
    with pytest.raises(SignOnRefused) as caught:
        _check(idp, token)
    assert caught.value.reason == reason
    assert token[:40] not in str(caught.value)


def test_an_access_token_of_the_same_person_is_not_an_id_token(idp: Idp) -> None:
    with start_blocking_portal() as portal:
        access = portal.call(idp.provider.user_token, "alice")
    with pytest.raises(SignOnRefused) as caught:
        _check(idp, access)
    assert caught.value.reason == "wrong_token_type"


def test_a_made_up_key_id_refetches_the_key_set_at_most_once_per_interval(idp: Idp) -> None:
    fetched: list[str] = []

    def fetch(url: str, *args: Any) -> Any:
        fetched.append(url)
        with httpx2.Client() as http:
            reply = http.get(url)
        return reply.status_code, reply.json()

    keys = SignOn(fetch=fetch)._provider_keys(idp.issuer)
    assert keys.key(idp.provider.keys[0].kid)["kty"] == "RSA"
    for _ in range(5):
        with pytest.raises(SignOnRefused, match="not among the provider's"):
            keys.key("made-up-" + secrets.token_hex(4))
    assert len(fetched) == 2  # discovery, then the key set once: no refetch within the interval


def test_a_rotated_key_is_found_by_fetching_the_key_set_again(tmp_path: Path) -> None:
    """The provider restarts with a new signing key (the old one kept): both verify."""
    from agentguard.web_sso import _ProviderKeys

    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_provider(tmp_path, RESOURCE, USERS)) as provider,
    ):
        keys = _ProviderKeys(provider.issuer, refetch_interval=0.0)
        old = provider.keys[0]
        assert keys.key(old.kid)["n"] == old.jwk["n"]
        new = portal.call(lambda: provider.rotate(keep_old=True))
        assert keys.key(new.kid)["n"] == new.jwk["n"]
        assert keys.key(old.kid)["n"] == old.jwk["n"]


# -- a misbehaving provider: every answer it can give is met --------------------------------------


class _Answers(http.server.BaseHTTPRequestHandler):
    """Answers each path with what the test set in ``routes``: (status, body, headers)."""

    routes: ClassVar[dict[str, tuple[int, bytes, dict[str, str]]]] = {}

    def _answer(self) -> None:
        status, body, headers = self.routes.get(self.path.split("?")[0], (404, b"{}", {}))
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[tuple[str, dict[str, tuple[int, bytes, dict[str, str]]]]]:
    """A provider on loopback whose answers each test writes; yields (issuer, routes)."""
    routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
    handler = type("Answers", (_Answers,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuer = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield issuer, routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _discovery(issuer: str, **change: Any) -> bytes:
    doc = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/auth",
        "token_endpoint": f"{issuer}/token",
        "jwks_uri": f"{issuer}/jwks",
        **change,
    }
    return json.dumps(doc).encode()


def _config(issuer: str) -> Any:
    policy = load_policy(
        {
            "federation": federation(issuer),
            "approval": {"sso": {"issuer": issuer, "client_id": "c", "redirect_uri": CALLBACK}},
        }
    )
    return SignOn.settings(policy)


WELL_KNOWN = "/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("answer", "reason", "text"),
    [
        ((404, b"{}", {}), "idp_unavailable", "answered 404"),
        ((302, b"", {"Location": "https://evil.example/"}), "idp_unavailable", "answered 302"),
        ((200, b"<html>", {}), "idp_misconfigured", "is not a JSON object"),
        ((200, b"[1]", {}), "idp_misconfigured", "is not a JSON object"),
        ((200, b"[" * 100_000, {}), "idp_misconfigured", "is not a JSON object"),
        ((200, b" " * 600_000, {}), "idp_misconfigured", "answer is too large"),
        (
            (200, b'{"issuer": "https://other.example"}', {}),
            "idp_misconfigured",
            "names another issuer",
        ),
    ],
)
def test_a_discovery_document_that_cannot_be_used_stops_the_sign_in(
    hostile: tuple[str, dict[str, Any]], answer: Any, reason: str, text: str
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = answer
    found = _config(issuer)
    assert found is not None
    with pytest.raises(SignOnRefused, match=text) as caught:
        SignOn().begin(found[0])
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://evil.example/auth",
        "https://user@evil.example/auth",
        "https://login.example/auth#x",
        "https://login.example/auth\r\nSet-Cookie: x=1",
        "https://login.example/a b",
        "javascript:alert(1)",
        "https://login.example:99999/auth",
        "https:///auth",
        "http://10.0.0.1/auth",
        42,
    ],
)
def test_provider_endpoints_must_be_https_or_loopback_and_fit_in_a_header(
    hostile: tuple[str, dict[str, Any]], endpoint: object
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer, authorization_endpoint=endpoint), {})
    found = _config(issuer)
    assert found is not None
    with pytest.raises(SignOnRefused, match="is not an https URL") as caught:
        SignOn().begin(found[0])
    assert caught.value.reason == "idp_misconfigured"


@pytest.mark.parametrize(
    "url",
    ["https://user@login.example.com", "https://login.example.com/#x", "http://10.0.0.1"],
)
def test_the_mcp_proxy_refuses_the_same_provider_urls(url: str) -> None:
    """One rule for provider URLs (agentguard.oidc), in the proxy's token validation too."""
    from agentguard_mcp.oauth import Provider as OAuthProvider

    with pytest.raises(ValueError, match="must be https"):
        OAuthProvider(issuer=url, audience="https://mcp.example.com/mcp")
    with pytest.raises(ValueError, match="must be https"):
        OAuthProvider(issuer="https://login.example.com", audience=url)
    assert OAuthProvider(issuer="http://127.0.0.1:1", audience="https://mcp.example.com/mcp")


def test_an_unreachable_provider_refuses_the_sign_in_and_the_page_says_so(tmp_path: Path) -> None:
    from tests.oidc.harness import free_port

    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens
    world = World()
    settings = {"issuer": issuer, "client_id": "c", "redirect_uri": CALLBACK}
    policy_file = tmp_path / "agentguard.yaml"
    doc = sso_policy(world, issuer, settings, ["user:corp.alice"])
    policy_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    guard = Guard(load_policy(policy_file), store=MemoryStore(), clock=world.clock)
    app = create_app(guard.approvals, ApproverTokens(tmp_path / "t.json"), policy_file=policy_file)
    client = TestClient(app, base_url=BASE, headers={"Origin": BASE}, follow_redirects=False)
    page = client.get("/login").text
    assert "Sign in with corp" in page
    reply = client.post("/login/sso", data={"csrf": csrf_of(page)})
    assert reply.headers["location"] == "/login"
    assert "agentguard_sso" not in reply.headers.get("set-cookie", "")
    assert "Single sign-on is unavailable: the identity provider could not be reached" in (
        client.get("/login").text
    )


@pytest.mark.parametrize(
    ("jwks", "text"),
    [
        ({"keys": "none"}, "has no keys"),
        ({}, "has no keys"),
        ({"keys": [{"kid": "k1", "kty": "RSA", "use": "enc", "n": "x", "e": "AQAB"}]}, "not among"),
        (
            {"keys": [{"kid": "k1", "kty": "RSA", "d": "secret", "n": "x", "e": "AQAB"}]},
            "not among",
        ),
        ({"keys": [{"kid": "k1", "kty": "EC", "crv": "P-256"}]}, "does not fit the key"),
        ({"keys": [{"kid": "k1", "kty": "RSA", "alg": "RS512"}]}, "the key is for RS512"),
        ({"keys": [{"kid": "k1", "kty": "RSA", "n": "!!", "e": "AQAB"}]}, "cannot be used"),
    ],
)
def test_a_key_set_that_cannot_verify_the_id_token_refuses_it(
    hostile: tuple[str, dict[str, Any]], jwks: dict[str, Any], text: str
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    routes["/jwks"] = (200, json.dumps(jwks).encode(), {})
    key = SigningKey.generate()
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "sub": "a", "aud": "c", "iat": now, "exp": now + 60, "nonce": "n"},
        key.private,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    keys = SignOn()._provider_keys(issuer)
    with pytest.raises(SignOnRefused, match=text):
        validate_id_token(token, issuer=issuer, client_id="c", nonce="n", key=keys.key)


def test_a_key_set_that_never_loaded_is_not_fetched_again_at_once(
    hostile: tuple[str, dict[str, Any]],
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    routes["/jwks"] = (503, b"{}", {})
    keys = SignOn()._provider_keys(issuer)
    with pytest.raises(SignOnRefused, match="answered 503"):
        keys.key("k1")
    routes["/jwks"] = (200, b'{"keys": []}', {})  # back, but within the interval
    with pytest.raises(SignOnRefused, match="could not be fetched") as caught:
        keys.key("k1")
    assert caught.value.reason == "idp_unavailable"


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        ((200, b'{"access_token": "x"}', {}), "the provider sent no ID token"),
        ((200, b'{"id_token": 7}', {}), "the provider sent no ID token"),
        ((400, b'{"error": "invalid_grant"}', {}), "refused the code (invalid_grant)"),
        ((400, b'{"error": "<script>"}', {}), "refused the code (400)"),
        ((500, b"oops", {}), "refused the code (500)"),
    ],
)
def test_a_token_endpoint_answer_without_a_usable_id_token_refuses_the_sign_in(
    hostile: tuple[str, dict[str, Any]], answer: Any, text: str
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    routes["/token"] = answer
    found = _config(issuer)
    assert found is not None
    sign_on = SignOn()
    pid, url = sign_on.begin(found[0])
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
    with pytest.raises(SignOnRefused, match=re.escape(text)):
        sign_on.finish(sign_on.take(pid), {"state": state, "code": "c"}, found)


def test_an_answer_without_a_code_or_under_changed_settings_is_refused(
    hostile: tuple[str, dict[str, Any]],
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    found = _config(issuer)
    assert found is not None
    sign_on = SignOn()
    for params, text in [
        ({}, "no usable code"),
        ({"code": "x" * 5000}, "no usable code"),
        ({"code": "c", "settings": "changed"}, "settings changed during the sign-in"),
    ]:
        pid, url = sign_on.begin(found[0])
        state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
        settings = None if params.pop("settings", None) else found
        with pytest.raises(SignOnRefused, match=text):
            sign_on.finish(sign_on.take(pid), {"state": state, **params}, settings)


def test_a_pre_login_expires_after_ten_minutes_and_old_ones_are_dropped(
    hostile: tuple[str, dict[str, Any]],
) -> None:
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    found = _config(issuer)
    assert found is not None
    sign_on = SignOn()
    late, _ = sign_on.begin(found[0], now=0.0)
    assert sign_on.take(late, now=PRE_LOGIN_TTL + 1) is None
    early, _ = sign_on.begin(found[0], now=0.0)
    assert sign_on.take(early, now=PRE_LOGIN_TTL - 1) is not None
    stale, _ = sign_on.begin(found[0], now=0.0)
    sign_on.begin(found[0], now=PRE_LOGIN_TTL + 1)  # starting another sweeps the expired
    assert stale not in sign_on._pending
    assert sign_on.take(None) is None


@pytest.mark.slow
def test_a_flood_of_sign_ins_from_one_address_cancels_no_one_elses(
    tmp_path: Path, idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone posts 'Sign in' over and over from one address, dropping the pre-login
    cookie each time (more than the page keeps in all): another person's sign-in,
    started before, still finishes, and so does one started during the flood from
    another address. The flood itself is refused once over its share.

    ``make test`` runs it against a page that keeps 4 shares in all (the code reads
    the bound when a sign-in starts), ``make hardening`` against the real 2048."""
    page_keeps = MAX_PRE_LOGINS if HARDENING else 4 * PRE_LOGINS_PER_CLIENT
    monkeypatch.setattr(web_sso, "MAX_PRE_LOGINS", page_keeps)
    desk = make_desk(tmp_path, idp, ["user:corp.alice"])
    app = create_app(desk.guard.approvals, desk.tokens, policy_file=desk.policy_file)

    def browser(address: str) -> TestClient:
        return TestClient(
            app,
            base_url=BASE,
            headers={"Origin": BASE},
            follow_redirects=False,
            client=(address, 50000),
        )

    alice, other, flooder = browser("192.0.2.10"), browser("192.0.2.11"), browser("198.51.100.7")
    url = start(alice)
    csrf = csrf_of(flooder.get("/login").text)
    refused = 0
    for n in range(page_keeps + 1):
        reply = flooder.post("/login/sso", data={"csrf": csrf})
        assert reply.status_code in (200, 303)
        refused += reply.status_code == 303  # back to the login page with a message
        flooder.cookies.delete("agentguard_sso")
        if n == PRE_LOGINS_PER_CLIENT:
            later = start(other)
    assert back(alice, at_provider(url)).status_code == 200
    assert signed_in_as(alice) == "user:corp.alice"
    assert back(other, at_provider(later)).status_code == 200
    assert signed_in_as(other) == "user:corp.alice"
    assert refused == page_keeps + 1 - PRE_LOGINS_PER_CLIENT
    assert "too many sign-ins are under way from this address" in flooder.get("/login").text


def test_each_address_has_a_share_and_a_full_page_refuses_newcomers_only(
    hostile: tuple[str, dict[str, Any]],
) -> None:
    """Per address (an IPv6 one by its /64): at most PRE_LOGINS_PER_CLIENT under way;
    in all, MAX_PRE_LOGINS. Over either, a new sign-in is refused and none under way
    is dropped; a browser starting again replaces its own; finishing or expiring frees
    the share."""
    issuer, routes = hostile
    routes[WELL_KNOWN] = (200, _discovery(issuer), {})
    found = _config(issuer)
    assert found is not None
    config = found[0]
    sign_on = SignOn()
    first, _ = sign_on.begin(config, address="192.0.2.10", now=0.0)
    mine = [
        sign_on.begin(config, address=f"2001:db8::{n:x}", now=0.0)[0]
        for n in range(PRE_LOGINS_PER_CLIENT)
    ]
    for address in ("2001:db8::ffff", "2001:DB8:0:0:ffff::1"):  # the same /64
        with pytest.raises(SignOnRefused) as over:
            sign_on.begin(config, address=address, now=0.0)
        assert over.value.reason == "too_many_sign_ins"
    # Starting again from the same browser (its cookie names its last) replaces it.
    again, _ = sign_on.begin(config, address="2001:db8::1", replaces=mine[0], now=0.0)
    assert sign_on.take(mine[0], now=1.0) is None
    # Finishing one frees a place in the share.
    assert sign_on.take(mine[1], now=1.0) is not None
    sign_on.begin(config, address="2001:db8::2", now=1.0)
    # Another /64 and an IPv4-mapped address are other clients.
    sign_on.begin(config, address="2001:db8:0:1::1", now=0.0)
    assert client_of("::ffff:192.0.2.10") == client_of("192.0.2.10") == "192.0.2.10"
    assert client_of(None) == client_of("") == ""
    assert client_of("TestClient") == "testclient"

    # Many addresses fill the page: the next newcomer is refused, nobody is dropped.
    n = 0
    while len(sign_on._pending) < MAX_PRE_LOGINS:
        sign_on.begin(config, address=f"10.{n // 250}.{n % 250}.1", now=0.0)
        n += 1
    with pytest.raises(SignOnRefused, match="try again later") as full:
        sign_on.begin(config, address="203.0.113.9", now=0.0)
    assert full.value.reason == "too_many_sign_ins"
    assert sign_on.take(first, now=1.0) is not None
    assert sign_on.take(again, now=1.0) is not None
    # Once they expire, sign-ins start again, and the shares were emptied with them.
    sign_on.begin(config, address="2001:db8::3", now=PRE_LOGIN_TTL + 1)
    assert sign_on._per_client == {"2001:db8::/64": 1}


# -- 5. the real command on the policy `agentguard init --approver` writes ----------------


def test_approvals_serve_on_the_init_policy_signs_in_and_the_call_runs_once(
    tmp_path: Path, idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`approvals serve` as its own process takes single sign-on from the policy file alone."""
    from tests.cli.cli_support import CLI, grant
    from tests.test_web_page import _ask, _call, free_port

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    cli = CLI(tmp_path)
    cli.ok("init", "--org", "org:acme", "--approver", "user:corp.alice")
    cli.ok("identity", "new", "agent:bot")
    grant(
        cli,
        "--from", "org:acme", "--to", "agent:bot", "--tool", "tickets/*",
        "--ttl", "1h", "--purpose", "triage",
        out="bot.dlg",
    )  # fmt: skip
    port = free_port()
    site = f"http://127.0.0.1:{port}"
    client_id = idp.register(f"{site}/login/sso/callback")["client_id"]
    path = tmp_path / "agentguard.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["federation"] = federation(idp.issuer)
    doc["approval"]["sso"] = {
        "issuer": idp.issuer,
        "client_id": client_id,
        "redirect_uri": f"{site}/login/sso/callback",
    }
    doc["step_up"] = [{"tools": ["tickets/close"], "min_assurance": "authenticated"}]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli.ok("policy", "validate", "agentguard.yaml")

    command = str(Path(sys.executable).parent / "agentguard")
    process = subprocess.Popen(
        [command, "approvals", "serve", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "AGENTGUARD_HOME": str(cli.home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with httpx2.Client(base_url=site, headers={"Origin": site}) as browser:
            deadline = time.monotonic() + 30
            while True:  # bounded: the process prints nothing when it listens
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    login = browser.get("/login")
                    break
                except httpx2.TransportError:
                    assert time.monotonic() < deadline, "approvals serve did not start"
                    time.sleep(0.05)
            request_id = _ask(cli, "agent:bot", "bot.dlg", "tickets/close")
            assert "Sign in with corp" in login.text  # the alias, without a label
            begun = browser.post("/login/sso", data={"csrf": csrf_of(login.text)})
            # Through the provider's scripted login and back to the page's callback.
            arrived = browser.get(
                begun.headers["refresh"].removeprefix("0; url="), follow_redirects=True
            )
            assert arrived.status_code == 200, arrived.text
            assert str(arrived.url).startswith(f"{site}/login/sso/callback?")
            page = browser.get("/")
            assert "<b id='approver'>user:corp.alice</b>" in page.text
            answer = browser.post(
                f"/requests/{request_id}/approve", data={"csrf": csrf_of(page.text)}
            )
            assert answer.headers["location"] == "/"
            assert f"Approved {request_id}." in browser.get("/").text
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()
    tool = RecordingTool()
    assert _call(cli, "agent:bot", "bot.dlg", "tickets/close", tool) == "done"
    assert tool.calls == [{"target": "db1"}]


# -- 6. the whole sign-in in real Chromium -------------------------------------------------


@pytest.fixture
def live(tmp_path: Path, idp: Idp) -> Iterator[tuple[Desk, str]]:
    import uvicorn

    from tests.oidc.harness import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = idp.register(f"{url}/login/sso/callback")
    desk = make_desk(
        tmp_path,
        idp,
        ["user:corp.alice"],
        client_id=client["client_id"],
        redirect_uri=f"{url}/login/sso/callback",
    )
    config = uvicorn.Config(
        create_app(desk.guard.approvals, desk.tokens, policy_file=desk.policy_file),
        host="127.0.0.1",
        port=port,
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
    try:
        yield desk, url
    finally:
        server.should_exit = True
        thread.join(10)


def test_sign_in_and_approve_in_chromium(live: tuple[Desk, str]) -> None:
    if not os.path.exists(CHROMIUM) or shutil.which(CHROMIUM) is None:
        pytest.skip(f"BROWSER TEST SKIPPED: {CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    desk, url = live
    request_id = desk.ask()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(10_000)
            page.goto(url + "/")
            button = page.get_by_role("button", name="Sign in with Corp SSO")
            expect(button).to_be_focused()
            button.click()  # to the provider, its scripted login, and back
            expect(page.locator("#approver")).to_have_text("user:corp.alice")
            assert page.url == url + "/"
            cookies = {c["name"]: c for c in page.context.cookies()}
            assert cookies["agentguard_session"]["httpOnly"]
            assert cookies["agentguard_session"]["sameSite"] == "Strict"
            assert "agentguard_sso" not in cookies  # the pre-login is gone
            section = page.locator(f'section[data-request-id="{request_id}"]')
            section.get_by_role("button", name="Approve").click()
            expect(page.locator(".flash.ok")).to_have_text(f"Approved {request_id}.")
        finally:
            browser.close()
    tool = RecordingTool()
    assert desk.call(1, tool) == "done"
    assert tool.calls == [{"id": 1}]
