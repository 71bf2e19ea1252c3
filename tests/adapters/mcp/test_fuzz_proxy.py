"""Fuzzing the MCP messages that reach the HTTP proxy (hypothesis, raw HTTP on loopback).

One proxy (``GuardedProxy`` over streamable HTTP, protocol 2026-07-28) in front
of an in-process upstream that records every call it receives serves the whole
module from a background event loop. Examples send raw ``tools/call`` POSTs:
hostile params (names that are not client-safe, huge or deep or mistyped
arguments, unicode, our own ``_meta`` keys injected by the caller, garbage
trace context), random ``Authorization`` headers and call tokens, and bodies
that are not JSON-RPC at all. The only acceptable outcomes are an ``isError``
result, a JSON-RPC error or an HTTP 4xx; the upstream sees a call only when a
valid delegation and a fresh call token for exactly that call were presented,
never our ``_meta`` keys; and the proxy answers a valid call afterwards.
``AGENTGUARD_HARDENING=1`` raises the example counts tenfold.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
import pytest
from agentguard_mcp import (
    META_APPROVAL,
    META_CALL,
    META_DECISION,
    META_DELEGATION,
    META_TOOL,
    GuardedProxy,
    Upstream,
    UpstreamSpec,
)
from agentguard_mcp.cli import build_guard
from agentguard_mcp.serve import http_app
from agentguard_mcp.testing import serve_app
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.inbound import encode_header_value

from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError
from agentguard.guard import Guard
from agentguard.keys import Identity
from tests.adapters.mcp.mcp_support import make_setup

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
FUZZ = settings(
    max_examples=1500 if HARDENING else 150,
    deadline=timedelta(seconds=1),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    database=None,
)
PROTOCOL = "2026-07-28"
ENVELOPE: dict[str, Any] = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "fuzz", "version": "0"},
}
SAFE = types.ToolAnnotations(read_only_hint=False, destructive_hint=False)
SCOPE: list[Any] = ["notes/lookup", {"tool": "notes/update", "where": {"amount": {"<=": 1000}}}]
#: What a client-safe name stands for at this proxy (one upstream: no prefix).
ADDRESSES = {"lookup": "notes/lookup", "update": "notes/update", "purge": "notes/purge"}
OUR_KEYS = [META_CALL, META_DELEGATION, META_APPROVAL, META_DECISION, META_TOOL]


class RecordingUpstream:
    """An in-process upstream that records the name, arguments and ``_meta`` of every call."""

    def __init__(self) -> None:
        # Any further argument is allowed: these calls carry whatever the test needs.
        schema = {
            "type": "object",
            "properties": {"id": {"type": "string"}},
            "additionalProperties": True,
        }
        self.tools = [
            types.Tool(name=name, input_schema=schema, annotations=SAFE) for name in ADDRESSES
        ]
        self.calls: list[dict[str, Any]] = []
        self.server: Server[Any] = Server(
            "recording", on_list_tools=self._list, on_call_tool=self._call
        )

    async def _list(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self.calls.append(
            {"name": params.name, "arguments": params.arguments, "meta": dict(ctx.meta or {})}
        )
        return types.CallToolResult(content=[types.TextContent(text="done")])


@dataclass
class Target:
    """The running proxy, what it fronts, and a delegation it accepts."""

    url: str
    guard: Guard
    upstream: RecordingUpstream
    delegation: Delegation
    agent: Identity
    http: httpx2.Client
    #: Call tokens a call that went through has consumed (what a replay re-sends).
    spent: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Target({self.url})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis would print every field, tokens and all

    @property
    def bearer(self) -> str:
        return f"Bearer {self.delegation.serialize()}"

    def token(self, name: str, args: Any) -> str | None:
        """A fresh call token for ``name`` with ``args`` (``None`` if none can be minted)."""
        address = ADDRESSES.get(name)
        if address is None or not isinstance(args, dict):
            return None
        try:
            token = self.delegation.mint_call_token(self.agent, address, args)
        except (AgentGuardError, ValueError, TypeError, RecursionError):
            return None
        return token

    def spend(self, meta: dict[str, Any], result: str) -> None:
        """Remember the call token of a call that went through."""
        if result == "ok" and isinstance(meta.get(META_CALL), str):
            self.spent.append(meta[META_CALL])


@asynccontextmanager
async def _proxy(guard: Guard, upstream: RecordingUpstream) -> AsyncIterator[str]:
    async with AsyncExitStack() as stack:
        base = await stack.enter_async_context(
            serve_app(upstream.server.streamable_http_app(), log_level="critical")
        )
        spec = UpstreamSpec(namespace="notes", url=f"{base}/mcp", trusted=True)
        proxy = GuardedProxy(guard, [Upstream(spec)])
        await proxy.start(stack)
        front = await stack.enter_async_context(serve_app(http_app(proxy), log_level="critical"))
        yield f"{front}/mcp"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    setup = make_setup(Path(tmp_path_factory.mktemp("fuzz-proxy")))
    guard = build_guard(setup.home, str(setup.policy_file))
    upstream = RecordingUpstream()
    delegation = setup.delegation(SCOPE)
    try:
        with (
            start_blocking_portal() as portal,
            portal.wrap_async_context_manager(_proxy(guard, upstream)) as url,
            httpx2.Client(timeout=20) as http,
        ):
            yield Target(url, guard, upstream, delegation, setup.agent, http)
    finally:
        guard.close()


# -- sending and judging ------------------------------------------------------------------------


def post(
    target: Target,
    body: Any,
    *,
    authorization: str | None,
    method: str = "tools/call",
    name: Any = None,
) -> httpx2.Response:
    """POST one message (a JSON-able value, or raw bytes) the way a 2026-07-28 client does."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": PROTOCOL,
        "mcp-method": method,
    }
    if isinstance(name, str):
        headers["mcp-name"] = encode_header_value(name)
    if authorization is not None:
        # HTTP field values carry no edge whitespace (the client library refuses it).
        headers["authorization"] = authorization.strip(" \t")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return target.http.post(target.url, content=content, headers=headers)


_ARGS_SLOT = "\u0000args\u0000"


def call_body(name: Any, arguments: Any, meta: dict[str, Any], request_id: Any = 1) -> Any:
    """A ``tools/call`` request (raw bytes when the arguments are too deep for ``json.dumps``)."""
    deep = isinstance(arguments, Deep)
    params = {
        "_meta": {**ENVELOPE, **meta},
        "name": name,
        "arguments": _ARGS_SLOT if deep else arguments,
    }
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    if isinstance(arguments, Deep):
        return json.dumps(body).replace(json.dumps(_ARGS_SLOT), arguments.json()).encode()
    return body


def outcome(response: httpx2.Response) -> str:
    """``http_error``, ``rpc_error``, ``refused`` (isError) or ``ok``; a 5xx fails the example."""
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        return "http_error"
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        text = data[-1]
    doc = json.loads(text)
    if "error" in doc:
        assert isinstance(doc["error"]["code"], int)
        return "rpc_error"
    result = doc["result"]
    return "refused" if result.get("isError") else "ok"


def check_upstream(target: Target, before: int, allowed: tuple[str, Any] | None) -> None:
    """New upstream calls: none, or exactly the one authorised call, carrying none of our keys."""
    new = target.upstream.calls[before:]
    if allowed is None:
        assert new == []
        return
    assert len(new) <= 1
    for call in new:
        assert (call["name"], call["arguments"]) == allowed
        assert not [k for k in call["meta"] if k.startswith("io.agentguard/")]
        assert set(call["meta"]) <= {"traceparent", "tracestate"} | {
            k for k in call["meta"] if k.startswith("io.modelcontextprotocol/")
        }


def assert_still_serving(target: Target) -> None:
    """A valid call goes through once; the audit log verifies."""
    before = len(target.upstream.calls)
    args = {"id": "alive"}
    meta = {META_CALL: target.token("lookup", args)}
    body = call_body("lookup", args, meta)
    response = post(target, body, authorization=target.bearer, name="lookup")
    assert outcome(response) == "ok", response.text[:500]
    target.spend(meta, "ok")
    assert [c["arguments"] for c in target.upstream.calls[before:]] == [args]
    assert target.guard.audit.verify() is None


# -- strategies ---------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


@dataclass(frozen=True)
class Deep:
    """Arguments nested far deeper than any tool needs (built in the test: short to print)."""

    depth: int

    def build(self) -> dict[str, Any]:
        value: Any = "bottom"
        for level in range(self.depth):
            value = [value] if level % 2 else {"k": value}
        return {"id": "deep", "v": value}

    def json(self) -> str:
        """The same value as JSON text (``json.dumps`` itself gives up at this depth)."""
        opens = "".join("[" if level % 2 else '{"k":' for level in reversed(range(self.depth)))
        closes = "".join("]" if level % 2 else "}" for level in range(self.depth))
        return '{"id":"deep","v":' + opens + '"bottom"' + closes + "}"


@dataclass(frozen=True)
class Huge:
    """Arguments with one huge string value (built in the test: short to print)."""

    size: int
    char: str

    def build(self) -> dict[str, Any]:
        return {"id": "huge", "text": self.char * self.size, "amount": 1}


huge = st.builds(
    Huge,
    st.integers(min_value=10_000, max_value=400_000),
    st.sampled_from(["a", "\u00e9", "\U0001f600", "\x00", "<"]),
)
arguments = st.one_of(
    st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    st.fixed_dictionaries({"id": st.text(max_size=10), "amount": json_values}),
    json_values,  # wrong types: lists, strings, numbers, null
    st.integers(min_value=50, max_value=5000).map(Deep),
    huge,
)
names = st.one_of(
    st.sampled_from(["lookup", "update"]),  # tools in scope: exercise the guard, not just lookup
    st.sampled_from(
        [
            "lookup",
            "update",
            "purge",
            "notes__lookup",
            "notes/lookup",
            "LOOKUP",
            "lookup ",
            " lookup",
            "lookup\x00",
            "look\u200bup",
            "",
            "x" * 65,
            "../lookup",
        ]
    ),
    st.text(max_size=80),
    json_values,  # not a string at all
)
garbage_traceparent = st.one_of(
    st.text(max_size=100),
    st.just("00-" + "0" * 32 + "-" + "0" * 16 + "-01"),
    st.just("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    st.just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" + "x" * 600),
    json_values,
)
injected_meta = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [*OUR_KEYS, "traceparent", "tracestate", "baggage", "io.agentguard/secret"]
        ),
        st.text(max_size=30),
    ),
    json_values,
    max_size=6,
)
TOKEN_KINDS = ["valid", "none", "garbage", "other_args", "other_tool", "replayed", "not_a_string"]


def _tampered(token: str, at: int) -> str:
    i = at % len(token)
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


# -- the fuzz tests -----------------------------------------------------------------------------


@FUZZ
@given(
    name=names,
    args=arguments,
    extra=injected_meta,
    traceparent=garbage_traceparent,
    token_kind=st.sampled_from(TOKEN_KINDS),
    extras_last=st.booleans(),
    request_id=st.one_of(st.integers(), st.text(max_size=20)),
    position=st.integers(min_value=0, max_value=10_000),
)
def test_hostile_tools_call_params(
    target: Target,
    name: Any,
    args: Any,
    extra: dict[str, Any],
    traceparent: Any,
    token_kind: str,
    extras_last: bool,
    request_id: Any,
    position: int,
) -> None:
    """Hostile params with a valid delegation: a clean refusal, or exactly the authorised call."""
    if isinstance(args, Huge):
        args = args.build()
    plain = args.build() if isinstance(args, Deep) else args
    valid = target.token(name, plain) if isinstance(name, str) else None
    token: Any = None
    if token_kind == "valid":
        token = valid
    elif token_kind == "garbage":
        token = _tampered(valid, position) if valid else "eyJ" + "x" * (position % 300)
    elif token_kind == "other_args":
        token = target.token("lookup", {"id": "someone else's"})
    elif token_kind == "other_tool":
        token = target.token("purge", plain if isinstance(plain, dict) else {})
    elif token_kind == "replayed" and target.spent:
        token = target.spent[position % len(target.spent)]
    elif token_kind == "not_a_string":
        token = {"token": valid}
    ours: dict[str, Any] = {"traceparent": traceparent}
    if token is not None:
        ours[META_CALL] = token
    meta = {**ours, **extra} if extras_last else {**extra, **ours}
    # Only a fresh token for exactly this call authorises it (a replayed one never does).
    authorised = token_kind == "valid" and valid is not None and meta.get(META_CALL) == valid
    before = len(target.upstream.calls)
    response = post(
        target, call_body(name, args, meta, request_id), authorization=target.bearer, name=name
    )
    result = outcome(response)
    target.spend(meta, result)
    event(f"{token_kind} token: {result}" + (response.text[:120] if result == "rpc_error" else ""))
    if not authorised:
        assert result != "ok", response.text[:300]
    check_upstream(target, before, (name, plain) if authorised else None)
    if result == "ok":
        assert name in ("lookup", "update")


def _bearer_of(kind: str, target: Target, text: str, position: int) -> str | None:
    valid = target.delegation.serialize()
    if kind == "none":
        return None
    if kind == "random":
        return text
    if kind == "bearer_random":
        return f"Bearer {text}"
    if kind == "tampered":
        return f"Bearer {_tampered(valid, position)}"
    if kind == "truncated":
        return f"Bearer {valid[: position % len(valid)]}"
    if kind == "extra_link":
        return f"Bearer {valid}~{text}"
    if kind == "basic":
        return f"Basic {valid}"
    return f"{kind.split('_', 1)[1]}{valid}"  # valid_... : accepted spellings of the scheme


AUTH_KINDS = [
    "none",
    "random",
    "bearer_random",
    "tampered",
    "truncated",
    "extra_link",
    "basic",
    "valid_Bearer ",
    "valid_bearer ",
    "valid_BEARER   ",
]
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@FUZZ
@given(
    auth_kind=st.sampled_from(AUTH_KINDS),
    text=header_text,
    token_kind=st.sampled_from(TOKEN_KINDS),
    position=st.integers(min_value=0, max_value=10_000),
    method=st.sampled_from(["tools/call", "tools/list"]),
)
def test_random_authorization_and_call_tokens(
    target: Target, auth_kind: str, text: str, token_kind: str, position: int, method: str
) -> None:
    """Random Authorization headers and call tokens: 401/403, an error, or the authorised call."""
    args = {"id": f"auth-{position}"}
    valid = target.token("lookup", args)
    assert valid is not None
    token: Any = {
        "valid": valid,
        "none": None,
        "garbage": _tampered(valid, position),
        "other_args": target.token("lookup", {"id": "other"}),
        "other_tool": target.token("update", args),
        "replayed": target.spent[position % len(target.spent)] if target.spent else text,
        "not_a_string": [valid],
    }[token_kind]
    meta = {META_CALL: token} if token is not None else {}
    authorization = _bearer_of(auth_kind, target, text, position)
    if method == "tools/list":
        body: Any = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/list",
            "params": {"_meta": ENVELOPE},
        }
    else:
        body = call_body("lookup", args, meta)
    before = len(target.upstream.calls)
    response = post(
        target,
        body,
        authorization=authorization,
        method=method,
        name="lookup" if method == "tools/call" else None,
    )
    result = outcome(response)
    target.spend(meta, result)
    event(f"{method} {auth_kind} / {token_kind}: {result}")
    good_bearer = auth_kind.startswith("valid_")
    if not good_bearer and auth_kind in ("none", "random", "basic", "bearer_random"):
        # Nothing that is not a Bearer delegation gets past the gate.
        assert response.status_code in (401, 403) or (
            auth_kind == "bearer_random" and result != "ok"
        )
    authorised = method == "tools/call" and good_bearer and token_kind == "valid"
    if method == "tools/call" and not authorised:
        assert result != "ok", response.text[:300]
    if method == "tools/call" and authorised:
        assert result == "ok", response.text[:300]
    check_upstream(target, before, ("lookup", args) if authorised else None)


raw_bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda method, params, rid: {
            "jsonrpc": "2.0",
            "id": rid,
            "method": method,
            "params": params,
        },
        st.one_of(
            st.sampled_from(
                ["tools/call", "tools/list", "initialize", "server/discover", "ping", ""]
            ),
            st.text(max_size=20),
        ),
        st.one_of(
            json_values,
            st.fixed_dictionaries(
                {"_meta": st.just(ENVELOPE)},
                optional={
                    "name": names,
                    "arguments": json_values,
                    "requestState": st.text(max_size=50),
                    "inputResponses": json_values,
                },
            ),
        ),
        st.one_of(st.none(), st.integers(), st.text(max_size=10), json_values),
    ),
    st.lists(st.just({"jsonrpc": "2.0", "id": 1, "method": "ping"}), max_size=3),
)


@FUZZ
@given(
    body=raw_bodies,
    method_header=st.sampled_from(["tools/call", "tools/list", "ping", "nonsense"]),
    name=st.one_of(st.none(), st.sampled_from(["lookup", "purge"]), st.text(max_size=20)),
)
def test_malformed_messages(target: Target, body: Any, method_header: str, name: Any) -> None:
    """Bodies that are not JSON, not JSON-RPC, or mis-shaped MCP: an error, never a 5xx."""
    before = len(target.upstream.calls)
    response = post(target, body, authorization=target.bearer, method=method_header, name=name)
    assert outcome(response) != "ok" or not isinstance(body, dict) or body["method"] != "tools/call"
    check_upstream(target, before, None)


def test_still_serving_after_the_fuzz(target: Target) -> None:
    """After every hostile example the proxy still answers a valid call, and the log verifies."""
    assert_still_serving(target)


@pytest.mark.parametrize("depth", [60, 300, 5000])
def test_deeply_nested_arguments_are_refused_before_the_upstream(
    target: Target, depth: int
) -> None:
    """Found by the fuzzer: arguments too deep for the SDK's client killed the upstream session."""
    args = Deep(depth)
    meta = {META_CALL: target.token("lookup", args.build())}
    before = len(target.upstream.calls)
    response = post(
        target, call_body("lookup", args, meta), authorization=target.bearer, name="lookup"
    )
    if depth <= 60:
        assert outcome(response) == "ok"
        assert len(target.upstream.calls) == before + 1
    elif outcome(response) == "refused":
        assert response.json()["result"]["_meta"][META_DECISION]["reason"] == "invalid_arguments"
    else:  # deeper still, the SDK's own parser refuses the request first
        assert response.status_code == 400
    check_upstream(target, before, None if depth > 60 else ("lookup", args.build()))
    assert_still_serving(target)
