"""Client side of the HTTP proxy: present a delegation and sign a call token per call.

    async with GuardedClient(url, delegation, holder) as client:
        tools = (await client.list_tools()).tools
        result = await client.call_tool("tickets__open", {"title": "..."})

The delegation goes in ``Authorization: Bearer`` on every HTTP request; each
``tools/call`` carries a fresh call token signed with the holder's key in
``_meta["io.agentguard/call"]`` (proof of possession: the delegation alone is
not enough to act). A retry, for instance after a human approved out of band,
simply calls again: the approval binds the call, not the token.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, overload

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentguard.clock import Clock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.keys import Identity
from agentguard_mcp.proxy import META_CALL, META_DECISION, META_TOOL

__all__ = ["GuardedClient", "ListedTools", "call_meta"]

#: Most ``tools/list`` pages read per listing: a server cannot keep us paging forever.
_LIST_PAGE_CAP = 50


def call_meta(
    delegation: Delegation | str,
    holder: Identity,
    address: str,
    arguments: Mapping[str, Any],
    *,
    ttl: float = 30,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """The ``_meta`` for one ``tools/call`` of ``address``: a fresh call token signed by ``holder``.

    Raises:
        IssuanceError: ``holder`` is not the delegation's holder.
    """
    if isinstance(delegation, str):
        delegation = Delegation.parse(delegation)
    token = delegation.mint_call_token(holder, address, arguments, ttl=ttl, clock=clock)
    return {META_CALL: token}


class ListedTools(types.ListToolsResult):
    """A complete ``tools/list`` answer, as :meth:`mcp.Client.list_tools` returns it (``.tools``).

    Earlier releases returned the list itself: iterating, indexing and ``len()``
    still work on the tools for one more release, with a ``DeprecationWarning``.
    Use ``.tools``.
    """

    def _deprecated(self) -> list[types.Tool]:
        warnings.warn(
            "GuardedClient.list_tools() returns a ListToolsResult like mcp.Client; "
            "use its .tools (the list behaviour goes in the next release)",
            DeprecationWarning,
            stacklevel=3,
        )
        return self.tools

    # Pydantic's own __iter__ yields (field, value) pairs; the old API yielded tools.
    def __iter__(self) -> Iterator[types.Tool]:  # type: ignore[override]
        return iter(self._deprecated())

    def __len__(self) -> int:
        return len(self._deprecated())

    @overload
    def __getitem__(self, index: int) -> types.Tool: ...
    @overload
    def __getitem__(self, index: slice) -> list[types.Tool]: ...
    def __getitem__(self, index: int | slice) -> types.Tool | list[types.Tool]:
        return self._deprecated()[index]


def _unknown_tool() -> types.CallToolResult:
    """The refusal the proxy gives a name it does not know (also for one not listed here)."""
    return types.CallToolResult(
        content=[types.TextContent(text="denied by agentguard (unknown_tool)")],
        is_error=True,
        _meta={META_DECISION: {"reason": Reason.UNKNOWN_TOOL}},
    )


class GuardedClient:
    """An ``mcp.Client`` for the agentguard HTTP proxy that authenticates every call.

    Args:
        url: the proxy's streamable-HTTP endpoint.
        delegation: the caller's delegation (object or string).
        holder: the holder's identity (signs the call tokens).
        clock: time source for the call tokens (default: the system clock).
        client_kwargs: passed to :class:`mcp.Client` (``mode``, ``elicitation_callback``, ...).
    """

    def __init__(
        self,
        url: str,
        delegation: Delegation | str,
        holder: Identity,
        *,
        clock: Clock | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.delegation = (
            Delegation.parse(delegation) if isinstance(delegation, str) else delegation
        )
        self.holder = holder
        self.clock = clock
        self._url = url
        self._client_kwargs = client_kwargs
        self._http: httpx2.AsyncClient | None = None
        self._client: Client | None = None
        self.addresses: dict[str, str] = {}

    async def __aenter__(self) -> GuardedClient:
        self._http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {self.delegation.serialize()}"},
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        self._client_kwargs.setdefault("cache", None)
        client = Client(
            streamable_http_client(self._url, http_client=self._http), **self._client_kwargs
        )
        try:
            await client.__aenter__()
        except BaseException:
            await self._http.aclose()
            raise
        self._client = client
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._client is not None:
                await self._client.__aexit__(exc_type, exc, tb)
        finally:
            if self._http is not None:
                await self._http.aclose()

    @property
    def client(self) -> Client:
        """The underlying ``mcp.Client``.

        Raises:
            RuntimeError: outside ``async with``.
        """
        if self._client is None:
            raise RuntimeError("GuardedClient must be used within 'async with'")
        return self._client

    async def list_tools(self) -> ListedTools:
        """The tools this delegation reaches, every page read (remembers each tool's address).

        Returns:
            The result ``mcp.Client.list_tools`` gives, with every page in ``.tools``.
        """
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_LIST_PAGE_CAP):
            page = await self.client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        for tool in tools:
            address = (tool.meta or {}).get(META_TOOL)
            if isinstance(address, str):
                self.addresses[tool.name] = address
        return ListedTools(tools=tools)

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> types.CallToolResult:
        """Call a tool with a freshly signed call token (added to ``meta``).

        A name the proxy does not list for this delegation (after one fresh
        listing) gets the proxy's own refusal, ``denied by agentguard
        (unknown_tool)``, without a request.
        """
        if name not in self.addresses:
            await self.list_tools()
        address = self.addresses.get(name)
        if address is None:
            return _unknown_tool()
        args = dict(arguments or {})
        full = {
            **(meta or {}),
            **call_meta(self.delegation, self.holder, address, args, clock=self.clock),
        }
        # meta is typed RequestParamsMeta, a TypedDict with extra_items (PEP 728)
        # that mypy cannot match a plain dict against.
        return await self.client.call_tool(name, args, meta=full)  # type: ignore[arg-type]
