"""A stdio transport to an upstream server that never holds more than one bounded message.

The SDK's stdio client gathers each line of the server's output whole before
parsing it, so one 20 MB answer costs the proxy many times that in memory. This
transport cuts the output into lines itself and stops keeping a line once it
passes ``max_bytes``: the rest of that line is read and thrown away. The request
it answered gets an error instead (the proxy refuses the call as ``oversized``);
when the dropped line does not say which request it answered, the session is
ended, and the upstream is reconnected on its next use, as after a crash.

POSIX only (process groups); elsewhere the proxy uses the SDK's client.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
import mcp_types as types
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import StdioServerParameters
from mcp.client.stdio import get_default_environment
from mcp.os.posix.utilities import terminate_posix_process_tree
from mcp.shared.message import SessionMessage

__all__ = ["Dropped", "available", "limited_stdio", "split_lines"]

logger = logging.getLogger("agentguard_mcp")

#: Bytes kept from each end of a dropped line: enough for ``{"jsonrpc":"2.0","id":...``.
_EDGE = 256
#: Seconds the server gets to exit after its stdin closes, then after SIGTERM.
_EXIT_GRACE = 2.0

_ID = rb'(-?\d{1,18}|"(?:[^"\\]|\\.){0,128}")'
#: The id as the first or second member (Python SDK: ``{"jsonrpc":"2.0","id":7,...``).
_ID_FIRST = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID + rb"\s*,")
#: The id as the last member (TypeScript SDK: ``{"result":...,"jsonrpc":"2.0","id":7}``);
#: one closing brace after it, so it is a member of the outermost object.
_ID_LAST = re.compile(rb'[,{]\s*"id"\s*:\s*' + _ID + rb"\s*\}\s*$")


@dataclass(frozen=True)
class Dropped:
    """A line longer than the limit: its size and both ends, the middle never kept."""

    size: int
    head: bytes
    tail: bytes

    def request_id(self) -> types.RequestId | None:
        """The id of the request this message answered, when an end of it says so."""
        found = _ID_FIRST.search(self.head) or _ID_LAST.search(self.tail)
        if found is None:
            return None
        raw = found.group(1)
        if raw.startswith(b'"'):
            try:
                text = types.jsonrpc_message_adapter.validate_json(
                    b'{"jsonrpc":"2.0","method":"x","id":' + raw + b"}"
                )
            except ValueError:
                return None
            return getattr(text, "id", None)
        return int(raw)


async def split_lines(stream: ByteReceiveStream, max_bytes: int) -> AsyncIterator[bytes | Dropped]:
    """The stream's newline-separated lines; a line over ``max_bytes`` as :class:`Dropped`.

    At most ``max_bytes`` plus one read chunk is held at any time.
    """
    line = bytearray()
    dropping = 0  # bytes of the current line thrown away so far (0: keeping it)
    head = b""
    tail = b""
    async for chunk in stream:
        start = 0
        while start <= len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if dropping:
                dropping += len(piece)
                tail = (tail + piece[-_EDGE:])[-_EDGE:]
            elif len(line) + len(piece) > max_bytes:
                head = (bytes(line[:_EDGE]) + piece[:_EDGE])[:_EDGE]
                tail = (bytes(line[-_EDGE:]) + piece[-_EDGE:])[-_EDGE:]
                dropping = len(line) + len(piece)
                line = bytearray()
            else:
                line += piece
            if end < 0:
                break
            if dropping:
                yield Dropped(dropping, head, tail)
                dropping, head, tail = 0, b"", b""
            elif line.strip():
                yield bytes(line)
            line = bytearray()
            start = end + 1


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError as exc:
        # Not its text: pydantic quotes the input, which may hold argument values.
        logger.warning("upstream sent a line that is not a JSON-RPC message")
        return exc
    return SessionMessage(message)


#: What :func:`limited_stdio` yields: the session's read and write streams.
Streams = tuple[
    MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]
]


@asynccontextmanager
async def limited_stdio(
    params: StdioServerParameters, *, max_bytes: int, marker: str, namespace: str
) -> AsyncIterator[Streams]:
    """Run ``params``' server and connect to it; no message read may exceed ``max_bytes``.

    A dropped answer reaches the session as an error response to its request
    whose message is ``marker`` (the caller tells it from the upstream's own
    errors by that text).

    Raises:
        OSError: the server process cannot be started.
    """
    process = await anyio.open_process(
        [params.command, *params.args],
        env=get_default_environment() | (params.env or {}),
        cwd=params.cwd,
        stderr=sys.stderr,
        start_new_session=True,
    )
    incoming_send, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    outgoing, outgoing_receive = anyio.create_memory_object_stream[SessionMessage](0)

    async def read() -> None:
        assert process.stdout is not None  # noqa: S101 - opened with a pipe
        async with incoming_send:
            async for line in split_lines(process.stdout, max_bytes):
                if isinstance(line, bytes):
                    await incoming_send.send(_parse(line))
                    continue
                request_id = line.request_id()
                if request_id is None:
                    logger.warning(
                        "upstream %s: a message of %d bytes (over the %d-byte limit) answered "
                        "no request it names; the session is ended",
                        namespace,
                        line.size,
                        max_bytes,
                    )
                    return
                logger.warning(
                    "upstream %s: an answer of %d bytes is over the %d-byte limit; dropped unread",
                    namespace,
                    line.size,
                    max_bytes,
                )
                error = types.JSONRPCError(
                    jsonrpc="2.0",
                    id=request_id,
                    error=types.ErrorData(code=types.INTERNAL_ERROR, message=marker),
                )
                await incoming_send.send(SessionMessage(error))

    async def write() -> None:
        assert process.stdin is not None  # noqa: S101 - opened with a pipe
        try:
            async with outgoing_receive:
                async for message in outgoing_receive:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(data.encode() + b"\n")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The server stopped reading: end the session rather than let requests hang.
            await incoming_send.aclose()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            tg.start_soon(write)
            try:
                yield incoming, outgoing
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)
            for stream in (incoming, incoming_send, outgoing, outgoing_receive):
                await stream.aclose()


async def _stop(process: Process) -> None:
    """Close the server's stdin, give it a moment to exit, then end its process group."""
    if process.stdin is not None:
        with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.aclose()
    with anyio.move_on_after(_EXIT_GRACE):
        while process.returncode is None:
            await anyio.sleep(0.01)
    if process.returncode is None:
        await terminate_posix_process_tree(process, _EXIT_GRACE)
    with anyio.move_on_after(_EXIT_GRACE):
        await process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await pipe.aclose()


def available() -> bool:
    """Whether this platform gets the limited transport (POSIX process groups)."""
    return os.name == "posix"
