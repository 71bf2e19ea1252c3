"""Offline verification of delegation chains and call tokens (DESIGN §3).

:class:`Verifier` is the only producer of :class:`VerifiedChain`: holding one
means steps 1-4 (trust, signatures and ``prf`` links, time windows, depth,
revocation) passed at ``verified_at``. :meth:`Verifier.authorize` applies the
conjunctive scope (step 5) and accumulates approval requirements (step 6);
:meth:`Verifier.verify_call_token` checks the per-call attenuation (step 7).
Every failure is a :class:`~agentguard.errors.DeniedError` whose ``reason`` is
a stable code and whose ``explanation`` names the link and rule.
"""

from __future__ import annotations

import enum
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, NoReturn, Protocol

from agentguard import _jws
from agentguard.addresses import parse_address
from agentguard.clock import Clock, SystemClock
from agentguard.decision import Reason
from agentguard.delegation import DEFAULT_MAX_LINKS, Delegation, split_delegation
from agentguard.errors import DeniedError, InvalidAddressError, StoreError, TokenFormatError
from agentguard.keys import Principal, TrustedKey
from agentguard.predicates import Truth, evaluate, explain
from agentguard.store.base import ReplayStore, Revocation, RevocationKind, RevocationStore
from agentguard.store.memory import MemoryStore
from agentguard.tokens import TYP_CALL, TYP_GRANT, CallClaims, Grant, args_digest

__all__ = [
    "NO_REVOCATION_CHECK",
    "BoundedRoot",
    "NoRevocationCheck",
    "RevocationCheckDisabledWarning",
    "ScopeMatch",
    "VerifiedCall",
    "VerifiedChain",
    "Verifier",
    "revoked_link",
]

_SEAL = object()


class BoundedRoot(Protocol):
    """A root trusted only within a bound: its links pass :meth:`check_link` too.

    :class:`agentguard.federation.FederationRoot` is one: a federation key whose
    root links must be exactly what the federation rules derive from the
    evidence they record.
    """

    @property
    def principal(self) -> Principal:
        """The root's id and (first) public key."""
        ...

    @property
    def keys(self) -> Sequence[TrustedKey]:
        """Every key that may sign for the root, each with its validity window."""
        ...

    def check_link(self, grant: Grant) -> None:
        """Refuse (``DeniedError``) a root link this root signed beyond its bound."""
        ...


@dataclass(frozen=True)
class VerifiedChain:
    """A delegation whose trust, signatures, windows, depth and revocation checked out."""

    delegation: Delegation
    verified_at: float
    # An init-only value, never stored: ``dataclasses.replace`` cannot carry it over
    # from a verified chain to one around another delegation.
    _seal: InitVar[object] = None

    def __post_init__(self, _seal: object) -> None:
        if _seal is not _SEAL:
            raise TypeError("only Verifier.verify_chain creates a VerifiedChain")

    @property
    def holder(self) -> Principal:
        """The holder: subject of the leaf and owner of its ``cnf`` key."""
        return self.delegation.leaf.subject_key

    @property
    def path(self) -> tuple[str, ...]:
        """Principal ids from the trusted root to the holder."""
        return self.delegation.path


@dataclass(frozen=True)
class ScopeMatch:
    """The outcome of the conjunctive scope check for one call.

    ``rules`` holds, per link, the index of the rule that admitted the call.
    ``approval_rules`` lists ``(link, rule)`` pairs whose rule demands approval:
    every approval rule of every link whose pattern matches the tool and whose
    predicate is not definitely false, whichever rule admitted the call.
    ``budgeted`` is False only when no rule of any link whose pattern matches the
    tool carries a budget: then no rule budget can apply to the call.
    """

    tool: str
    rules: tuple[int, ...]
    approval_rules: tuple[tuple[int, int], ...]
    budgeted: bool = True

    @property
    def needs_approval(self) -> bool:
        """Whether any link's matching rule asks for step-up approval."""
        return bool(self.approval_rules)


@dataclass(frozen=True)
class VerifiedCall:
    """A call token that passed every check, including the replay check."""

    claims: CallClaims
    args_digest: str


# Built as the frozen dataclasses above build themselves, without the per-field
# set-up that costs more than the rest of a warm call's step (these are made on
# every call); tests/test_perf_verify_objects.py holds each equal to its class's own.
def _verified_chain(delegation: Delegation, now: float) -> VerifiedChain:
    chain: VerifiedChain = object.__new__(VerifiedChain)
    values = chain.__dict__
    values["delegation"], values["verified_at"] = delegation, now
    return chain


def _scope_match(
    tool: str,
    rules: tuple[int, ...],
    approval_rules: tuple[tuple[int, int], ...],
    budgeted: bool,
) -> ScopeMatch:
    match: ScopeMatch = object.__new__(ScopeMatch)
    values = match.__dict__
    values["tool"], values["rules"], values["approval_rules"] = tool, rules, approval_rules
    values["budgeted"] = budgeted
    return match


def _verified_call(claims: CallClaims, digest: str) -> VerifiedCall:
    call: VerifiedCall = object.__new__(VerifiedCall)
    values = call.__dict__
    values["claims"], values["args_digest"] = claims, digest
    return call


class _LinkCache:
    """Bounded LRU of links whose signature verified: JWS text -> (grant, verifying kid)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[Grant, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, now: float) -> tuple[Grant, str] | None:
        with self._lock:
            entry = self._items.get(token)
            if entry is None:
                return None
            if entry[0].expires_at + 3600 <= now:
                del self._items[token]
                return None
            self._items.move_to_end(token)
            return entry

    def put(self, token: str, kid: str, grant: Grant) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[token] = (grant, kid)
            self._items.move_to_end(token)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class _CachedChain:
    """A chain whose signatures, ``prf`` links, window nesting and depth checked out.

    Only what follows from the exact link texts and the root's key is kept: the
    root's key id (checked again on every hit), the chain's window (the latest
    ``nbf`` and ``iat``, the earliest ``exp``; checked against the clock on
    every hit) and the revocation query (asked of the store on every hit).
    """

    delegation: Delegation
    root_kid: str
    not_before: float
    issued_at: float
    expires_at: float
    link_ids: tuple[str, ...]
    kids: tuple[str, ...]
    principals: tuple[str, ...]


class _ChainCache:
    """Bounded LRU of verified chains, keyed by their exact link texts."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str | tuple[str, ...], _CachedChain] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str | tuple[str, ...]) -> _CachedChain | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
            return entry

    def put(self, key: str | tuple[str, ...], entry: _CachedChain) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def discard(self, key: str | tuple[str, ...]) -> None:
        with self._lock:
            self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Per link, the rules whose pattern selects a tool: (rule index, predicate, approval).
_Plan = tuple[tuple[tuple[int, list[Any] | None, bool], ...], ...]
#: A remembered plan: the delegation, its plan, whether a rule of the plan has a budget.
_PlanEntry = tuple[Delegation, _Plan, bool]


class _ScopePlans:
    """Bounded LRU of which rules of a delegation select a tool (a pure function of both).

    Keyed by the delegation object's identity and the tool; each entry holds the
    object itself, so the identity cannot be reused by another while it is
    remembered. A warm chain is the same object on every call (the chain cache
    hands it out); the predicates are still evaluated on every call.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, str], _PlanEntry] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, delegation: Delegation, tool: str) -> _PlanEntry:
        key = (id(delegation), tool)
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and entry[0] is delegation:
                self._items.move_to_end(key)
                return entry
        plan = tuple(
            tuple(
                (i, rule.predicate, rule.approval)
                for i, rule in enumerate(grant.scope)
                if rule.matches_tool(tool)
            )
            for grant in delegation
        )
        # Any budget at all, not only a well-formed one, counts: the budget step
        # then looks at the rules itself.
        budgeted = any(
            rule.budget is not None and rule.matches_tool(tool)
            for grant in delegation
            for rule in grant.scope
        )
        entry = (delegation, plan, budgeted)
        if self._size > 0:
            with self._lock:
                self._items[key] = entry
                self._items.move_to_end(key)
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        return entry

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class NoRevocationCheck(enum.Enum):
    """The type of :data:`NO_REVOCATION_CHECK`."""

    NO_REVOCATION_CHECK = "NO_REVOCATION_CHECK"

    def __repr__(self) -> str:
        return self.value


#: Pass as ``revocations=`` to verify WITHOUT any revocation source: revoked links,
#: keys, principals and sponsors are then accepted. An explicit, warned opt-out for
#: tests and offline tools; a verifier that gates real calls needs the
#: organisation's store (e.g. :class:`agentguard.store.sqlite.SQLiteStore`).
NO_REVOCATION_CHECK = NoRevocationCheck.NO_REVOCATION_CHECK


class RevocationCheckDisabledWarning(UserWarning):
    """A verifier was built with ``revocations=NO_REVOCATION_CHECK``."""


class _NoRevocations:
    """The revocation "store" behind :data:`NO_REVOCATION_CHECK`: nothing is ever revoked."""

    def revoke(self, kind: RevocationKind, value: str, *, reason: str, at: float) -> None:
        """Refuse: a revocation recorded here would be silently ignored.

        Raises:
            StoreError: always.
        """
        raise StoreError(
            "this verifier was built with revocations=NO_REVOCATION_CHECK and records none"
        )

    def find_revoked(
        self, link_ids: Sequence[str], kids: Sequence[str], principals: Sequence[str]
    ) -> Revocation | None:
        """Nothing is revoked."""
        return None

    def revocations(self) -> list[Revocation]:
        """No revocations."""
        return []


def _revocation_source(
    revocations: RevocationStore | NoRevocationCheck | None,
) -> RevocationStore:
    if revocations is NO_REVOCATION_CHECK:
        warnings.warn(
            "verifier built with revocations=NO_REVOCATION_CHECK: revoked links, keys, "
            "principals and sponsors are accepted",
            RevocationCheckDisabledWarning,
            stacklevel=3,
        )
        return _NoRevocations()
    if revocations is None or isinstance(revocations, NoRevocationCheck):
        raise TypeError(
            "revocations= must be a revocation store (e.g. the organisation's SQLiteStore); "
            "pass revocations=NO_REVOCATION_CHECK to verify without one, explicitly"
        )
    return revocations


def _link_principals(grant: Grant) -> list[str]:
    """The principals a link names: issuer, subject and sponsor (``on_behalf_of``)."""
    named = [grant.issuer, grant.subject]
    if grant.on_behalf_of is not None:
        named.append(grant.on_behalf_of)
    return named


def _revocation_query(
    grants: Sequence[Grant],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """What a chain is looked up by in the revocation store: link ids, key ids, principals."""
    principals: set[str] = set()
    for grant in grants:
        principals.update(_link_principals(grant))
    kids = {g.kid for g in grants} | {g.subject_key.kid for g in grants}
    return tuple(g.link_id for g in grants), tuple(sorted(kids)), tuple(sorted(principals))


def revoked_link(
    revocations: RevocationStore, grants: Sequence[Grant]
) -> tuple[int, Revocation] | None:
    """The first link revoked in its own right, with the revocation that hits it.

    A link is revoked when its link id, its issuer's or subject's key, or its
    issuer, subject or sponsor (``on_behalf_of``) is. Every link below it dies
    with it, so views mark it and all its descendants revoked.
    """
    for index, grant in enumerate(grants):
        hit = revocations.find_revoked(
            [grant.link_id],
            sorted({grant.kid, grant.subject_key.kid}),
            sorted(set(_link_principals(grant))),
        )
        if hit is not None:
            return index, hit
    return None


class Verifier:
    """Verifies delegations and call tokens offline against trusted roots.

    Args:
        trusted_roots: the principals whose root grants are accepted; a
            :class:`~agentguard.keys.TrustedKey` gives a root key a validity
            window, and a root may have several keys (rotation). A root link
            counts only when signed (its ``iat``) inside its key's window and
            checked before the key's ``retired_at``.
        revocations: where revoked links, keys and principals are looked up on
            every chain: required. ``NO_REVOCATION_CHECK`` verifies without
            any (accepting revoked chains), with a
            :class:`RevocationCheckDisabledWarning`.
        replay: where used call-token ids are remembered (default: in memory,
            private to this verifier).
        clock: the time source.
        leeway: seconds of clock skew tolerated on every time check.
        max_links: the longest chain accepted.
        cache_size: how many verified link signatures, and how many verified
            chains (by their exact text), to remember; ``0`` remembers none.
            A remembered chain skips signature and structure checks only:
            its root's key, its time window and revocation are checked on
            every call.
        redact: with a list of argument names (the policy's ``redact``), a
            refused predicate's explanation shows the failing argument's value,
            masked where a name on its way is listed (case-insensitive); by
            default (``None``) it names the argument and the operator only.
        bounded_roots: roots trusted only within a bound (federation keys): a
            root link one of them signed must be signed by one of its ``keys``
            (checked against that key's window as a trusted root's key is) and
            also pass its ``check_link``.

    Raises:
        TypeError: ``revocations`` is missing or ``None``.
        ValueError: a bounded root is also a trusted root, or one key is both
            a bounded root's and another root's.
    """

    def __init__(
        self,
        trusted_roots: Iterable[Principal | TrustedKey] | Mapping[str, Principal],
        *,
        revocations: RevocationStore | NoRevocationCheck,
        replay: ReplayStore | None = None,
        clock: Clock | None = None,
        leeway: float = 5.0,
        max_links: int = DEFAULT_MAX_LINKS,
        cache_size: int = 4096,
        redact: Iterable[str] | None = None,
        bounded_roots: Iterable[BoundedRoot] = (),
    ) -> None:
        self.redact: tuple[str, ...] | None = None if redact is None else tuple(redact)
        roots = trusted_roots.values() if isinstance(trusted_roots, Mapping) else trusted_roots
        # Each root's first key (``trusted_roots``), and every key of each root by key id.
        self._roots: dict[str, Principal] = {}
        self._root_keys: dict[str, dict[str, TrustedKey]] = {}
        for root in roots:
            trusted = root if isinstance(root, TrustedKey) else TrustedKey(root)
            self._roots.setdefault(trusted.principal.id, trusted.principal)
            keys = self._root_keys.setdefault(trusted.principal.id, {})
            keys.setdefault(trusted.principal.kid, trusted)
        self._bounds: dict[str, BoundedRoot] = {}
        for bounded in bounded_roots:
            if bounded.principal.id in self._roots:
                raise ValueError(f"{bounded.principal.id} is both a trusted and a bounded root")
            self._bounds[bounded.principal.id] = bounded
            self._roots[bounded.principal.id] = bounded.principal
            # Any key of the set (a guard's replicas, or rotation) within its window.
            bounded_keys: dict[str, TrustedKey] = {}
            for trusted in bounded.keys:
                if trusted.principal.id != bounded.principal.id:
                    raise ValueError(f"a key of {bounded.principal.id} names another principal")
                bounded_keys.setdefault(trusted.principal.kid, trusted)
            self._root_keys[bounded.principal.id] = bounded_keys or {
                bounded.principal.kid: TrustedKey(bounded.principal)
            }
        # A key both unbounded and bounded would let its holder sign unbounded roots.
        owners: dict[str, str] = {}
        for root_id, root_keys in self._root_keys.items():
            for kid in root_keys:
                other = owners.setdefault(kid, root_id)
                if other != root_id and (root_id in self._bounds or other in self._bounds):
                    raise ValueError(f"key {kid} is a key of both {other} and {root_id}")
        self.revocations: RevocationStore = _revocation_source(revocations)
        # "is None", not "or": a store that defines __len__ is falsy while empty.
        self.replay: ReplayStore = MemoryStore() if replay is None else replay
        self.clock: Clock = clock or SystemClock()
        self.leeway = float(leeway)
        self.max_links = max_links
        self._cache = _LinkCache(cache_size)
        self._chains = _ChainCache(cache_size)
        self._plans = _ScopePlans(cache_size)

    @property
    def trusted_roots(self) -> Mapping[str, Principal]:
        """The trusted root principals by id, each root's first key (bounded roots are
        not listed; see :meth:`root_keys` for every key)."""
        return {k: v for k, v in self._roots.items() if k not in self._bounds}

    def root_keys(self, root_id: str) -> list[TrustedKey]:
        """Every key (with its window) trusted for the root ``root_id``; empty when none."""
        return list(self._root_keys.get(root_id, {}).values())

    def clear_cache(self) -> None:
        """Forget every cached link signature and verified chain."""
        self._cache.clear()
        self._chains.clear()
        self._plans.clear()

    # -- steps 1-4 ----------------------------------------------------------

    def verify_chain(self, delegation: str | Delegation) -> VerifiedChain:
        """Verify trust, signatures, ``prf`` links, windows, depth and revocation.

        Raises:
            DeniedError: the chain is not valid now (see ``reason``).
        """
        now = self.clock.now()
        key: str | tuple[str, ...] | None = None
        if isinstance(delegation, str):
            key = delegation
        elif isinstance(delegation, Delegation):
            key = tuple(g.token for g in delegation)
        hit = self._chains.get(key) if key is not None else None
        if hit is not None:
            if self._still_valid(hit, now):
                self._check_revocation(hit.delegation, (hit.link_ids, hit.kids, hit.principals))
                return _verified_chain(hit.delegation, now)
            # Out of its window, or its root is no longer trusted with that key:
            # checked in full below, which names the reason.
            self._chains.discard(key)
        if isinstance(key, tuple):
            tokens = list(key)
        else:
            # Anything but a string or a Delegation is refused here.
            tokens = split_delegation(delegation, max_links=self.max_links)
        if len(tokens) > self.max_links:
            raise DeniedError(
                f"chain has {len(tokens)} links; at most {self.max_links} are allowed",
                reason=Reason.CHAIN_TOO_LONG,
            )
        grants: list[Grant] = []
        for index, token in enumerate(tokens):
            try:
                grants.append(self._verified_link(token, grants[-1] if grants else None, now))
            except DeniedError as exc:
                if exc.link is None:
                    exc.link = index
                    exc.explanation = f"link {index}: {exc.explanation}"
                    exc.args = (f"{exc.reason}: {exc.explanation}",)
                raise
        self._check_structure(grants, now)
        query = _revocation_query(grants)
        self._check_revocation(grants, query)
        # Always the grants parsed from the verified tokens: a Delegation object
        # handed in may carry Grant objects whose fields differ from their token.
        verified = Delegation(grants)
        if key is None:
            return VerifiedChain(verified, now, _SEAL)
        self._chains.put(
            key,
            _CachedChain(
                verified,
                root_kid=grants[0].kid,
                not_before=max(g.not_before for g in grants),
                issued_at=max(g.issued_at for g in grants),
                expires_at=min(g.expires_at for g in grants),
                link_ids=query[0],
                kids=query[1],
                principals=query[2],
            ),
        )
        return VerifiedChain(verified, now, _SEAL)

    def _still_valid(self, hit: _CachedChain, now: float) -> bool:
        """Whether a cached chain may be used at ``now`` without checking it again in full.

        Its root must still be trusted with the key that verified it, it must fit
        ``max_links``, and every link must be inside its window (what
        :meth:`_check_structure` checks of the clock); anything else is a miss.
        """
        leeway = self.leeway
        root = self._root_keys.get(hit.delegation.root.issuer, {}).get(hit.root_kid)
        return (
            root is not None
            and (root.retired_at is None or now < root.retired_at)
            and len(hit.link_ids) <= self.max_links
            and now + leeway >= hit.not_before
            and now - leeway < hit.expires_at
            and hit.issued_at <= now + leeway
        )

    def _verified_link(self, token: str, parent: Grant | None, now: float) -> Grant:
        cached = self._cache.get(token, now)
        grant = cached[0] if cached is not None else Grant.parse(token)
        # A root link is signed by a trusted root key; every other link by the key
        # its parent delegated to (the parent's cnf).
        key = self._root_key(grant, now) if parent is None else parent.subject_key
        if cached is not None and cached[1] == key.kid:
            return grant
        if grant.kid != key.kid:
            raise DeniedError("not signed by the expected key", reason=Reason.BAD_SIGNATURE)
        _jws.verify_signature(token, key, TYP_GRANT)
        self._cache.put(token, key.kid, grant)
        return grant

    def _root_key(self, grant: Grant, now: float) -> Principal:
        """The trusted key that must have signed root link ``grant`` (checked against its
        window by the link's signed ``iat`` and against its retirement by ``now``).

        Raises:
            DeniedError: the issuer is not a trusted root, or its key was not valid
                when the link says it was signed, or is retired now.
        """
        keys = self._root_keys.get(grant.issuer)
        if keys is None:
            raise DeniedError(
                f"issued by {grant.issuer}, which is not a trusted root",
                reason=Reason.UNTRUSTED_ROOT,
            )
        trusted = keys.get(grant.kid)
        if trusted is None:
            # Named a key the root does not have: refused as a bad signature below.
            return next(iter(keys.values())).principal
        if not trusted.valid_at(grant.issued_at):
            raise DeniedError(
                f"root key {grant.kid} of {grant.issuer} was not valid when this link "
                f"claims to have been signed ({grant.issued_at})",
                reason=Reason.UNTRUSTED_ROOT,
            )
        if trusted.retired_at is not None and now >= trusted.retired_at:
            raise DeniedError(
                f"root key {grant.kid} of {grant.issuer} was retired at "
                f"{int(trusted.retired_at)}: nothing it signed counts any more",
                reason=Reason.UNTRUSTED_ROOT,
            )
        return trusted.principal

    def _check_structure(self, grants: list[Grant], now: float) -> None:
        leeway = self.leeway
        for index, grant in enumerate(grants):
            if index == 0:
                if grant.parent is not None:
                    raise DeniedError("link 0 claims a parent", reason=Reason.BROKEN_CHAIN, link=0)
                bound = self._bounds.get(grant.issuer)
                if bound is not None:
                    bound.check_link(grant)
            else:
                parent = grants[index - 1]
                if grant.parent != parent.link_id:
                    raise DeniedError(
                        f"link {index} does not point at link {index - 1} (prf mismatch)",
                        reason=Reason.BROKEN_CHAIN,
                        link=index,
                    )
                if grant.issuer != parent.subject:
                    raise DeniedError(
                        f"link {index} is issued by {grant.issuer}, but link {index - 1} "
                        f"was granted to {parent.subject}",
                        reason=Reason.BROKEN_CHAIN,
                        link=index,
                    )
                if grant.expires_at > parent.expires_at or grant.not_before < parent.not_before:
                    raise DeniedError(
                        f"link {index} claims a wider time window than its parent",
                        reason=Reason.WIDENED_WINDOW,
                        link=index,
                    )
                if grant.max_depth > parent.max_depth - 1:
                    raise DeniedError(
                        f"link {index} claims max_depth {grant.max_depth}, but its parent "
                        f"allows at most {parent.max_depth - 1} below it",
                        reason=Reason.DEPTH_EXCEEDED,
                        link=index,
                    )
            if now + leeway < grant.not_before:
                raise DeniedError(
                    f"link {index} ({grant.issuer} -> {grant.subject}) is not valid yet",
                    reason=Reason.LINK_NOT_YET_VALID,
                    link=index,
                )
            if now - leeway >= grant.expires_at:
                raise DeniedError(
                    f"link {index} ({grant.issuer} -> {grant.subject}) has expired",
                    reason=Reason.LINK_EXPIRED,
                    link=index,
                )
            if grant.issued_at > now + leeway:
                raise DeniedError(
                    f"link {index} was issued in the future",
                    reason=Reason.LINK_NOT_YET_VALID,
                    link=index,
                )

    def _check_revocation(
        self,
        grants: Sequence[Grant] | Delegation,
        query: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]],
    ) -> None:
        # One query for the whole chain on the hot path; only a hit looks link by link.
        link_ids, kids, principals = query
        hit = self.revocations.find_revoked(link_ids, kids, principals)
        if hit is None:
            return
        grants = list(grants)
        found = revoked_link(self.revocations, grants)
        link, hit = found if found is not None else (None, hit)
        role = ""
        if link is not None and hit.kind == "principal" and hit.value == grants[link].on_behalf_of:
            role = " sponsor"
        # Principal ids are shown whole (they are short and people read them); link
        # ids and key thumbprints are shortened to the 16 characters commands show.
        shown = hit.value if hit.kind == "principal" else hit.value[:16]
        raise DeniedError(
            f"{hit.kind}{role} {shown} is revoked"
            + (f" (link {link})" if link is not None else ""),
            reason=Reason.REVOKED,
            link=link,
        )

    # -- steps 5-6 --------------------------------------------------------------

    def authorize(self, chain: VerifiedChain, tool: str, args: Mapping[str, Any]) -> ScopeMatch:
        """Check that every link admits ``tool`` with ``args`` (conjunctive scope).

        Raises:
            DeniedError: ``invalid_tool`` for a malformed address, ``out_of_scope``
                when a link has no rule for the tool, ``predicate_failed`` when
                its rules for the tool reject the arguments.
        """
        try:
            parse_address(tool)
        except InvalidAddressError as exc:
            raise DeniedError(str(exc), reason=Reason.INVALID_TOOL) from exc
        matched: list[int] = []
        approvals: list[tuple[int, int]] = []
        _, plan, budgeted = self._plans.plan(chain.delegation, tool)
        for index, rules in enumerate(plan):
            # One three-valued answer per rule whose pattern selects the tool: a rule
            # grants only on TRUE; an approval rule restricts, so it demands approval
            # unless FALSE, even when another rule of the same link admits the call
            # without one (approvals never disappear).
            admitting: int | None = None
            for i, predicate, approval in rules:
                truth = Truth.TRUE if predicate is None else evaluate(predicate, args)
                if truth is Truth.TRUE and admitting is None:
                    admitting = i
                if approval and truth is not Truth.FALSE:
                    approvals.append((index, i))
            if admitting is None:
                self._refuse(chain.delegation.grants[index], index, rules, tool, args)
            matched.append(admitting)
        return _scope_match(tool, tuple(matched), tuple(approvals), budgeted)

    def _refuse(
        self,
        grant: Grant,
        index: int,
        rules: tuple[tuple[int, list[Any] | None, bool], ...],
        tool: str,
        args: Mapping[str, Any],
    ) -> NoReturn:
        """Refuse a link none of whose rules admits the call, saying why."""
        if not rules:
            raise DeniedError(
                f"link {index} ({grant.issuer} -> {grant.subject}) has no rule for {tool}",
                reason=Reason.OUT_OF_SCOPE,
                link=index,
            )
        candidates = [i for i, _, _ in rules]
        truths = [Truth.TRUE if p is None else evaluate(p, args) for _, p, _ in rules]
        described = "; ".join(grant.scope[i].describe() for i in candidates)
        # Which argument failed, as the audit record shows it (redacted); the
        # model only ever sees the reason code (DeniedError.short).
        failed = "; ".join(
            filter(None, (self._why_not(grant.scope[i].predicate, args) for i in candidates))
        )
        why = (
            "cannot tell whether these arguments satisfy it (an argument is missing,"
            " of another JSON type, or not an absolute path)"
            if Truth.UNKNOWN in truths
            else "does not admit these arguments"
        )
        raise DeniedError(
            f"link {index} ({grant.issuer} -> {grant.subject}) rule "
            f"{candidates[0]} {why} ({described})" + (f": {failed}" if failed else ""),
            reason=Reason.PREDICATE_FAILED,
            link=index,
            rule=candidates[0],
        )

    def _why_not(self, predicate: list[Any] | None, args: Mapping[str, Any]) -> str:
        return "" if predicate is None else explain(predicate, args, redact_fields=self.redact)

    # -- step 7 -----------------------------------------------------------------

    def verify_call_token(
        self,
        chain: VerifiedChain,
        token: str,
        *,
        tool: str,
        args: Mapping[str, Any],
        audience: str | None = None,
        consume: bool = True,
        digest: str | None = None,
    ) -> VerifiedCall:
        """Check a call token against the chain's holder, the tool and the arguments.

        With ``consume`` (the default) the token id is burned in the replay
        store; a second presentation is refused. ``digest`` is the arguments'
        digest when the caller computed it already.

        Raises:
            DeniedError: ``call_token_*`` reasons, ``bad_signature``,
                ``wrong_token_type`` or ``malformed_token``.
        """
        try:
            claims = CallClaims.parse(token)
        except TokenFormatError as exc:
            exc.explanation = f"call token: {exc.explanation}"
            raise
        holder = chain.holder
        if claims.issuer != holder.id or claims.kid != holder.kid:
            raise DeniedError(
                f"call token is signed by {claims.issuer}, not the holder {holder.id}",
                reason=Reason.CALL_TOKEN_SIGNER,
            )
        _jws.verify_signature(token, holder, TYP_CALL)
        return self._check_call_claims(
            chain, claims, tool=tool, args=args, audience=audience, consume=consume, digest=digest
        )

    def accept_minted(
        self,
        chain: VerifiedChain,
        token: str | CallClaims,
        *,
        tool: str,
        args: Mapping[str, Any],
        audience: str | None = None,
        digest: str | None = None,
    ) -> VerifiedCall:
        """Accept a call token this process minted itself with the holder's key.

        The signature was produced here a moment ago, so it is not checked again
        (DESIGN §3); binding, time and replay checks still run. ``token`` may be
        the :class:`CallClaims` :func:`~agentguard.tokens.mint_call` returned
        with it: the claims it was just signed over, so not parsed back.

        Raises:
            DeniedError: as :meth:`verify_call_token`.
        """
        claims = token if isinstance(token, CallClaims) else CallClaims.parse(token)
        if claims.issuer != chain.holder.id or claims.kid != chain.holder.kid:
            raise DeniedError(
                "call token is not signed by the holder", reason=Reason.CALL_TOKEN_SIGNER
            )
        return self._check_call_claims(
            chain, claims, tool=tool, args=args, audience=audience, consume=True, digest=digest
        )

    def _check_call_claims(
        self,
        chain: VerifiedChain,
        claims: CallClaims,
        *,
        tool: str,
        args: Mapping[str, Any],
        audience: str | None,
        consume: bool,
        digest: str | None = None,
    ) -> VerifiedCall:
        now = self.clock.now()
        leaf = chain.delegation.leaf
        if claims.parent != leaf.link_id:
            raise DeniedError(
                "call token is bound to another delegation", reason=Reason.CALL_TOKEN_MISMATCH
            )
        if claims.tool != tool:
            raise DeniedError(
                "call token is bound to another tool", reason=Reason.CALL_TOKEN_MISMATCH
            )
        expected_audience = audience or tool.partition("/")[0]
        if claims.audience != expected_audience:
            raise DeniedError(
                "call token is addressed to another audience", reason=Reason.CALL_TOKEN_MISMATCH
            )
        if digest is None:
            try:
                digest = args_digest(args)
            except ValueError as exc:
                raise DeniedError(str(exc), reason=Reason.INVALID_ARGUMENTS) from exc
        if claims.args_digest != digest:
            raise DeniedError(
                "call token is bound to other arguments", reason=Reason.CALL_TOKEN_MISMATCH
            )
        if claims.expires_at - claims.issued_at > 300 + self.leeway:
            raise DeniedError(
                "call token lives longer than 300 s", reason=Reason.CALL_TOKEN_LIFETIME
            )
        if now - self.leeway >= claims.expires_at:
            raise DeniedError("call token has expired", reason=Reason.CALL_TOKEN_EXPIRED)
        if claims.issued_at > now + self.leeway:
            raise DeniedError(
                "call token was issued in the future", reason=Reason.CALL_TOKEN_EXPIRED
            )
        call = _verified_call(claims, digest)
        if consume:
            self.consume(call)
        elif _spent(self.replay, f"{claims.issuer}/{claims.jti}", now):
            # Not spent now (a dry run, or spent once the call may run), but one
            # that was spent already will be refused then: say so now.
            raise DeniedError("call token was used before", reason=Reason.CALL_TOKEN_REPLAYED)
        return call

    def consume(self, call: VerifiedCall) -> None:
        """Burn a checked call token's nonce (its binding was checked already).

        Expiry is checked again: time may have passed since the token was
        checked (a human approval in between).

        Raises:
            DeniedError: ``call_token_expired`` or ``call_token_replayed``.
        """
        claims = call.claims
        now = self.clock.now()
        if now - self.leeway >= claims.expires_at:
            raise DeniedError("call token has expired", reason=Reason.CALL_TOKEN_EXPIRED)
        if not self.replay.consume(
            f"{claims.issuer}/{claims.jti}", claims.expires_at + self.leeway, now=now
        ):
            raise DeniedError("call token was used before", reason=Reason.CALL_TOKEN_REPLAYED)


def _spent(replay: ReplayStore, key: str, now: float) -> bool:
    """``replay.is_consumed``; a store written before it existed cannot tell: refuse."""
    is_consumed = getattr(replay, "is_consumed", None)
    if is_consumed is None:
        raise StoreError(
            "the replay store cannot tell whether a call token was used (it has no "
            "is_consumed method; see the CHANGELOG)"
        )
    return bool(is_consumed(key, now=now))
