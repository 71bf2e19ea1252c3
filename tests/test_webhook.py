"""The webhook approval channel against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agentguard.errors import ApprovalPending, DeniedError
from agentguard.testing import START, RecordingTool, World
from agentguard.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookChannel,
    sign_payload,
    verify_signature,
)
from tests.display_support import FORGED_SHOWN, assert_shows_the_facts, shown_args, sub_agent

SECRET = "shared-webhook-secret"
CANARY = "canary-password-7f3a"
STEP_UP = [{"tools": ["tickets/comment"], "min_assurance": "signed"}]


@dataclass
class Receiver:
    """A webhook receiver: remembers each POST and answers with ``status``."""

    url: str
    status: int = 204
    location: str | None = None
    hold: threading.Event | None = None
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A ThreadingHTTPServer on a free loopback port, stopped after the test."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            # Header names arrive in whatever case the client chose; keep them lower-case.
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.posts.append((headers, self.rfile.read(length)))
            if state.hold is not None:
                state.hold.wait(5)
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook?key=receiver-api-key"
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_delivery_posts_redacted_signed_request_and_queue_answer_lets_call_run(
    receiver: Receiver,
) -> None:
    """The receiver gets the redacted request, signed; an answer from the queue lets it run."""
    world = World()
    channel = WebhookChannel(receiver.url, secret=SECRET, clock=world.clock)
    guard = world.guard(approver=channel, approval_mode="raise", step_up=STEP_UP)
    tool = RecordingTool()
    args = {"id": 7, "text": "refund issued", "password": CANARY}

    with pytest.raises(ApprovalPending) as pending:
        guard.call(world.delegation, "tickets/comment", args, tool, holder=world.bot)

    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    assert CANARY not in body.decode()
    assert "receiver-api-key" not in body.decode()
    doc = json.loads(body)
    assert doc["type"] == "agentguard.approval_request"
    assert doc["id"] == pending.value.request_id
    assert doc["tool"] == "tickets/comment"
    assert doc["deadline"] > START
    assert doc["path"] == ["org:acme", "user:alice", "agent:bot"]
    assert doc["requester"] == "agent:bot"
    assert doc["on_behalf_of"] == "user:alice"
    assert doc["args_display"]["id"] == 7
    assert headers["content-type"] == "application/json"
    assert headers[TIMESTAMP_HEADER.lower()] == str(int(START))
    assert verify_signature(
        SECRET,
        body,
        headers[TIMESTAMP_HEADER.lower()],
        headers[SIGNATURE_HEADER.lower()],
        now=START,
    )
    assert not tool.ran

    guard.approvals.approve(pending.value.request_id, world.carol)
    assert guard.call(world.delegation, "tickets/comment", args, tool, holder=world.bot) == "done"
    assert tool.calls == [args]
    assert len(receiver.posts) == 1  # the resubmission uses the receipt; nothing new is sent


def test_without_secret_no_signature_headers(receiver: Receiver) -> None:
    world = World()
    guard = world.guard(
        approver=WebhookChannel(receiver.url, headers={"X-Api-Key": "k"}),
        approval_mode="raise",
        step_up=STEP_UP,
    )
    with pytest.raises(ApprovalPending):
        guard.call(
            world.delegation, "tickets/comment", {"id": 1}, RecordingTool(), holder=world.bot
        )
    headers, _ = receiver.posts[0]
    assert SIGNATURE_HEADER.lower() not in headers
    assert TIMESTAMP_HEADER.lower() not in headers
    assert headers["x-api-key"] == "k"


@pytest.mark.parametrize("status", [500, 404, 302])
def test_receiver_error_or_redirect_denies(receiver: Receiver, status: int) -> None:
    """A non-2xx answer (a redirect too: it would turn the POST into a GET) refuses the call."""
    receiver.status = status
    receiver.location = "http://127.0.0.1:1/elsewhere"
    world = World()
    guard = world.guard(
        approver=WebhookChannel(receiver.url), approval_mode="block", step_up=STEP_UP
    )
    tool = RecordingTool()
    with pytest.raises(DeniedError) as denied:
        guard.call(world.delegation, "tickets/comment", {"id": 1}, tool, holder=world.bot)
    assert denied.value.reason == "approval_unavailable"
    assert "receiver-api-key" not in str(denied.value)
    assert not tool.ran
    assert len(receiver.posts) == 1


def test_unreachable_receiver_denies() -> None:
    """Nothing listens on the port: delivery fails and the call is refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    world = World()
    guard = world.guard(
        approver=WebhookChannel(f"http://127.0.0.1:{port}/hook", timeout=2),
        step_up=STEP_UP,
    )
    with pytest.raises(DeniedError) as denied:
        guard.call(
            world.delegation, "tickets/comment", {"id": 1}, RecordingTool(), holder=world.bot
        )
    assert denied.value.reason == "approval_unavailable"


def test_slow_receiver_times_out_and_denies(receiver: Receiver) -> None:
    """A receiver that does not answer within the timeout refuses the call."""
    receiver.hold = threading.Event()
    world = World()
    guard = world.guard(approver=WebhookChannel(receiver.url, timeout=0.3), step_up=STEP_UP)
    with pytest.raises(DeniedError) as denied:
        guard.call(
            world.delegation, "tickets/comment", {"id": 1}, RecordingTool(), holder=world.bot
        )
    assert denied.value.reason == "approval_unavailable"
    receiver.hold.set()


@pytest.mark.anyio
async def test_async_delivery_does_not_block_and_queue_answer_arrives(receiver: Receiver) -> None:
    """``acall`` delivers in a worker thread and then waits for the queue answer."""
    import anyio

    world = World()
    guard = world.guard(approver=WebhookChannel(receiver.url, secret=SECRET), step_up=STEP_UP)
    tool = RecordingTool()

    async def approve_when_posted() -> None:
        while not receiver.posts:
            await anyio.sleep(0.01)
        request_id = json.loads(receiver.posts[0][1])["id"]
        guard.approvals.approve(request_id, world.carol, message="ok")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(approve_when_posted)
            result = await guard.acall(
                world.delegation, "tickets/comment", {"id": 3}, tool, holder=world.bot
            )
    assert result == "done"
    assert tool.calls == [{"id": 3}]


def test_verify_signature_refuses_tampering_wrong_secret_and_stale_deliveries() -> None:
    body = b'{"id": "apr_1"}'
    signature = sign_payload(SECRET, body, 1000)
    assert verify_signature(SECRET, body, "1000", signature, now=1100)
    assert verify_signature(SECRET.encode(), body, "1000", signature, now=1100)
    assert not verify_signature(SECRET, body + b" ", "1000", signature, now=1100)
    assert not verify_signature("other", body, "1000", signature, now=1100)
    assert not verify_signature(SECRET, body, "1001", signature, now=1100)
    assert not verify_signature(SECRET, body, "1000", signature, now=1000 + 301)
    assert not verify_signature(SECRET, body, "soon", signature, now=1000)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "http:///nohost"])
def test_only_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookChannel(url)


def test_repr_hides_the_url_query() -> None:
    assert repr(WebhookChannel("https://hooks.example.org/x?token=abc")) == (
        "<WebhookChannel to hooks.example.org>"
    )


def test_policy_selects_the_webhook_with_the_secret_from_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``approval: {channel: webhook, webhook_url: ...}`` posts; the secret comes from the env."""
    from agentguard.webhook import SECRET_ENV

    monkeypatch.setenv(SECRET_ENV, SECRET)
    world = World()
    guard = world.guard(
        approval_mode="raise",
        step_up=STEP_UP,
        approval={"channel": "webhook", "webhook_url": receiver.url},
    )
    assert isinstance(guard.channel, WebhookChannel)
    with pytest.raises(ApprovalPending):
        guard.call(
            world.delegation, "tickets/comment", {"id": 1}, RecordingTool(), holder=world.bot
        )
    headers, body = receiver.posts[0]
    stamp, signature = headers[TIMESTAMP_HEADER.lower()], headers[SIGNATURE_HEADER.lower()]
    assert verify_signature(SECRET, body, stamp, signature, now=float(stamp))


def test_policy_webhook_needs_a_usable_url() -> None:
    from agentguard.errors import ConfigError

    world = World()
    with pytest.raises(ConfigError, match="webhook_url"):
        world.guard(approval={"channel": "webhook"})
    with pytest.raises(ConfigError, match="webhook_url"):
        world.guard(approval={"channel": "webhook", "webhook_url": "file:///x"})


def test_payload_carries_the_same_facts(receiver: Receiver) -> None:
    """The payload holds every argument, the folded and the full text, and per-link claims."""
    world = World()
    guard = world.guard(
        approver=WebhookChannel(receiver.url), approval_mode="raise", step_up=STEP_UP
    )
    sub, delegation = sub_agent(world)
    args = {**shown_args(), "password": CANARY}
    with pytest.raises(ApprovalPending):
        guard.call(delegation, "tickets/comment", args, RecordingTool(), holder=sub)
    body = receiver.posts[0][1].decode()
    assert CANARY not in body
    doc = json.loads(body)
    display = doc["display"]
    assert_shows_the_facts(display["text"], display["full_text"])
    assert len(doc["args_display"]) == len(args)
    names = [a["name"] for a in display["arguments"]]
    assert FORGED_SHOWN in names
    script = next(a for a in display["arguments"] if a["name"] == "script")
    assert script["more"] > 0
    assert script["value"] + f" … {script['more']} more characters" in display["text"]
    assert doc["links"][2] == {
        "issuer": "agent:bot",
        "subject": "agent:sub",
        "purpose": "pre-approved by security",
        "on_behalf_of": "user:ceo",
        "below_agent": True,
    }
    agent_claims = [c for c in display["assertions"] if c["by_agent"]]
    assert {(c["field"], c["value"]) for c in agent_claims} == {
        ("purpose", '"pre-approved by security"'),
        ("on_behalf_of", "user:ceo"),
    }
