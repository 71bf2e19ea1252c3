"""Fuzzing the approval web page's forms (hypothesis, Starlette TestClient).

Random fields and values, on ``/login`` and ``/requests/{id}/approve|deny|edit``,
from a logged-in approver, a session that never logged in and a client with no
session at all, with the right CSRF token, a wrong one, another session's or
none; plus bodies that are not forms. The only acceptable statuses are 2xx, 3xx
and 4xx (never a 500); an answer is recorded only for a logged-in approver with
the session's CSRF token, and then it is the answer that was asked for; the
book stays consistent (every request pending or answered by that approver on
the web channel). ``AGENTGUARD_HARDENING=1`` raises the example counts tenfold.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from agentguard.errors import ApprovalPending
from agentguard.guard import Guard
from agentguard.testing import RecordingTool, World
from agentguard.web import ApproverTokens, create_app

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
FUZZ = settings(
    max_examples=1500 if HARDENING else 150,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
STEP_UP = [{"tools": ["tickets/comment"], "min_assurance": "authenticated"}]
ACTIONS = ("approve", "deny", "edit")
BASE = "http://127.0.0.1:8780"  # a host the page answers to, and its own Origin


@dataclass
class Page:
    """The app over a guard's approval book, and three visitors with their CSRF tokens."""

    world: World
    guard: Guard
    token: str
    logged: TestClient
    logged_csrf: str
    visitor: TestClient  # a session from GET /login that never logged in
    visitor_csrf: str
    anonymous: TestClient
    answered: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return "Page()"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis would print every field

    def ask(self, n: int) -> str:
        """A fresh pending ``tickets/comment`` request."""
        with pytest.raises(ApprovalPending) as pending:
            self.guard.call(
                self.world.delegation,
                "tickets/comment",
                {"id": n},
                RecordingTool(),
                holder=self.world.bot,
            )
        return pending.value.request_id

    def client(self, who: str) -> tuple[TestClient, str | None]:
        if who == "logged":
            return self.logged, self.logged_csrf
        if who == "visitor":
            return self.visitor, self.visitor_csrf
        return self.anonymous, None


def _csrf(page_text: str) -> str:
    match = CSRF.search(page_text)
    assert match is not None
    return match.group(1)


@pytest.fixture
def page(tmp_path: Path) -> Page:
    world = World()
    doc = world.policy()
    guard = world.guard(
        approval_mode="raise",
        step_up=STEP_UP,
        approvers=doc["approvers"],
        approval={"channel": "web"},
    )
    tokens = ApproverTokens(tmp_path / "tokens.json")
    token = tokens.issue("user:carol")
    app = create_app(guard.approvals, tokens)
    logged = TestClient(app, raise_server_exceptions=False, base_url=BASE, headers={"Origin": BASE})
    login_csrf = _csrf(logged.get("/login").text)
    logged.post("/login", data={"csrf": login_csrf, "token": token})
    logged_csrf = _csrf(logged.get("/").text)
    visitor = TestClient(
        app, raise_server_exceptions=False, base_url=BASE, headers={"Origin": BASE}
    )
    visitor_csrf = _csrf(visitor.get("/login").text)
    anonymous = TestClient(
        app, raise_server_exceptions=False, base_url=BASE, headers={"Origin": BASE}
    )
    return Page(world, guard, token, logged, logged_csrf, visitor, visitor_csrf, anonymous)


def _csrf_value(kind: str, own: str | None, page: Page, text: str) -> str | None:
    if kind == "own":
        return own
    if kind == "other_session":
        return page.visitor_csrf if own != page.visitor_csrf else page.logged_csrf
    if kind == "wrong":
        return text
    if kind == "tampered" and own:
        return own[:-1] + ("A" if own[-1] != "A" else "B")
    return None


field_text = st.text(max_size=60)
long_text = st.one_of(field_text, st.integers(0, 30_000).map(lambda n: "\u00e9" * n))
edited_args = st.one_of(
    st.none(),
    field_text,
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), field_text), max_size=3).map(
        json.dumps
    ),
    st.sampled_from(
        ['{"id": 1e400}', '{"id": NaN}', '{"id": 9007199254740993}', "[1, 2]", '{"a": [[[]]]}', "{"]
    ),
)


def _assert_consistent(page: Page, requests: list[str]) -> None:
    """Every request is pending, or answered on the web by carol."""
    for request_id in requests:
        request = page.guard.approvals.get(request_id)
        assert request.status in ("pending", "approved", "rejected")
        if request.status != "pending":
            assert request.approver == "user:carol"


@FUZZ
@given(
    # Weighted towards the one combination that may answer, so both sides get exercised.
    who=st.sampled_from(["logged", "logged", "visitor", "anonymous"]),
    csrf_kind=st.sampled_from(["own", "own", "own", "none", "wrong", "tampered", "other_session"]),
    csrf_text=field_text,
    action=st.one_of(st.sampled_from(ACTIONS), st.sampled_from(ACTIONS), field_text),
    target=st.sampled_from(["fresh", "fresh", "answered", "random"]),
    random_id=st.text(min_size=1, max_size=80),
    message=st.one_of(st.none(), long_text),
    args=edited_args,
    extra=st.dictionaries(field_text, field_text, max_size=12),
    multipart=st.booleans(),
)
def test_answer_forms(
    page: Page,
    who: str,
    csrf_kind: str,
    csrf_text: str,
    action: str,
    target: str,
    random_id: str,
    message: str | None,
    args: str | None,
    extra: dict[str, str],
    multipart: bool,
) -> None:
    """Random answer forms: never a 500; recorded only with a session, its CSRF and a real id."""
    fresh = page.ask(len(page.answered))
    if target == "fresh" or (target == "answered" and not page.answered):
        request_id = fresh
    elif target == "answered":
        request_id = page.answered[-1]
    else:
        request_id = random_id
    client, own = page.client(who)
    csrf = _csrf_value(csrf_kind, own, page, csrf_text)
    data: dict[str, str] = dict(extra)
    for key, value in (("csrf", csrf), ("message", message), ("args", args)):
        if value is not None:
            data[key] = value
    path = "/requests/{}/{}".format(
        urllib.parse.quote(request_id, safe=""), urllib.parse.quote(action, safe="")
    )
    before = page.guard.approvals.get(request_id).status if target != "random" else None
    if multipart:
        files = {key: (None, value) for key, value in data.items()}
        response = client.post(path, files=files, follow_redirects=False)
    else:
        response = client.post(path, data=data, follow_redirects=False)
    assert response.status_code < 500, response.text[:300]

    after = page.guard.approvals.get(fresh).status
    event(f"answer recorded: {after != 'pending'}")
    authorised = (
        who == "logged"
        and csrf_kind == "own"
        and action in ACTIONS
        and target == "fresh"
        and len(data) <= 10
    )
    if after != "pending":
        page.answered.append(fresh)
        assert authorised
        if action == "deny":
            assert after == "rejected"
        else:
            assert after == "approved"
            assert action == "approve" or isinstance(json.loads(args or ""), dict)
    elif authorised and action != "edit":
        # Everything was right, so only a form the parser refused (size limits) records nothing.
        assert response.status_code == 400, f"a valid {action} was not recorded"
    if before is not None and target == "answered":
        assert page.guard.approvals.get(request_id).status == before
    _assert_consistent(page, [fresh, *page.answered])


@FUZZ
@given(
    session=st.sampled_from(["visitor", "visitor", "anonymous"]),
    csrf_kind=st.sampled_from(["own", "own", "none", "wrong", "tampered", "other_session"]),
    csrf_text=field_text,
    token_kind=st.sampled_from(["valid", "padded", "tampered", "random", "prefixed", "long"]),
    token_text=field_text,
    extra=st.dictionaries(field_text, field_text, max_size=12),
)
def test_login_form(
    page: Page,
    session: str,
    csrf_kind: str,
    csrf_text: str,
    token_kind: str,
    token_text: str,
    extra: dict[str, str],
) -> None:
    """Random logins: never a 500; a session only for carol's token with the session's CSRF."""
    client = TestClient(
        page.logged.app, raise_server_exceptions=False, base_url=BASE, headers={"Origin": BASE}
    )
    own = _csrf(client.get("/login").text) if session == "visitor" else None
    csrf = _csrf_value(csrf_kind, own, page, csrf_text)
    token = {
        "valid": page.token,
        "padded": f"  {page.token}\t",
        "tampered": page.token[:-1] + ("A" if page.token[-1] != "A" else "B"),
        "random": token_text,
        "prefixed": f"agt_{token_text}",
        "long": "agt_" + "x" * 5000,
    }[token_kind]
    data = {**extra, "token": token}
    if csrf is not None:
        data["csrf"] = csrf
    response = client.post("/login", data=data, follow_redirects=False)
    assert response.status_code < 500, response.text[:300]
    home = client.get("/", follow_redirects=False)
    assert home.status_code in (200, 303)
    logged_in = home.status_code == 200
    event(f"logged in: {logged_in}")
    should = (
        session == "visitor"
        and csrf_kind == "own"
        and token_kind in ("valid", "padded")
        and len(data) <= 10
    )
    assert logged_in == should or (logged_in is False and len(data) > 10)
    if logged_in:
        assert "Signed in as <b id='approver'>user:carol</b>" in home.text


raw_bodies = st.one_of(
    st.binary(max_size=500),
    st.text(max_size=200).map(str.encode),
    st.builds(
        lambda boundary, parts: (
            "".join(
                f"--{boundary}\r\nContent-Disposition: form-data; name={name}\r\n\r\n{value}\r\n"
                for name, value in parts
            )
            + f"--{boundary}--\r\n"
        ).encode(),
        st.text(alphabet="abcXYZ019-", min_size=1, max_size=20),
        st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=14),
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=abc",
            "multipart/form-data; boundary=",
            "application/json",
            "text/plain",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60),
)


@FUZZ
@given(
    who=st.sampled_from(["logged", "visitor", "anonymous"]),
    where=st.sampled_from(["/login", "/logout", "approve", "deny", "edit"]),
    body=raw_bodies,
    content_type=content_types,
)
def test_bodies_that_are_not_forms(
    page: Page, who: str, where: str, body: bytes, content_type: str
) -> None:
    """Garbage bodies and content types: never a 500, nothing answered, the session survives."""
    fresh = page.ask(0)
    client, _ = page.client(who)
    path = f"/requests/{fresh}/{where}" if where in ACTIONS else where
    headers = {"content-type": content_type.strip()}
    response = client.post(path, content=body, headers=headers, follow_redirects=False)
    event(f"{where}: {response.status_code}")
    assert response.status_code < 500, response.text[:300]
    assert page.guard.approvals.get(fresh).status == "pending"
    if who == "logged" and where != "/logout":
        assert page.logged.get("/", follow_redirects=False).status_code == 200


@pytest.mark.parametrize("edited", ['{"id": NaN}', '{"id": 1e400}', '{"id": 9007199254740993}'])
def test_edit_with_non_canonical_json_is_a_message_not_an_error(
    page: Page, edited: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the fuzzer: such edits reached the book and were logged as internal errors."""
    request_id = page.ask(1)
    data = {"csrf": page.logged_csrf, "args": edited}
    shown = page.logged.post(f"/requests/{request_id}/edit", data=data).text
    assert "Edited arguments must be canonical JSON (finite numbers only)." in shown
    assert page.guard.approvals.get(request_id).status == "pending"
    assert not [r for r in caplog.records if r.name == "agentguard.web"]
