"""Federated identity (issue 16): a bearer token's claims become a delegation chain.

The policy's ``federation:`` section (see :class:`agentguard.policy.FederationProvider`)
names the identity providers the guard accepts. For a token whose signature,
issuer, audience and times someone else already verified (the MCP proxy's
OAuth validator), :meth:`Federation.derive` signs one link:

* issued by the *federation key* (the guard's own key unless the provider
  names another), a root the verifier trusts only within the federation rules;
  with ``guard_keys`` (several replicas) any listed key signs for the guard, and
  a provider's ``keys`` may list several keys of its own, each in its window;
* to the OAuth client (``agent:{alias}.{client_id}``, ``azp`` when there is no
  ``client_id``) holding an ephemeral key, ``on_behalf_of`` the person
  (``user:{alias}.{sub}``), so revoking either principal stops the chain;
* scoped to the tool rules whose claim (and scope) conditions the token meets,
  expiring no later than the token;
* recording its evidence in the grant's ``meta["federation"]``: issuer, ``sub``,
  the person's and client's claim values, the token's ``jti`` and/or SHA-256,
  its expiry, and the claim values and scopes the rules used. Never the token.

:meth:`Federation.bounded_roots` gives the :class:`agentguard.verify.Verifier`
the federation keys with their bound: a link they signed is refused unless its
subject, sponsor, scope, depth and expiry are exactly what the federation rules
derive from the evidence it records. :func:`reachable_tools` answers which
tools a chain reaches (for a filtered ``tools/list``).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agentguard import _jws
from agentguard.addresses import pattern_matches
from agentguard.canonical import canonical_json
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import (
    AgentGuardError,
    ConfigError,
    DeniedError,
    IdentityError,
)
from agentguard.keys import Identity, Principal, TrustedKey
from agentguard.policy import FederationProvider, FederationRule, IdTemplate
from agentguard.tokens import MAX_META_BYTES, Grant, Rule, new_jti

if TYPE_CHECKING:
    from agentguard.policy import Policy
    from agentguard.store.base import RevocationStore
    from agentguard.verify import VerifiedChain

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ACTOR_TOKEN_TYPE",
    "ACTOR_TTL",
    "DELEGATION_TOKEN_TYPE",
    "Derived",
    "DerivedChains",
    "EVIDENCE_KEY",
    "Federation",
    "FederationError",
    "FederationRoot",
    "MAX_CLAIM_DEPTH",
    "Provider",
    "TOKEN_EXCHANGE",
    "TYP_ACTOR",
    "actor_token",
    "claim_value",
    "reachable_tools",
    "token_sha256",
    "verify_actor_token",
]

#: The key of a derived link's ``meta`` that holds its evidence.
EVIDENCE_KEY = "federation"
#: Rules a grant may hold (see agentguard.delegation).
_MAX_RULES = 64

# -- token exchange (RFC 8693) --------------------------------------------------------
#: The token exchange grant type.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a name, not a secret
#: The subject token's type: the identity provider's access token.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a name, not a secret
#: The actor token's type: a JWT the agent signs with the key it wants the delegation for.
ACTOR_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a name, not a secret
#: The issued token's type: an agentguard delegation (its serialized chain).
DELEGATION_TOKEN_TYPE = "urn:agentguard:params:oauth:token-type:delegation"  # noqa: S105 - a name, not a secret
#: The JWS ``typ`` of an actor token.
TYP_ACTOR = "agentguard-actor+jwt"
#: The longest lifetime an actor token may claim, in seconds.
ACTOR_TTL = 300


class FederationError(DeniedError):
    """A token's claims cannot become a chain.

    ``reason`` is ``out_of_scope`` when the claims are well formed but meet no
    rule (the proxy answers ``403 insufficient_scope``), ``malformed_token``
    when a claim the mapping needs is missing or unusable, ``link_expired``
    when the token has expired, ``untrusted_root`` for an issuer no provider
    names.
    """

    @property
    def insufficient_scope(self) -> bool:
        """Whether the token is valid but reaches nothing (``403 insufficient_scope``)."""
        return self.reason == Reason.OUT_OF_SCOPE


def token_sha256(token: str) -> str:
    """The SHA-256 (hex) of a bearer token's text: evidence that is not a credential."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _token_scopes(claims: Mapping[str, Any]) -> set[str]:
    """The token's scopes: ``scope`` (space-separated text) and ``scp`` (text or list)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(item for item in value if isinstance(item, str))
    return found


#: The most names a dotted claim path may have (``realm_access.roles`` has two).
MAX_CLAIM_DEPTH = 8
_ABSENT = object()


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """The value a rule's ``claim`` names in a token's claims (``None`` when none).

    ``name`` is first a top-level claim name, whole (so a namespaced claim such as
    ``https://example.com/roles`` keeps working). When the token has no claim of
    that name and ``name`` has dots, the dots separate a path into nested objects:
    ``realm_access.roles`` is ``claims["realm_access"]["roles"]`` (Keycloak). There
    is no escape: a nested name cannot contain a dot. The lookup fails closed
    (``None``, so the rule does not apply) when the path is not a usable path (an
    empty name, more than :data:`MAX_CLAIM_DEPTH` names), leads through anything
    but an object, or when the token has both a top-level claim of that exact name
    and the nested path (ambiguous: neither counts).
    """
    whole = claims.get(name, _ABSENT)
    if "." not in name:
        return None if whole is _ABSENT else whole
    names = name.split(".")
    nested: Any = _ABSENT
    if all(names) and len(names) <= MAX_CLAIM_DEPTH:
        nested = claims
        for part in names:
            if not isinstance(nested, Mapping) or part not in nested:
                nested = _ABSENT
                break
            nested = nested[part]
    if whole is not _ABSENT and nested is not _ABSENT:
        return None  # both forms present: cannot tell which the policy meant
    if whole is not _ABSENT:
        return whole
    return None if nested is _ABSENT else nested


def _claim_values(claims: Mapping[str, Any], name: str) -> set[str]:
    """The string values of a string or list claim (other types count as none).

    ``name`` may be a dotted path into nested objects (see :func:`claim_value`).
    """
    value = claim_value(claims, name)
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return set()


def _rule_applies(
    rule: FederationRule, values: Mapping[str, Iterable[str]], scopes: Iterable[str]
) -> bool:
    if rule.scope is not None and rule.scope not in set(scopes):
        return False
    if rule.claim is None:
        return True
    return rule.equals in set(values.get(rule.claim, ()))


def _grant_rules(rules: Sequence[FederationRule]) -> list[Rule]:
    return [Rule(tool, rule.where, rule.approval) for rule in rules for tool in rule.tools]


@dataclass(frozen=True)
class Provider:
    """One configured identity provider, with the key that vouches for its chains.

    Attributes:
        config: the policy entry.
        signer: principal id of the federation key that signs derived links.
    """

    config: FederationProvider
    signer: str

    @property
    def issuer(self) -> str:
        """The issuer URL tokens must carry in ``iss``."""
        return self.config.issuer

    @property
    def audience(self) -> str:
        """The audience tokens must name (the proxy's resource URI)."""
        return self.config.audience

    @property
    def alias(self) -> str:
        """The provider's short name in principal ids."""
        return self.config.alias

    def _template(self, role: str) -> IdTemplate:
        return self.config.templates()[role]

    def person_id(self, claims: Mapping[str, Any]) -> str:
        """The person's principal id, by the ``subject`` template.

        The approval page's single sign-on maps people through this too, so
        one person has one id in chains, approver lists and sign-in.

        A template naming ``{email}`` needs the token's ``email_verified`` to
        be ``true``: an address the provider did not verify names nobody.

        Raises:
            FederationError: the claim the template names is missing, not
                text, empty or too long, or an unverified email (reason
                ``malformed_token``).
        """
        template = self._template("subject")
        person = self._render(template, claims.get(template.claim), template.claim)
        if template.claim == "email" and claims.get("email_verified") is not True:
            # Many providers let a person type any address; an unverified one could
            # name someone else. Missing or any value but JSON true is "unverified".
            raise FederationError(
                "the token's 'email' claim is not verified (email_verified is not true); "
                "a person is named by an email address only once the provider verified it",
                reason=Reason.MALFORMED_TOKEN,
            )
        return person

    def client_value(self, claims: Mapping[str, Any]) -> str:
        """The OAuth client's id: the claim the ``client`` template names.

        ``{client_id}`` reads ``client_id``, or ``azp`` when there is none.

        Raises:
            FederationError: no such claim holds text (reason ``malformed_token``).
        """
        claim = self._template("client").claim
        names = ("client_id", "azp") if claim == "client_id" else (claim,)
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        raise FederationError(
            f"the token names no client ({' or '.join(names)})", reason=Reason.MALFORMED_TOKEN
        )

    def client_id(self, claims: Mapping[str, Any]) -> str:
        """The OAuth client's principal id, by the ``client`` template.

        Raises:
            FederationError: the client claim is missing or unusable.
        """
        template = self._template("client")
        return self._render(template, self.client_value(claims), template.claim)

    def _render(self, template: IdTemplate, value: Any, claim: str) -> str:
        if not isinstance(value, str) or not value:
            raise FederationError(
                f"the token's {claim!r} claim is not a non-empty string",
                reason=Reason.MALFORMED_TOKEN,
            )
        try:
            return template.render(self.alias, value)
        except (ValueError, IdentityError) as exc:
            raise FederationError(str(exc), reason=Reason.MALFORMED_TOKEN) from exc

    def matching_rules(self, claims: Mapping[str, Any]) -> list[FederationRule]:
        """The rules whose claim (and scope) conditions the token meets, in policy order."""
        values = {
            rule.claim: _claim_values(claims, rule.claim)
            for rule in self.config.rules
            if rule.claim is not None
        }
        scopes = _token_scopes(claims)
        return [rule for rule in self.config.rules if _rule_applies(rule, values, scopes)]


def _evidence(
    provider: Provider,
    claims: Mapping[str, Any],
    rules: Sequence[FederationRule],
    *,
    token: str | None,
) -> dict[str, Any]:
    """What the derived link records: enough to match the provider's logs, no credential."""
    subject_claim = provider._template("subject").claim
    used: dict[str, set[str]] = {}
    for rule in rules:
        if rule.claim is not None and rule.equals is not None:
            used.setdefault(rule.claim, set()).add(rule.equals)
    evidence: dict[str, Any] = {
        "iss": provider.issuer,
        "person": {subject_claim: claims[subject_claim]},
        "client": provider.client_value(claims),
        "exp": claims["exp"],
        "claims": {name: sorted(values) for name, values in sorted(used.items())},
        "scope": sorted({rule.scope for rule in rules if rule.scope is not None}),
    }
    sub = claims.get("sub")
    if isinstance(sub, str):
        evidence["sub"] = sub
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        evidence["jti"] = jti
    if token is not None:
        evidence["token_sha256"] = token_sha256(token)
    if "jti" not in evidence and "token_sha256" not in evidence:
        raise FederationError(
            "the token has no jti: pass the token so its SHA-256 identifies it",
            reason=Reason.MALFORMED_TOKEN,
        )
    return evidence


def _expiry(claims: Mapping[str, Any], now: float) -> int:
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise FederationError("the token has no numeric exp", reason=Reason.MALFORMED_TOKEN)
    if exp <= now:
        raise FederationError("the token has expired", reason=Reason.LINK_EXPIRED)
    return math.floor(exp)


def _purpose(provider: Provider) -> str:
    return f"signed in through {provider.alias}"


class FederationRoot:
    """A federation key as the verifier trusts it: a root bounded by the federation rules.

    Passed to :class:`agentguard.verify.Verifier` (``bounded_roots``).
    :meth:`check_link` refuses a root link it signed unless the link is
    exactly what :meth:`Federation.derive` makes from the evidence it records.
    """

    def __init__(
        self,
        principal: Principal,
        providers: Sequence[Provider],
        keys: Sequence[TrustedKey] = (),
    ) -> None:
        self.principal = principal
        self._providers = {p.issuer: p for p in providers if p.signer == principal.id}
        self._keys = tuple(keys) if keys else (TrustedKey(principal),)
        if any(k.principal.id != principal.id for k in self._keys):
            raise ValueError(f"every key of the federation key {principal.id} is named so")

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        """Every key that may sign for this federation key, each with its window.

        The verifier takes a root link it signed only when signed (its ``iat``)
        inside that key's window and checked before the key's ``retired_at``.
        """
        return self._keys

    def check_link(self, grant: Grant) -> None:
        """Refuse a root link that claims more than the federation rules allow.

        Raises:
            DeniedError: reason ``untrusted_root``, saying what does not match.
        """
        problem = self._problem(grant)
        if problem is not None:
            raise DeniedError(
                f"link 0 is signed by the federation key {self.principal.id}, which vouches "
                f"only for chains the federation rules derive: {problem}",
                reason=Reason.UNTRUSTED_ROOT,
                link=0,
            )

    def _problem(self, grant: Grant) -> str | None:
        evidence = (grant.meta or {}).get(EVIDENCE_KEY)
        if not isinstance(evidence, dict):
            return "it records no federation evidence"
        issuer = evidence.get("iss")
        provider = self._providers.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            return "its evidence names no issuer this key vouches for"
        person = evidence.get("person")
        recorded = evidence.get("claims")
        scopes = evidence.get("scope")
        exp = evidence.get("exp")
        if (
            not isinstance(person, dict)
            or len(person) != 1
            or not isinstance(recorded, dict)
            or not all(
                isinstance(v, list) and all(isinstance(i, str) for i in v)
                for v in recorded.values()
            )
            or not isinstance(scopes, list)
            or not all(isinstance(s, str) for s in scopes)
            or isinstance(exp, bool)
            or not isinstance(exp, int | float)
        ):
            return "its evidence is malformed"
        try:
            person_id = provider.person_id(person)
            client_claim = provider._template("client").claim
            client_id = provider.client_id({client_claim: evidence.get("client")})
        except FederationError as exc:
            return f"its evidence does not name a person and a client ({exc.explanation})"
        if grant.purpose != _purpose(provider):
            return f"its purpose is not {_purpose(provider)!r}"
        if grant.on_behalf_of != person_id:
            return f"it names sponsor {grant.on_behalf_of}, but its evidence gives {person_id}"
        if grant.subject != client_id:
            return f"it is granted to {grant.subject}, but its evidence gives {client_id}"
        rules = [r for r in provider.config.rules if _rule_applies(r, recorded, scopes)]
        if not rules or tuple(_grant_rules(rules)) != grant.scope:
            return "its scope is not the rules its recorded claims meet"
        if grant.expires_at > exp:
            return "it outlives the token it records"
        if grant.max_depth > provider.config.max_depth:
            return f"it allows max_depth {grant.max_depth}, above the provider's"
        return None


class Derived(NamedTuple):
    """A derived chain and, when the guard holds it, the holder's key."""

    delegation: Delegation
    holder: Identity | None


class Federation:
    """The policy's identity providers, and derivation of chains from their tokens.

    Build one with :meth:`from_policy`.
    """

    def __init__(
        self,
        providers: Sequence[Provider],
        keys: Mapping[str, Principal | Sequence[TrustedKey]],
        *,
        max_ttl: float = 7 * 86400,
    ) -> None:
        self._providers = {p.issuer: p for p in providers}
        # Each federation key id's keys: one (a Principal) or several with windows.
        self._keys: dict[str, tuple[TrustedKey, ...]] = {
            key_id: (TrustedKey(entry),) if isinstance(entry, Principal) else tuple(entry)
            for key_id, entry in keys.items()
        }
        self.max_ttl = max_ttl

    @classmethod
    def from_policy(cls, policy: Policy, *, guard_key: Principal) -> Federation:
        """The federation of ``policy``; ``guard_key`` is the guard's own public key.

        A provider naming ``key`` or ``keys`` is vouched for by those keys. One
        naming neither is vouched for by the guard's keys (its id is the
        policy's ``guard_id``): every key of ``guard_keys`` when the policy lists
        any, so a chain derived by any replica verifies on every replica; else
        ``guard_key`` alone.

        Raises:
            ConfigError: ``guard_key`` is not named ``guard_id``, a provider's
                key cannot be loaded, or the keys are ambiguous (see
                :meth:`agentguard.policy.Policy.federation_keys`).
        """
        uses_guard_key = any(not config.key_entries() for config in policy.federation)
        if uses_guard_key and guard_key.id != policy.guard_id:
            raise ConfigError(
                f"the guard key is {guard_key.id}, but the policy's guard_id is {policy.guard_id}"
            )
        keys = policy.federation_keys(guard_key)
        providers = [
            Provider(config, config.signer_id(policy.guard_id)) for config in policy.federation
        ]
        return cls(providers, keys, max_ttl=policy.limits.max_root_ttl)

    @property
    def providers(self) -> tuple[Provider, ...]:
        """The configured providers, in policy order."""
        return tuple(self._providers.values())

    def provider_for(self, issuer: object) -> Provider | None:
        """The provider whose ``issuer`` is exactly ``issuer``, if one is configured."""
        return self._providers.get(issuer) if isinstance(issuer, str) else None

    def bounded_roots(self) -> list[FederationRoot]:
        """The federation keys, each bounded by its providers' rules, for the verifier."""
        providers = list(self._providers.values())
        return [FederationRoot(keys[0].principal, providers, keys) for keys in self._keys.values()]

    def check_signer(self, signer: Identity, *, now: float) -> None:
        """Check that ``signer`` may derive chains for every provider it vouches for.

        Raises:
            ConfigError: a provider vouched for by ``signer``'s id does not list
                its key, or not as valid at ``now`` (so no replica would accept
                what it derives).
        """
        for provider in self._providers.values():
            if provider.signer == signer.id:
                self._signing_key(provider, signer, now)

    def _signing_key(self, provider: Provider, signer: Identity, now: float) -> TrustedKey:
        keys = self._keys[provider.signer]
        key = next((k for k in keys if k.principal.kid == signer.kid), None)
        if signer.id != provider.signer or key is None:
            listed = ", ".join(k.principal.kid for k in keys)
            raise ConfigError(
                f"derived chains of {provider.issuer} are signed by {provider.signer}'s keys "
                f"({listed}); {signer.id}'s key {signer.kid} is not one of them"
            )
        if not key.valid_at(now):
            raise ConfigError(
                f"{provider.signer}'s key {signer.kid} is not valid now (not_before/retired_at); "
                "what it signed would be refused"
            )
        return key

    def derive(
        self,
        claims: Mapping[str, Any],
        provider: Provider,
        *,
        signer: Identity,
        now: float,
        holder_key: Ed25519PrivateKey | Ed25519PublicKey | None = None,
        token: str | None = None,
    ) -> Derived:
        """The chain a verified token's claims allow, signed by the federation key.

        ``claims`` must come from a token whose signature, issuer, audience and
        times were verified. The link is granted to the client's principal id
        with ``holder_key``: a private key (the result's ``holder`` can then
        sign call tokens), a public key (an agent's own, as token exchange
        does; ``holder`` is ``None``), or by default a fresh ephemeral key.
        ``token``, when given, is only hashed into the evidence.

        Raises:
            FederationError: the issuer is not ``provider``'s, ``aud`` does not
                name its audience, a claim the
                mapping needs is unusable, the token has expired, or it meets
                no rule (``insufficient_scope``).
            ConfigError: ``signer`` is not one of the provider's federation keys, or
                not valid at ``now``.
        """
        if (
            claims.get("iss") != provider.issuer
            or self._providers.get(provider.issuer) is not provider
        ):
            raise FederationError(
                "the token's issuer is not this provider's", reason=Reason.UNTRUSTED_ROOT
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if provider.audience not in audiences:
            raise FederationError(
                f"the token is not for {provider.audience} (aud)", reason=Reason.UNTRUSTED_ROOT
            )
        self._signing_key(provider, signer, now)
        person = provider.person_id(claims)
        client = provider.client_id(claims)
        # Never past the token; never longer than the policy lets a root grant live.
        expires_at = min(_expiry(claims, now), math.floor(now + self.max_ttl))
        rules = provider.matching_rules(claims)
        if not rules:
            raise FederationError(
                f"the token's claims meet no federation rule of {provider.alias}",
                reason=Reason.OUT_OF_SCOPE,
            )
        scope = _grant_rules(rules)
        if len(scope) > _MAX_RULES:
            raise FederationError(
                f"the rules the token meets name {len(scope)} tool patterns; a grant holds "
                f"at most {_MAX_RULES}",
                reason=Reason.POLICY_LIMIT,
            )
        evidence = _evidence(provider, claims, rules, token=token)
        if len(canonical_json({EVIDENCE_KEY: evidence})) > MAX_META_BYTES:
            raise FederationError(
                "the token's claims are too large to record as evidence",
                reason=Reason.MALFORMED_TOKEN,
            )
        private = Ed25519PrivateKey.generate() if holder_key is None else holder_key
        if isinstance(private, Ed25519PrivateKey):
            holder: Identity | None = Identity(Principal(client, private.public_key()), private)
            public = private.public_key()
        else:
            holder, public = None, private
        grant = Grant.sign(
            signer,
            Principal(client, public),
            scope=scope,
            issued_at=int(now),
            not_before=int(now),
            expires_at=expires_at,
            max_depth=provider.config.max_depth,
            purpose=_purpose(provider),
            on_behalf_of=person,
            meta={EVIDENCE_KEY: evidence},
        )
        return Derived(Delegation([grant]), holder)


def reachable_tools(chain: VerifiedChain | Delegation, tools: Iterable[str]) -> list[str]:
    """The tool addresses (``server/tool``) the chain reaches, in the order given.

    A tool is reached when every link has a rule whose pattern selects it (the
    arguments are judged at call time). An empty result means the chain
    reaches no tool at all (the proxy answers ``403 insufficient_scope``).
    """
    delegation = chain if isinstance(chain, Delegation) else chain.delegation
    return [
        tool
        for tool in tools
        if all(any(pattern_matches(r.tool, tool) for r in g.scope) for g in delegation)
    ]


class DerivedChains:
    """A bounded cache of derived chains and their holder keys, per token.

    Keyed by the token's SHA-256 (the token itself is not kept). An entry is
    dropped when its chain expires and, when a revocation store is given to
    :meth:`get`, as soon as a link, key or principal of it is revoked.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = max(0, size)
        self._items: OrderedDict[str, tuple[Delegation, Identity]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, token: str, *, now: float, revocations: RevocationStore | None = None
    ) -> tuple[Delegation, Identity] | None:
        """The cached chain and holder for ``token``, if still usable."""
        key = token_sha256(token)
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            if now >= entry[0].expires_at:
                del self._items[key]
                return None
            self._items.move_to_end(key)
        if revocations is not None:
            from agentguard.verify import revoked_link

            if revoked_link(revocations, entry[0].grants) is not None:
                with self._lock:
                    self._items.pop(key, None)
                return None
        return entry

    def put(self, token: str, delegation: Delegation, holder: Identity) -> None:
        """Remember the chain derived for ``token`` and the key that holds it."""
        if self._size == 0:
            return
        with self._lock:
            self._items[token_sha256(token)] = (delegation, holder)
            self._items.move_to_end(token_sha256(token))
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def actor_token(identity: Identity, audience: str, *, now: float, ttl: int = 60) -> str:
    """An actor token for token exchange: proof that the agent holds ``identity``'s key.

    A compact JWS (``typ`` :data:`TYP_ACTOR`, EdDSA) signed by the key, carrying its
    public JWK, the exchange endpoint as ``aud``, ``iat``, ``exp`` (``ttl`` seconds on)
    and a ``jti``. The exchange issues a delegation to that key, and only to it.

    Raises:
        ValueError: ``ttl`` is not between 1 and :data:`ACTOR_TTL` seconds.
    """
    if not 1 <= ttl <= ACTOR_TTL:
        raise ValueError(f"an actor token lives 1 to {ACTOR_TTL} seconds")
    claims = {
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": new_jti(),
        "jwk": identity.principal.public_jwk(),
    }
    return _jws.sign(claims, identity, TYP_ACTOR)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def verify_actor_token(
    token: object, audience: str, *, now: float, leeway: float = 30.0
) -> Ed25519PublicKey:
    """The public key an actor token proves possession of.

    Raises:
        FederationError: the token is malformed (reason ``malformed_token``), its
            signature does not verify with the key it carries or its ``kid`` is not
            that key's (``bad_signature``), it is for another endpoint
            (``untrusted_root``), or it is expired, not yet valid or claims a
            lifetime above :data:`ACTOR_TTL` (``link_expired``).
    """
    try:
        header, claims = _jws.peek(token, TYP_ACTOR)
        assert isinstance(token, str)  # noqa: S101 - peek refuses anything else
        principal = Principal.from_jwk("agent:actor", claims.get("jwk") or {})
    except AgentGuardError as exc:
        raise FederationError(
            f"the actor token is malformed: {exc}", reason=Reason.MALFORMED_TOKEN
        ) from None
    if header.get("kid") != principal.kid:
        raise FederationError(
            "the actor token's kid is not the key it carries", reason=Reason.BAD_SIGNATURE
        )
    try:
        _jws.verify_signature(token, principal, TYP_ACTOR)
    except AgentGuardError:
        raise FederationError(
            "the actor token's signature does not verify with the key it carries",
            reason=Reason.BAD_SIGNATURE,
        ) from None
    if claims.get("aud") != audience:
        raise FederationError(
            f"the actor token is not for {audience} (aud)", reason=Reason.UNTRUSTED_ROOT
        )
    iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
    if iat is None or exp is None:
        raise FederationError(
            "the actor token has no numeric iat and exp", reason=Reason.MALFORMED_TOKEN
        )
    if exp - iat > ACTOR_TTL or exp <= iat:
        raise FederationError(
            f"an actor token lives at most {ACTOR_TTL} seconds", reason=Reason.LINK_EXPIRED
        )
    if exp + leeway <= now:
        raise FederationError("the actor token has expired", reason=Reason.LINK_EXPIRED)
    if iat - leeway > now:
        raise FederationError("the actor token is not valid yet", reason=Reason.LINK_EXPIRED)
    return principal.public_key
