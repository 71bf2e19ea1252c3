"""Verifier middleware for MCP servers behind an agentguard proxy (or called directly).

An agentguard-aware upstream receives, in ``tools/call`` ``_meta``, the
caller's delegation (``io.agentguard/delegation``), a single-use call token
addressed to its namespace (``io.agentguard/call``) and, when the proxy used
one for this call, the step-up approval receipt (``io.agentguard/approval``).
:class:`DelegationVerifier` checks them offline before the tool handler runs:
trusted roots, every link's signature and window, revocations from the store
it is given, the conjunctive scope, the call token's binding, audience and
single use (its own replay cache), when a link's matching rule demands
approval, the receipt (see :class:`DelegationVerifier`) and, when a rule of
the chain carries a budget, that budget (in the budget store it is given; a
chain with a budget is refused without one). A failed check answers an
``isError`` result; the handler never runs.

    server = Server("tickets", on_call_tool=...)
    server.middleware.append(
        DelegationVerifier(
            "tickets",
            trusted_roots=[org],
            revocations=SQLiteStore("/srv/agentguard/state.db"),  # required
            approval_keys=[alice, guard_key],
        )
    )

The handler can read who called (and who approved) through :func:`current_authority`.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext

from agentguard import Reason
from agentguard.approval import call_digest, peek_receipt, verify_receipt_signature
from agentguard.budgets import Charge, charges_for, refuse_unless_fits
from agentguard.clock import Clock
from agentguard.errors import ConfigError, DeniedError, TokenFormatError
from agentguard.keys import Principal
from agentguard.passkeys import (
    PasskeyReceipt,
    is_passkey_receipt,
    passkey_key_id,
    verify_passkey_receipt,
)
from agentguard.policy import ASSURANCE_LEVELS, Passkey, assurance_at_least
from agentguard.store.base import BudgetStore, ReplayStore, RevocationStore
from agentguard.tokens import args_digest
from agentguard.verify import (
    NO_REVOCATION_CHECK,
    NoRevocationCheck,
    ScopeMatch,
    VerifiedCall,
    VerifiedChain,
    Verifier,
)
from agentguard_mcp.proxy import META_APPROVAL, META_CALL, META_DECISION, META_DELEGATION

__all__ = [
    "NO_REVOCATION_CHECK",
    "Authority",
    "DelegationVerifier",
    "VerifiedApproval",
    "current_authority",
]

logger = logging.getLogger("agentguard_mcp.verify")

#: The highest assurance a receipt signed by someone other than its approver
#: (a guard attesting a channel's answer) can carry: only an approver's own
#: signature is ``signed``.
_ATTESTED_CAP = "authenticated"


@dataclass(frozen=True)
class VerifiedApproval:
    """A step-up approval receipt that passed every check of :class:`DelegationVerifier`."""

    jti: str
    approver: str
    signer: str
    assurance: str
    channel: str
    expires_at: int


@dataclass(frozen=True)
class Authority:
    """What the verifier established for the current call."""

    chain: VerifiedChain
    scope: ScopeMatch
    call: VerifiedCall
    #: The approval receipt, when a link's rule demanded approval for this call.
    approval: VerifiedApproval | None = None

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

    **Approval.** A delegation rule marked ``approval`` means "only with a human's
    approval", wherever the call is made. When the chain's matching rules demand
    approval (:attr:`ScopeMatch.needs_approval`), a valid delegation and call
    token are not enough: the holder could mint its own call token to this
    namespace and skip the proxy's step-up. The call must then carry the
    approval receipt the proxy used (``_meta["io.agentguard/approval"]``), and
    the receipt must

    * be a JWS of type ``agentguard-approval+jwt`` signed by a key in
      ``approval_keys`` (matched by the ``iss`` claim and the header ``kid``):
      approvers' own keys (assurance ``signed``) and/or the guard's key (it
      attests answers collected by a channel, at the assurance the receipt
      states, at most ``authenticated``). Every listed key may sign for any
      approver: list only keys you trust to approve calls to this server.
      Or a passkey receipt (``docs/receipts.md``): a WebAuthn assertion by
      the approver's credential in ``passkeys`` over the digest of the answer
      statement it carries (assurance ``signed``);
    * be bound to this very call: its ``call`` digest equals
      :func:`agentguard.approval.call_digest` of ``namespace/<tool>``, the
      digest of the arguments received and the chain's leaf link id. A receipt
      for *edited* arguments is refused (its digest binds the original
      arguments, which an upstream never sees; see the README);
    * say ``decision: approve``, be unexpired (``exp``, with the leeway), have
      at least ``min_assurance``, and name an approver who is not revoked (in
      ``revocations``, by principal or signing key) and does not act in the
      chain (its holder or one of its ``agent:``/``service:`` links);
    * not have been used here before (the verifier's replay store). By default
      a receipt is single use at this server, like a non-reusable approval at
      the guard. With ``reusable_receipts=True`` (for a policy with
      ``approval.reusable_for``) a receipt may come back within its validity
      with a *fresh* call token each time: the pair (receipt, call token) is
      what is single use.

    With no ``approval_keys`` a call that needs approval is refused
    (``approval_required``): the verifier fails closed.

    Args:
        namespace: this server's namespace: tools are checked as
            ``namespace/<tool>`` and call tokens must be addressed to it.
        trusted_roots: principals whose root grants are accepted.
        revocations: revocation store to consult on every call (e.g. the
            organisation's shared :class:`agentguard.store.SQLiteStore`):
            required. ``NO_REVOCATION_CHECK`` runs without one — revoked chains
            are then accepted — with a warning and a log line.
        replay: where used call-token and receipt ids are remembered (default:
            in memory, private to this verifier).
        clock: time source.
        approval_keys: principals whose approval receipts count.
        passkeys: enrolled passkeys by approver id (``approver.passkey`` of the
            policy's entries): whose passkey receipts count.
        min_assurance: the least assurance an approval must carry (default
            ``signed``, the guard's default for approvals demanded by a grant).
        reusable_receipts: accept a receipt again with a new call token (see above).
        budgets: where this server counts the chains' budgets
            (:class:`~agentguard.store.base.BudgetStore`: a memory, SQLite or
            PostgreSQL store). Without one, a call a budgeted rule applies to is
            refused (``store_error``): a budget nobody counts is no budget. This
            server is an enforcement point of its own: give it a store of its
            own, not the proxy's (which charged the call already), so each
            counts every call it lets through once.

    Raises:
        ValueError: ``min_assurance`` is not an assurance level.
        TypeError: ``revocations`` is missing or ``None``.
    """

    def __init__(
        self,
        namespace: str,
        *,
        trusted_roots: Iterable[Principal],
        revocations: RevocationStore | NoRevocationCheck,
        replay: ReplayStore | None = None,
        clock: Clock | None = None,
        approval_keys: Iterable[Principal] = (),
        passkeys: Mapping[str, Passkey] | None = None,
        min_assurance: str = "signed",
        reusable_receipts: bool = False,
        budgets: BudgetStore | None = None,
    ) -> None:
        if min_assurance not in ASSURANCE_LEVELS:
            raise ValueError(f"min_assurance must be one of {', '.join(ASSURANCE_LEVELS)}")
        self.namespace = namespace
        self.verifier = Verifier(
            list(trusted_roots), revocations=revocations, replay=replay, clock=clock
        )
        if revocations is NO_REVOCATION_CHECK:
            logger.warning(
                "verifier for %s does not check revocations (NO_REVOCATION_CHECK): "
                "revoked chains are accepted",
                namespace,
            )
        self.approval_keys = tuple(approval_keys)
        self.passkeys = dict(passkeys or {})
        self.min_assurance = min_assurance
        self.reusable_receipts = reusable_receipts
        self.budgets = budgets

    def check(self, params: Mapping[str, Any]) -> Authority:
        """Verify the authority carried by raw ``tools/call`` params.

        The call token is burned only once the chain, the scope and (when
        approval is demanded) the receipt have passed; the receipt last. A
        receipt already used here thus refuses a call whose token is burned,
        which is single use anyway.

        Raises:
            DeniedError: something is missing or does not verify.
        """
        meta = params.get("_meta")
        meta = meta if isinstance(meta, Mapping) else {}
        delegation, token = meta.get(META_DELEGATION), meta.get(META_CALL)
        if not isinstance(delegation, str) or not isinstance(token, str):
            raise DeniedError("no delegation or call token in _meta", reason=Reason.NO_CREDENTIALS)
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            raise DeniedError("malformed tools/call params", reason=Reason.INVALID_TOOL)
        address = f"{self.namespace}/{name}"
        chain = self.verifier.verify_chain(delegation)
        scope = self.verifier.authorize(chain, address, arguments)
        charges = charges_for(chain.delegation.grants, address, arguments)
        if charges:
            self._check_budgets(charges, address)
        approval = None
        if scope.needs_approval:
            # Check the token without burning it, then the receipt; burn both only
            # once everything passed.
            self.verifier.verify_call_token(
                chain, token, tool=address, args=arguments, audience=self.namespace, consume=False
            )
            approval = self._check_receipt(
                meta.get(META_APPROVAL), chain, scope, address, arguments
            )
        call = self.verifier.verify_call_token(
            chain, token, tool=address, args=arguments, audience=self.namespace
        )
        if approval is not None:
            self._burn_receipt(approval, call)
        if charges:
            assert self.budgets is not None  # noqa: S101 - _check_budgets refused otherwise
            self.budgets.budget_charge(charges, self.verifier.clock.now())
        return Authority(chain, scope, call, approval)

    def _check_budgets(self, charges: list[Charge], address: str) -> None:
        """Refuse a budgeted call without a budget store, or over its budget (read only)."""
        if self.budgets is None:
            names = ", ".join(c.label for c in charges)
            raise DeniedError(
                f"{address} is under a budget ({names}), and this server was given no "
                "budget store to count it in",
                reason=Reason.STORE_ERROR,
            )
        now = self.verifier.clock.now()
        refuse_unless_fits(self.budgets.budget_states(charges, now), now)

    # -- approval receipts ------------------------------------------------------

    def _check_receipt(
        self,
        receipt: object,
        chain: VerifiedChain,
        scope: ScopeMatch,
        address: str,
        arguments: Mapping[str, Any],
    ) -> VerifiedApproval:
        rules = ", ".join(f"link {link} rule {rule}" for link, rule in scope.approval_rules)
        if not self.approval_keys and not self.passkeys:
            raise DeniedError(
                f"{address} needs approval ({rules}), and this server trusts no approval keys",
                reason=Reason.APPROVAL_REQUIRED,
            )
        if not isinstance(receipt, str):
            raise DeniedError(
                f"{address} needs approval ({rules}); no approval receipt in _meta",
                reason=Reason.APPROVAL_REQUIRED,
            )
        if is_passkey_receipt(receipt):
            claims, kid = self._passkey_statement(receipt)
            signer = approver = str(claims["approver"])
            kids = [kid]  # the passkey's key id: revoking it refuses this authenticator
        else:
            claims, signer, approver, kids = self._jws_claims(receipt)
        return self._judge(claims, signer, approver, kids, chain, address, arguments)

    def _passkey_statement(self, receipt: str) -> tuple[dict[str, Any], str]:
        """The statement of a passkey receipt, verified with its approver's credential,
        and that credential's key id (:func:`agentguard.passkeys.passkey_key_id`)."""
        try:
            parsed = PasskeyReceipt.decode(receipt)
        except TokenFormatError as exc:
            raise DeniedError(
                f"approval receipt is malformed: {exc.explanation}", reason=Reason.APPROVAL_INVALID
            ) from None
        approver = str(parsed.statement["approver"])
        passkey = self.passkeys.get(approver)
        if passkey is None or parsed.statement.get("iss") != approver:
            raise DeniedError(
                f"approval receipt is a passkey assertion of {approver}, whose passkey this "
                "server does not know",
                reason=Reason.APPROVAL_INVALID,
            )
        if parsed.edited_args is not None or parsed.statement.get("edited") is not None:
            raise DeniedError(
                "approval receipt is for edited arguments; it cannot be checked here",
                reason=Reason.APPROVAL_MISMATCH,
            )
        try:
            statement = verify_passkey_receipt(
                parsed,
                passkey.public_key,
                passkey.rp_id,
                passkey.origin,
                credential_id=passkey.credential_id,
            )
            statement.pop("edited")  # null: checked above
            return statement, passkey_key_id(passkey.public_key)
        except TokenFormatError as exc:  # an enrolled key that is not base64url
            raise DeniedError(
                f"approval receipt does not verify: {exc.explanation}",
                reason=Reason.APPROVAL_INVALID,
            ) from None
        except DeniedError as exc:
            raise DeniedError(
                f"approval receipt does not verify: {exc.explanation}",
                reason=Reason.APPROVAL_INVALID,
            ) from None
        except ConfigError as exc:  # the passkeys extra is missing: cannot tell is no
            raise DeniedError(str(exc), reason=Reason.APPROVAL_INVALID) from None

    def _jws_claims(self, receipt: str) -> tuple[dict[str, Any], str, str, list[str]]:
        """The claims of a JWS receipt signed by a trusted key, its signer, approver and kid."""
        try:
            header, claims = peek_receipt(receipt)
        except TokenFormatError as exc:
            raise DeniedError(
                f"approval receipt is malformed: {exc.explanation}", reason=Reason.APPROVAL_INVALID
            ) from None
        signer, approver = claims.get("iss"), claims.get("approver")
        if not isinstance(signer, str) or not isinstance(approver, str):
            raise DeniedError("approval receipt names no signer", reason=Reason.APPROVAL_INVALID)
        kid = header.get("kid")
        keys = [k for k in self.approval_keys if k.id == signer and kid in (None, k.kid)]
        if not keys:
            raise DeniedError(
                f"approval receipt is signed by {signer}, whose key this server does not trust",
                reason=Reason.APPROVAL_INVALID,
            )
        for key in keys:
            try:
                verify_receipt_signature(receipt, key)
            except (DeniedError, TokenFormatError):
                continue
            signed_by = key
            break
        else:
            raise DeniedError(
                "approval receipt signature does not verify", reason=Reason.APPROVAL_INVALID
            )
        return claims, signer, approver, [signed_by.kid]

    def _judge(
        self,
        claims: Mapping[str, Any],
        signer: str,
        approver: str,
        kids: list[str],
        chain: VerifiedChain,
        address: str,
        arguments: Mapping[str, Any],
    ) -> VerifiedApproval:
        """What a receipt's verified claims allow here: binding, time, assurance, authority."""
        if claims.get("decision") != "approve":
            raise DeniedError(
                "the approval receipt is a rejection", reason=Reason.APPROVAL_REJECTED
            )
        if "edited" in claims or "edited_args" in claims:
            raise DeniedError(
                "approval receipt is for edited arguments; it cannot be checked here",
                reason=Reason.APPROVAL_MISMATCH,
            )
        try:
            expected = call_digest(address, args_digest(arguments), chain.delegation.leaf.link_id)
        except ValueError as exc:
            raise DeniedError(str(exc), reason=Reason.INVALID_ARGUMENTS) from exc
        if claims.get("call") != expected:
            raise DeniedError(
                "approval receipt is bound to another call", reason=Reason.APPROVAL_MISMATCH
            )
        now, leeway = self.verifier.clock.now(), self.verifier.leeway
        exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
        if not isinstance(exp, int) or now >= exp + leeway:
            raise DeniedError("approval receipt has expired", reason=Reason.APPROVAL_EXPIRED)
        if not isinstance(iat, int) or iat > now + leeway:
            raise DeniedError(
                "approval receipt was issued in the future", reason=Reason.APPROVAL_INVALID
            )
        if not isinstance(jti, str) or not jti:
            raise DeniedError("approval receipt has no id", reason=Reason.APPROVAL_INVALID)
        claimed = claims.get("assurance")
        if signer == approver:
            assurance = "signed"
        elif isinstance(claimed, str) and claimed in ASSURANCE_LEVELS:
            assurance = claimed if assurance_at_least(_ATTESTED_CAP, claimed) else _ATTESTED_CAP
        else:
            raise DeniedError(
                "approval receipt states no assurance", reason=Reason.APPROVAL_INVALID
            )
        if not assurance_at_least(assurance, self.min_assurance):
            raise DeniedError(
                f"the approval has assurance '{assurance}', but this server requires "
                f"'{self.min_assurance}'",
                reason=Reason.APPROVAL_ASSURANCE,
            )
        if self.verifier.revocations.find_revoked([], kids, [approver, signer]):
            raise DeniedError(
                f"the approval of {approver} is revoked", reason=Reason.APPROVER_NOT_AUTHORIZED
            )
        acting = {p for p in chain.path if p.split(":", 1)[0] in ("agent", "service")}
        if approver == chain.holder.id or approver in acting:
            raise DeniedError(
                f"{approver} acts in the requesting chain and may not approve it",
                reason=Reason.SEPARATION_OF_DUTIES,
            )
        return VerifiedApproval(
            jti=jti,
            approver=approver,
            signer=signer,
            assurance=assurance,
            channel=str(claims.get("channel")),
            expires_at=exp,
        )

    def _burn_receipt(self, approval: VerifiedApproval, call: VerifiedCall) -> None:
        key = f"approval/{approval.signer}/{approval.jti}"
        if self.reusable_receipts:
            # The call token was consumed a moment ago: this pair cannot repeat.
            key += f"/{call.claims.issuer}/{call.claims.jti}"
        now, leeway = self.verifier.clock.now(), self.verifier.leeway
        if not self.verifier.replay.consume(key, approval.expires_at + leeway, now=now):
            raise DeniedError("approval receipt was used before", reason=Reason.APPROVAL_REPLAYED)

    # -- middleware ---------------------------------------------------------------

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
                _meta={META_DECISION: {"reason": exc.reason}},
            )
        reset = _current.set(authority)
        try:
            return await call_next(ctx)
        finally:
            _current.reset(reset)
