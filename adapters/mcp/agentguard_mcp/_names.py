"""Client-visible tool names and the ``namespace/tool`` addresses behind them.

MCP clients (and the models behind them) want names matching
``^[A-Za-z0-9_-]{1,64}$``; delegations and policy always speak addresses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from agentguard.addresses import parse_address
from agentguard.errors import InvalidAddressError

__all__ = ["CLIENT_NAME_RE", "ambiguous_namespaces", "client_name", "tool_address"]

CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_address(namespace: str, tool: str) -> str | None:
    """The address ``namespace/tool``, or ``None`` when ``tool`` cannot be addressed safely."""
    address = f"{namespace}/{tool}"
    try:
        parse_address(address)
    except InvalidAddressError:
        return None
    return address


def ambiguous_namespaces(namespaces: Sequence[str]) -> tuple[str, str] | None:
    """Two namespaces whose ``namespace__tool`` names can coincide, if any.

    ``a_`` + ``b`` and ``a`` + ``_b`` are both ``a___b``: whenever one
    namespace followed by ``__`` starts the other's, some pair of tool names
    collides, so such a configuration is refused before any tool is listed.
    """
    for index, first in enumerate(namespaces):
        for second in namespaces[index + 1 :]:
            a, b = f"{first}__", f"{second}__"
            if first != second and (a.startswith(b) or b.startswith(a)):
                return first, second
    return None


def client_name(namespace: str, tool: str, *, prefixed: bool) -> str:
    """A client-safe name for ``tool``: its own name, or ``namespace__tool`` with several upstreams.

    Unsafe characters become ``_``; a name that had to change or is too long
    gets a short digest of the original so two tools never share a name.
    """
    base = f"{namespace}__{tool}" if prefixed else tool
    if CLIENT_NAME_RE.match(base):
        return base
    digest = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    safe = _UNSAFE.sub("_", base)[:55]
    return f"{safe}_{digest}"
