"""The gating proxy: an MCP server (SDK low-level ``Server``) in front of upstream MCP servers.

For every caller it lists only the tools the caller's delegation reaches, and
sends every ``tools/call`` through the guard: verify the chain, decide, ask for
step-up approval through the protocol when the client can answer, audit, then
forward rebuilt params to the upstream. A refusal is an ``isError`` result with
a short reason and the decision id; it never echoes tokens or arguments. So is
a call whose upstream session died: the upstream is reconnected on the next
listing or call to it, and its tools are checked against their pins again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from opentelemetry import baggage
from opentelemetry import context as otel_context

from agentguard import Reason
from agentguard.addresses import pattern_matches
from agentguard.approval import peek_receipt, pending_note
from agentguard.argschema import ArgumentSchemaError, check_arguments, fill_defaults
from agentguard.audit import defaults_filled
from agentguard.delegation import Delegation
from agentguard.errors import (
    AgentGuardError,
    ApprovalPending,
    ApprovalRejected,
    ConfigError,
    DeniedError,
    StoreError,
)
from agentguard.guard import Decision, Guard, current_decision
from agentguard.keys import Identity, secret_keys
from agentguard.policy import assurance_at_least
from agentguard.verify import VerifiedChain
from agentguard_mcp._names import client_name, tool_address
from agentguard_mcp.config import check_namespaces, check_page_url
from agentguard_mcp.upstream import (
    ToolTraits,
    Upstream,
    UpstreamResultTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
    tool_fingerprint,
    tool_traits,
)

__all__ = [
    "FORWARDED_META_KEYS",
    "META_APPROVAL",
    "META_CALL",
    "META_DECISION",
    "META_DELEGATION",
    "META_TOOL",
    "Caller",
    "ExposedTool",
    "GuardedProxy",
    "bearer_token",
    "granted_namespaces",
]

logger = logging.getLogger("agentguard_mcp")

#: ``_meta`` key holding a call token (caller -> proxy over HTTP, proxy -> aware upstream).
META_CALL = "io.agentguard/call"
#: ``_meta`` key holding the delegation string (proxy -> agentguard-aware upstream only).
META_DELEGATION = "io.agentguard/delegation"
#: ``_meta`` key on listed tools: the tool's ``namespace/tool`` address.
META_TOOL = "io.agentguard/tool"
#: ``_meta`` key on listed tools: ``"required"`` when a call will need step-up approval;
#: on a ``tools/call`` to an agentguard-aware upstream: the approval receipt the
#: guard used for this call (proxy -> aware upstream only).
META_APPROVAL = "io.agentguard/approval"
#: ``_meta`` key on refusals: decision id, reason code and (when pending) request id.
META_DECISION = "io.agentguard/decision"
#: The only caller ``_meta`` keys that cross to an upstream (W3C trace context).
FORWARDED_META_KEYS = ("traceparent", "tracestate")

_APPROVAL_INPUT = "agentguard_approval"
# The pin of a tool whose stored pin could not be read: matches no fingerprint.
_UNCONFIRMED = "unconfirmed: the store could not be read"
#: Deepest nesting of arguments the proxy accepts. The SDK's client cannot
#: serialise a request much deeper (pydantic stops at 255 levels, and that error
#: kills the upstream session for every caller); no real tool needs more.
_MAX_ARGS_DEPTH = 64
_ANNOTATION_REASON = "MCP annotations: destructive tool"
_STATE_TTL = 300.0
#: Key, in an HTTP request's ASGI ``state``, of the caller the gate derived from an
#: identity-provider access token.
STATE_CALLER = "agentguard.caller"
#: The file in the state directory holding the keys that seal input-required state.
REQUEST_STATE_KEY_FILE = "request-state.key"
#: Worker threads for the proxy's own store reads and writes, apart from the
#: guard's: calls stuck behind a lock must not queue up the listings.
_STORE_THREADS = 16
_T = TypeVar("_T")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the delegation, and either the holder's key or the caller's call token."""

    delegation: str
    holder: Identity | None = field(default=None, repr=False)
    call_token: str | None = field(default=None, repr=False)

    @property
    def binding(self) -> str:
        """A stable, non-secret id of this caller (the leaf link id) for binding state."""
        try:
            return Delegation.parse(self.delegation).leaf.link_id
        except AgentGuardError:
            return "invalid"


@dataclass
class ExposedTool:
    """A tool as the proxy shows it: client-safe name, address, upstream and traits."""

    name: str
    address: str
    upstream: Upstream
    tool: types.Tool
    traits: ToolTraits
    fingerprint: str
    changed: bool = False
    #: The upstream session whose listing this entry was built from.
    generation: int = 0


class _Refusal(Exception):
    """Internal: stop handling a call and answer with this refusal."""

    def __init__(self, text: str, meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.meta = dict(meta or {})


def _refusal(text: str, meta: Mapping[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=text)],
        is_error=True,
        _meta={META_DECISION: dict(meta)} if meta else None,
    )


def _denied(exc: DeniedError) -> types.CallToolResult:
    if exc.reason == Reason.STORE_ERROR:
        # The caller gets the code; the operator needs the store's own words.
        logger.warning("tools/call refused: %s", exc.explanation)
    meta: dict[str, Any] = {"reason": exc.reason}
    if exc.decision_id:
        meta["decision_id"] = exc.decision_id
    if isinstance(exc, ApprovalPending | ApprovalRejected):
        meta["approval_request_id"] = exc.request_id
    text = exc.short
    if isinstance(exc, ApprovalRejected):
        # The approver's words are meant for the agent: it can adjust and try again.
        meta["approver"] = exc.approver
        if exc.decision_id:
            # Its short text ends "(request ID)" without the decision: add it there.
            text = f"{text[:-1]}, decision {exc.decision_id})"
    return _refusal(text, meta)


_STORE_ERROR_TEXT = "denied by agentguard (store_error: the state store did not answer; try again)"


def _unavailable_text(exc: UpstreamUnavailable) -> str:
    # The namespace only: the cause (an exception's text) may name hosts or credentials.
    if isinstance(exc, UpstreamTimeout):
        return (
            f"upstream timed out ({exc.namespace}): no answer within {exc.timeout:g} s; "
            "the call may have run"
        )
    return f"upstream unavailable ({exc.namespace}); try again shortly"


def _too_large(exc: UpstreamResultTooLarge) -> types.CallToolResult:
    meta: dict[str, Any] = {"reason": Reason.OVERSIZED}
    if exc.decision_id:
        meta["decision_id"] = exc.decision_id
    return _refusal(
        f"upstream answer too large ({exc.namespace}): over {exc.limit} bytes, "
        "dropped unread; the call ran",
        meta,
    )


def _unavailable(exc: UpstreamUnavailable) -> types.CallToolResult:
    meta: dict[str, Any] = {"reason": Reason.UPSTREAM_UNAVAILABLE}
    if exc.decision_id:
        meta["decision_id"] = exc.decision_id
    return _refusal(_unavailable_text(exc), meta)


def _pending_text(request_id: str, why: str) -> types.CallToolResult:
    return _refusal(
        f"approval pending, id={request_id} ({why}; an approver can answer out of band)",
        {"reason": Reason.APPROVAL_PENDING, "approval_request_id": request_id},
    )


@dataclass(frozen=True)
class _Where:
    """Who may answer a pending request, and the approval page if an answer there counts."""

    who: Sequence[str] | None
    page: str | None


def _pending_where(pending: ApprovalPending, where: _Where) -> types.CallToolResult:
    """The "approval pending, id=…" result, with who can answer and how; no argument value."""
    meta: dict[str, Any] = {
        "reason": pending.reason,
        "approval_request_id": pending.request_id,
    }
    if pending.decision_id:
        meta["decision_id"] = pending.decision_id
    text = pending.short
    if where.who is not None:
        # What the model reads: that a person must approve and who can; never a command
        # (an agent with a shell must not be handed the one that approves).
        text += f": {pending_note(where.who)}"
    if where.page is not None:
        meta["approval_page"] = where.page
        text += f"; approval page: {where.page}"
    return _refusal(text + "; call again once it is approved", meta)


def _clean_result(result: types.CallToolResult) -> types.CallToolResult:
    """Rebuild the upstream's result: content and structured content only, no upstream ``_meta``."""
    return types.CallToolResult(
        content=list(result.content),
        structured_content=result.structured_content,
        is_error=result.is_error,
    )


#: Seconds a client's connection may take to accept a tool-list change notification.
_ANNOUNCE_TIMEOUT_S = 5.0


class _ProxyServer(Server[Any]):
    """The proxy's MCP server: it announces tool-list changes (``tools.listChanged``),
    whichever transport builds its initialization options."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


class GuardedProxy:
    """The proxy's state and MCP handlers.

    When an upstream announces that its tools changed
    (``notifications/tools/list_changed``), the proxy re-reads the listings at
    once, applies the pins (a redefined tool is hidden and refused as changed, a
    new one appears) and, when what it serves changed, announces it to its own
    clients: on their sessions (2025-11-25) and on ``subscriptions/listen``
    streams (2026-07-28).

    Args:
        guard: the :class:`agentguard.guard.Guard` that decides every call.
        upstreams: the upstream servers, each its own namespace.
        caller: over stdio, the fixed caller (the agent's delegation and key);
            ``None`` over HTTP, where each request brings its own.
        prefixed: show ``namespace__tool`` names (default: when several upstreams).
        name: the proxy's MCP server name.
        annotation_step_up: destructive tools (by annotation; every tool of an
            untrusted upstream) need step-up approval.
        annotation_assurance: the assurance those approvals need.
        elicitation_approver: who answers approval forms in the MCP client, as
            the operator asserts it. Without it an answer is recorded as the
            holder's (the client of the agent answered), at the policy's
            ``approval.agent_channel_assurance``; forms are offered only when
            such an answer can count.
        approval_page: the approval page's address (``agentguard approvals
            serve``). A caller whose request the page can answer (its answers,
            at ``authenticated``, would count) is told it, and a client that
            supports URL-mode elicitation is offered it (never as a form).
        forward_baggage: let the caller's W3C baggage reach upstreams. Off by
            default: baggage is caller-controlled data an upstream should not
            receive through us; trace context (``traceparent``/``tracestate``)
            always crosses so the trace stays one.
        relist_interval: a ``tools/call`` for a name not in the catalogue re-reads
            the upstreams' listings at most once per this many seconds; other
            unknown names are answered from the catalogue as it is.
        monotonic: the clock (seconds) for ``relist_interval``.
        state_keys: the keys that seal the 2026-07-28 input-required state
            (the first seals, every one unseals). Default: those in
            ``request-state.key`` in the guard's state directory (made there
            once), so proxies sharing that file accept each other's state;
            a guard without a state directory uses a key of this process only.
    """

    def __init__(
        self,
        guard: Guard,
        upstreams: Sequence[Upstream],
        *,
        caller: Caller | None = None,
        prefixed: bool | None = None,
        name: str = "agentguard-mcp",
        annotation_step_up: bool = True,
        annotation_assurance: str = "local",
        elicitation_approver: str | None = None,
        approval_page: str | None = None,
        forward_baggage: bool = False,
        relist_interval: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        state_keys: Sequence[bytes] | None = None,
    ) -> None:
        self.guard = guard
        if state_keys is None:
            home = guard.home
            state_keys = (
                [os.urandom(32)] if home is None else secret_keys(home / REQUEST_STATE_KEY_FILE)
            )
        self._state_keys = list(state_keys)
        self.upstreams = list(upstreams)
        self.caller = caller
        self.prefixed = len(self.upstreams) > 1 if prefixed is None else prefixed
        if self.prefixed:
            check_namespaces([u.namespace for u in self.upstreams])
        self.name = name
        self.annotation_step_up = annotation_step_up
        self.annotation_assurance = annotation_assurance
        self.elicitation_approver = elicitation_approver
        self.approval_page = None if approval_page is None else check_page_url(approval_page)
        self.forward_baggage = forward_baggage
        self.relist_interval = relist_interval
        self.monotonic = monotonic
        self.tools: dict[str, ExposedTool] = {}
        #: Client names two or more tools map to: withdrawn, calls refused (name_collision).
        self.collisions: dict[str, tuple[str, ...]] = {}
        self._pins: dict[str, str] = {}
        self._listed_at: float | None = None
        self._store_threads: anyio.CapacityLimiter | None = None
        # Where tool-list changes are announced: the connections of 2025-11-25 clients
        # that listed tools (held weakly: a closed one drops out) and the listen
        # streams of 2026-07-28 clients.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._events = InMemorySubscriptionBus()
        #: How many tool-list changes this proxy announced to its clients.
        self.changes_announced = 0
        for upstream in self.upstreams:
            upstream.on_tools_changed = self._follower(upstream)
        self.server = self._build_server()

    # -- lifecycle ------------------------------------------------------------

    async def start(self, stack: AsyncExitStack) -> None:
        """Connect every upstream (closed with ``stack``) and build the catalogue.

        Raises:
            ConfigError: two tools map to one client-facing name.
        """
        for upstream in self.upstreams:
            await upstream.connect(stack)
        self._listed_at = self.monotonic()
        await self.load_pins()
        self.rebuild(strict=True)

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces this proxy serves."""
        return tuple(u.namespace for u in self.upstreams)

    async def load_pins(self) -> None:
        """Pin the upstreams' tool definitions in the guard's store and adopt its pins.

        With a store that keeps pins (``pin_tools``) the first definition any proxy on
        that store pinned wins, so a tool changed while this proxy was down, or seen
        first by another replica, is flagged by the next :meth:`rebuild`. When the
        store cannot answer, a tool this proxy has not pinned yet is refused as
        changed until it can (fail closed). Without ``pin_tools`` pins stay in memory.
        """
        pin = getattr(self.guard.store, "pin_tools", None)
        if pin is None:
            return
        seen: dict[str, str] = {}
        for upstream in self.upstreams:
            for tool in upstream.tools.values():
                address = tool_address(upstream.namespace, tool.name)
                if address is not None:
                    seen[address] = tool_fingerprint(tool)
        try:
            pinned = await self._off_loop(lambda: pin(seen))
        except StoreError as exc:
            logger.error("tool pins could not be read from the store (%s)", exc)
            for address in seen:
                self._pins.setdefault(address, _UNCONFIRMED)
            return
        self._pins.update(pinned)

    def rebuild(self, *, strict: bool = False) -> None:
        """Rebuild the catalogue from the upstreams' last listings (changed tools get flagged).

        Client-facing names stay injective. Tools that map to one name are
        refused at start-up (``strict``); when a later listing brings such a
        pair in, every tool of the pair is withdrawn and its calls are refused
        (``name_collision``), never one silently shadowing the other.

        Raises:
            ConfigError: (``strict`` only) two tools map to one client-facing name.
        """
        tools: dict[str, ExposedTool] = {}
        claimed: dict[str, list[str]] = {}
        for upstream in self.upstreams:
            for tool in upstream.tools.values():
                address = tool_address(upstream.namespace, tool.name)
                if address is None:
                    logger.warning(
                        "skipping tool with an unaddressable name in %s", upstream.namespace
                    )
                    continue
                name = client_name(upstream.namespace, tool.name, prefixed=self.prefixed)
                fingerprint = tool_fingerprint(tool)
                pinned = self._pins.setdefault(address, fingerprint)
                exposed = ExposedTool(
                    name=name,
                    address=address,
                    upstream=upstream,
                    tool=tool,
                    traits=tool_traits(tool, trusted=upstream.spec.trusted),
                    fingerprint=fingerprint,
                    changed=pinned != fingerprint,
                    generation=upstream.generation,
                )
                if exposed.changed:
                    logger.warning(
                        "tool %s changed its definition since it was first seen", address
                    )
                claimed.setdefault(name, []).append(address)
                tools.setdefault(name, exposed)
        collisions = {name: tuple(a) for name, a in claimed.items() if len(a) > 1}
        for name, addresses in collisions.items():
            described = " and ".join(addresses)
            if strict:
                raise ConfigError(
                    f"tools {described} map to the same client name {name}; "
                    "rename one of them or their namespaces"
                )
            logger.error(
                "tools %s map to the same client name %s: both are withdrawn and refused",
                described,
                name,
            )
            del tools[name]
        self.collisions = collisions
        self.tools = tools

    def step_up_for(self, exposed: ExposedTool) -> list[tuple[str, str]]:
        """Approval demands this enforcement point adds for ``exposed`` (on top of the policy's).

        A destructive tool (by its annotations; an unannotated tool, or any tool
        of an untrusted upstream) needs approval at ``annotation_assurance``.
        """
        if self.annotation_step_up and exposed.traits.destructive:
            return [(_ANNOTATION_REASON, self.annotation_assurance)]
        return []

    async def refresh(self) -> None:
        """Re-read every upstream's tool listing (changed definitions get flagged).

        The upstreams are read side by side. A broken upstream is reconnected
        when an attempt is due; one that cannot be reached keeps its last
        listing but is left out of ``tools/list`` (its calls fail cleanly
        meanwhile), so one upstream never takes the others' tools down with it.
        """
        self._listed_at = self.monotonic()

        async def one(upstream: Upstream) -> None:
            try:
                await upstream.refresh()
            except UpstreamUnavailable:
                pass  # logged by the upstream; its tools are withheld meanwhile
            except MCPError as exc:
                logger.warning(
                    "upstream %s: listing failed (MCP error %s)", upstream.namespace, exc.code
                )
            except Exception as exc:  # noqa: BLE001 - one upstream's fault stays its own
                logger.error(
                    "upstream %s: listing failed (%s)", upstream.namespace, type(exc).__name__
                )

        async with anyio.create_task_group() as tg:
            for upstream in self.upstreams:
                tg.start_soon(one, upstream)
        await self.load_pins()
        self.rebuild()

    def _follower(self, upstream: Upstream) -> Callable[[], Any]:
        async def changed() -> None:
            await self.tools_changed(upstream)

        return changed

    def _served(self) -> dict[str, tuple[str, bool]]:
        return {name: (e.fingerprint, e.changed) for name, e in self.tools.items()}

    async def tools_changed(self, upstream: Upstream) -> None:
        """``upstream`` announced a tool-list change: re-read the listings, apply the
        pins, and tell this proxy's clients when what it serves changed."""
        logger.info("upstream %s: its tools changed; re-listing", upstream.namespace)
        before = self._served()
        await self.refresh()
        if self._served() != before:
            await self.announce_tools_changed()

    async def announce_tools_changed(self) -> None:
        """Send ``notifications/tools/list_changed`` to every client that may care."""
        self.changes_announced += 1
        for connection in list(self._connections):
            # A client that went away, or stopped reading, is dropped.
            with anyio.move_on_after(_ANNOUNCE_TIMEOUT_S) as waited:
                try:
                    await connection.send_tool_list_changed()
                except Exception:  # noqa: BLE001 - see above
                    self._connections.discard(connection)
            if waited.cancelled_caught:
                self._connections.discard(connection)
        await self._events.publish(ToolsListChanged())

    async def _relist(self) -> None:
        """:meth:`refresh`, unless the listings were read less than ``relist_interval`` ago."""
        last = self._listed_at
        if last is not None and self.monotonic() - last < self.relist_interval:
            return
        await self.refresh()

    # -- the MCP server -------------------------------------------------------

    def _build_server(self) -> Server[Any]:
        server: Server[Any] = _ProxyServer(
            self.name,
            version=_version(),
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
            get_tool_input_schema=self._input_schema,
            on_subscriptions_listen=ListenHandler(self._events),
        )
        # Sealed, caller-bound, argument-bound input-required state (2026-07-28).
        security = RequestStateSecurity(
            keys=self._state_keys, ttl=_STATE_TTL, bind_principal=self._state_principal
        )
        server.middleware.append(RequestStateBoundary(security, default_audience=self.name))
        return server

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        exposed = self.tools.get(name)
        return exposed.tool.input_schema if exposed is not None else None

    def _state_principal(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        try:
            return self._caller(ctx).binding
        except _Refusal:
            return None

    # -- callers --------------------------------------------------------------

    def _caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller:
        """The caller of this request: fixed over stdio, from the request over HTTP."""
        if self.caller is not None:
            return self.caller
        # An identity-provider token, turned into a caller by the HTTP gate (serve.py).
        scope = getattr(ctx.request, "scope", None)
        derived = scope.get("state", {}).get(STATE_CALLER) if isinstance(scope, dict) else None
        if isinstance(derived, Caller):
            return derived
        headers = getattr(ctx.request, "headers", None)
        delegation = bearer_token(headers.get("authorization")) if headers is not None else None
        if delegation is None:
            raise _Refusal(
                "denied by agentguard (no_credentials)", {"reason": Reason.NO_CREDENTIALS}
            )
        token = (ctx.meta or {}).get(META_CALL)
        return Caller(delegation, call_token=token if isinstance(token, str) else None)

    def verified_chain(self, delegation: str) -> VerifiedChain:
        """Verify a delegation's chain (trust, signatures, windows, revocation).

        Raises:
            DeniedError: the chain is not valid now.
            StoreError: the revocation list could not be read.
        """
        return self.guard.verify_chain(delegation)

    async def averified_chain(self, delegation: str) -> VerifiedChain:
        """:meth:`verified_chain` off the event loop (it reads revocations from the store).

        Raises:
            DeniedError: the chain is not valid now.
            StoreError: the revocation list could not be read (within the
                store's timeout, when another process holds a lock).
        """
        return await self._off_loop(lambda: self.guard.verify_chain(delegation))

    async def _off_loop(self, work: Callable[[], _T]) -> _T:
        """Run store work in a worker thread, so a locked file never stalls other callers.

        An in-memory store answers at once: no thread.
        """
        if self.guard.store.durability == "memory":
            return work()
        if self._store_threads is None:
            self._store_threads = anyio.CapacityLimiter(_STORE_THREADS)
        return await anyio.to_thread.run_sync(work, limiter=self._store_threads)

    def reachable_namespaces(self, chain: VerifiedChain) -> set[str]:
        """The namespaces of this proxy that every link of the chain has a rule for."""
        return {
            namespace
            for namespace in self.namespaces
            if all(
                any(_namespace_matches(rule.tool, namespace) for rule in grant.scope)
                for grant in chain.delegation
            )
        }

    def _reaches(self, chain: VerifiedChain, address: str) -> tuple[bool, bool]:
        """Whether every link has a rule for ``address``; and whether approval is certain."""
        needs = False
        for grant in chain.delegation:
            rules = [r for r in grant.scope if r.matches_tool(address)]
            if not rules:
                return False, False
            if all(r.approval for r in rules):
                needs = True
        return True, needs

    def _policy_step_up(self, exposed: ExposedTool) -> bool:
        if self.step_up_for(exposed):
            return True
        for rule in self.guard.policy.step_up:
            if rule.where is None and any(pattern_matches(p, exposed.address) for p in rule.tools):
                return True
        return False

    # -- tools/list -----------------------------------------------------------

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            caller = self._caller(ctx)
            chain = await self.averified_chain(caller.delegation)
        except (_Refusal, DeniedError):
            # Nothing is reachable without a valid delegation.
            return types.ListToolsResult(tools=[], ttl_ms=0, cache_scope="private")
        except StoreError as exc:
            # Nothing can be shown as reachable without the revocation list.
            logger.warning("tools/list refused: %s", exc)
            raise MCPError(types.INTERNAL_ERROR, _STORE_ERROR_TEXT) from None
        # Told when the list changes. The request's session is made per request; the
        # SDK offers the client's connection, which lives as long as the client's,
        # only as this attribute (no connection: the client is not told).
        connection = getattr(ctx.session, "_connection", None)
        if connection is not None and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._connections.add(connection)
        await self.refresh()
        listed = []
        for exposed in self.tools.values():
            if exposed.changed or exposed.upstream.broken:
                # A lost upstream's tools come back with its session (checked again).
                continue
            reachable, needs = self._reaches(chain, exposed.address)
            if not reachable:
                continue
            needs = needs or self._policy_step_up(exposed)
            listed.append(self._listed(exposed, needs))
        # Private to this caller: never let a client or shared cache reuse it for another.
        return types.ListToolsResult(tools=listed, ttl_ms=0, cache_scope="private")

    def _listed(self, exposed: ExposedTool, needs_approval: bool) -> types.Tool:
        tool = exposed.tool
        description = tool.description or ""
        meta: dict[str, Any] = {META_TOOL: exposed.address}
        if needs_approval:
            meta[META_APPROVAL] = "required"
            description = (description + "\n\n" if description else "") + (
                "[agentguard] Calls need human approval."
            )
        annotations = tool.annotations if exposed.traits.trusted else None
        return types.Tool(
            name=exposed.name,
            title=tool.title,
            description=description or None,
            input_schema=tool.input_schema,
            output_schema=tool.output_schema,
            annotations=annotations,
            _meta=meta,
        )

    # -- tools/call -----------------------------------------------------------

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            return await self._handle_call(ctx, params)
        except StoreError as exc:
            # Fail closed: nothing was forwarded. The operator gets the cause.
            logger.warning("tools/call refused: %s", exc)
            return _refusal(_STORE_ERROR_TEXT, {"reason": Reason.STORE_ERROR})

    async def _handle_call(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        try:
            caller = self._caller(ctx)
            exposed = await self._lookup(params.name)
            args = dict(params.arguments or {})
            if _nested_deeper(args, _MAX_ARGS_DEPTH):
                raise _Refusal(
                    "denied by agentguard (invalid_arguments: nested too deeply)",
                    {"reason": Reason.INVALID_ARGUMENTS},
                )
            # The guard judges, and the upstream receives, the schema's defaults for
            # omitted arguments: not whatever default the server would pick itself.
            try:
                args, filled = fill_defaults(exposed.tool.input_schema, args)
            except ArgumentSchemaError:
                filled = ()  # the schema check below refuses such a schema
            with defaults_filled(filled):
                conforms = await self._check_schema(caller, exposed, args)
                if params.request_state is not None and conforms:
                    return await self._resume(ctx, params, caller, exposed, args)
                return await self._guarded_call(ctx, caller, exposed, args, forward_ok=conforms)
        except _Refusal as refusal:
            return _refusal(refusal.text, refusal.meta)
        except ApprovalPending as pending:
            return await self._step_up(ctx, params, pending)
        except DeniedError as denied:
            return _denied(denied)

    async def _lookup(self, name: str) -> ExposedTool:
        exposed = self.tools.get(name)
        if exposed is None:
            # Throttled: a stream of made-up names must not become a stream of
            # listings at every upstream.
            await self._relist()
            exposed = self.tools.get(name)
        if exposed is not None and (
            exposed.upstream.broken or exposed.generation != exposed.upstream.generation
        ):
            try:
                await exposed.upstream.recover()
            except UpstreamUnavailable as exc:
                raise _Refusal(
                    _unavailable_text(exc), {"reason": Reason.UPSTREAM_UNAVAILABLE}
                ) from None
            # A new session listed its tools afresh: check them against the pins.
            await self.load_pins()
            self.rebuild()
            exposed = self.tools.get(name)
        if exposed is None and name in self.collisions:
            raise _Refusal(
                "denied by agentguard (name_collision: several tools have this name)",
                {"reason": Reason.NAME_COLLISION},
            )
        if exposed is None:
            raise _Refusal("denied by agentguard (unknown_tool)", {"reason": Reason.UNKNOWN_TOOL})
        if exposed.changed:
            raise _Refusal(
                "denied by agentguard (tool_changed: its definition changed since it was approved)",
                {"reason": Reason.TOOL_CHANGED},
            )
        return exposed

    async def _check_schema(
        self, caller: Caller, exposed: ExposedTool, args: Mapping[str, Any]
    ) -> bool:
        """Whether ``args`` conform to the tool's ``inputSchema`` as they are.

        The guard must decide on what the upstream will act on: an upstream that
        coerces ``"5000"`` into ``5000`` or parses a JSON string into a list
        would otherwise run a call the guard judged on other values. A caller
        whose delegation reaches the tool gets ``invalid_arguments`` naming the
        argument path and the problem, never a value. For any other caller the
        answer is ``False`` and the guard refuses the call as before (and audits
        it): the schema of a tool it cannot reach is none of its business.

        Raises:
            _Refusal: the arguments do not conform (or the schema cannot be
                applied) and the caller's delegation reaches the tool.
        """
        try:
            check_arguments(exposed.tool.input_schema, args)
        except ArgumentSchemaError as exc:
            problem = exc
        else:
            return True
        try:
            chain = await self.averified_chain(caller.delegation)
            reachable, _ = self._reaches(chain, exposed.address)
        except DeniedError:
            reachable = False
        if not reachable:
            return False
        raise _Refusal(
            f"denied by agentguard (invalid_arguments: {problem})",
            {"reason": Reason.INVALID_ARGUMENTS},
        )

    async def _guarded_call(
        self,
        ctx: ServerRequestContext[Any, Any],
        caller: Caller,
        exposed: ExposedTool,
        args: dict[str, Any],
        *,
        forward_ok: bool = True,
    ) -> types.CallToolResult:
        incoming = dict(ctx.meta or {})

        async def forward(**effective: Any) -> types.CallToolResult:
            if not forward_ok:
                # Unreachable: the guard refuses a caller whose delegation does not
                # reach the tool. Should it ever allow one, nothing goes upstream.
                logger.error(
                    "refused to forward arguments that fail the schema of %s", exposed.address
                )
                return _refusal(
                    "denied by agentguard (invalid_arguments)", {"reason": Reason.INVALID_ARGUMENTS}
                )
            meta = self._upstream_meta(incoming, caller, exposed, effective)
            if exposed.upstream.spec.agentguard:
                receipt = _forwardable_receipt(current_decision())
                if receipt is not None:
                    meta[META_APPROVAL] = receipt
            # The SDK's client injects the current context into _meta: the SDK's
            # server side extracted the caller's baggage into it, so clear it here.
            token = None if self.forward_baggage else otel_context.attach(baggage.clear())
            try:
                if exposed.generation != exposed.upstream.generation:
                    # Reconnected since the lookup: its definitions were not checked yet.
                    raise UpstreamUnavailable(exposed.upstream.namespace)
                result = await exposed.upstream.call(exposed.tool.name, effective, meta)
            except (UpstreamUnavailable, UpstreamResultTooLarge) as exc:
                # Raised on, so the audit records the call as failed.
                decision = current_decision()
                raise exc.for_decision(decision.id if decision is not None else None) from None
            except MCPError as exc:
                # The code only: an upstream's error message may echo argument values.
                logger.warning(
                    "upstream %s failed (MCP error %s)", exposed.upstream.namespace, exc.code
                )
                return _refusal(f"upstream error ({exposed.upstream.namespace})")
            finally:
                if token is not None:
                    otel_context.detach(token)
            return _clean_result(result)

        try:
            result: types.CallToolResult = await self.guard.acall(
                caller.delegation,
                exposed.address,
                args,
                forward,
                holder=caller.holder,
                call_token=caller.call_token,
                call_id=None if ctx.request_id is None else str(ctx.request_id),
                step_up=self.step_up_for(exposed),
                failed=_is_error_result,
            )
        except UpstreamUnavailable as exc:
            return _unavailable(exc)
        except UpstreamResultTooLarge as exc:
            return _too_large(exc)
        return result

    def _upstream_meta(
        self,
        incoming: Mapping[str, Any],
        caller: Caller,
        exposed: ExposedTool,
        effective: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Allow-listed trace context, plus delegation and call token for aware upstreams."""
        meta = {k: incoming[k] for k in FORWARDED_META_KEYS if isinstance(incoming.get(k), str)}
        if exposed.upstream.spec.agentguard:
            meta[META_DELEGATION] = caller.delegation
            if caller.holder is not None:
                # The proxy holds the agent's key (stdio): a fresh single-use token
                # addressed to the upstream's namespace.
                meta[META_CALL] = Delegation.parse(caller.delegation).mint_call_token(
                    caller.holder,
                    exposed.address,
                    effective,
                    clock=getattr(self.guard, "clock", None),
                )
            elif caller.call_token is not None:
                # Over HTTP only the caller can sign; its token is addressed to the
                # namespace already and is single-use at every verifier.
                meta[META_CALL] = caller.call_token
        return meta

    # -- step-up through the protocol -------------------------------------------

    async def _step_up(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
        pending: ApprovalPending,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Ask the client's human if the protocol allows; otherwise report "approval pending"."""
        capabilities = ctx.session.client_capabilities
        can_elicit = capabilities is not None and capabilities.elicitation is not None
        if not can_elicit:
            return await self._out_of_band(ctx, params, pending)
        approver = self._answerer(ctx)
        if approver is None or not await self._off_loop(
            lambda: self._form_can_count(approver, pending.request_id)
        ):
            return await self._out_of_band(ctx, params, pending)
        form = await self._off_loop(lambda: self._approval_form(pending))
        if form is None:
            # The call cannot be shown whole: never offer an Approve button for it.
            return await self._out_of_band(ctx, params, pending)
        message, schema = form
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            state = {
                "rid": pending.request_id,
                "nonce": secrets.token_urlsafe(16),
            }
            return types.InputRequiredResult(
                input_requests={
                    _APPROVAL_INPUT: types.ElicitRequest(
                        params=types.ElicitRequestFormParams(
                            message=message, requested_schema=schema
                        )
                    )
                },
                request_state=json.dumps(state),
            )
        if not ctx.session.can_send_request:
            return await self._out_of_band(ctx, params, pending)
        try:
            answer = await ctx.session.elicit_form(
                message, schema, related_request_id=ctx.request_id
            )
        except MCPError:
            return await self._out_of_band(ctx, params, pending)
        return await self._answered(ctx, params, pending.request_id, answer)

    async def _out_of_band(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
        pending: ApprovalPending,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """No form here can count: say where the request can be answered instead.

        When the approval page's answers would count and the client supports
        URL-mode elicitation, its human is sent to the page (a 2025-11-25
        elicitation, or a 2026-07-28 input request). Opening it records nothing:
        once the client replies "accept" the call is tried again, and runs only
        if an approval was recorded meanwhile; otherwise it is still pending.
        """
        where = await self._off_loop(lambda: self._where(pending.request_id))
        if where.page is None or not self._can_elicit_url(ctx):
            return _pending_where(pending, where)
        message = (
            f"Approval request {pending.request_id} waits for an approver on the approval "
            "page. Approve it there, then accept here to try the call again."
        )
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            state = {"rid": pending.request_id, "nonce": secrets.token_urlsafe(16), "kind": "url"}
            return types.InputRequiredResult(
                input_requests={
                    _APPROVAL_INPUT: types.ElicitRequest(
                        params=types.ElicitRequestURLParams(
                            message=message, url=where.page, elicitation_id=pending.request_id
                        )
                    )
                },
                request_state=json.dumps(state),
            )
        if not ctx.session.can_send_request:
            return _pending_where(pending, where)
        try:
            answer = await ctx.session.elicit_url(
                message, where.page, pending.request_id, related_request_id=ctx.request_id
            )
        except MCPError as exc:  # no answer from the client: still pending
            logger.info("URL elicitation for %s not taken: %s", pending.request_id, exc)
            return _pending_where(pending, where)
        if answer.action != "accept":
            return _pending_where(pending, where)
        try:
            return await self._call_again(ctx, params)
        except ApprovalPending as still:
            return _pending_where(still, where)
        except DeniedError as denied:
            return _denied(denied)

    @staticmethod
    def _can_elicit_url(ctx: ServerRequestContext[Any, Any]) -> bool:
        capabilities = ctx.session.client_capabilities
        elicitation = capabilities.elicitation if capabilities is not None else None
        return elicitation is not None and elicitation.url is not None

    def _where(self, request_id: str) -> _Where:
        """Who can answer ``request_id`` and how; the page when an answer there would count.
        Reads the store: call it off the event loop."""
        book = self.guard.approvals
        try:
            request = book.get(request_id)
            who = book.who_may_approve(request)
        except AgentGuardError as exc:  # cannot tell: the bare "approval pending" stands
            logger.info("cannot tell who may answer %s: %s", request_id, type(exc).__name__)
            return _Where(None, None)
        page = None
        if self.approval_page is not None and assurance_at_least(
            "authenticated", request.min_assurance
        ):
            try:
                if any(book.would_accept(request, a, "authenticated") for a in who):
                    page = self.approval_page
            except AgentGuardError as exc:  # cannot tell: the page is not offered
                logger.info("cannot tell who may answer %s: %s", request_id, type(exc).__name__)
        return _Where(who, page)

    def _approval_form(self, pending: ApprovalPending) -> tuple[str, dict[str, Any]] | None:
        """The form's text and schema; ``None`` when the request cannot be shown whole."""
        try:
            request = self.guard.approvals.get(pending.request_id)
            text = request.describe()
            unfolded = request.unfolded()
        except (AgentGuardError, AttributeError, KeyError) as exc:
            logger.warning(
                "approval %s cannot be shown in the client (%s): out of band only",
                pending.request_id,
                type(exc).__name__,
            )
            return None
        if unfolded:
            # The client may be the only place its human sees the call: give the
            # folded values whole too, after the summary.
            text += "\n\nFolded values in full:\n" + unfolded
        schema = {
            "type": "object",
            "properties": {
                "approve": {"type": "boolean", "title": "Approve this call?"},
                "message": {"type": "string", "title": "Note (optional)"},
            },
            "required": ["approve"],
        }
        return text, schema

    async def _resume(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
        caller: Caller,
        exposed: ExposedTool,
        args: dict[str, Any],
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Second round of a 2026-07-28 step-up: the state was unsealed by the boundary."""
        try:
            state = json.loads(params.request_state or "")
            request_id, nonce = state["rid"], state["nonce"]
            kind = state.get("kind", "form")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState") from None
        if not isinstance(request_id, str) or not isinstance(nonce, str):
            raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState")
        if not await self._consume_state(nonce):
            raise MCPError(types.INVALID_PARAMS, "Invalid or expired requestState")
        if kind == "url":
            # Back from the approval page: nothing is recorded from the client's
            # reply; the call runs only if an approval was recorded meanwhile.
            try:
                return await self._guarded_call(ctx, caller, exposed, args)
            except ApprovalPending as still:
                waiting = still.request_id
                where = await self._off_loop(lambda: self._where(waiting))
                return _pending_where(still, where)
        answer = (params.input_responses or {}).get(_APPROVAL_INPUT)
        if not isinstance(answer, types.ElicitResult):
            answer = types.ElicitResult(action="cancel")
        return await self._answered(ctx, params, request_id, answer)

    def _form_approver(self, caller: Caller) -> str | None:
        """Who an answer typed into the client is recorded as.

        The operator's ``elicitation_approver`` when configured (an assertion
        the operator makes about who sits at that client); otherwise the holder
        itself, since its client is what answered. Never a sponsor or any other
        principal named in the chain: nobody authenticated as them.
        """
        if self.elicitation_approver is not None:
            return self.elicitation_approver
        try:
            return Delegation.parse(caller.delegation).leaf.subject
        except AgentGuardError:
            return None

    def _answerer(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        """Who an answer typed into this request's client would be recorded as, if anyone."""
        try:
            return self._form_approver(self._caller(ctx))
        except _Refusal:
            return None

    def _form_can_count(self, approver: str, request_id: str) -> bool:
        """Whether an approval typed into the client could be accepted for this request.

        If not (the answerer is not an approver for it, the channel's assurance
        is too low, separation of duties), no form is offered: the request
        waits for an out-of-band answer instead. Reads the store: call it off
        the event loop.
        """
        try:
            self.guard.approvals.check_answerer(
                request_id,
                approver=approver,
                assurance=self.guard.policy.approval.agent_channel_assurance,
            )
        except DeniedError as exc:
            logger.info("no approval form for %s: %s", request_id, exc.reason)
            return False
        except (AgentGuardError, AttributeError):
            return False
        return True

    async def _consume_state(self, nonce: str) -> bool:
        return await self._off_loop(
            lambda: self.guard.spend_once("mcp-state", nonce, ttl=_STATE_TTL)
        )

    async def _answered(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: types.CallToolRequestParams,
        request_id: str,
        answer: types.ElicitResult,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """Record the answer typed into the client (assurance ``agent``) and try the call again."""
        approved = answer.action == "accept" and (answer.content or {}).get("approve") is True
        note = (answer.content or {}).get("message")
        caller = self._caller(ctx)
        approver = self._form_approver(caller)
        if approver is None:
            return _pending_text(request_id, "no approver is known for answers in this client")
        try:
            # The guard's key attests the answer at the assurance the policy gives
            # this channel ("agent" by default): a privileged rule still refuses it.
            await self._off_loop(
                lambda: self.guard.approvals.answer(
                    request_id,
                    approver=approver,
                    approve=approved,
                    channel="mcp_elicitation",
                    assurance=self.guard.policy.approval.agent_channel_assurance,
                    message=note if isinstance(note, str) else None,
                )
            )
        except DeniedError as exc:
            logger.info("answer from the MCP client not accepted: %s", exc)
            return _pending_text(
                request_id, f"an answer in this client is not enough ({exc.reason})"
            )
        try:
            return await self._call_again(ctx, params)
        except DeniedError as denied:
            return _denied(denied)

    async def _call_again(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """The call once more after an answer, prepared as the first time: omitted
        arguments at their schema defaults (the call the request was filed for, so
        the approval finds it) and the schema checked.

        Raises:
            DeniedError: refused (:class:`ApprovalPending` while still unanswered).
        """
        try:
            caller = self._caller(ctx)
            exposed = await self._lookup(params.name)
            args = dict(params.arguments or {})
            try:
                args, filled = fill_defaults(exposed.tool.input_schema, args)
            except ArgumentSchemaError:
                filled = ()  # the schema check below refuses such a schema
            with defaults_filled(filled):
                conforms = await self._check_schema(caller, exposed, args)
                return await self._guarded_call(ctx, caller, exposed, args, forward_ok=conforms)
        except _Refusal as refusal:
            return _refusal(refusal.text, refusal.meta)


def _is_error_result(result: Any) -> bool:
    """An upstream's ``isError`` answer is audited as a tool error, not a success."""
    return bool(getattr(result, "is_error", False))


def _forwardable_receipt(decision: Decision | None) -> str | None:
    """The approval receipt the guard just used for this call, if it may go upstream.

    Agentguard-aware upstreams check with
    :class:`~agentguard_mcp.verify.DelegationVerifier` that a link demanding
    approval got it. A receipt with an edit is not forwarded: it binds the
    arguments first asked for, which the upstream never sees, so such a call is
    refused by an upstream whose chain rule demands approval (the agent asks
    again with the edited arguments).
    """
    receipt = decision.approval_receipt if decision is not None else None
    if receipt is None:
        return None
    try:
        _, claims = peek_receipt(receipt)
    except AgentGuardError:
        return None
    if claims.get("decision") != "approve" or "edited" in claims:
        return None
    return receipt


def _nested_deeper(value: object, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels (no recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _namespace_matches(pattern: str, namespace: str) -> bool:
    """Whether a tool pattern's namespace part can select ``namespace``."""
    ns_pattern = pattern.partition("/")[0]
    return pattern_matches(f"{ns_pattern}/x", f"{namespace}/x")


def granted_namespaces(chain: VerifiedChain) -> list[str]:
    """The namespaces the chain's tool rules name, as far as every link agrees (for messages).

    Taken from the holder's link, kept when every link has a rule whose
    namespace part admits it; patterns (``ti*``) are shown as patterns.
    """
    grants = list(chain.delegation)
    named = {rule.tool.partition("/")[0] for rule in grants[-1].scope}
    return sorted(
        ns
        for ns in named
        if all(
            any(pattern_matches(f"{r.tool.partition('/')[0]}/x", f"{ns}/x") for r in g.scope)
            for g in grants
        )
    )


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header value, if that is what it is."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentguard-mcp")
    except PackageNotFoundError:
        return "0"
