"""Token formats: grants (delegation links), call tokens and their claims.

Parsing here is structural only: a :class:`Grant` or :class:`CallClaims`
returned by ``parse`` has NOT been verified. Only :mod:`agentguard.verify`
checks signatures, chains, time and revocation.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentguard import _jws
from agentguard.addresses import parse_address, pattern_matches, validate_pattern
from agentguard.budgets import Budget
from agentguard.canonical import canonical_digest, canonical_json
from agentguard.decision import Reason
from agentguard.errors import (
    IdentityError,
    InvalidAddressError,
    PredicateError,
    TokenFormatError,
)
from agentguard.keys import Identity, Principal, validate_principal_id
from agentguard.predicates import compile_predicate, describe, validate_predicate

__all__ = [
    "FORMAT_VERSION",
    "TYP_APPROVAL",
    "TYP_CALL",
    "TYP_GRANT",
    "CallClaims",
    "Grant",
    "Rule",
    "args_digest",
    "mint_call",
    "mint_call_token",
    "new_jti",
    "parse_call_token",
]

FORMAT_VERSION = 1
TYP_GRANT = "agentguard-grant+jwt"
TYP_CALL = "agentguard-call+jwt"
TYP_APPROVAL = "agentguard-approval+jwt"

MAX_RULES = 64
MAX_TEXT = 512
MAX_META_BYTES = 2048
#: Upper bound on a call token's lifetime; call tokens live seconds, not minutes.
MAX_CALL_TTL = 300


def new_jti() -> str:
    """A fresh 128-bit random token id."""
    return secrets.token_urlsafe(16)


def args_digest(args: Mapping[str, Any]) -> str:
    """SHA-256 (base64url) of the RFC 8785 canonical JSON of a call's arguments.

    Raises:
        ValueError: the arguments are not a JSON object representable canonically.
    """
    if type(args) is not dict:
        if not isinstance(args, Mapping):
            raise ValueError("tool arguments must be a JSON object")
        args = dict(args)
    return canonical_digest(args)


@dataclass(frozen=True)
class Rule:
    """One tool rule of a scope: a tool pattern, an optional predicate, an approval flag.

    ``where`` accepts the friendly form (``{"amount": {"<=": 100}}``) or the
    canonical one; it is stored canonical. The rule admits a call only when
    the predicate is definitely true; with ``approval`` it also demands
    approval whenever the predicate is not definitely false (a missing or
    wrongly typed argument included), whichever rule of the grant admits the
    call. The operators, the three-valued rules and examples are in the
    README's "Argument predicates" section and :mod:`agentguard.predicates`.

    ``budget`` (``{"window": "1d", "calls": 10, "sum": {"amount": 500}}``, see
    :class:`agentguard.budgets.Budget`) restricts like an approval rule: every
    call the rule may select (predicate not definitely false) is charged to it.

    Raises:
        InvalidAddressError: the tool pattern is malformed.
        PredicateError: the predicate is malformed.
        ValueError: the budget is malformed.
    """

    tool: str
    where: list[Any] | Mapping[str, Any] | None = None
    approval: bool = False
    budget: Budget | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_pattern(self.tool)
        if self.where is not None:
            object.__setattr__(self, "where", compile_predicate(self.where))
        if not isinstance(self.approval, bool):
            raise TypeError("Rule.approval must be a bool")
        if self.budget is not None:
            object.__setattr__(self, "budget", Budget.parse(self.budget))

    def matches_tool(self, address: str) -> bool:
        """Whether the rule's pattern selects ``address``."""
        return pattern_matches(self.tool, address)

    def to_claim(self) -> dict[str, Any]:
        """The rule as it is written into a grant."""
        claim: dict[str, Any] = {"tool": self.tool}
        if self.where is not None:
            claim["where"] = self.where
        if self.approval:
            claim["approval"] = True
        if isinstance(self.budget, Budget):
            claim["budget"] = self.budget.to_claim()
        return claim

    @classmethod
    def from_claim(cls, claim: object, where: str = "scope") -> Rule:
        """Parse a rule read from a token (strict: unknown members are refused).

        Raises:
            TokenFormatError: the rule is malformed.
        """
        if not isinstance(claim, dict) or not set(claim) <= {"tool", "where", "approval", "budget"}:
            raise TokenFormatError(
                f"{where}: a rule must be an object with tool/where/approval/budget"
            )
        tool = claim.get("tool")
        approval = claim.get("approval", False)
        if not isinstance(tool, str) or not isinstance(approval, bool):
            raise TokenFormatError(f"{where}: rule has a bad 'tool' or 'approval'")
        if "where" in claim and claim["where"] is None:
            raise TokenFormatError(f"{where}: 'where' must be a predicate")
        rule = _rule_from_claim(tool, claim.get("where"), approval, where)
        if "budget" in claim:
            try:
                object.__setattr__(rule, "budget", Budget.from_claim(claim["budget"]))
            except ValueError as exc:
                raise TokenFormatError(f"{where}: {exc}") from exc
        return rule

    @property
    def predicate(self) -> list[Any] | None:
        """The canonical predicate: ``where`` as compiled (always a list once built)."""
        return self.where if isinstance(self.where, list) else None

    def describe(self) -> str:
        """One line for humans: ``tickets/* where business_unit == "emea" [approval]``."""
        text = self.tool
        if self.predicate:
            text += f" where {describe(self.predicate)}"
        if self.approval:
            text += " [approval]"
        if isinstance(self.budget, Budget):
            text += f" [budget {self.budget.describe()}]"
        return text


def _rule_from_claim(tool: str, predicate: Any, approval: bool, where: str) -> Rule:
    try:
        validate_pattern(tool)
        checked = validate_predicate(predicate) if predicate is not None else None
    except (InvalidAddressError, PredicateError) as exc:
        raise TokenFormatError(f"{where}: {exc}") from exc
    # Validated above: skip __post_init__, which would compile the predicate again.
    rule = object.__new__(Rule)
    object.__setattr__(rule, "tool", tool)
    object.__setattr__(rule, "where", checked)
    object.__setattr__(rule, "approval", approval)
    object.__setattr__(rule, "budget", None)
    return rule


def _int_claim(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise TokenFormatError(f"claim '{name}' must be a non-negative integer")
    return value


def _str_claim(claims: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = claims.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise TokenFormatError(f"claim '{name}' must be a non-empty string")
    return value


def _principal_claim(claims: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = _str_claim(claims, name, optional=optional)
    if value is None:
        return None
    try:
        return validate_principal_id(value)
    except IdentityError as exc:
        raise TokenFormatError(f"claim '{name}' is not a principal id") from exc


def _check_version(claims: Mapping[str, Any]) -> None:
    if claims.get("ver") != FORMAT_VERSION:
        raise TokenFormatError("token format version is not supported", reason=Reason.BAD_VERSION)


@dataclass(frozen=True)
class Grant:
    """One delegation link, parsed but not verified.

    Attributes mirror the claims of DESIGN §2; ``link_id`` is the SHA-256 of the
    JWS and ``parent`` the parent's link id (``prf``), ``None`` on a root.
    """

    token: str = field(repr=False)
    link_id: str
    kid: str
    issuer: str
    subject: str
    subject_key: Principal = field(repr=False)
    issued_at: int
    not_before: int
    expires_at: int
    jti: str
    parent: str | None
    scope: tuple[Rule, ...]
    purpose: str | None
    on_behalf_of: str | None
    max_depth: int
    meta: dict[str, Any] | None = None

    @classmethod
    def parse(cls, token: str) -> Grant:
        """Parse a grant JWS without verifying it.

        Raises:
            TokenFormatError: the token is malformed or not a grant.
        """
        header, claims = _jws.peek(token, TYP_GRANT)
        _check_version(claims)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenFormatError("grant header has no 'kid'")
        subject = _principal_claim(claims, "sub")
        assert subject is not None  # noqa: S101 - narrowed by _principal_claim
        cnf = claims.get("cnf")
        if not isinstance(cnf, dict) or not isinstance(cnf.get("jwk"), dict):
            raise TokenFormatError("grant has no 'cnf.jwk' key for its subject")
        try:
            subject_key = Principal.from_jwk(subject, cnf["jwk"])
        except IdentityError as exc:
            raise TokenFormatError(f"grant 'cnf.jwk' is invalid: {exc}") from exc
        scope_claim = claims.get("scope")
        if not isinstance(scope_claim, list) or not 0 < len(scope_claim) <= MAX_RULES:
            raise TokenFormatError(f"grant 'scope' must list 1 to {MAX_RULES} rules")
        scope = tuple(Rule.from_claim(r, f"scope[{i}]") for i, r in enumerate(scope_claim))
        max_depth = _int_claim(claims, "max_depth")
        nbf, exp = _int_claim(claims, "nbf"), _int_claim(claims, "exp")
        if nbf >= exp:
            raise TokenFormatError("grant window is empty (nbf >= exp)")
        meta = claims.get("meta")
        try:
            bad_meta = meta is not None and (
                not isinstance(meta, dict) or len(canonical_json(meta)) > MAX_META_BYTES
            )
        except ValueError:  # e.g. integers beyond 2**53: no canonical form, so refuse it
            bad_meta = True
        if bad_meta:
            raise TokenFormatError("grant 'meta' must be a small JSON object")
        parent = _str_claim(claims, "prf", optional=True)
        return cls(
            token=token,
            link_id=_jws.link_id(token),
            kid=kid,
            issuer=_principal_claim(claims, "iss") or "",
            subject=subject,
            subject_key=subject_key,
            issued_at=_int_claim(claims, "iat"),
            not_before=nbf,
            expires_at=exp,
            jti=_str_claim(claims, "jti") or "",
            parent=parent,
            scope=scope,
            purpose=_str_claim(claims, "purpose", optional=True),
            on_behalf_of=_principal_claim(claims, "on_behalf_of", optional=True),
            max_depth=max_depth,
            meta=meta,
        )

    @classmethod
    def sign(
        cls,
        issuer: Identity,
        subject: Principal,
        *,
        scope: Sequence[Rule],
        issued_at: int,
        not_before: int,
        expires_at: int,
        max_depth: int,
        parent: str | None = None,
        purpose: str | None = None,
        on_behalf_of: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Grant:
        """Sign a new grant with ``issuer``'s key (no chain checks; see Delegation)."""
        claims: dict[str, Any] = {
            "ver": FORMAT_VERSION,
            "iss": issuer.id,
            "sub": subject.id,
            "cnf": {"jwk": subject.public_jwk()},
            "iat": issued_at,
            "nbf": not_before,
            "exp": expires_at,
            "jti": new_jti(),
            "scope": [rule.to_claim() for rule in scope],
            "max_depth": max_depth,
        }
        if parent is not None:
            claims["prf"] = parent
        if purpose is not None:
            claims["purpose"] = purpose
        if on_behalf_of is not None:
            claims["on_behalf_of"] = on_behalf_of
        if meta:
            claims["meta"] = dict(meta)
        return cls.parse(_jws.sign(claims, issuer, TYP_GRANT))

    def matching_rule(self, address: str) -> int | None:
        """Index of the first rule whose tool pattern selects ``address``."""
        for index, rule in enumerate(self.scope):
            if rule.matches_tool(address):
                return index
        return None


@dataclass(frozen=True)
class CallClaims:
    """The claims of a call token, parsed but not verified."""

    token: str = field(repr=False)
    kid: str
    issuer: str
    audience: str
    tool: str
    args_digest: str
    parent: str
    issued_at: int
    expires_at: int
    jti: str

    @classmethod
    def parse(cls, token: str) -> CallClaims:
        """Parse a call token without verifying it.

        Raises:
            TokenFormatError: the token is malformed or not a call token.
        """
        header, claims = _jws.peek(token, TYP_CALL)
        _check_version(claims)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise TokenFormatError("call token header has no 'kid'")
        tool = _str_claim(claims, "tool") or ""
        try:
            parse_address(tool)
        except InvalidAddressError as exc:
            raise TokenFormatError(f"call token 'tool' is invalid: {exc}") from exc
        return cls(
            token=token,
            kid=kid,
            issuer=_principal_claim(claims, "iss") or "",
            audience=_str_claim(claims, "aud") or "",
            tool=tool,
            args_digest=_str_claim(claims, "args") or "",
            parent=_str_claim(claims, "prf") or "",
            issued_at=_int_claim(claims, "iat"),
            expires_at=_int_claim(claims, "exp"),
            jti=_str_claim(claims, "jti") or "",
        )


def parse_call_token(token: str) -> CallClaims:
    """Parse a call token without verifying it (see :meth:`CallClaims.parse`).

    Raises:
        TokenFormatError: the token is malformed or not a call token.
    """
    return CallClaims.parse(token)


def mint_call_token(
    holder: Identity,
    *,
    leaf_link_id: str,
    tool: str,
    args: Mapping[str, Any],
    now: float,
    ttl: float = 30,
    audience: str | None = None,
    digest: str | None = None,
) -> str:
    """Sign a single-use call token for exactly this tool and these arguments.

    ``audience`` defaults to the tool's namespace; ``digest`` is the arguments'
    digest when the caller computed it already.

    Raises:
        InvalidAddressError: the tool address is malformed.
        ValueError: the arguments are not canonical JSON, or ``ttl`` is out of range.
    """
    return mint_call(
        holder,
        leaf_link_id=leaf_link_id,
        tool=tool,
        args=args,
        now=now,
        ttl=ttl,
        audience=audience,
        digest=digest,
    ).token


def mint_call(
    holder: Identity,
    *,
    leaf_link_id: str,
    tool: str,
    args: Mapping[str, Any],
    now: float,
    ttl: float = 30,
    audience: str | None = None,
    digest: str | None = None,
) -> CallClaims:
    """:func:`mint_call_token`, returning the token with the claims it was signed over.

    The claims are those just signed, so a guard that mints in-process does not
    parse its own token back.

    Raises:
        InvalidAddressError: the tool address is malformed.
        ValueError: the arguments are not canonical JSON, or ``ttl`` is out of range.
    """
    namespace, _ = parse_address(tool)
    if not 0 < ttl <= MAX_CALL_TTL:
        raise ValueError(f"call token ttl must be within (0, {MAX_CALL_TTL}] seconds")
    aud = audience or namespace
    issued, expires, jti = math.floor(now), math.ceil(now + ttl), new_jti()
    digest = digest if digest is not None else args_digest(args)
    payload = {
        "ver": FORMAT_VERSION,
        "iss": holder.id,
        "aud": aud,
        "tool": tool,
        "args": digest,
        "prf": leaf_link_id,
        "iat": issued,
        "exp": expires,
        "jti": jti,
    }
    # CallClaims(...) without the frozen dataclass's per-field setattr (it has no
    # __post_init__ and no slots; tests/test_jws_sign.py holds the two equal).
    claims: CallClaims = object.__new__(CallClaims)
    claims.__dict__.update(
        token=_jws.sign_call(payload, holder, TYP_CALL),
        kid=holder.kid,
        issuer=holder.id,
        audience=aud,
        tool=tool,
        args_digest=digest,
        parent=leaf_link_id,
        issued_at=issued,
        expires_at=expires,
        jti=jti,
    )
    return claims
