"""``agentguard login`` against the real provider and a real proxy (issue 16 part 3).

The command runs as its own process: the device authorization grant at the provider (a
scripted browser confirms the code it prints), token exchange at the proxy, and the
delegation and key written 0600. A ``GuardedClient`` then calls with exactly those files.
"""

from __future__ import annotations

import re
import stat
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from agentguard_mcp import GuardedClient, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp.cli import build_guard
from agentguard_mcp.oauth import Provider, ResourceServer
from agentguard_mcp.serve import http_app, policy_federation
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from agentguard.cli import app as cli_app
from agentguard.cli import login as login_command
from agentguard.delegation import Delegation
from agentguard.federation import DELEGATION_TOKEN_TYPE, verify_actor_token
from agentguard.guard import Guard
from agentguard.keys import Identity, Principal
from agentguard.testing import audit_records
from tests.adapters.mcp.mcp_support import BIN, Setup, notes_command, records, text_of
from tests.adapters.mcp.test_oauth import serve_on
from tests.oidc.harness import (
    PUBLIC_CLIENT,
    IdentityProvider,
    approve_device,
    free_port,
)

pytestmark = pytest.mark.anyio

USERS = {"alice": ["incident-response"], "bob": ["finance"]}
PERSON = "user:corp.alice"
PROMPT = re.compile(rb"To sign in, open (\S+) and confirm the code (\S+)")


class _PollClock:
    """``time`` as the login command sees it in the in-process cases: the real clocks,
    and each wait between token polls recorded instead of slept (RFC 8628 intervals
    are whole seconds; the cases check which ones the command chose)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _login_argv(idp: IdentityProvider, resource: str, out: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "agentguard"), "login", "--issuer", idp.issuer, "--client-id", PUBLIC_CLIENT,
        "--resource", resource, "--out", str(out), *extra,
    ]  # fmt: skip


async def _proxy(setup: Setup, port: int, record: Path, stack: AsyncExitStack) -> Guard:
    guard = build_guard(setup.home, str(setup.policy_file))
    stack.callback(guard.close)
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    proxy = GuardedProxy(guard, [Upstream(spec)])
    await proxy.start(stack)
    federated = policy_federation(proxy)
    assert federated is not None
    oauth, mapping = federated
    await stack.enter_async_context(oauth)
    await stack.enter_async_context(serve_on(port, http_app(proxy, oauth=oauth, federate=mapping)))
    return guard


async def test_login_then_call_with_the_files_it_wrote(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Two steps: ``agentguard login``, then a GuardedClient with its delegation and key."""
    setup.write_policy(
        federation=[
            {
                "issuer": idp.issuer,
                "audience": resource,
                "alias": "corp",
                "rules": [
                    {"claim": "groups", "equals": "incident-response", "tools": ["notes/read_note"]}
                ],
            }
        ]
    )
    record = tmp_path / "calls.jsonl"
    home = tmp_path / "me"
    elsewhere = tmp_path / "else" / "corp.delegation"
    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            await _proxy(setup, port, record, stack)
            keys = []
            for target, flags in (
                (home / "login.delegation", ["--home", str(home)]),
                (elsewhere, ["--out", str(elsewhere)]),
            ):
                text = await _login(idp, resource, flags, "alice")
                assert f"signed in: agent:corp.{PUBLIC_CLIENT} on behalf of user:corp.alice" in text
                key_path = target.with_name(target.name + ".key")
                assert f"delegation: {target}" in text
                assert f"key: {key_path}" in text
                assert sorted(p.name for p in target.parent.iterdir()) == [
                    target.name,
                    key_path.name,
                ]
                for path in (target, key_path):
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600
                    # The provider's token (an RS256 JWT) is in neither file.
                    assert "eyJhbGciOiJSUzI1NiIs" not in path.read_text()
                key = Identity.load(key_path)
                delegation = Delegation.parse(target.read_text().strip())
                leaf = delegation.leaf
                assert (leaf.subject, leaf.subject_key.kid) == (key.id, key.kid)
                keys.append(key.kid)

                async with GuardedClient(resource, delegation, key) as client:
                    assert [t.name for t in (await client.list_tools()).tools] == ["read_note"]
                    ran = await client.call_tool("read_note", {"id": "n1"})
                    assert not ran.is_error, text_of(ran)
            assert keys[0] != keys[1]  # a new key for each login
    assert [r["name"] for r in records(record)] == ["read_note", "read_note"]


async def _login(idp: IdentityProvider, resource: str, flags: list[str], user: str) -> str:
    """Run ``agentguard login``, confirm its code as ``user``; its stdout (exit 0)."""
    argv = [
        str(BIN / "agentguard"), "login", "--issuer", idp.issuer, "--client-id", PUBLIC_CLIENT,
        "--resource", resource, *flags,
    ]  # fmt: skip
    process = await anyio.open_process(argv)
    assert process.stderr is not None
    assert process.stdout is not None
    seen = b""
    while (found := PROMPT.search(seen)) is None:
        seen += await process.stderr.receive()
    await approve_device(found[1].decode(), user)
    said = b""
    async for chunk in process.stdout:
        said += chunk
    assert await process.wait() == 0
    await process.aclose()
    return said.decode()


async def test_login_says_what_went_wrong_in_one_line(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """No exchange at the proxy; nobody confirms in time; a person whose groups reach nothing."""
    out = tmp_path / "login.delegation"
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(90):
        # A proxy whose policy has no federation section serves no exchange.
        async with AsyncExitStack() as stack:
            guard = build_guard(setup.home, str(setup.policy_file))
            stack.callback(guard.close)
            proxy = GuardedProxy(guard, [])
            oauth = await stack.enter_async_context(
                ResourceServer(resource, [Provider(idp.issuer, resource)])
            )
            await stack.enter_async_context(serve_on(port, http_app(proxy, oauth=oauth)))
            done = await anyio.run_process(_login_argv(idp, resource, out), check=False)
            assert done.returncode == 1
            assert done.stderr.decode().count("\n") == 1
            assert "offers no token exchange" in done.stderr.decode()

        setup.write_policy(
            federation=[
                {
                    "issuer": idp.issuer,
                    "audience": resource,
                    "alias": "corp",
                    "rules": [{"claim": "groups", "equals": "ops", "tools": ["notes/*"]}],
                }
            ]
        )
        async with AsyncExitStack() as stack:
            await _proxy(setup, port, record, stack)
            late = await anyio.run_process(
                _login_argv(idp, resource, out, "--timeout", "2"), check=False
            )
            assert late.returncode == 1
            assert "not confirmed in time" in late.stderr.decode()

            process = await anyio.open_process(_login_argv(idp, resource, out))
            assert process.stderr is not None
            seen = b""
            while (found := PROMPT.search(seen)) is None:
                seen += await process.stderr.receive()
            await approve_device(found[1].decode(), "bob")
            async for chunk in process.stderr:
                seen += chunk
            assert await process.wait() == 1
            await process.aclose()
            last = seen.decode().strip().splitlines()[-1]
            assert last.startswith("error: the MCP proxy refused the token exchange: ")
            assert "invalid_scope (out_of_scope)" in last
            # The person refuses at the provider: the command says so.
            process = await anyio.open_process(_login_argv(idp, resource, out))
            assert process.stderr is not None
            seen = b""
            while (found := PROMPT.search(seen)) is None:
                seen += await process.stderr.receive()
            await approve_device(found[1].decode(), "alice", abort=True)
            async for chunk in process.stderr:
                seen += chunk
            assert await process.wait() == 1
            await process.aclose()
            last = seen.decode().strip().splitlines()[-1]
            assert last == "error: the sign-in was refused at the identity provider"
    assert not out.exists()
    assert not out.with_name("login.delegation.key").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--issuer", "http://login.example.com"], "must be https"),
        (["--resource", "ftp://127.0.0.1/mcp"], "must be https"),
        (["--client-id", " "], "name the OAuth client"),
        (["--timeout", "0"], "between 1 and 3600"),
    ],
)
def test_login_refuses_bad_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    base = {
        "--issuer": "https://login.example.com",
        "--client-id": "cli",
        "--resource": "https://mcp.example.com/mcp",
        "--timeout": "600",
    }
    base[flags[0]] = flags[1]
    argv = [str(BIN / "agentguard"), "login", *[x for kv in base.items() for x in kv]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def _hostile_cases() -> dict[str, tuple[dict[str, Any], str]]:
    """Per case: what the fake provider/proxy answers differently, and the error expected."""
    return {
        "discovery names another issuer": (
            {"discovery": {"issuer": "http://127.0.0.1:1"}}, "names another issuer"),
        "no device grant": (
            {"discovery": {"device_authorization_endpoint": None}},
            "offers no device authorization grant"),
        "device endpoint not http": (
            {"discovery": {"device_authorization_endpoint": "javascript:alert(1)"}},
            "must be https"),
        "discovery not JSON": ({"discovery": b"<html>"}, "without a JSON object"),
        "discovery NaN": ({"discovery": b'{"issuer": NaN}'}, "without a JSON object"),
        "discovery deeply nested": ({"discovery": b"[" * 100_000}, "without a JSON object"),
        "discovery too large": ({"discovery": b" " * 1_100_000 + b"{}"}, "more than"),
        "discovery redirected": ({"discovery": 302}, "answered 302"),
        "device answer without codes": ({"device": {"device_code": None}}, "no device_code"),
        "device refused": (
            {"device": (400, {"error": "unauthorized_client"})},
            "refused to start: unauthorized_client"),
        "verification uri with escapes": (
            {"device": {"verification_uri": "http://127.0.0.1/\u001b[31mred"}},
            "verification_uri must be https"),
        "token error with escapes": (
            {"token": (400, {"error": "server_error", "error_description": "x\u001b[2Jy"})},
            "refused the sign-in: server_error: x[2Jy"),
        "interval not a number": (
            {"device": {"interval": "soon"}}, "refused the token exchange: invalid_request"),
        "code expired": ({"token": (400, {"error": "expired_token"})}, "code expired"),
        "token answer without a token": ({"token": (200, {"token_type": "Bearer"})},
                                         "has no access_token"),
        "no exchange in the metadata": (
            {"metadata": {"agentguard_token_exchange_endpoint": None}},
            "offers no token exchange"),
        "exchange on another host": (
            {"metadata": {"agentguard_token_exchange_endpoint": "http://127.0.0.2:1/exchange"}},
            "token exchange on another origin"),
        "exchange with a bad port": (
            {"metadata": {"agentguard_token_exchange_endpoint": "http://127.0.0.1:x/exchange"}},
            "agentguard_token_exchange_endpoint must be https"),
        "exchange on another port": (
            {"metadata": {"agentguard_token_exchange_endpoint": "http://127.0.0.1:1/exchange"}},
            "token exchange on another origin"),
        "metadata for another resource": (
            {"metadata": {"resource": "http://127.0.0.1:1/mcp"}}, "offers no token exchange"),
        "exchange answers no delegation": (
            {"exchange": (200, {"issued_token_type": "urn:x", "access_token": "x"})},
            "is not a delegation"),
        "exchange answers garbage": (
            {"exchange": (200, {"issued_token_type": DELEGATION_TOKEN_TYPE,
                                "access_token": "a.b.c"})},
            "does not parse"),
        "exchange for another key": ({"exchange": "other key"}, "not for the key this login"),
        "all well": ({"exchange": "honest"}, "signed in"),
        "slow down, then well": (
            {"exchange": "honest", "token": "slow down once"}, "signed in"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_hostile_cases()))
async def test_login_refuses_what_a_provider_or_proxy_gets_wrong(
    setup: Setup, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake provider and proxy (one loopback server) answering one thing wrong at a time."""
    changes, message = _hostile_cases()[case]
    clock = _PollClock()
    monkeypatch.setattr(login_command, "time", clock)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    resource = f"{base}/mcp"
    stranger = setup.delegation(["notes/*"]).serialize()
    documents: dict[str, Any] = {
        "discovery": {
            "issuer": base,
            "device_authorization_endpoint": f"{base}/device",
            "token_endpoint": f"{base}/token",
        },
        "device": {
            "device_code": "dc",
            "user_code": "ABCD-EFGH",
            "verification_uri": f"{base}/verify",
            "interval": 1,
            "expires_in": 30,
        },
        "token": (200, {"access_token": "an-access-token", "token_type": "Bearer"}),
        "metadata": {
            "resource": resource,
            "agentguard_token_exchange_endpoint": f"{base}/exchange",
        },
        "exchange": (400, {"error": "invalid_request"}),
    }
    for name, change in changes.items():
        if isinstance(change, dict) and isinstance(documents[name], dict):
            documents[name] = {
                k: v for k, v in {**documents[name], **change}.items() if v is not None
            }
        else:
            documents[name] = change
    if documents["exchange"] == "other key":
        documents["exchange"] = (
            200, {"issued_token_type": DELEGATION_TOKEN_TYPE, "access_token": stranger},
        )  # fmt: skip

    async def exchange(request: Request) -> Response:
        # An honest exchange: a delegation to the key the actor token proves.
        form = await request.form()
        actor = verify_actor_token(form["actor_token"], f"{base}/exchange", now=time.time())
        subject = Principal("agent:corp.cli", actor)
        delegation = Delegation.issue(
            setup.org, subject, ["notes/*"], ttl="10m", on_behalf_of=PERSON
        )
        return JSONResponse(
            {"issued_token_type": DELEGATION_TOKEN_TYPE, "access_token": delegation.serialize()}
        )

    asked: list[str] = []

    def answer(name: str) -> Any:
        async def route(request: Request) -> Response:
            asked.append(name)
            value = documents[name]
            if value == "honest":
                return await exchange(request)
            if value == "slow down once":
                documents[name] = (200, {"access_token": "an-access-token"})
                return JSONResponse({"error": "slow_down"}, status_code=400)
            if isinstance(value, int):
                return Response(status_code=value, headers={"location": f"{base}/elsewhere"})
            if isinstance(value, bytes):
                return Response(value, media_type="application/json")
            status, body = value if isinstance(value, tuple) else (200, value)
            return JSONResponse(body, status_code=status)

        return route

    app = Starlette(
        routes=[
            Route("/.well-known/openid-configuration", answer("discovery")),
            Route("/device", answer("device"), methods=["POST"]),
            Route("/token", answer("token"), methods=["POST"]),
            Route("/.well-known/oauth-protected-resource/mcp", answer("metadata")),
            Route("/exchange", answer("exchange"), methods=["POST"]),
        ]
    )
    out = tmp_path / "login.delegation"
    argv = [
        "login", "--issuer", base, "--client-id", "cli", "--resource", resource,
        "--out", str(out), "--timeout", "20",
    ]  # fmt: skip
    with anyio.fail_after(60):
        async with serve_on(port, app):
            # In this process (the command blocks, so in a worker thread): coverage sees it.
            done = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(cli_app, argv))
    stderr = done.stderr
    # The provider names a 1 s interval: no poll comes sooner; "soon" is no number, so
    # RFC 8628's default 5 s; slow_down adds 5 s to the interval.
    assert all(seconds >= 1.0 for seconds in clock.slept), clock.slept
    if case == "interval not a number":
        assert clock.slept == [5.0]
    if case == "slow down, then well":
        assert clock.slept == [1.0, 6.0]
    if message == "signed in":
        assert done.exit_code == 0, stderr
        assert f"signed in: agent:corp.cli on behalf of {PERSON}" in done.stdout
        key = Identity.load(out.with_name("login.delegation.key"))
        assert Delegation.parse(out.read_text().strip()).leaf.subject_key.kid == key.kid
        return
    assert done.exit_code == 1, (stderr, done.exception)
    assert stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in stderr, stderr
    assert "\x1b" not in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    if "another origin" in message:  # refused before the person is asked to sign in
        assert "device" not in asked
        assert "token" not in asked


def test_login_says_when_the_provider_cannot_be_reached(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        str(BIN / "agentguard"), "login", "--issuer", f"http://127.0.0.1:{port}",
        "--client-id", "cli", "--resource", f"http://127.0.0.1:{port}/mcp",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot reach http://127.0.0.1:{port}/")


async def test_a_langchain_agent_uses_the_login_with_its_own_guard(
    setup: Setup, idp: IdentityProvider, port: int, resource: str, tmp_path: Path
) -> None:
    """Two commands for a LangChain agent: login, then guarded tools under its own guard.

    The agent's guard trusts the proxy's key as the provider's federation ``key`` (the
    same rules): the delegation verifies there too, and reaches exactly its tools.
    """
    from agentguard_langchain import guard_tools

    section = {
        "issuer": idp.issuer,
        "audience": resource,
        "alias": "corp",
        "rules": [{"claim": "groups", "equals": "incident-response", "tools": ["notes/read_note"]}],
    }
    setup.write_policy(federation=[section])
    ran: list[str] = []

    def read_note(id: str) -> str:
        """Read a note."""
        ran.append(f"read {id}")
        return f"note {id}"

    def write_note(id: str, text: str) -> str:
        """Write a note."""
        ran.append(f"write {id}")
        return "written"

    with anyio.fail_after(90):
        async with AsyncExitStack() as stack:
            proxy_guard = await _proxy(setup, port, tmp_path / "calls.jsonl", stack)
            signer = proxy_guard.guard_identity
            assert signer is not None
            await _login(idp, resource, ["--home", str(tmp_path / "laptop")], "alice")
    out = tmp_path / "laptop" / "login.delegation"
    key = Identity.load(out.with_name("login.delegation.key"))
    federation_key = {"id": signer.id, "public_key": signer.principal.public_jwk()}
    laptop = Guard(
        {"guard_id": "service:laptop", "federation": [{**section, "key": federation_key}]},
        home=tmp_path / "laptop-state",
    )
    try:
        tools = guard_tools(
            [read_note, write_note],
            guard=laptop,
            delegation=out.read_text().strip(),
            holder=key,
            namespace="notes",
        )
        assert tools[0].invoke({"id": "n1"}) == "note n1"
        refused = tools[1].invoke({"id": "n1", "text": "x"})
        assert "out_of_scope" in str(refused)
        decisions = [e for e in audit_records(laptop) if e["type"] == "decision"]
    finally:
        laptop.close()
    assert ran == ["read n1"]
    assert [(d["tool"], d["outcome"]) for d in decisions] == [
        ("notes/read_note", "allow"),
        ("notes/write_note", "deny"),
    ]
    assert decisions[0]["path"] == [signer.id, f"agent:corp.{PUBLIC_CLIENT}"]
