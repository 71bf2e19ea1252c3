"""agentguard for MCP: a gating proxy in front of MCP servers, a client helper and a verifier.

* :class:`GuardedProxy` lists only the tools a delegation reaches and sends
  every ``tools/call`` through the guard (``agentguard mcp proxy`` runs it);
* :class:`GuardedClient` presents a delegation and signs a call token per call
  when talking to the proxy over HTTP;
* :class:`DelegationVerifier` is the middleware an MCP server installs to check
  the delegation and call token the proxy forwards.
"""

from agentguard_mcp.client import GuardedClient, ListedTools, call_meta
from agentguard_mcp.config import ProxyConfig, UpstreamSpec, load_config
from agentguard_mcp.proxy import (
    META_APPROVAL,
    META_CALL,
    META_DECISION,
    META_DELEGATION,
    META_TOOL,
    Caller,
    GuardedProxy,
)
from agentguard_mcp.upstream import Upstream, UpstreamHealth, UpstreamUnavailable
from agentguard_mcp.verify import NO_REVOCATION_CHECK, DelegationVerifier, current_authority

__all__ = [
    "META_APPROVAL",
    "META_CALL",
    "META_DECISION",
    "META_DELEGATION",
    "META_TOOL",
    "NO_REVOCATION_CHECK",
    "Caller",
    "DelegationVerifier",
    "GuardedClient",
    "GuardedProxy",
    "ListedTools",
    "ProxyConfig",
    "Upstream",
    "UpstreamHealth",
    "UpstreamSpec",
    "UpstreamUnavailable",
    "call_meta",
    "current_authority",
    "load_config",
]
