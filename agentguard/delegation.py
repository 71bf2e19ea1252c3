"""Delegations: the chain of grants from a trusted root to the current holder.

A :class:`Delegation` issues a root grant, attenuates to a new holder in one
call, serialises to the ``~``-joined string of DESIGN §2 and parses it back.
A parsed delegation is *unverified*; :class:`agentguard.verify.Verifier` turns
it into a :class:`agentguard.verify.VerifiedChain`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agentguard.addresses import pattern_covers, patterns_overlap
from agentguard.budgets import Budget
from agentguard.clock import Clock, SystemClock, format_duration, parse_duration
from agentguard.decision import Reason
from agentguard.errors import IssuanceError, TokenFormatError
from agentguard.keys import Identity, Principal, validate_principal_id
from agentguard.tokens import Grant, Rule, mint_call_token

__all__ = [
    "DEFAULT_MAX_LINKS",
    "MAX_DELEGATION_BYTES",
    "Delegation",
    "budget_warnings",
    "ScopeSpec",
    "scope_warnings",
    "split_delegation",
]

#: Delegation strings longer than this are refused before any parsing.
MAX_DELEGATION_BYTES = 16384
#: Chain length cap applied by :meth:`Delegation.parse` unless told otherwise.
DEFAULT_MAX_LINKS = 8
DEFAULT_ROOT_DEPTH = 3

ScopeSpec = Sequence[str | Rule | Mapping[str, Any]]


def _rules(scope: ScopeSpec) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for item in scope:
        if isinstance(item, Rule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(Rule(item))
        elif isinstance(item, Mapping):
            rules.append(
                Rule(
                    item["tool"],
                    item.get("where"),
                    bool(item.get("approval", False)),
                    item.get("budget"),
                )
            )
        else:
            raise IssuanceError("a scope lists tool patterns, Rule objects or rule mappings")
    if not rules:
        raise IssuanceError("a grant needs at least one tool rule")
    if len(rules) > 64:
        raise IssuanceError("a grant holds at most 64 rules")
    return tuple(rules)


def scope_warnings(rules: Sequence[Rule]) -> list[str]:
    """Notes on rules of one grant that lie inside a broader rule of the same grant.

    Such a rule does not do what it may look like: an approval rule inside a
    broader free rule still demands approval (approvals never disappear), a
    free rule inside a broader approval rule still needs that approval, and a
    free rule inside a broader free rule adds nothing.
    """
    notes: list[str] = []
    for j, narrow in enumerate(rules):
        for i, broad in enumerate(rules):
            if i == j or broad.predicate is not None or not pattern_covers(broad.tool, narrow.tool):
                continue
            if i > j and narrow == broad:
                continue  # the same rule written twice: one note for the pair
            inside = f"rule {j} ({narrow.describe()}) lies inside rule {i} ({broad.describe()})"
            if narrow.approval and not broad.approval:
                notes.append(
                    f"{inside}: calls it selects still need approval; approvals never "
                    "disappear behind a broader rule"
                )
            elif broad.approval and not narrow.approval:
                notes.append(f"{inside}: calls it selects need approval all the same")
            elif not narrow.approval:
                notes.append(f"{inside}: it adds nothing")
            break
    return notes


def budget_warnings(delegation: Delegation) -> list[str]:
    """Notes on budgets of the leaf's rules that can never bind under its parent's.

    Every budget along the chain is charged, so a child budget at least as
    wide as its parent's, over calls the parent's budgeted rule always covers,
    never refuses anything the parent's would not.
    """
    if len(delegation) < 2:
        return []
    parent, leaf = delegation.grants[-2], delegation.leaf
    notes = []
    for j, rule in enumerate(leaf.scope):
        if not isinstance(rule.budget, Budget):
            continue
        for i, above in enumerate(parent.scope):
            covered = pattern_covers(above.tool, rule.tool) and above.predicate in (
                None,
                rule.predicate,
            )
            if not covered or not isinstance(above.budget, Budget):
                continue
            for limit in rule.budget.never_binds_under(above.budget):
                notes.append(
                    f"rule {j}'s budget ({rule.budget.describe()}) can never take effect on "
                    f"{limit}: parent rule {i} ({above.budget.describe()}) is charged for the "
                    "same calls and is no wider"
                )
    return notes


def split_delegation(text: object, *, max_links: int) -> list[str]:
    """Split a delegation string into its grants' JWS, applying the size cap and
    the chain-length cap before any decoding.

    Raises:
        TokenFormatError: the string is not text, empty, too large or too long.
    """
    if not isinstance(text, str):
        raise TokenFormatError("a delegation must be a string")
    text = text.strip()
    if len(text) > MAX_DELEGATION_BYTES:
        raise TokenFormatError(
            f"delegation is larger than {MAX_DELEGATION_BYTES} bytes", reason=Reason.OVERSIZED
        )
    if not text:
        raise TokenFormatError("delegation is empty")
    parts = text.split("~")
    if len(parts) > max_links:
        raise TokenFormatError(
            f"delegation has {len(parts)} links; at most {max_links} are allowed",
            reason=Reason.CHAIN_TOO_LONG,
        )
    return parts


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Delegation:
    """An ordered chain of grants, root first. Immutable.

    Build one with :meth:`issue` (a root grant) and :meth:`attenuate`; read one
    with :meth:`parse`. Nothing here proves the chain valid: verify it with a
    :class:`agentguard.verify.Verifier` (or let the guard do it).
    """

    __slots__ = ("_grants",)

    def __init__(self, grants: Sequence[Grant]) -> None:
        if not grants:
            raise TokenFormatError("a delegation needs at least one grant")
        self._grants = tuple(grants)

    # -- construction -----------------------------------------------------

    @classmethod
    def issue(
        cls,
        issuer: Identity,
        subject: Principal | Identity,
        scope: ScopeSpec,
        *,
        ttl: float | str | Any,
        purpose: str | None = None,
        on_behalf_of: str | None = None,
        max_depth: int = DEFAULT_ROOT_DEPTH,
        not_before: float | None = None,
        meta: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> Delegation:
        """Issue a root grant from ``issuer`` (a trusted root) to ``subject``.

        ``ttl`` is seconds, a ``timedelta`` or text such as ``"24h"``.

        Raises:
            IssuanceError: the scope, window or depth is invalid.
            InvalidAddressError, PredicateError: a rule is malformed.
        """
        now = (clock or SystemClock()).now()
        start = now if not_before is None else not_before
        ttl_s = _ttl(ttl)
        if max_depth < 0:
            raise IssuanceError("max_depth must not be negative")
        if on_behalf_of is not None:
            validate_principal_id(on_behalf_of)
        grant = Grant.sign(
            issuer,
            _principal(subject),
            scope=_rules(scope),
            issued_at=int(now),
            not_before=int(start),
            expires_at=int(start) + math.ceil(ttl_s),
            max_depth=max_depth,
            purpose=purpose,
            on_behalf_of=on_behalf_of,
            meta=meta,
        )
        return cls([grant])

    def attenuate(
        self,
        holder: Identity,
        subject: Principal | Identity,
        scope: ScopeSpec,
        *,
        ttl: float | str | Any | None = None,
        purpose: str | None = None,
        on_behalf_of: str | None = None,
        max_depth: int | None = None,
        not_before: float | None = None,
        meta: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
    ) -> Delegation:
        """Delegate part of this delegation's authority to ``subject``.

        ``holder`` must be the current holder (its key is the leaf's ``cnf``).
        The child may not outlive or predate its parent, its ``max_depth`` is at
        most the parent's minus one (default exactly that), and every rule must
        reach at least one tool the parent reaches. ``purpose`` and
        ``on_behalf_of`` default to the parent's. Without ``ttl`` the child
        expires with its parent.

        Raises:
            IssuanceError: the holder is wrong or the child would widen its parent.
            InvalidAddressError, PredicateError: a rule is malformed.
        """
        leaf = self.leaf
        if holder.id != leaf.subject or holder.kid != leaf.subject_key.kid:
            raise IssuanceError(
                f"only the holder of this delegation ({leaf.subject}) can attenuate it; "
                f"{holder.id} tried"
            )
        if leaf.max_depth < 1:
            raise IssuanceError(
                f"the delegation to {leaf.subject} allows no further delegation (max_depth 0)"
            )
        depth = leaf.max_depth - 1 if max_depth is None else max_depth
        if not 0 <= depth < leaf.max_depth:
            raise IssuanceError(
                f"max_depth {depth} is not lower than the parent's ({leaf.max_depth})"
            )
        now = (clock or SystemClock()).now()
        start = max(now, leaf.not_before) if not_before is None else not_before
        if start < leaf.not_before:
            raise IssuanceError("the child grant would start before its parent")
        end = leaf.expires_at if ttl is None else int(start) + math.ceil(_ttl(ttl))
        if end > leaf.expires_at:
            raise IssuanceError(
                f"the child grant would expire at {_stamp(end)}, after its parent "
                f"({_stamp(leaf.expires_at)}); ask for a shorter ttl"
            )
        if end <= start:
            raise IssuanceError("the parent grant has expired; nothing is left to delegate")
        rules = _rules(scope)
        for rule in rules:
            if not any(patterns_overlap(rule.tool, p.tool) for p in leaf.scope):
                allowed = ", ".join(p.tool for p in leaf.scope)
                raise IssuanceError(
                    f"rule {rule.tool!r} names no tool the parent grant allows ({allowed}); "
                    "scope is conjunctive, so it could never be used"
                )
        if on_behalf_of is not None:
            validate_principal_id(on_behalf_of)
        grant = Grant.sign(
            holder,
            _principal(subject),
            scope=rules,
            issued_at=int(now),
            not_before=int(start),
            expires_at=end,
            max_depth=depth,
            parent=leaf.link_id,
            purpose=purpose if purpose is not None else leaf.purpose,
            on_behalf_of=on_behalf_of if on_behalf_of is not None else leaf.on_behalf_of,
            meta=meta,
        )
        return Delegation([*self._grants, grant])

    # -- serialisation ----------------------------------------------------

    def serialize(self) -> str:
        """The grants' JWS, root first, joined by ``~``."""
        return "~".join(g.token for g in self._grants)

    def __str__(self) -> str:
        return self.serialize()

    @classmethod
    def parse(cls, text: str, *, max_links: int = DEFAULT_MAX_LINKS) -> Delegation:
        """Parse a delegation string structurally (no signature checks).

        Size and length caps are applied before any decoding.

        Raises:
            TokenFormatError: the string is malformed, too large or too long.
        """
        parts = split_delegation(text, max_links=max_links)
        return cls([Grant.parse(part) for part in parts])

    # -- accessors ----------------------------------------------------------

    @property
    def grants(self) -> tuple[Grant, ...]:
        """The links, root first."""
        return self._grants

    @property
    def root(self) -> Grant:
        """The root grant."""
        return self._grants[0]

    @property
    def leaf(self) -> Grant:
        """The last grant: its subject is the holder."""
        return self._grants[-1]

    @property
    def holder(self) -> str:
        """Principal id of the current holder."""
        return self._grants[-1].subject

    @property
    def path(self) -> tuple[str, ...]:
        """Principal ids from the root issuer to the holder."""
        return (self._grants[0].issuer, *(g.subject for g in self._grants))

    @property
    def link_ids(self) -> tuple[str, ...]:
        """Link ids, root first."""
        return tuple(g.link_id for g in self._grants)

    @property
    def expires_at(self) -> int:
        """When the first link of the chain expires."""
        return min(g.expires_at for g in self._grants)

    def __len__(self) -> int:
        return len(self._grants)

    def __iter__(self) -> Iterator[Grant]:
        return iter(self._grants)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Delegation) and other.serialize() == self.serialize()

    def __hash__(self) -> int:
        return hash(self.serialize())

    def __repr__(self) -> str:
        return f"<Delegation {' -> '.join(self.path)} ({len(self)} links)>"

    def mint_call_token(
        self,
        holder: Identity,
        tool: str,
        args: Mapping[str, Any],
        *,
        ttl: float = 30,
        clock: Clock | None = None,
    ) -> str:
        """Sign a single-use call token for ``tool`` with ``args`` as the holder.

        Raises:
            IssuanceError: ``holder`` is not this delegation's holder.
            InvalidAddressError, ValueError: bad tool address or arguments.
        """
        if holder.id != self.holder or holder.kid != self.leaf.subject_key.kid:
            raise IssuanceError(f"only {self.holder} can sign call tokens for this delegation")
        now = (clock or SystemClock()).now()
        return mint_call_token(
            holder, leaf_link_id=self.leaf.link_id, tool=tool, args=args, now=now, ttl=ttl
        )

    # -- rendering ------------------------------------------------------------

    def summary(self, *, now: float | None = None) -> str:
        """A readable multi-line rendering of the chain (no token material)."""
        current = SystemClock().now() if now is None else now
        lines = []
        for index, grant in enumerate(self._grants):
            state = _window_state(grant, current)
            lines.append(
                f"[{index}] {grant.issuer} -> {grant.subject}  ({state})  link {grant.link_id[:12]}"
            )
            lines.append(
                f"    window {_stamp(grant.not_before)} .. {_stamp(grant.expires_at)}"
                f"  max_depth {grant.max_depth}"
            )
            if grant.purpose:
                lines.append(f"    purpose: {grant.purpose}")
            if grant.on_behalf_of:
                lines.append(f"    on behalf of: {grant.on_behalf_of}")
            for r_index, rule in enumerate(grant.scope):
                lines.append(f"    rule {r_index}: {rule.describe()}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """Notebook rendering: the chain as a row of boxes with its rules."""
        now = SystemClock().now()
        boxes = []
        root = html.escape(self.root.issuer)
        boxes.append(f'<div style="{_BOX}"><b>{root}</b><br><small>trusted root</small></div>')
        for index, grant in enumerate(self._grants):
            rules = "<br>".join(html.escape(r.describe()) for r in grant.scope)
            extra = f"<br><i>{html.escape(grant.purpose)}</i>" if grant.purpose else ""
            boxes.append(
                f'<div style="{_ARROW}">&rarr;<br><small>link {index}</small></div>'
                f'<div style="{_BOX}"><b>{html.escape(grant.subject)}</b><br>'
                f"<small>{html.escape(_window_state(grant, now))}, depth {grant.max_depth}"
                f"</small>{extra}<br><code>{rules}</code></div>"
            )
        return f'<div style="display:flex;align-items:center;gap:4px">{"".join(boxes)}</div>'


_BOX = "border:1px solid #888;border-radius:6px;padding:6px;font-family:sans-serif"
_ARROW = "text-align:center;color:#555;font-family:sans-serif"


def _window_state(grant: Grant, now: float) -> str:
    if now < grant.not_before:
        return f"starts in {format_duration(grant.not_before - now)}"
    if now >= grant.expires_at:
        return f"expired {format_duration(now - grant.expires_at)} ago"
    return f"valid, {format_duration(grant.expires_at - now)} left"


def _ttl(ttl: Any) -> float:
    try:
        return parse_duration(ttl)
    except ValueError as exc:
        raise IssuanceError(str(exc)) from exc


def _principal(subject: Principal | Identity) -> Principal:
    return subject.principal if isinstance(subject, Identity) else subject
