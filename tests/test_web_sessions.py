"""The approval page keeps a bounded number of sessions: an anonymous flood cannot grow them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentguard import web
from agentguard.guard import Guard
from agentguard.testing import World
from agentguard.web import (
    ANONYMOUS_SESSIONS_PER_CLIENT,
    MAX_ANONYMOUS_SESSIONS,
    MAX_SIGNED_IN_SESSIONS,
    SESSION_COOKIE,
    ApproverTokens,
    _Sessions,
    create_app,
)
from tests.test_web import BASE, CSRF, STEP_UP

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
#: GET /login requests from one /64 in the one-address loop: several times the
#: per-address share in ``make test``, 2000 under ``make hardening``.
ONE_ADDRESS_LOOP = 2000 if HARDENING else 6 * ANONYMOUS_SESSIONS_PER_CLIENT


@pytest.fixture
def page(tmp_path: Path) -> tuple[TestClient, ApproverTokens]:
    return _page(tmp_path)


def _page(tmp_path: Path) -> tuple[TestClient, ApproverTokens]:
    world = World()
    guard: Guard = world.guard(
        approval_mode="raise",
        step_up=STEP_UP,
        approvers=world.policy()["approvers"],
        approval={"channel": "web"},
    )
    tokens = ApproverTokens.in_home(tmp_path / "home")
    app = create_app(guard.approvals, tokens)
    return TestClient(app, base_url=BASE, headers={"Origin": BASE}), tokens


def held(client: TestClient) -> _Sessions:
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    assert isinstance(sessions, _Sessions)
    return sessions


def signed_in(client: TestClient, tokens: ApproverTokens, who: str, address: str) -> TestClient:
    """A browser from ``address`` signed in as ``who`` through the login form."""
    browser = TestClient(client.app, base_url=BASE, headers={"Origin": BASE}, client=(address, 1))
    match = CSRF.search(browser.get("/login").text)
    assert match is not None
    browser.post("/login", data={"csrf": match.group(1), "token": tokens.issue(who)})
    assert who in browser.get("/").text
    return browser


@pytest.mark.slow
def test_an_anonymous_flood_from_many_addresses_is_bounded_and_leaves_signed_in_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # make test: a page keeping 4 addresses' shares of anonymous sessions in all (the
    # bound is read when the page is made); make hardening: the real 1024.
    keeps = MAX_ANONYMOUS_SESSIONS if HARDENING else 4 * ANONYMOUS_SESSIONS_PER_CLIENT
    monkeypatch.setattr(web, "MAX_ANONYMOUS_SESSIONS", keeps)
    client, tokens = _page(tmp_path)
    carol = signed_in(client, tokens, "user:carol", "192.0.2.7")
    # Anonymous clients looping on GET /login without keeping a cookie: every request
    # used to keep one more session on the server until its TTL (8 hours).
    for i in range(keeps + 300):
        flood = TestClient(client.app, base_url=BASE, client=(f"10.0.{i >> 8}.{i & 255}", 1))
        assert flood.get("/login").status_code == 200
    assert held(client).counts() == (keeps, 1)
    # The signed-in person is still signed in.
    assert "user:carol" in carol.get("/").text
    assert carol.get("/login", follow_redirects=False).status_code == 303


@pytest.mark.slow
def test_one_address_looping_drops_only_its_own_login_forms(
    page: tuple[TestClient, ApproverTokens],
) -> None:
    client, tokens = page
    dave = TestClient(client.app, base_url=BASE, headers={"Origin": BASE}, client=("::1", 1))
    match = CSRF.search(dave.get("/login").text)
    assert match is not None
    # One address (IPv6 addresses of one /64 count as one) asks for a form many times
    # (far past its share; each request from another address of the /64, no cookie).
    assert ONE_ADDRESS_LOOP > 4 * ANONYMOUS_SESSIONS_PER_CLIENT
    for i in range(ONE_ADDRESS_LOOP):
        flood = TestClient(client.app, base_url=BASE, client=(f"2001:db8::{i:x}", 1))
        assert flood.get("/login").status_code == 200
    assert held(client).counts() == (ANONYMOUS_SESSIONS_PER_CLIENT + 1, 0)
    # dave's form, fetched before the loop, still logs him in; its CSRF token is checked.
    token = tokens.issue("user:dave")
    assert dave.post("/login", data={"csrf": "forged", "token": token}).status_code == 403
    assert dave.post("/login", data={"token": token}).status_code == 403
    dave.post("/login", data={"csrf": match.group(1), "token": token})
    assert "user:dave" in dave.get("/").text
    # Signing in replaced dave's pre-session by a signed-in one.
    assert held(client).counts() == (ANONYMOUS_SESSIONS_PER_CLIENT, 1)


def test_reloading_the_login_page_keeps_one_pre_session(
    page: tuple[TestClient, ApproverTokens],
) -> None:
    client, _ = page
    client.get("/login")
    first = client.cookies.get(SESSION_COOKIE)
    for _ in range(20):
        client.get("/login")
    assert client.cookies.get(SESSION_COOKIE) == first
    assert held(client).counts() == (1, 0)


def test_the_oldest_anonymous_session_goes_first_and_signed_in_ones_have_their_own_cap() -> None:
    sessions = _Sessions(3600, max_anonymous=3, max_signed_in=2)
    anonymous = [sessions.new(address=f"192.0.2.{i}")[0] for i in range(3)]
    alice, _ = sessions.new("user:alice")
    bob, _ = sessions.new("user:bob")
    later, _ = sessions.new(address="192.0.2.9")
    assert sessions.get(anonymous[0]) is None
    assert all(sessions.get(sid) is not None for sid in (*anonymous[1:], later, alice, bob))
    assert sessions.counts() == (3, 2)
    # Past the signed-in cap the oldest signed-in session ends; anonymous ones are untouched.
    carol, _ = sessions.new("user:carol")
    assert sessions.get(alice) is None
    assert sessions.get(bob) is not None
    assert sessions.get(carol) is not None
    assert sessions.counts() == (3, 2)
    for sid in (bob, carol, later):
        sessions.drop(sid)
    sessions.drop(None)
    sessions.drop("unknown")
    assert sessions.counts() == (2, 0)


def test_expired_sessions_are_purged_when_new_ones_are_made() -> None:
    sessions = _Sessions(-1, max_anonymous=10, max_signed_in=10)
    for _ in range(5):
        sessions.new()
        sessions.new("user:alice")
    # Each new one purges those (of either kind) that expired before it: only the newest stays.
    assert sessions.counts() == (0, 1)
    assert sessions.get("") is None


def test_the_caps_must_be_positive() -> None:
    for bad in ({"max_anonymous": 0}, {"max_signed_in": 0}, {"per_client": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            _Sessions(60, **bad)
    assert MAX_SIGNED_IN_SESSIONS >= MAX_ANONYMOUS_SESSIONS


def test_a_client_share_drops_its_own_oldest_first() -> None:
    sessions = _Sessions(3600, max_anonymous=10, per_client=2)
    other, _ = sessions.new(address="198.51.100.1")
    mine = [sessions.new(address="203.0.113.5")[0] for _ in range(3)]
    assert sessions.get(mine[0]) is None
    assert all(sessions.get(sid) is not None for sid in (other, *mine[1:]))
    # Dropping and expiring keep the per-client books consistent.
    sessions.drop(mine[1])
    sessions.drop(mine[2])
    assert [sessions.new(address="203.0.113.5")[0] for _ in range(2)]
    assert sessions.counts() == (3, 0)


def test_one_approver_signing_in_in_a_loop_ends_only_their_own_sessions() -> None:
    """Each approver holds at most ``per_approver`` sessions: their own oldest ends first,
    never another approver's, even past the overall cap's reach."""
    sessions = _Sessions(3600, max_signed_in=50, per_approver=3)
    bob, _ = sessions.new("user:bob")
    alice = [sessions.new("user:alice")[0] for _ in range(100)]
    assert sessions.get(bob) is not None
    assert [sid for sid in alice if sessions.get(sid) is not None] == alice[-3:]
    assert sessions.counts() == (0, 4)
    for sid in alice[-3:]:
        sessions.drop(sid)
    assert sessions.counts() == (0, 1)
    assert sessions._by_approver == {"user:bob": {bob: None}}
    with pytest.raises(ValueError, match="at least 1"):
        _Sessions(60, per_approver=0)
