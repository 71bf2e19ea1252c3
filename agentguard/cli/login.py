"""``agentguard login``: a delegation rooted in single sign-on, for an agent's own key.

1. Signs the person in at the identity provider with the device authorization grant
   (RFC 8628): the command prints an address and a code, the person confirms in a
   browser, the command polls the provider's token endpoint for the access token.
2. Exchanges that token at the MCP proxy (RFC 8693; the endpoint is named in the
   proxy's protected resource metadata) with an actor token signed by a new key, for a
   delegation to that key under the policy's ``federation:`` mapping.
3. Writes the delegation and the key, each readable by the owner only (0600). The
   access token is not kept.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from agentguard.cli._common import HomeOption, fail, note, say, stamp, workspace
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError
from agentguard.federation import (
    ACCESS_TOKEN_TYPE,
    ACTOR_TOKEN_TYPE,
    DELEGATION_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    actor_token,
)
from agentguard.keys import Identity, Principal
from agentguard.oidc import is_provider_url

__all__ = ["DEVICE_GRANT", "login_command"]

#: The device authorization grant type (RFC 8628).
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_MAX_DOCUMENT = 1024 * 1024
_HTTP_TIMEOUT = 10.0
_DEFAULT_INTERVAL = 5.0  # RFC 8628 3.5: when the provider names none


class LoginError(Exception):
    """Something the person can act on; printed as one line."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer we refuse, never followed


_opener = urllib.request.build_opener(_NoRedirects)


def _printable(text: str, limit: int = 300) -> str:
    """``text`` without control characters (a hostile answer cannot drive the terminal)."""
    return "".join(c for c in text if c.isprintable())[:limit]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_url(url: object, what: str) -> str:
    """``url`` when it is https (or http on a loopback address), plain (:mod:`agentguard.oidc`)."""
    if is_provider_url(url):
        return url
    shown = _printable(url, 200) if isinstance(url, str) else type(url).__name__
    raise LoginError(f"{what} must be https (or http on a loopback address): {shown!r}")


def _request(url: str, form: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """GET (or POST ``form``) and the JSON object answered, with its status."""
    data = None if form is None else urllib.parse.urlencode(form).encode("ascii")
    request = urllib.request.Request(url, data=data, headers={"accept": "application/json"})  # noqa: S310 - https/loopback checked
    try:
        with _opener.open(request, timeout=_HTTP_TIMEOUT) as reply:
            status, body = reply.status, reply.read(_MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(_MAX_DOCUMENT + 1)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LoginError(f"cannot reach {url}: {reason}") from None
    if len(body) > _MAX_DOCUMENT:
        raise LoginError(f"{url} answered with more than {_MAX_DOCUMENT} bytes")
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        raise LoginError(f"{url} answered {status} without a JSON object")
    return status, document


def _oauth_problem(document: dict[str, Any]) -> str:
    error = document.get("error")
    text = document.get("error_description")
    reason = document.get("agentguard_reason")
    parts = [str(error) if isinstance(error, str) else "error"]
    if isinstance(reason, str):
        parts[0] += f" ({reason})"
    if isinstance(text, str):
        parts.append(text)
    return _printable(": ".join(parts))


def _discover(issuer: str) -> dict[str, Any]:
    status, document = _request(issuer.rstrip("/") + "/.well-known/openid-configuration")
    if status != 200:
        raise LoginError(f"the identity provider's discovery document answered {status}")
    if document.get("issuer") != issuer:
        raise LoginError("the identity provider's discovery document names another issuer")
    if "device_authorization_endpoint" not in document:
        raise LoginError(
            "the identity provider offers no device authorization grant (RFC 8628); "
            "enable it for the client"
        )
    return document


def _seconds(value: object, default: float) -> float:
    """A number of seconds from a provider's answer (``default`` if it is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value) if 0 <= value < 10**6 else default


def _device_token(
    discovery: dict[str, Any], client_id: str, scope: str, resource: str, deadline: float
) -> str:
    """The access token, once the person has confirmed the code in a browser."""
    device_endpoint = _check_url(
        discovery["device_authorization_endpoint"], "device_authorization_endpoint"
    )
    token_endpoint = _check_url(discovery.get("token_endpoint"), "token_endpoint")
    status, started = _request(
        device_endpoint, {"client_id": client_id, "scope": scope, "resource": resource}
    )
    if status != 200:
        raise LoginError(f"the identity provider refused to start: {_oauth_problem(started)}")
    device_code, user_code = started.get("device_code"), started.get("user_code")
    if not isinstance(device_code, str) or not isinstance(user_code, str):
        raise LoginError("the identity provider's answer has no device_code and user_code")
    complete = started.get("verification_uri_complete")
    where = _check_url(
        complete if isinstance(complete, str) else started.get("verification_uri"),
        "verification_uri",
    )
    note(f"To sign in, open {where} and confirm the code {_printable(user_code, 32)}")
    interval = _seconds(started.get("interval"), _DEFAULT_INTERVAL)
    interval = min(max(interval, 1.0), 60.0)
    lifetime = _seconds(started.get("expires_in"), 0.0)
    if lifetime > 0:
        deadline = min(deadline, time.monotonic() + lifetime)
    form = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": client_id}
    form["resource"] = resource
    while True:
        if time.monotonic() + interval > deadline:
            raise LoginError("the sign-in was not confirmed in time; run agentguard login again")
        time.sleep(interval)
        status, answer = _request(token_endpoint, form)
        if status == 200:
            token = answer.get("access_token")
            if not isinstance(token, str) or not token:
                raise LoginError("the identity provider's token answer has no access_token")
            return token
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval = min(interval + 5.0, 60.0)
            continue
        if error == "access_denied":
            raise LoginError("the sign-in was refused at the identity provider")
        if error == "expired_token":
            raise LoginError("the sign-in code expired; run agentguard login again")
        raise LoginError(f"the identity provider refused the sign-in: {_oauth_problem(answer)}")


def _origin(url: str) -> str:
    """Scheme, host and port of ``url``, lower-cased, the port spelled out."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)  # checked by _check_url
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _exchange_endpoint(resource: str) -> str:
    """The proxy's token exchange endpoint, from its protected resource metadata."""
    parts = urllib.parse.urlsplit(resource)
    base = f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource"
    path = parts.path.rstrip("/")
    problem = ""
    for url in dict.fromkeys([base + path, base]):
        try:
            status, document = _request(url)
        except LoginError as exc:
            problem = f" ({exc})"
            continue
        if status == 200 and document.get("resource") == resource:
            endpoint = document.get("agentguard_token_exchange_endpoint")
            if endpoint is None:
                problem = ""
                break
            endpoint = _check_url(endpoint, "agentguard_token_exchange_endpoint")
            if _origin(endpoint) != _origin(resource):
                # The person's access token goes there: only to the proxy it was made for.
                raise LoginError(
                    "the MCP proxy's metadata names a token exchange on another origin "
                    f"({_printable(endpoint, 200)!r}); the access token is sent only to "
                    f"{_origin(resource)}"
                )
            return endpoint
    raise LoginError(
        f"the MCP proxy at {resource} offers no token exchange (does its policy have a "
        f"federation: section?){problem}"
    )


def _exchange(endpoint: str, token: str, key: Identity) -> Delegation:
    form = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "actor_token": actor_token(key, endpoint, now=time.time()),
        "actor_token_type": ACTOR_TOKEN_TYPE,
        "requested_token_type": DELEGATION_TOKEN_TYPE,
    }
    status, answer = _request(endpoint, form)
    if status != 200:
        raise LoginError(f"the MCP proxy refused the token exchange: {_oauth_problem(answer)}")
    if answer.get("issued_token_type") != DELEGATION_TOKEN_TYPE:
        raise LoginError("the MCP proxy's answer is not a delegation")
    try:
        delegation = Delegation.parse(str(answer.get("access_token")))
    except AgentGuardError as exc:
        raise LoginError(f"the MCP proxy's delegation does not parse: {exc}") from None
    if delegation.leaf.subject_key.kid != key.kid:
        raise LoginError("the MCP proxy's delegation is not for the key this login made")
    return delegation


def _replace_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600), replacing it whole or not at all."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def login_command(
    ctx: typer.Context,
    issuer: Annotated[
        str,
        typer.Option("--issuer", metavar="URL", help="The identity provider (its issuer URL)."),
    ],
    client_id: Annotated[
        str,
        typer.Option(
            "--client-id",
            metavar="ID",
            help="The OAuth client registered at the provider for the device grant.",
        ),
    ],
    resource: Annotated[
        str,
        typer.Option(
            "--resource",
            metavar="URI",
            help="The MCP proxy's resource URI (its federation audience).",
        ),
    ],
    scope: Annotated[
        str, typer.Option("--scope", metavar="TEXT", help="Scopes to ask the provider for.")
    ] = "openid",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Where to write the delegation (default HOME/login.delegation); the key "
            "goes beside it with .key added.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", help="How long to wait for the sign-in."),
    ] = 600.0,
    home: HomeOption = None,
) -> None:
    """Sign in at your identity provider; get a delegation for a new key of yours.

    Uses the device authorization grant (RFC 8628): open the address it prints
    and confirm the code. The provider's access token is then exchanged at the
    MCP proxy (RFC 8693) for a delegation under the policy's federation: rules,
    to a key made here. Both are written readable by you only (0600); the
    provider's token is not kept. Use them with GuardedClient (Identity.load
    reads the key) or any agentguard caller.
    """
    try:
        _check_url(issuer, "--issuer")
        _check_url(resource, "--resource")
    except LoginError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not client_id.strip():
        raise typer.BadParameter("name the OAuth client", param_hint="--client-id")
    if not 1 <= timeout <= 3600:
        raise typer.BadParameter("between 1 and 3600 seconds", param_hint="--timeout")
    target = out if out is not None else workspace(ctx, home).home / "login.delegation"
    key_path = target.with_name(target.name + ".key")
    deadline = time.monotonic() + timeout
    try:
        discovery = _discover(issuer)
        endpoint = _exchange_endpoint(resource)
        token = _device_token(discovery, client_id, scope, resource, deadline)
        made = Identity.generate("agent:login")
        delegation = _exchange(endpoint, token, made)
    except LoginError as exc:
        fail(str(exc))
    leaf = delegation.leaf
    key = Identity(Principal(leaf.subject, made.principal.public_key), made.private_key)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _replace_private(key_path, json.dumps({"id": key.id, "jwk": key.private_jwk()}, indent=2))
    _replace_private(target, delegation.serialize() + "\n")
    person = f" on behalf of {leaf.on_behalf_of}" if leaf.on_behalf_of else ""
    say(f"signed in: {leaf.subject}{person}, until {stamp(delegation.expires_at)}")
    say(f"delegation: {target}")
    say(f"key: {key_path}")
