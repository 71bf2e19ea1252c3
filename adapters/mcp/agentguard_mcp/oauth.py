"""The HTTP proxy as an OAuth 2.1 protected resource (MCP authorization specification).

Standard MCP clients present a bearer access token from the organisation's identity provider.
:class:`ResourceServer` publishes protected resource metadata (RFC 9728), builds the
``WWW-Authenticate`` challenges, and validates JWT access tokens (RFC 9068): the provider is
found by OIDC discovery, its keys come from its JWKS (cached; an unknown ``kid`` triggers at most
one refetch per interval, so a rotated key is followed and a flood of made-up key ids is not),
the algorithm is checked against an allow-list of asymmetric algorithms and against the key's
type, and ``iss``, ``aud`` (the proxy's resource URI, RFC 8707), ``exp`` and ``nbf`` are checked
with a small leeway. Anything that cannot be checked is refused.

The validated claims are what the federation mapping turns into a delegation chain; the token
itself is never stored, logged or forwarded.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt

from agentguard.oidc import ALGORITHMS, KeyRefused, is_provider_url, signing_keys, verification_key

__all__ = [
    "ALGORITHMS",
    "Authenticated",
    "Provider",
    "ResourceServer",
    "TokenRefused",
]

_ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}
_MAX_TOKEN = 16 * 1024
_MAX_DOCUMENT = 512 * 1024
_FETCH_TIMEOUT = 10.0


class TokenRefused(Exception):
    """A bearer token was refused.

    Attributes:
        reason: a short machine-readable reason (``token_expired``, ``wrong_audience``...).
        status: the HTTP status to answer with (401, 403, or 503 when the provider could not
            be asked).
        error: the OAuth error code for the challenge (``invalid_token``, ``insufficient_scope``).
    """

    def __init__(
        self, reason: str, message: str, *, status: int = 401, error: str = "invalid_token"
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.error = error


def _check_url(url: str, what: str) -> None:
    if is_provider_url(url):
        return
    raise ValueError(f"{what} must be https (or http on loopback): {url!r}")


@dataclass(frozen=True)
class Provider:
    """An identity provider whose access tokens the proxy accepts.

    Attributes:
        issuer: the provider's issuer identifier (https, or http on loopback only).
        audience: the audience its tokens must name: the proxy's resource URI.
        algorithms: the signature algorithms accepted (asymmetric only).
        leeway: seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    """

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ALGORITHMS
    leeway: float = 30.0

    def __post_init__(self) -> None:
        _check_url(self.issuer, "issuer")
        _check_url(self.audience, "audience")
        bad = [a for a in self.algorithms if a not in ALGORITHMS]
        if bad or not self.algorithms:
            raise ValueError(f"algorithms must be among {', '.join(ALGORITHMS)}: {bad}")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")


@dataclass(frozen=True)
class Authenticated:
    """A validated access token: its claims, the provider that issued it, and a digest.

    The digest (SHA-256 of the token, hex) identifies the token as evidence without
    keeping a usable credential.
    """

    claims: dict[str, Any]
    provider: Provider
    digest: str

    @property
    def scopes(self) -> frozenset[str]:
        """The token's scopes (``scope`` as a space-separated string, or ``scp`` as a list)."""
        return token_scopes(self.claims)


def token_scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """The scopes a token's claims carry (``scope`` string or ``scp`` string/list)."""
    found: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return frozenset(found)


@dataclass
class _Keys:
    jwks_uri: str | None = None
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: float = float("-inf")
    attempted: float = float("-inf")
    lock: anyio.Lock = field(default_factory=anyio.Lock)


class ResourceServer:
    """The proxy as an OAuth 2.1 protected resource: metadata, challenges, token validation.

    Args:
        resource: the proxy's resource URI (what tokens must name as audience).
        providers: the identity providers whose tokens are accepted; each one's
            ``audience`` must be ``resource``.
        required_scopes: scopes every token must carry (else ``403 insufficient_scope``).
        jwks_ttl: seconds a fetched key set is used before it is fetched again.
        refetch_interval: at least this many seconds between fetches caused by an
            unknown ``kid``.
        http: the HTTP client used to reach the providers (one is made if omitted).

    Raises:
        ValueError: the resource URI is not https (or http on loopback), no provider is
            given, or a provider's audience is not the resource URI.
    """

    def __init__(
        self,
        resource: str,
        providers: Sequence[Provider],
        *,
        required_scopes: Sequence[str] = (),
        jwks_ttl: float = 300.0,
        refetch_interval: float = 30.0,
        http: httpx2.AsyncClient | None = None,
    ) -> None:
        _check_url(resource, "resource")
        if not providers:
            raise ValueError("at least one identity provider is needed")
        for provider in providers:
            if provider.audience != resource:
                raise ValueError(
                    f"provider {provider.issuer}: audience {provider.audience!r} is not "
                    f"this proxy's resource URI {resource!r}"
                )
        self.resource = resource
        self.providers = {p.issuer: p for p in providers}
        self.required_scopes = frozenset(required_scopes)
        self.jwks_ttl = jwks_ttl
        self.refetch_interval = refetch_interval
        self._http = http
        self._keys = {issuer: _Keys() for issuer in self.providers}

    # -- metadata and challenges ------------------------------------------------

    @property
    def metadata_url(self) -> str:
        """Where the protected resource metadata is served (path-suffixed form, RFC 9728 §3.1)."""
        parts = urlsplit(self.resource)
        path = parts.path.rstrip("/")
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{path}"

    def metadata_paths(self) -> frozenset[str]:
        """The request paths answered with the metadata: the bare and the path-suffixed form."""
        path = urlsplit(self.resource).path.rstrip("/")
        base = "/.well-known/oauth-protected-resource"
        return frozenset({base, base + path})

    def metadata(self) -> dict[str, Any]:
        """The protected resource metadata document (RFC 9728)."""
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.providers),
            "bearer_methods_supported": ["header"],
            "resource_name": "agentguard MCP proxy",
        }
        if self.required_scopes:
            document["scopes_supported"] = sorted(self.required_scopes)
        return document

    def challenge(
        self, error: str | None = None, description: str | None = None, scope: str | None = None
    ) -> str:
        """A ``WWW-Authenticate`` value naming the metadata URL (and the error, if any)."""
        parts = [f'resource_metadata="{self.metadata_url}"']
        if error is not None:
            parts.append(f'error="{error}"')
        if description is not None:
            # Printable ASCII only, no quote or backslash: nothing can break out of the header.
            safe = "".join(c for c in description if " " <= c <= "~" and c not in '"\\')
            parts.append(f'error_description="{safe[:200]}"')
        if scope is not None:
            parts.append(f'scope="{scope}"')
        return "Bearer " + ", ".join(parts)

    # -- validation -------------------------------------------------------------

    async def authenticate(self, token: str) -> Authenticated:
        """Validate a bearer access token and return its verified claims.

        Raises:
            TokenRefused: the token is malformed, not signed by a trusted provider's current
                key with an allowed algorithm, expired or not yet valid, for another audience
                or issuer, lacks a required scope, or the provider could not be reached.
        """
        if len(token) > _MAX_TOKEN:
            raise TokenRefused("malformed_token", "the access token is too large")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise TokenRefused("malformed_token", "the access token is not a JWT") from None
        algorithm = header.get("alg")
        issuer = unverified.get("iss")
        kid = header.get("kid")
        typ = header.get("typ")
        if not isinstance(issuer, str) or issuer not in self.providers:
            raise TokenRefused("wrong_issuer", "the token's issuer is not trusted here")
        provider = self.providers[issuer]
        if not isinstance(algorithm, str) or algorithm not in provider.algorithms:
            raise TokenRefused("algorithm_not_allowed", f"algorithm {algorithm!r} is not allowed")
        if not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES:
            raise TokenRefused("wrong_token_type", "the token is not a JWT access token (at+jwt)")
        if not isinstance(kid, str) or not kid:
            raise TokenRefused("unknown_key", "the token names no key (kid)")
        jwk = await self._key(provider, kid)
        key = _verification_key(jwk, algorithm)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=provider.audience,
                issuer=provider.issuer,
                leeway=provider.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("token_expired", "the access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("token_not_yet_valid", "the access token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused(
                "wrong_audience", "the access token is for another resource"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("wrong_issuer", "the token's issuer is not trusted here") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("bad_signature", "the access token's signature is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused("missing_claim", f"the access token lacks {exc.claim}") from None
        except jwt.PyJWTError:
            raise TokenRefused("malformed_token", "the access token does not verify") from None
        missing = self.required_scopes - token_scopes(claims)
        if missing:
            raise TokenRefused(
                "insufficient_scope",
                f"the access token lacks scope {' '.join(sorted(missing))}",
                status=403,
                error="insufficient_scope",
            )
        digest = hashlib.sha256(token.encode()).hexdigest()
        return Authenticated(claims=claims, provider=provider, digest=digest)

    async def _key(self, provider: Provider, kid: str) -> dict[str, Any]:
        """The provider's JWK ``kid``, fetching the key set when stale or when ``kid`` is new."""
        state = self._keys[provider.issuer]
        async with state.lock:
            now = time.monotonic()
            stale = now - state.fetched > self.jwks_ttl
            failed = state.attempted > state.fetched
            # At most one fetch per interval after a failed one, and at most one per interval
            # for unknown key ids: made-up kids or a provider that is down cannot cause a
            # flood of fetches (nor hold every request behind this lock).
            last = max(state.fetched, state.attempted)
            if stale and failed and now - last < self.refetch_interval:
                raise TokenRefused(
                    "idp_unavailable", "the identity provider could not be reached", status=503
                )
            unknown = kid not in state.keys and now - last >= self.refetch_interval
            if stale or unknown:
                state.attempted = now
                await self._fetch(provider, state)
            jwk = state.keys.get(kid)
        if jwk is None:
            raise TokenRefused("unknown_key", "the token's key is not among the provider's keys")
        return jwk

    async def _fetch(self, provider: Provider, state: _Keys) -> None:
        try:
            if state.jwks_uri is None:
                discovery = await self._get_json(
                    provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
                )
                if discovery.get("issuer") != provider.issuer:
                    raise TokenRefused(
                        "idp_misconfigured",
                        "the provider's discovery document names another issuer",
                        status=503,
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise TokenRefused(
                        "idp_misconfigured", "the provider publishes no jwks_uri", status=503
                    )
                _check_url(jwks_uri, "jwks_uri")
                state.jwks_uri = jwks_uri
            document = await self._get_json(state.jwks_uri)
        except ValueError as exc:
            raise TokenRefused("idp_misconfigured", str(exc), status=503) from None
        except httpx2.HTTPError:
            raise TokenRefused(
                "idp_unavailable", "the identity provider could not be reached", status=503
            ) from None
        found = signing_keys(document)
        if found is None:
            raise TokenRefused("idp_misconfigured", "the provider's JWKS has no keys", status=503)
        state.keys = found
        state.fetched = time.monotonic()

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=False)
        reply = await self._http.get(url, headers={"accept": "application/json"})
        if reply.status_code != 200 or len(reply.content) > _MAX_DOCUMENT:
            raise TokenRefused(
                "idp_unavailable", f"the identity provider answered {reply.status_code}", status=503
            )
        try:
            document = json.loads(reply.content)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise TokenRefused(
                "idp_misconfigured", "the identity provider sent no JSON object", status=503
            )
        return document

    async def aclose(self) -> None:
        """Close the HTTP client used to reach the providers."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> ResourceServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _verification_key(jwk: Mapping[str, Any], algorithm: str) -> Any:
    """The public key of ``jwk`` for ``algorithm``, refusing any mismatch of key type or alg."""
    try:
        return verification_key(jwk, algorithm)
    except KeyRefused as exc:
        raise TokenRefused(exc.reason, str(exc)) from None
