"""Single sign-on for the approval page: OpenID Connect authorization code flow with PKCE.

The policy's ``approval.sso`` (:class:`agentguard.policy.SingleSignOn`) names one
of the ``federation:`` providers by its issuer, the page's client id (and, for
a confidential client, where its secret is) and the redirect URI registered at
the provider. A sign-in goes:

1. :meth:`SignOn.begin` makes a *pre-login*: a random ``state``, ``nonce`` and
   PKCE verifier (S256) kept server-side under a random id, which the page
   puts in a short-lived cookie; the browser is sent to the provider's
   authorization endpoint (found by OIDC discovery). Each client address
   (an IPv6 address by its /64) may have at most ``PRE_LOGINS_PER_CLIENT``
   sign-ins under way, and the page at most ``MAX_PRE_LOGINS``: a new one
   over either bound is refused (``too_many_sign_ins``); none under way is
   ever dropped to make room, so nobody can cancel another person's sign-in
   by starting many. A browser starting again replaces its own earlier one.
2. The provider sends the browser back to the redirect URI with a code.
   :meth:`SignOn.finish` takes the pre-login out (each is used at most once,
   whatever the outcome), checks ``state`` (and ``iss`` when the provider sends
   it, RFC 9207), trades the code and the verifier for tokens at the token
   endpoint, and validates the ID token: an asymmetric algorithm from the
   allow-list that fits the key, a key from the provider's JWKS (fetched again
   for an unknown ``kid``, at most once per interval), ``iss``, ``aud`` = the
   client id (``azp`` too when there are several audiences), ``exp``/``iat``
   with a small leeway, and ``nonce``.
3. The person's principal id comes from the provider's ``subject`` template
   (:meth:`agentguard.federation.Provider.person_id`), exactly as the MCP
   proxy names the person behind a token: one person, one id.

Answers given by a signed-in person carry assurance ``authenticated``; the
approval book still checks the approver list, separation of duties and
revocation. Everything that cannot be checked is refused (:class:`SignOnRefused`,
with a reason code; the message never holds a token or a code).

The provider is reached with the standard library (no redirects followed, a
timeout, bounded answers); the calls block, so the page runs them in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from agentguard.errors import AgentGuardError
from agentguard.federation import FederationError, Provider
from agentguard.keys import read_trusted_file
from agentguard.oidc import ALGORITHMS, KeyRefused, is_provider_url, signing_keys, verification_key
from agentguard.policy import Policy, SingleSignOn

__all__ = [
    "ALGORITHMS",
    "MAX_PRE_LOGINS",
    "PRE_LOGINS_PER_CLIENT",
    "PRE_LOGIN_TTL",
    "PreLogin",
    "SignOn",
    "SignOnRefused",
    "client_of",
    "client_secret",
    "validate_id_token",
]

log = logging.getLogger("agentguard.web")

#: How long a started sign-in may take, in seconds.
PRE_LOGIN_TTL = 600.0
#: Sign-ins under way at once, in all (each is kept until used or expired).
MAX_PRE_LOGINS = 2048
#: Sign-ins under way at once from one client address (an IPv6 address by its /64).
PRE_LOGINS_PER_CLIENT = 32
_MAX_TOKEN = 16 * 1024
_MAX_DOCUMENT = 512 * 1024
_MAX_PARAM = 4096
_FETCH_TIMEOUT = 10.0
_LEEWAY = 60.0


class SignOnRefused(AgentGuardError):
    """A sign-in was refused.

    Attributes:
        reason: a short machine-readable reason (``wrong_state``, ``wrong_nonce``,
            ``wrong_audience``, ``token_expired``, ``bad_signature``, ``unknown_key``,
            ``algorithm_not_allowed``, ``code_refused``, ``idp_unavailable``...).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _checked_url(value: object, what: str) -> str:
    """``value`` if it is an https URL, or http on loopback; else refused."""
    if is_provider_url(value):
        return value
    raise SignOnRefused(
        "idp_misconfigured", f"the provider's {what} is not an https URL (or http on loopback)"
    )


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A provider's endpoints answer where they are; a redirect is not followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def _http_json(
    url: str, data: Mapping[str, str] | None = None, auth: str | None = None
) -> tuple[int, Any]:
    """GET (or POST a form to) ``url``: ``(status, document)``, bounded in size and time.

    The document is ``None`` when the body is not JSON.

    Raises:
        SignOnRefused: the provider cannot be reached, or its answer is too large.
    """
    body = None if data is None else urllib.parse.urlencode(data).encode("ascii")
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")  # noqa: S310 - the URL was checked: https, or http on loopback
    request.add_header("Accept", "application/json")
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if auth is not None:
        request.add_header("Authorization", auth)
    try:
        with _OPENER.open(request, timeout=_FETCH_TIMEOUT) as reply:
            status, raw = reply.status, reply.read(_MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read(_MAX_DOCUMENT + 1)
        exc.close()
    except (OSError, ValueError) as exc:
        raise SignOnRefused(
            "idp_unavailable", f"the identity provider could not be reached ({type(exc).__name__})"
        ) from None
    if len(raw) > _MAX_DOCUMENT:
        raise SignOnRefused("idp_misconfigured", "the identity provider's answer is too large")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        document = None
    return status, document


@dataclass
class _ProviderState:
    """What discovery found, and the key set, cached."""

    endpoints: dict[str, str] | None = None
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched: float = float("-inf")
    attempted: float = float("-inf")


class _ProviderKeys:
    """OIDC discovery and the JWKS of one issuer, cached and followed through rotation.

    An unknown ``kid`` fetches the key set again at most once per
    ``refetch_interval``: a rotated key is found, a flood of made-up key ids
    costs the provider nothing.
    """

    def __init__(
        self,
        issuer: str,
        *,
        fetch: Callable[..., Any] = _http_json,
        jwks_ttl: float = 300.0,
        refetch_interval: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self._fetch = fetch
        self.jwks_ttl = jwks_ttl
        self.refetch_interval = refetch_interval
        self._state = _ProviderState()
        self._lock = threading.Lock()

    def _document(self, url: str, what: str) -> dict[str, Any]:
        status, document = self._fetch(url)
        if status != 200:
            raise SignOnRefused("idp_unavailable", f"the provider's {what} answered {status}")
        if not isinstance(document, dict):
            raise SignOnRefused("idp_misconfigured", f"the provider's {what} is not a JSON object")
        return document

    def endpoints(self) -> dict[str, str]:
        """The authorization, token and JWKS endpoints from the discovery document.

        Raises:
            SignOnRefused: discovery failed, names another issuer, or an endpoint
                is not https (http on loopback).
        """
        with self._lock:
            if self._state.endpoints is not None:
                return self._state.endpoints
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = self._document(url, "discovery document")
            if document.get("issuer") != self.issuer:
                raise SignOnRefused(
                    "idp_misconfigured", "the provider's discovery document names another issuer"
                )
            found = {
                name: _checked_url(document.get(name), name)
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri")
            }
            self._state.endpoints = found
            return found

    def key(self, kid: str) -> dict[str, Any]:
        """The provider's public JWK named ``kid``.

        Raises:
            SignOnRefused: no such key (after at most one refetch per interval),
                or the key set cannot be fetched.
        """
        jwks_uri = self.endpoints()["jwks_uri"]
        with self._lock:
            state = self._state
            now = time.monotonic()
            due = now - max(state.fetched, state.attempted) >= self.refetch_interval
            if (now - state.fetched > self.jwks_ttl or kid not in state.keys) and not due:
                if state.fetched == float("-inf"):  # never fetched, the last try failed
                    raise SignOnRefused(
                        "idp_unavailable", "the provider's key set could not be fetched"
                    )
            elif now - state.fetched > self.jwks_ttl or kid not in state.keys:
                state.attempted = now
                document = self._document(jwks_uri, "key set")
                keys = signing_keys(document)
                if keys is None:
                    raise SignOnRefused("idp_misconfigured", "the provider's key set has no keys")
                state.keys = keys
                state.fetched = now
            jwk = state.keys.get(kid)
        if jwk is None:
            raise SignOnRefused("unknown_key", "the ID token's key is not among the provider's")
        return jwk


def validate_id_token(
    token: str,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    key: Callable[[str], Mapping[str, Any]],
    leeway: float = _LEEWAY,
) -> dict[str, Any]:
    """The claims of an ID token, once everything about it checks out.

    Args:
        token: the compact JWT from the token endpoint.
        issuer: the ``iss`` it must carry.
        client_id: the audience it must name (and ``azp``, with several audiences).
        nonce: the nonce sent with the authorization request.
        key: returns the provider's public JWK for a ``kid``.
        leeway: seconds of clock skew tolerated on ``exp`` and ``iat``.

    Raises:
        SignOnRefused: the token is malformed, unsigned or signed with a
            symmetric or unlisted algorithm, by an unknown key or wrongly, for
            another client or issuer, expired, or without the right nonce.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise SignOnRefused("malformed_token", "the ID token is missing or too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignOnRefused("malformed_token", "the ID token is not a JWT") from None
    algorithm = header.get("alg")
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise SignOnRefused(
            "algorithm_not_allowed", "the ID token is not signed with an allowed algorithm"
        )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() != "jwt"):
        raise SignOnRefused("wrong_token_type", "the token is not an ID token")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignOnRefused("unknown_key", "the ID token names no key (kid)")
    try:
        public = verification_key(key(kid), algorithm)
    except KeyRefused as exc:
        raise SignOnRefused(exc.reason, str(exc)) from None
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=public,
            algorithms=[algorithm],
            audience=client_id,
            issuer=issuer,
            leeway=leeway,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise SignOnRefused("token_expired", "the ID token has expired") from None
    except jwt.InvalidAudienceError:
        raise SignOnRefused("wrong_audience", "the ID token is for another client") from None
    except jwt.InvalidIssuerError:
        raise SignOnRefused("wrong_issuer", "the ID token is from another issuer") from None
    except jwt.InvalidSignatureError:
        raise SignOnRefused("bad_signature", "the ID token's signature is wrong") from None
    except jwt.MissingRequiredClaimError as exc:
        raise SignOnRefused("missing_claim", f"the ID token lacks {exc.claim}") from None
    except jwt.PyJWTError:
        raise SignOnRefused("malformed_token", "the ID token does not verify") from None
    audience = claims["aud"]
    azp = claims.get("azp")
    several = isinstance(audience, list) and len(audience) > 1
    if (several or azp is not None) and azp != client_id:
        raise SignOnRefused("wrong_audience", "the ID token was issued to another client")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent.encode("utf-8", "replace"), nonce.encode("ascii")
    ):
        raise SignOnRefused("wrong_nonce", "the ID token does not carry this sign-in's nonce")
    return claims


@dataclass(frozen=True)
class PreLogin:
    """A started sign-in, kept server-side under the id in the browser's pre-login cookie."""

    state: str
    nonce: str
    verifier: str
    config: SingleSignOn
    expires: float
    #: The client it was started from (see :func:`client_of`): its share is counted.
    client: str = ""


def client_of(address: str | None) -> str:
    """The client a sign-in counts against: the remote address, an IPv6 one by its
    /64 (one host's usual allotment); anything else (no address, a test client's
    name) as given, lower-cased."""
    if not address:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()[:256]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class SignOn:
    """The approval page's OpenID Connect client (one per page; settings come per request).

    The settings are read from the policy on every request (see
    :meth:`settings`), so a change to ``approval.sso`` counts at once. A
    sign-in is finished only under the settings it was started with.
    """

    def __init__(self, *, fetch: Callable[..., Any] = _http_json) -> None:
        self._fetch = fetch
        self._keys: dict[str, _ProviderKeys] = {}
        self._pending: OrderedDict[str, PreLogin] = OrderedDict()
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def settings(policy: Policy) -> tuple[SingleSignOn, Provider] | None:
        """The policy's ``approval.sso`` and the federation provider it names, if any."""
        config = policy.approval.sso
        if config is None:
            return None
        for entry in policy.federation:
            if entry.issuer == config.issuer:
                return config, Provider(entry, entry.signer_id(policy.guard_id))
        return None  # load_policy refuses this; a hand-built Policy may not

    def _provider_keys(self, issuer: str) -> _ProviderKeys:
        with self._lock:
            keys = self._keys.get(issuer)
            if keys is None:
                keys = self._keys[issuer] = _ProviderKeys(issuer, fetch=self._fetch)
            return keys

    def begin(
        self,
        config: SingleSignOn,
        *,
        address: str | None = None,
        replaces: str | None = None,
        now: float | None = None,
    ) -> tuple[str, str]:
        """Start a sign-in: ``(pre-login id, authorization URL)``.

        The id goes into the pre-login cookie; the browser goes to the URL.

        Args:
            config: the page's single sign-on settings.
            address: the client's remote address: at most
                ``PRE_LOGINS_PER_CLIENT`` sign-ins under way count against it.
            replaces: the pre-login id the browser's cookie still names, if any:
                that sign-in is dropped (the browser started again).
            now: the monotonic time (for tests).

        Raises:
            SignOnRefused: the provider's discovery document cannot be used, or
                too many sign-ins are under way from this client or in all
                (``too_many_sign_ins``); no other sign-in is dropped for this one.
        """
        endpoints = self._provider_keys(config.issuer).endpoints()
        moment = time.monotonic() if now is None else now
        pending = PreLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            config=config,
            expires=moment + PRE_LOGIN_TTL,
            client=client_of(address),
        )
        pid = secrets.token_urlsafe(32)
        client = pending.client
        with self._lock:
            for old in [k for k, p in self._pending.items() if p.expires <= moment]:
                self._drop(old)
            if replaces:
                self._drop(replaces)
            if self._per_client.get(client, 0) >= PRE_LOGINS_PER_CLIENT:
                raise SignOnRefused(
                    "too_many_sign_ins",
                    "too many sign-ins are under way from this address; finish one, or "
                    f"wait until they expire ({int(PRE_LOGIN_TTL // 60)} minutes)",
                )
            if len(self._pending) >= MAX_PRE_LOGINS:
                raise SignOnRefused(
                    "too_many_sign_ins", "too many sign-ins are under way; try again later"
                )
            self._pending[pid] = pending
            self._per_client[client] = self._per_client.get(client, 0) + 1
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": config.client_id,
                "redirect_uri": config.redirect_uri,
                "scope": config.scope,
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": _s256(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = endpoints["authorization_endpoint"]
        return pid, endpoint + ("&" if urllib.parse.urlsplit(endpoint).query else "?") + query

    def take(self, pid: str | None, *, now: float | None = None) -> PreLogin | None:
        """The pre-login ``pid`` names, removed (each is used once), unless expired."""
        if not pid:
            return None
        moment = time.monotonic() if now is None else now
        with self._lock:
            pending = self._drop(pid)
        return pending if pending is not None and pending.expires > moment else None

    def _drop(self, pid: str) -> PreLogin | None:
        """Remove pre-login ``pid`` and uncount it (the caller holds the lock)."""
        pending = self._pending.pop(pid, None)
        if pending is not None:
            left = self._per_client[pending.client] - 1
            if left:
                self._per_client[pending.client] = left
            else:
                del self._per_client[pending.client]
        return pending

    def finish(
        self,
        pending: PreLogin | None,
        params: Mapping[str, str],
        settings: tuple[SingleSignOn, Provider] | None,
        *,
        secret_base: str | None = None,
    ) -> str:
        """Finish a sign-in from the provider's redirect: the person's principal id.

        Args:
            pending: the pre-login the browser's cookie named (:meth:`take`).
            params: the redirect's query parameters.
            settings: :meth:`settings` of the policy as it is now.
            secret_base: the directory a relative ``client_secret_file`` is in.

        Raises:
            SignOnRefused: no (or an expired) pre-login, the provider answered an
                error, ``state`` or ``iss`` is wrong, the settings changed since
                the sign-in began, the code is refused at the token endpoint, the
                ID token does not validate, or the template cannot name the person.
        """
        if pending is None:
            raise SignOnRefused(
                "no_sign_in",
                "no sign-in was started from this browser, or it took too long; start again",
            )
        error = params.get("error")
        if error is not None:
            code = "".join(c for c in error[:64] if c.isalnum() or c == "_")
            raise SignOnRefused("idp_error", f"the identity provider answered {code or 'an error'}")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode("utf-8", "replace"), pending.state.encode("ascii")):
            raise SignOnRefused("wrong_state", "the answer does not belong to this sign-in")
        if settings is None or settings[0] != pending.config:
            raise SignOnRefused(
                "settings_changed", "single sign-on settings changed during the sign-in"
            )
        config, provider = settings
        if "iss" in params and params["iss"] != config.issuer:
            raise SignOnRefused("wrong_issuer", "the answer comes from another issuer (iss)")
        code = params.get("code", "")
        if not code or len(code) > _MAX_PARAM:
            raise SignOnRefused("malformed_answer", "the answer carries no usable code")
        keys = self._provider_keys(config.issuer)
        token = self._redeem(config, keys.endpoints()["token_endpoint"], code, pending, secret_base)
        claims = validate_id_token(
            token,
            issuer=config.issuer,
            client_id=config.client_id,
            nonce=pending.nonce,
            key=keys.key,
        )
        try:
            return provider.person_id(claims)
        except FederationError as exc:
            raise SignOnRefused("unnamed_person", exc.explanation) from None

    def _redeem(
        self,
        config: SingleSignOn,
        endpoint: str,
        code: str,
        pending: PreLogin,
        secret_base: str | None,
    ) -> str:
        """Trade the code and the PKCE verifier for tokens; the ID token."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": config.redirect_uri,
            "code_verifier": pending.verifier,
        }
        secret = client_secret(config, secret_base)
        auth = None
        if secret is None:
            form["client_id"] = config.client_id
        else:  # client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1)
            pair = f"{_form(config.client_id)}:{_form(secret)}".encode()
            auth = "Basic " + base64.b64encode(pair).decode("ascii")
        status, document = self._fetch(endpoint, form, auth)
        if status != 200 or not isinstance(document, dict):
            error = document.get("error") if isinstance(document, dict) else None
            detail = error if isinstance(error, str) and error.isidentifier() else str(status)
            raise SignOnRefused("code_refused", f"the provider refused the code ({detail[:64]})")
        token = document.get("id_token")
        if not isinstance(token, str):
            raise SignOnRefused("malformed_answer", "the provider sent no ID token")
        return token


def _form(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def client_secret(config: SingleSignOn, base: str | None = None) -> str | None:
    """The confidential client's secret, or ``None`` for a public client.

    Raises:
        SignOnRefused: the variable is unset or empty, or the file is missing,
            readable by group or others, or empty (reason ``misconfigured``).
    """
    if config.client_secret is not None:
        name = config.client_secret[2:-1]
        value = os.environ.get(name, "")
        if not value:
            raise SignOnRefused(
                "misconfigured", f"approval.sso.client_secret: ${{{name}}} is not set"
            )
        return value
    if config.client_secret_file is None:
        return None
    path = Path(config.client_secret_file)
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SignOnRefused(
                "misconfigured",
                f"approval.sso.client_secret_file {path} must be a file only its owner "
                "may read (chmod 600, no symbolic link)",
            )
        value = read_trusted_file(path, limit=4096, follow_symlinks=False).decode("utf-8").strip()
    except (OSError, ValueError) as exc:
        raise SignOnRefused(
            "misconfigured", f"approval.sso.client_secret_file: cannot read {path}: {exc}"
        ) from None
    if not value:
        raise SignOnRefused("misconfigured", f"approval.sso.client_secret_file {path} is empty")
    return value
