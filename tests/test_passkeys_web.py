"""The page's passkey routes in process, with a software authenticator and hostile requests.

The browser tests (``test_passkeys_browser.py``) run the same routes in
Chromium against a served process; here every refusal path is reached
directly, and what the routes write is read back.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from agentguard.errors import ApprovalPending, ApprovalRejected
from agentguard.guard import Guard
from agentguard.passkeys import PasskeyEnrolments, passkey_key_id
from agentguard.policy import load_policy
from agentguard.testing import RecordingTool
from agentguard.web import create_app
from tests.passkey_support import ORIGIN, SoftKey
from tests.test_web_page import Desk, card, login, make_desk


def challenge_of(options: dict[str, Any]) -> bytes:
    text = str(options["challenge"])
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Page:
    """Carol's desk (a rule that needs ``signed``) and the page over it, on localhost."""

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.desk: Desk = make_desk(tmp_path, ["user:carol"], level="signed")
        self.enrolments = PasskeyEnrolments(tmp_path / "enrolments.json")
        app = create_app(
            self.desk.guard.approvals,
            self.desk.tokens,
            policy_file=self.desk.policy_file,
            enrolments=options.pop("enrolments", self.enrolments),
            **options,
        )
        self.client = TestClient(app, base_url=ORIGIN, headers={"Origin": ORIGIN})
        self.key = SoftKey(-7)

    def enrol(self) -> None:
        token = self.enrolments.issue("user:carol", ttl=600)
        begun = self.client.post("/enroll/begin", data={"token": token}).json()
        credential = self.key.register(challenge_of(begun["options"]))
        done = self.client.post(
            "/enroll/finish", data={"token": token, "credential": json.dumps(credential)}
        )
        assert done.status_code == 200, done.text
        self.restart_guard()

    def restart_guard(self) -> None:
        """A guard reads the credential from the policy it loaded: start one after enrolling."""
        self.desk.guard = Guard(
            load_policy(self.desk.policy_file),
            store=self.desk.guard.store,
            clock=self.desk.world.clock,
            approval_mode="raise",
        )

    def passkey(self) -> dict[str, Any] | None:
        doc = yaml.safe_load(self.desk.policy_file.read_text())
        found: dict[str, Any] | None = doc["approvers"][0].get("passkey")
        return found

    def begin(self, csrf: str, request_id: str, **fields: str) -> Any:
        return self.client.post(
            f"/requests/{request_id}/passkey/begin", data={"csrf": csrf, **fields}
        )

    def finish(self, csrf: str, request_id: str, statement: str, credential: object) -> Any:
        return self.client.post(
            f"/requests/{request_id}/passkey/finish",
            data={"csrf": csrf, "statement": statement, "credential": json.dumps(credential)},
        )


def test_enrol_then_approve_on_the_page_and_the_call_runs_once(tmp_path: Path) -> None:
    page = Page(tmp_path)
    token = page.enrolments.issue("user:carol", ttl=600)
    shown = page.client.get("/enroll")  # the token is in the link's fragment, never sent
    assert shown.status_code == 200
    assert page.client.get(f"/enroll/{token}").status_code == 404
    status = page.client.post("/enroll/status", data={"token": token})
    assert status.json() == {"approver": "user:carol"}
    assert shown.headers["content-security-policy"].count("sha256-") == 2
    begun = page.client.post("/enroll/begin", data={"token": token}).json()
    assert begun["options"]["authenticatorSelection"]["userVerification"] == "required"
    credential = page.key.register(challenge_of(begun["options"]))
    done = page.client.post(
        "/enroll/finish", data={"token": token, "credential": json.dumps(credential)}
    )
    assert done.json()["message"].startswith("Passkey enrolled for user:carol")
    kid = passkey_key_id(page.key.cose())
    assert (
        f"(key id {kid}: if this authenticator is lost, 'agentguard revoke --key {kid}'"
        in (done.json()["message"])
    )
    assert page.passkey() == {
        "credential_id": page.key.credential_id,
        "public_key": page.key.cose(),
        "rp_id": "localhost",
        "origin": ORIGIN,
    }
    page.restart_guard()

    request_id = page.desk.ask(1)
    csrf = login(page.client, page.desk.carol)
    shown_card = card(page.client.get("/").text, request_id)
    assert 'data-passkey="approve"' in shown_card
    assert 'data-passkey="deny"' in shown_card
    assert "signed</code> with your passkey" in shown_card
    begun = page.begin(csrf, request_id, action="approve", message="fine").json()
    assert begun["options"]["userVerification"] == "required"
    assert begun["options"]["allowCredentials"][0]["id"] == page.key.credential_id
    signed = page.key.browser(challenge_of(begun["options"]))
    assert page.finish(csrf, request_id, begun["statement"], signed).json() == {"ok": True}
    assert f"Approved {request_id} with your passkey." in page.client.get("/").text
    tool = RecordingTool()
    assert page.desk.call(1, tool) == "done"
    assert tool.calls == [{"id": 1}]


def test_a_passkey_edit_and_a_denial(tmp_path: Path) -> None:
    page = Page(tmp_path)
    page.enrol()
    first, second = page.desk.ask(1), page.desk.ask(2)
    csrf = login(page.client, page.desk.carol)
    begun = page.begin(csrf, first, action="edit", args=json.dumps({"id": 11})).json()
    signed = page.key.browser(challenge_of(begun["options"]))
    assert page.finish(csrf, first, begun["statement"], signed).status_code == 200
    begun = page.begin(csrf, second, action="deny", message="no").json()
    signed = page.key.browser(challenge_of(begun["options"]))
    assert page.finish(csrf, second, begun["statement"], signed).status_code == 200
    tool = RecordingTool()
    assert page.desk.call(1, tool) == "done"
    assert tool.calls == [{"id": 11}]
    with pytest.raises(ApprovalRejected, match="no"):
        page.desk.call(2, RecordingTool())


def test_hostile_answers_are_refused_and_nothing_is_recorded(tmp_path: Path) -> None:
    page = Page(tmp_path)
    page.enrol()
    request_id = page.desk.ask(1)
    csrf = login(page.client, page.desk.carol)
    assert page.begin("wrong", request_id, action="approve").status_code == 403
    assert page.begin(csrf, request_id, action="launch").status_code == 400
    assert page.begin(csrf, request_id, action="edit", args="[1]").status_code == 400
    assert page.begin(csrf, request_id, action="edit", args="NaN").status_code == 400
    assert page.begin(csrf, "apr_nothing", action="approve").status_code == 400
    begun = page.begin(csrf, request_id, action="approve").json()
    good = page.key.browser(challenge_of(begun["options"]))
    for credential in ("not json", "[]", json.dumps({"type": "public-key"})):
        sent = page.client.post(
            f"/requests/{request_id}/passkey/finish",
            data={"csrf": csrf, "statement": begun["statement"], "credential": credential},
        )
        assert sent.status_code == 400
        begun = page.begin(csrf, request_id, action="approve").json()  # a refusal spends it
    assert page.finish(csrf, request_id, "no-such-statement", good).status_code == 400
    other = page.desk.ask(2)
    assert page.finish(csrf, other, begun["statement"], good).status_code == 400
    # The assertion over an earlier statement does not sign this one.
    begun = page.begin(csrf, request_id, action="approve").json()
    refused = page.finish(csrf, request_id, begun["statement"], good)
    assert refused.status_code == 400
    assert "does not verify" in refused.json()["error"]
    assert page.finish(csrf, request_id, "x", good).status_code == 400
    assert page.finish("wrong", request_id, "x", good).status_code == 403
    with pytest.raises(ApprovalPending):
        page.desk.call(1, RecordingTool())


def test_hostile_enrolments_are_refused(tmp_path: Path) -> None:
    page = Page(tmp_path)
    token = page.enrolments.issue("user:carol", ttl=600)
    # No registration waiting; then an IP-address origin; then a wrong challenge.
    assert (
        page.client.post("/enroll/finish", data={"token": token, "credential": "{}"}).status_code
        == 403
    )
    ip = page.client.post(
        "/enroll/begin",
        data={"token": token},
        headers={"Host": "127.0.0.1:8780", "Origin": "http://127.0.0.1:8780"},
    )
    assert ip.status_code == 400
    assert "http://localhost:PORT" in ip.json()["error"]
    page.client.post("/enroll/begin", data={"token": token})
    assert (
        page.client.post(
            "/enroll/finish", data={"token": token, "credential": "not json"}
        ).status_code
        == 400
    )
    page.client.post("/enroll/begin", data={"token": token})
    wrong = page.key.register(b"another challenge")
    refused = page.client.post(
        "/enroll/finish", data={"token": token, "credential": json.dumps(wrong)}
    )
    assert refused.status_code == 403
    assert "does not verify" in refused.json()["error"]
    begun = page.client.post("/enroll/begin", data={"token": token}).json()
    no_uv = page.key.register(challenge_of(begun["options"]), uv=False)
    refused = page.client.post(
        "/enroll/finish", data={"token": token, "credential": json.dumps(no_uv)}
    )
    assert refused.status_code == 403
    assert page.passkey() is None
    # Unknown links, and a page without enrolments.
    for path in ("/enroll/status", "/enroll/begin"):
        assert page.client.post(path, data={"token": "agp_unknown"}).status_code == 403
        assert page.client.post(path).status_code == 403
    bare = Page(tmp_path / "bare", enrolments=None)
    assert bare.client.post("/enroll/status", data={"token": token}).status_code == 503
    assert bare.client.post("/enroll/begin", data={"token": token}).status_code == 503


def test_an_approver_not_in_the_policy_any_more_cannot_finish_enrolling(tmp_path: Path) -> None:
    page = Page(tmp_path)
    token = page.enrolments.issue("user:carol", ttl=600)
    begun = page.client.post("/enroll/begin", data={"token": token}).json()
    page.desk.write([])  # carol is removed meanwhile
    credential = page.key.register(challenge_of(begun["options"]))
    refused = page.client.post(
        "/enroll/finish", data={"token": token, "credential": json.dumps(credential)}
    )
    assert refused.status_code == 500
    assert "not an approver" in refused.json()["error"]


def test_an_ip_address_rp_id_is_refused_when_the_page_is_built(tmp_path: Path) -> None:
    from agentguard.errors import ConfigError

    with pytest.raises(ConfigError, match="IP address"):
        Page(tmp_path, rp_id="127.0.0.1")


def test_a_passkey_enrolled_for_another_rp_id_is_not_asked_for(tmp_path: Path) -> None:
    page = Page(tmp_path)
    page.enrol()
    app = create_app(
        page.desk.guard.approvals,
        page.desk.tokens,
        policy_file=page.desk.policy_file,
        rp_id="approvals.example.com",
        allowed_hosts=["localhost"],
    )
    client = TestClient(app, base_url=ORIGIN, headers={"Origin": ORIGIN})
    request_id = page.desk.ask(1)
    csrf = login(client, page.desk.carol)
    refused = client.post(
        f"/requests/{request_id}/passkey/begin", data={"csrf": csrf, "action": "approve"}
    )
    assert refused.status_code == 400
    assert "enrolled for localhost" in refused.json()["error"]


def test_a_guard_started_before_the_enrolment_refuses_the_passkey_answer_until_restarted(
    tmp_path: Path,
) -> None:
    """A guard reads passkeys from the policy it loaded (the page reads the file each time)."""
    from agentguard.errors import DeniedError

    page = Page(tmp_path)
    request_id = page.desk.ask(1)  # the guard is running before carol enrols
    token = page.enrolments.issue("user:carol", ttl=600)
    begun = page.client.post("/enroll/begin", data={"token": token}).json()
    credential = page.key.register(challenge_of(begun["options"]))
    page.client.post("/enroll/finish", data={"token": token, "credential": json.dumps(credential)})
    csrf = login(page.client, page.desk.carol)
    begun = page.begin(csrf, request_id, action="approve").json()
    signed = page.key.browser(challenge_of(begun["options"]))
    assert page.finish(csrf, request_id, begun["statement"], signed).status_code == 200
    with pytest.raises(DeniedError) as refused:
        page.desk.call(1, RecordingTool())
    assert refused.value.reason == "approval_invalid"
    assert "no passkey is enrolled for user:carol" in refused.value.explanation
    page.restart_guard()
    tool = RecordingTool()
    assert page.desk.call(1, tool) == "done"
    assert tool.calls == [{"id": 1}]
