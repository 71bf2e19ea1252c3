"""Verifier middleware for MCP servers behind an agentguard proxy (or called directly).

An agentguard-aware upstream receives, in ``tools/call`` ``_meta``, the
caller's delegation (``io.agentguard/delegation``) and a single-use call token
addressed to its namespace (``io.agentguard/call``). :class:`DelegationVerifier`
checks both offline before the tool handler runs: trusted roots, every link's
signature and window, revocations from the store it is given, the conjunctive
scope, and the call token's binding, audience and single use (its own replay
cache). A failed check answers an ``isError`` result; the handler never runs.

    server = Server("tickets", on_call_tool=...)
    server.middleware.append(DelegationVerifier("tickets", trusted_roots=[org]))

The handler can read who called through :func:`current_authority`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from agentguard.clock import Clock
from agentguard.errors import DeniedError
from agentguard.keys import Principal
from agentguard.store.base import ReplayStore, RevocationStore
from agentguard.verify import ScopeMatch, VerifiedCall, VerifiedChain, Verifier
from agentguard_mcp.proxy import META_CALL, META_DELEGATION

__all__ = ["Authority", "DelegationVerifier", "current_authority"]

logger = logging.getLogger("agentguard_mcp.verify")


@dataclass(frozen=True)
class Authority:
    """What the verifier established for the current call."""

    chain: VerifiedChain
    scope: ScopeMatch
    call: VerifiedCall

    @property
    def holder(self) -> str:
        """The calling principal (the chain's holder)."""
        return self.chain.holder.id

    @property
    def path(self) -> tuple[str, ...]:
        """Principal ids from the trusted root to the holder."""
        return self.chain.path


_current: contextvars.ContextVar[Authority | None] = contextvars.ContextVar(
    "agentguard_mcp_authority", default=None
)


def current_authority() -> Authority | None:
    """The verified authority of the ``tools/call`` being handled, if any."""
    return _current.get()


class DelegationVerifier:
    """Server middleware (low-level ``Server`` or ``MCPServer``) verifying forwarded authority.

    Args:
        namespace: this server's namespace: tools are checked as
            ``namespace/<tool>`` and call tokens must be addressed to it.
        trusted_roots: principals whose root grants are accepted.
        revocations: revocation store to consult on every call (e.g. the
            organisation's shared :class:`agentguard.store.SQLiteStore`).
        replay: where used call-token ids are remembered (default: in memory,
            private to this verifier).
        clock: time source.
    """

    def __init__(
        self,
        namespace: str,
        *,
        trusted_roots: Iterable[Principal],
        revocations: RevocationStore | None = None,
        replay: ReplayStore | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.namespace = namespace
        self.verifier = Verifier(
            list(trusted_roots), revocations=revocations, replay=replay, clock=clock
        )

    def check(self, params: Mapping[str, Any]) -> Authority:
        """Verify the authority carried by raw ``tools/call`` params.

        Raises:
            DeniedError: something is missing or does not verify.
        """
        meta = params.get("_meta")
        meta = meta if isinstance(meta, Mapping) else {}
        delegation, token = meta.get(META_DELEGATION), meta.get(META_CALL)
        if not isinstance(delegation, str) or not isinstance(token, str):
            raise DeniedError("no delegation or call token in _meta", reason="no_credentials")
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            raise DeniedError("malformed tools/call params", reason="invalid_tool")
        address = f"{self.namespace}/{name}"
        chain = self.verifier.verify_chain(delegation)
        scope = self.verifier.authorize(chain, address, arguments)
        call = self.verifier.verify_call_token(
            chain, token, tool=address, args=arguments, audience=self.namespace
        )
        return Authority(chain, scope, call)

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        try:
            authority = self.check(ctx.params or {})
        except DeniedError as exc:
            logger.info("refused tools/call: %s", exc)
            return types.CallToolResult(
                content=[types.TextContent(text=exc.short)],
                is_error=True,
                _meta={"io.agentguard/decision": {"reason": exc.reason}},
            )
        reset = _current.set(authority)
        try:
            return await call_next(ctx)
        finally:
            _current.reset(reset)
