"""Connections from the proxy to its upstream MCP servers, built on ``mcp.Client``.

Each upstream is one long-lived client session, reopened when it dies. The proxy sends it rebuilt
requests only: the tool's own name, the (possibly edited) arguments and an
allow-listed ``_meta``; nothing the downstream caller sent is passed through
as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agentguard.errors import AgentGuardError
from agentguard_mcp import _stdio
from agentguard_mcp.config import UpstreamSpec

__all__ = [
    "ToolTraits",
    "Upstream",
    "UpstreamHealth",
    "UpstreamResultTooLarge",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "backoff_delay",
    "otel_environment",
    "tool_fingerprint",
    "tool_traits",
]

logger = logging.getLogger("agentguard_mcp")

_LIST_PAGE_CAP = 50
#: The code some servers (the TypeScript SDK's) put in their 404 "Session not found" body.
_SESSION_NOT_FOUND = -32001


def otel_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``OTEL_*`` variables of this process, handed to spawned upstreams.

    The SDK starts stdio servers with a minimal environment; without these their
    spans would not reach the same collector and the trace would break.
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


@dataclass(frozen=True)
class ToolTraits:
    """What the proxy believes about a tool's effects (DESIGN §9: annotations feed step-up)."""

    read_only: bool
    destructive: bool
    trusted: bool


def tool_traits(tool: types.Tool, *, trusted: bool) -> ToolTraits:
    """Read-only / destructive as the spec defaults them; untrusted annotations are ignored.

    An unannotated tool, or any tool of an untrusted upstream, is treated as
    destructive and not read-only: annotations are hints a server could lie in.
    """
    notes = tool.annotations if trusted else None
    if notes is None:
        return ToolTraits(read_only=False, destructive=True, trusted=trusted)
    read_only = notes.read_only_hint is True
    destructive = not read_only and notes.destructive_hint is not False
    return ToolTraits(read_only=read_only, destructive=destructive, trusted=True)


def tool_fingerprint(tool: types.Tool) -> str:
    """Digest of a tool's whole definition (rug-pull detection).

    Every field counts (name, title, description, input and output schemas,
    annotations, execution, icons, and any field a later protocol adds) except
    ``_meta``, which is the server's free-form side channel, not the definition.
    """
    shape = tool.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"meta"})
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


#: Largest exponent of the doubling: ``2.0 ** 1024`` overflows a float, and any
#: cap is reached long before this.
_MAX_DOUBLINGS = 62
#: Jitter needs no secrecy, but the system source needs no seeding either.
_JITTER_DRAW = secrets.SystemRandom().random


def backoff_delay(
    failures: int,
    *,
    first: float,
    cap: float,
    jitter: float = 0.0,
    draw: Callable[[], float] = _JITTER_DRAW,
) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: capped doubling with jitter.

    ``first * 2**failures``, at most ``cap``, then shortened by up to ``jitter``
    of itself (``draw()`` in ``[0, 1)``) so that proxies which lost an upstream
    together do not all knock on it again in the same second. Defined for any
    number of failures (no overflow after a long outage).
    """
    exponent = min(max(failures, 0), _MAX_DOUBLINGS)
    base = min(cap, first * math.ldexp(1.0, exponent))
    return base * (1.0 - jitter * min(max(draw(), 0.0), 1.0))


@dataclass(frozen=True)
class UpstreamHealth:
    """An upstream's session as the proxy sees it now.

    Attributes:
        state: ``healthy`` (a live session), ``lost`` (the session died; the
            next use tries to reconnect) or ``backing_off`` (reconnecting failed;
            no attempt before ``retry_at``).
        failures: failed reconnection attempts since the session was lost.
        retry_at: the ``monotonic`` time of the next attempt, when backing off.
        last_error: the last failure (an MCP error code or an exception type,
            never its text), or ``None``.
    """

    state: str
    failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None


class UpstreamUnavailable(AgentGuardError):
    """An upstream's session died, or is not back yet: the call did not reach it (or was lost).

    Attributes:
        namespace: the upstream's namespace.
        decision_id: the decision that allowed the call, when one was made.
    """

    def __init__(self, namespace: str, *, decision_id: str | None = None) -> None:
        super().__init__(f"upstream {namespace} is unavailable")
        self.namespace = namespace
        self.decision_id = decision_id

    def for_decision(self, decision_id: str | None) -> UpstreamUnavailable:
        """The same failure, tied to the decision that allowed the call."""
        return UpstreamUnavailable(self.namespace, decision_id=decision_id)


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream did not answer within its timeout: the call may or may not have run.

    Attributes:
        timeout: the upstream's timeout, in seconds.
    """

    def __init__(self, namespace: str, timeout: float, *, decision_id: str | None = None) -> None:
        super().__init__(namespace, decision_id=decision_id)
        self.args = (f"upstream {namespace} did not answer within {timeout:g} s",)
        self.timeout = timeout

    def for_decision(self, decision_id: str | None) -> UpstreamTimeout:
        """The same failure, tied to the decision that allowed the call."""
        return UpstreamTimeout(self.namespace, self.timeout, decision_id=decision_id)


class UpstreamResultTooLarge(AgentGuardError):
    """The upstream's answer was larger than its limit and was dropped unread (the call ran).

    Attributes:
        namespace: the upstream's namespace.
        limit: the upstream's ``max_result_bytes``.
        decision_id: the decision that allowed the call, when one was made.
    """

    def __init__(self, namespace: str, limit: int, *, decision_id: str | None = None) -> None:
        super().__init__(f"upstream {namespace} answered with more than {limit} bytes")
        self.namespace = namespace
        self.limit = limit
        self.decision_id = decision_id

    def for_decision(self, decision_id: str | None) -> UpstreamResultTooLarge:
        """The same failure, tied to the decision that allowed the call."""
        return UpstreamResultTooLarge(self.namespace, self.limit, decision_id=decision_id)


class _Connection:
    """One client session, entered and left by its own task (anyio scopes are task-bound)."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.error: BaseException | None = None
        self.settled = anyio.Event()
        self.closing = anyio.Event()
        self.scope = anyio.CancelScope()


class Upstream:
    """One upstream server: its spec, its live client session and its last tool listing.

    A session that dies (the process exits, the server restarts, the transport
    fails) marks the upstream broken: calls fail at once with
    :class:`UpstreamUnavailable` until :meth:`recover` (or :meth:`refresh`, which
    the proxy runs before it lists or looks up tools) reconnects it. Attempts
    are spaced out (:func:`backoff_delay`): ``retry_after * 2**n`` seconds after
    the n-th failed attempt in a row, at most ``retry_max``, shortened by up to
    ``jitter`` of itself, timed with ``monotonic``. :attr:`health` says where
    it stands.

    Raises:
        ValueError: a retry setting out of range (``retry_after`` not positive,
            ``retry_max`` below it, ``jitter`` outside ``[0, 1]``).
    """

    def __init__(
        self,
        spec: UpstreamSpec,
        *,
        read_timeout: float | None = None,
        connect_timeout: float = 30.0,
        retry_after: float = 1.0,
        retry_max: float = 30.0,
        jitter: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = _JITTER_DRAW,
    ) -> None:
        if not 0 < retry_after <= retry_max or not math.isfinite(retry_max):
            raise ValueError("need 0 < retry_after <= retry_max (finite)")
        if not 0 <= jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        self.spec = spec
        #: Seconds to wait for an answer (the spec's ``timeout`` unless given here).
        self.read_timeout: float = spec.timeout if read_timeout is None else read_timeout
        self.connect_timeout = connect_timeout
        self.retry_after = retry_after
        self.retry_max = retry_max
        self.jitter = jitter
        self.monotonic = monotonic
        self.draw = draw
        self.tools: dict[str, types.Tool] = {}
        self.server_name: str | None = None
        #: Bumped by every successful (re)connection: a catalogue built from an
        #: older listing must not send calls to the new session unchecked.
        self.generation = 0
        self._connection: _Connection | None = None
        self._task_group: TaskGroup | None = None
        self._lock: anyio.Lock | None = None
        self._broken = False
        self._failures = 0
        self._next_attempt = -math.inf
        self._last_error: str | None = None
        #: The error text our own stdio transport answers an oversized message
        #: with: random, so an upstream cannot produce it.
        self._too_large = f"agentguard: answer over the size limit ({secrets.token_hex(12)})"
        #: Awaited (in a task of its own) when the upstream says its tool list changed
        #: (``notifications/tools/list_changed``); the proxy re-lists and re-checks pins.
        self.on_tools_changed: Callable[[], Awaitable[None]] | None = None
        #: How many list_changed notifications the upstream sent (test and log aid).
        self.changes_announced = 0
        self._following = False  # a re-list for an announced change runs
        self._again = False  # another change was announced meanwhile

    @property
    def namespace(self) -> str:
        """The namespace this upstream's tools live in."""
        return self.spec.namespace

    @property
    def broken(self) -> bool:
        """Whether the session died and has not been reconnected yet."""
        return self._broken

    @property
    def health(self) -> UpstreamHealth:
        """The session's state: healthy, lost, or backing off until a given time."""
        if not self._broken:
            return UpstreamHealth("healthy", last_error=self._last_error)
        if self._failures == 0 or self.monotonic() >= self._next_attempt:
            return UpstreamHealth("lost", self._failures, None, self._last_error)
        return UpstreamHealth("backing_off", self._failures, self._next_attempt, self._last_error)

    def _target(self, stack: AsyncExitStack) -> Any:
        spec = self.spec
        if spec.command is not None:
            params = StdioServerParameters(
                command=spec.command[0],
                args=list(spec.command[1:]),
                env={**otel_environment(), **spec.env},
                cwd=spec.cwd,
            )
            if not _stdio.available():
                return params
            return _stdio.limited_stdio(
                params,
                max_bytes=spec.max_result_bytes,
                marker=self._too_large,
                namespace=spec.namespace,
            )
        assert spec.url is not None  # noqa: S101 - UpstreamSpec guarantees one of the two
        # Only the proxy's own configured headers: never anything of the caller's.
        http = httpx2.AsyncClient(
            headers=dict(spec.headers),
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        stack.push_async_callback(http.aclose)
        return streamable_http_client(spec.url, http_client=http)

    async def connect(self, stack: AsyncExitStack) -> None:
        """Open the session (its lifetime, and every reconnection's, is ``stack``'s).

        Raises:
            Exception: whatever prevented the first session (the process cannot
                start, the server cannot be reached, the handshake failed).
        """
        self._lock = anyio.Lock()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        # Runs before the task group exits (LIFO): each session leaves its
        # context in its own task, cleanly.
        stack.callback(self._close)
        connection = await self._open()
        if connection.client is None:
            raise _cause(connection.error) from None
        await self._list(connection.client)

    async def _open(self) -> _Connection:
        """Start a session in its own task; wait (bounded) until it is up or has failed."""
        if self._task_group is None:
            raise RuntimeError(f"upstream {self.namespace} was never connected")
        connection = _Connection()
        self._task_group.start_soon(self._hold, connection, name=f"upstream {self.namespace}")
        with anyio.move_on_after(self.connect_timeout):
            await connection.settled.wait()
        if not connection.settled.is_set():
            connection.error = TimeoutError("no session within the connect timeout")
            connection.scope.cancel()
            return connection
        if connection.client is not None:
            self._connection = connection
            self.generation += 1
            info = connection.client.server_info
            self.server_name = info.name if info is not None else None
        return connection

    async def _hold(self, connection: _Connection) -> None:
        """Hold one session open until it is closed or dies (a transport task failing)."""
        # cache=None: a listing must always come from the upstream itself, so a
        # changed definition is noticed (rug-pull defence). A stdio upstream is one
        # long-lived session, what the 2025-11-25 era is made for; the stateless
        # era would repeat client info and capabilities in every request (about
        # 0.3 ms per call, benchmarks/mcp_proxy.py).
        mode = "legacy" if self.spec.command is not None else "auto"
        with connection.scope:
            try:
                async with AsyncExitStack() as stack:
                    client = Client(
                        self._target(stack),
                        mode=mode,
                        cache=None,
                        message_handler=self._on_message,
                        # The handshake and listings get the connect timeout too;
                        # each call gets exactly the upstream's timeout (below).
                        read_timeout_seconds=max(self.read_timeout, self.connect_timeout),
                    )
                    await stack.enter_async_context(client)
                    connection.client = client
                    connection.settled.set()
                    if _announces_on_streams(client):
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._listen, client)
                            await connection.closing.wait()
                            tg.cancel_scope.cancel()
                    else:
                        await connection.closing.wait()
            except Exception as exc:  # noqa: BLE001 - any failure of a session ends it; never the proxy
                connection.error = exc
                closed = connection.closing.is_set()
                if connection.client is not None and connection is self._connection and not closed:
                    self._mark_broken(exc)
            finally:
                connection.settled.set()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.closing.set()

    async def _on_message(self, message: Any) -> None:
        """The session's handler for what the upstream sends unasked: a tool-list change
        starts :attr:`on_tools_changed` in its own task (the handler must not wait on
        the session it is called from); everything else is ignored."""
        await anyio.lowlevel.checkpoint()
        if not isinstance(message, types.ToolListChangedNotification):
            return
        self.changes_announced += 1
        if self._following:
            self._again = True  # coalesced: one more re-list after the running one
            return
        if self.on_tools_changed is not None and self._task_group is not None:
            self._following = True
            self._task_group.start_soon(self._follow, name=f"upstream {self.namespace} changed")

    async def _listen(self, client: Client) -> None:
        """At 2026-07-28 a server announces tool-list changes only on a
        ``subscriptions/listen`` stream: hold one open for the session's life
        (opened again after ``retry_after`` when it drops)."""
        while True:
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    if not subscription.honored.tools_list_changed:
                        return  # the server will not announce them after all
                    async for _event in subscription:
                        await self._on_message(types.ToolListChangedNotification())
            except Exception as exc:  # noqa: BLE001 - the session itself decides its fate
                logger.debug(
                    "upstream %s: listen stream ended (%s)", self.namespace, _describe(exc)
                )
            await anyio.sleep(self.retry_after)

    async def _follow(self) -> None:
        """Run :attr:`on_tools_changed` until no change was announced during the last run."""
        try:
            while True:
                self._again = False
                handler = self.on_tools_changed
                if handler is None:
                    return
                try:
                    await handler()
                except Exception as exc:  # noqa: BLE001 - a failed re-list is retried on the next listing
                    logger.warning(
                        "upstream %s: re-listing after its tools changed failed (%s)",
                        self.namespace,
                        _describe(exc),
                    )
                if not self._again:
                    return
        finally:
            self._following = False

    def _mark_broken(self, exc: BaseException) -> None:
        if not self._broken:
            self._last_error = _describe(exc)
            logger.warning(
                "upstream %s: session lost (%s); reconnecting on next use",
                self.namespace,
                self._last_error,
            )
        self._broken = True

    @property
    def client(self) -> Client:
        """The live client session.

        Raises:
            RuntimeError: the upstream is not connected.
        """
        if self._connection is None or self._connection.client is None:
            raise RuntimeError(f"upstream {self.namespace} is not connected")
        return self._connection.client

    def _live_client(self) -> Client:
        if self._broken or self._connection is None or self._connection.client is None:
            raise UpstreamUnavailable(self.namespace)
        return self._connection.client

    async def recover(self) -> bool:
        """Reconnect a broken upstream and re-read its listing, if an attempt is due now.

        Returns whether a new session was opened (``False``: it was not broken).
        A failed attempt is logged once per outage (and again when its cause
        changes), not once per attempt.

        Raises:
            UpstreamUnavailable: no attempt is due yet, or the attempt failed.
        """
        if not self._broken:
            return False
        if self._lock is None:
            raise UpstreamUnavailable(self.namespace)
        async with self._lock:
            if not self._broken:  # another caller reconnected it meanwhile
                return False
            now = self.monotonic()
            if now < self._next_attempt:
                raise UpstreamUnavailable(self.namespace)
            error = await self._attempt()
            if error is not None:
                self._failed(now, error)
                raise UpstreamUnavailable(self.namespace) from None
            failures, self._failures = self._failures, 0
            self._next_attempt = now + self.retry_after
            self._last_error = None
            self._broken = False
            if failures:
                logger.warning(
                    "upstream %s: reconnected after %d failed attempt(s)", self.namespace, failures
                )
            else:
                logger.warning("upstream %s: reconnected", self.namespace)
            return True

    async def _attempt(self) -> BaseException | None:
        """One reconnection: a new session with a complete listing, or the failure."""
        if self._connection is not None:
            self._connection.closing.set()
        try:
            connection = await self._open()
            if connection.client is None:
                return connection.error or RuntimeError("no session")
            try:
                await self._list(connection.client)
            except Exception:  # the new session is no better: drop it
                connection.closing.set()
                raise
        except Exception as exc:  # noqa: BLE001 - whatever failed, this attempt failed
            return exc
        return None

    def _failed(self, now: float, error: BaseException) -> None:
        """Count a failed attempt and schedule the next one (capped, jittered back-off)."""
        self._failures += 1
        delay = backoff_delay(
            self._failures,
            first=self.retry_after,
            cap=self.retry_max,
            jitter=self.jitter,
            draw=self.draw,
        )
        self._next_attempt = now + delay
        cause = _describe(error)
        # Once per outage, and when the cause changes: a day-long outage must not
        # write a line every few seconds.
        first = self._failures == 1 or cause != self._last_error
        level = logging.WARNING if first else logging.DEBUG
        self._last_error = cause
        logger.log(
            level,
            "upstream %s: reconnection failed (%s); its tools are withheld and calls refused "
            "until it is back; retrying with back-off up to %.0f s (next in %.0f s)",
            self.namespace,
            cause,
            self.retry_max,
            delay,
        )

    async def refresh(self) -> dict[str, types.Tool]:
        """Fetch the complete tool listing again (bounded pagination).

        A broken upstream is reconnected first (:meth:`recover`).

        Raises:
            UpstreamUnavailable: the session is (or just became) unusable.
            MCPError: the upstream answered the listing with an error.
        """
        if self._broken:
            await self.recover()
            return self.tools
        client = self._live_client()
        try:
            return await self._list(client)
        except MCPError as exc:
            if not self._session_lost(exc):
                raise
            self._mark_broken(exc)
        except Exception as exc:  # noqa: BLE001 - a failing transport: the session is unusable
            self._mark_broken(exc)
        raise UpstreamUnavailable(self.namespace)

    async def _list(self, client: Client) -> dict[str, types.Tool]:
        tools: dict[str, types.Tool] = {}
        cursor: str | None = None
        for _ in range(_LIST_PAGE_CAP):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                tools[tool.name] = tool
            cursor = page.next_cursor
            if cursor is None:
                break
        self.tools = tools
        return tools

    async def call(
        self, name: str, arguments: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> types.CallToolResult:
        """Call ``name`` with rebuilt params: exactly these arguments and this ``_meta``.

        A broken upstream is not reconnected here: a new session may list other
        definitions, which must be checked (:meth:`refresh`) before any call.

        Raises:
            UpstreamUnavailable: the session is broken, or died during the call
                (which may or may not have run).
            UpstreamTimeout: no answer within the upstream's timeout (the call
                may or may not have run).
            UpstreamResultTooLarge: the answer was over ``max_result_bytes``
                and was dropped unread.
            MCPError: the upstream answered with an error.
        """
        client = self._live_client()
        try:
            return await client.call_tool(
                name,
                dict(arguments),
                # RequestParamsMeta is a TypedDict with extra_items (PEP 728), which
                # mypy cannot match a plain dict against.
                meta=dict(meta) if meta else None,  # type: ignore[arg-type]
                read_timeout_seconds=self.read_timeout,
            )
        except MCPError as exc:
            if exc.error.message == self._too_large:
                raise UpstreamResultTooLarge(self.namespace, self.spec.max_result_bytes) from None
            if exc.code == types.REQUEST_TIMEOUT and exc.error.message.endswith("timed out"):
                logger.warning(
                    "upstream %s: no answer to a call within %g s",
                    self.namespace,
                    self.read_timeout,
                )
                raise UpstreamTimeout(self.namespace, self.read_timeout or 0.0) from None
            if not self._session_lost(exc):
                raise
            self._mark_broken(exc)
        except Exception as exc:  # noqa: BLE001 - a failing transport: the session is unusable
            self._mark_broken(exc)
        raise UpstreamUnavailable(self.namespace)

    def _session_lost(self, exc: MCPError) -> bool:
        """Whether an error means the session is gone (not that the upstream refused a request)."""
        if exc.code == types.CONNECTION_CLOSED and exc.error.message == "Connection closed":
            return True
        # A restarted HTTP server has forgotten the session: it answers 404 (the SDK
        # client's "Session terminated"; servers' own "Session not found" bodies),
        # and the spec wants a new session then (2025-11-25, session management).
        return (
            self.spec.url is not None
            and exc.code in (types.INVALID_REQUEST, _SESSION_NOT_FOUND)
            and "session" in exc.error.message.lower()
        )


def _announces_on_streams(client: Client) -> bool:
    """Whether the session is at 2026-07-28 and the server announces tool-list changes
    (which it then does on ``subscriptions/listen`` streams only)."""
    if client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return False
    tools = client.server_capabilities.tools
    return tools is not None and tools.list_changed is True


def _describe(exc: BaseException) -> str:
    """A failure for the log: its MCP error code or its type, never its text.

    An exception's text may carry a URL with credentials, or argument values.
    """
    cause = _cause(exc)
    if isinstance(cause, MCPError):
        return (
            "connection closed"
            if cause.code == types.CONNECTION_CLOSED
            else f"MCP error {cause.code}"
        )
    return type(cause).__name__


def _cause(exc: BaseException | None) -> BaseException:
    """The one failure inside (nested) single-member exception groups, for logs and callers."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if exc is not None else RuntimeError("no session")
