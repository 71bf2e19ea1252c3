"""Per-upstream limits: a read timeout and a result-size limit, each refused cleanly.

A real upstream process answers slowly or with 20 MB; the proxy's memory for the
call is measured with tracemalloc (the proxy runs in this process).
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from agentguard_mcp import META_DECISION, Caller, GuardedProxy, Upstream, UpstreamSpec
from agentguard_mcp._stdio import Dropped, limited_stdio, split_lines
from agentguard_mcp.cli import build_guard
from mcp import Client, StdioServerParameters
from mcp.shared.message import SessionMessage

from tests.adapters.mcp.mcp_support import Setup, notes_command, records, text_of

pytestmark = pytest.mark.anyio

LIMIT = 1 << 20  # 1 MiB
BIG = 20_000_000


def _reason(result: types.CallToolResult) -> object:
    return (result.meta or {})[META_DECISION]["reason"]


@asynccontextmanager
async def _proxied(
    setup: Setup, record: Path, *, timeout: float = 120.0, max_result_bytes: int = 1 << 24
) -> AsyncIterator[Client]:
    spec = UpstreamSpec(
        namespace="notes",
        command=tuple(notes_command(record)),
        trusted=True,
        timeout=timeout,
        max_result_bytes=max_result_bytes,
    )
    guard = build_guard(setup.home, str(setup.policy_file))
    delegation = setup.delegation(["notes/*"])
    try:
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(
                guard, [Upstream(spec)], caller=Caller(delegation.serialize(), holder=setup.agent)
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                yield client
    finally:
        guard.close()


def _completions(setup: Setup) -> list[tuple[str, str | None]]:
    guard = build_guard(setup.home, str(setup.policy_file))
    try:
        entries = [json.loads(e.body) for e in guard.store.audit_entries()]
    finally:
        guard.close()
    return [(e["status"], e["error_type"]) for e in entries if e["type"] == "completion"]


async def test_an_answer_over_the_limit_is_refused_and_never_held(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """20 MB against a 1 MiB limit: refused as oversized, proxy memory a few MiB at most."""
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(120):
        async with _proxied(setup, record, max_result_bytes=LIMIT) as client:
            near = await client.call_tool("read_note", {"id": "near", "size": LIMIT - 4096})
            assert text_of(near) == "x" * (LIMIT - 4096)  # under the limit: whole

            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                base, _ = tracemalloc.get_traced_memory()
                big = await client.call_tool("read_note", {"id": "big", "size": BIG})
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert big.is_error
            assert _reason(big) == "oversized"
            assert text_of(big).startswith(
                f"upstream answer too large (notes): over {LIMIT} bytes, dropped unread; "
                "the call ran (decision dec_"
            ) or text_of(big) == (
                f"upstream answer too large (notes): over {LIMIT} bytes, dropped unread; "
                "the call ran"
            )
            growth = peak - base
            print(f"peak growth for a {BIG}-byte answer: {growth} bytes ({growth / LIMIT:.1f}x)")
            assert growth < 4 * LIMIT

            # The line's size: the 20 MB text and its JSON-RPC envelope.
            assert any(
                m.startswith("upstream notes: an answer of ")
                and m.endswith(f" bytes is over the {LIMIT}-byte limit; dropped unread")
                for m in caplog.messages
            )
            # The same session goes on: the dropped answer named its request.
            after = await client.call_tool("read_note", {"id": "n2"})
            assert text_of(after) == "read_note n2 done"
    assert [r["arguments"]["id"] for r in records(record)] == ["near", "big", "n2"]
    assert _completions(setup) == [
        ("success", None),
        ("error", "UpstreamResultTooLarge"),
        ("success", None),
    ]


async def test_an_answer_later_than_the_timeout_is_refused(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A call the upstream answers after its timeout: refused, audited as failed; next call fine."""
    record = tmp_path / "calls.jsonl"
    with anyio.fail_after(60):
        async with _proxied(setup, record, timeout=0.5) as client:
            slow = await client.call_tool("read_note", {"id": "slow", "sleep": 30})
            assert slow.is_error
            assert _reason(slow) == "upstream_unavailable"
            assert text_of(slow) == (
                "upstream timed out (notes): no answer within 0.5 s; the call may have run"
            )
            assert "upstream notes: no answer to a call within 0.5 s" in caplog.messages
            fine = await client.call_tool("read_note", {"id": "n2"})
            assert text_of(fine) == "read_note n2 done"
    assert [s for s, _ in _completions(setup)] == ["error", "success"]
    assert _completions(setup)[0][1] == "UpstreamTimeout"


async def _lines(chunks: list[bytes], limit: int) -> list[bytes | Dropped]:
    """What :func:`split_lines` makes of a stream that delivers ``chunks``."""
    send, receive = anyio.create_memory_object_stream[bytes](len(chunks))
    async with send:
        for chunk in chunks:
            await send.send(chunk)
    async with receive:
        # A memory stream iterates like a byte stream: chunk by chunk until closed.
        return [line async for line in split_lines(receive, limit)]  # type: ignore[arg-type]


async def test_lines_are_split_and_capped_across_chunks() -> None:
    """Lines spanning chunks, blank lines, a line exactly at the limit and one just over."""
    got = await _lines([b'{"a":1}\n{"b"', b":2}\n\n", b"x" * 16 + b"\n", b"y" * 17 + b"\nz"], 16)
    assert got[:3] == [b'{"a":1}', b'{"b":2}', b"x" * 16]
    dropped = got[3]
    assert isinstance(dropped, Dropped)
    assert dropped.size == 17
    assert len(got) == 4  # "z" has no newline yet: not a line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":7,"result":{"content":"' + b"x" * 5000 + b'"}}', 7),
        (b'{"id":"abc","jsonrpc":"2.0","result":{"t":"' + b"x" * 5000 + b'"}}', "abc"),
        (b'{"result":{"t":"' + b"x" * 5000 + b'"},"jsonrpc":"2.0","id":12}', 12),
        (b'{"result":{"t":"' + b"x" * 5000 + b'"},"jsonrpc":"2.0","id":"q\\"z"}', 'q"z'),
        # An "id" inside the result is not the message's id.
        (b'{"result":{"structuredContent":{"id":5,"t":"' + b"x" * 5000 + b'"}}}', None),
        (b'{"result":{"t":"' + b"x" * 5000 + b'","x":{"id":5}},"jsonrpc":"2.0"}', None),
        (b'{"result":{"t":"' + b"x" * 5000 + b'"},"id":5}}', None),
        (b"x" * 6000, None),
        (b'{"jsonrpc":"2.0","id":' + b"9" * 40 + b',"result":{"t":"' + b"x" * 5000 + b'"}}', None),
        (b'{"jsonrpc":"2.0","id":"' + b"a" * 300 + b'","result":"' + b"x" * 5000 + b'"}', None),
        (b'\xff\xfe{"id":1,' + b"x" * 5000, None),
    ],
)
async def test_a_dropped_line_names_its_request_only_from_the_outermost_object(
    line: bytes, expected: object
) -> None:
    [dropped] = await _lines([line[i : i + 1000] for i in range(0, len(line), 1000)] + [b"\n"], 64)
    assert isinstance(dropped, Dropped)
    assert dropped.size == len(line)
    assert dropped.request_id() == expected


_WRITER = """
import sys
for line in sys.argv[1:]:
    sys.stdout.write(line + "\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.mark.parametrize("order", ["id-first", "id-last"])
async def test_the_transport_answers_a_dropped_reply_with_the_marker(order: str) -> None:
    """A real process writes an oversized reply: its request gets the marker error."""
    body = '"result":{"t":"' + "x" * 5000 + '"}'
    line = (
        '{"jsonrpc":"2.0","id":4,' + body + "}"
        if order == "id-first"
        else "{" + body + ',"jsonrpc":"2.0","id":4}'
    )
    params = StdioServerParameters(command=sys.executable, args=["-c", _WRITER, "not json", line])
    with anyio.fail_after(30):
        async with limited_stdio(params, max_bytes=1024, marker="M-1", namespace="t") as (
            incoming,
            _,
        ):
            garbage = await incoming.receive()
            assert isinstance(garbage, ValueError)  # passed on as the SDK does
            reply = await incoming.receive()
            assert isinstance(reply, SessionMessage)
            assert isinstance(reply.message, types.JSONRPCError)
            assert (reply.message.id, reply.message.error.message) == (4, "M-1")


async def test_a_dropped_message_that_names_no_request_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An oversized notification (no id) cannot be answered: the session ends, logged."""
    line = '{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"' + "x" * 5000
    line += '"}}'
    params = StdioServerParameters(command=sys.executable, args=["-c", _WRITER, line])
    with anyio.fail_after(30):
        async with limited_stdio(params, max_bytes=1024, marker="M-2", namespace="t") as (
            incoming,
            _,
        ):
            with pytest.raises(anyio.EndOfStream):
                await incoming.receive()
    assert any("answered no request it names; the session is ended" in m for m in caplog.messages)
