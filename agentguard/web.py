"""The approval web page (the ``web`` extra: Starlette + Uvicorn).

Approvers log in with a per-approver token (see :class:`ApproverTokens`), or
sign in through the organisation's identity provider when the policy has
``approval.sso`` (:mod:`agentguard.web_sso`), and see each pending request:
first the call (tool, every argument redacted where the policy says, the
deadline counting down), then who asks for whom (the delegation chain, each
purpose and sponsor with the principal who asserted it, shared with every
other channel through :func:`request_html`), then the
answers. Answers are recorded through :meth:`ApprovalBook.answer` with
assurance ``authenticated``; the guard attests them with its key and checks
them before the tool runs. The page offers only the answers the book would
accept from the logged-in approver (approver list, assurance, separation of
duties) and says who could answer instead, and how.

Security: only a SHA-256 hash of each token is stored (file mode 0600); the
session cookie is a random id kept server-side (HttpOnly, SameSite=Strict);
every POST carries a per-session CSRF token; every value shown is HTML-escaped;
the server binds to loopback unless told otherwise. Every request must name a
host the page answers to (loopback names, the bound host, ``allowed_hosts``):
a page on loopback is otherwise reachable from any website through DNS
rebinding. Every request that may change state must come from the page
itself: its ``Origin`` must name the page's host and port; without ``Origin``,
``Sec-Fetch-Site`` must be ``same-origin``; without either, the ``Referer``
must be on the page; when none tells, the request is refused. The policy file
is read on every request, so a change counts at once; while it does not load,
every answer is refused.

Starlette and Uvicorn are imported only when an app is built, so
:class:`ApproverTokens` works without the extra (the CLI issues tokens with it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard.approval import ApprovalBook, ApprovalRequest, request_html
from agentguard.clock import format_duration
from agentguard.errors import AgentGuardError, ConfigError, DeniedError
from agentguard.keys import read_trusted_file, validate_principal_id
from agentguard.passkeys import PasskeyEnrolments
from agentguard.policy import SSO_CALLBACK_PATH
from agentguard.policy_file import exclusive_lock
from agentguard.tokens import args_digest
from agentguard.web_passkeys import PASSKEY_SCRIPT, PASSKEY_SCRIPT_HASH, passkey_routes

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from agentguard.federation import Provider
    from agentguard.policy import Policy, SingleSignOn

__all__ = ["TOKENS_FILE", "ApproverTokens", "create_app", "serve"]

log = logging.getLogger("agentguard.web")

#: Name of the token file inside the agentguard home directory.
TOKENS_FILE = "approver-tokens.json"
TOKEN_PREFIX = "agt_"  # noqa: S105 - a public prefix, not a secret
SESSION_COOKIE = "agentguard_session"
#: The short-lived cookie that binds a started single sign-on to its browser.
SSO_COOKIE = "agentguard_sso"
SESSION_TTL = 8 * 3600
#: At most this many anonymous sessions (a login form's CSRF token) are kept; past
#: it the oldest anonymous one is dropped (its form asks to be reloaded).
MAX_ANONYMOUS_SESSIONS = 1024
#: At most this many anonymous sessions per client address (an IPv6 one by its /64);
#: past it that address's own oldest is dropped, not anyone else's.
ANONYMOUS_SESSIONS_PER_CLIENT = 32
#: At most this many signed-in sessions are kept; past it the oldest signed-in one ends.
MAX_SIGNED_IN_SESSIONS = 4096
#: At most this many signed-in sessions per approver; past it that approver's own oldest
#: ends, so one approver signing in in a loop ends no one else's session.
SIGNED_IN_SESSIONS_PER_APPROVER = 16
_MAX_FIELD = 20_000


def _require_web() -> None:
    try:
        import starlette  # noqa: F401 - imported only to check the extra is installed
        import uvicorn  # noqa: F401 - imported only to check the extra is installed
    except ImportError as exc:
        raise ConfigError(
            "the approval web page needs the 'web' extra: pip install 'agentguard[web]'"
        ) from exc


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApproverTokens:
    """Per-approver login tokens for the web page, stored as SHA-256 hashes.

    The file is JSON, written atomically with mode 0600. Issuing a token for an
    approver replaces (and so revokes) the previous one. The file is read on
    every login, so tokens issued or revoked by the CLI take effect at once.
    Each change holds an exclusive lock on a sibling file (``.NAME.lock``) from
    reading the file to replacing it, so processes changing it at once lose
    none of each other's changes (a revocation is never undone); a change waits
    at most :attr:`lock_wait` seconds for that lock, then fails with
    ``ConfigError``.
    """

    #: Seconds a change waits for another program's lock on the file.
    lock_wait: float = 30.0

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: str | Path) -> ApproverTokens:
        """The token file of an agentguard home directory (``HOME/approver-tokens.json``)."""
        return cls(Path(home) / TOKENS_FILE)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read approver tokens {self.path}: {exc}") from exc
        entries = doc.get("tokens", {}) if isinstance(doc, dict) else {}
        return {str(k): v for k, v in entries.items() if isinstance(v, dict)}

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The entries, read under this process's and the file's exclusive lock; what
        the caller leaves in them is written before the lock is released."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Bounded: a stuck program holding the lock makes this fail with a clear error
        # instead of freezing every issue and revoke behind it.
        with self._lock, exclusive_lock(self.path, self.lock_wait):
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                self._write(entries)

    def _write(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"version": 1, "tokens": dict(entries)}, out, indent=2, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())  # a revocation survives a crash right after it
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def issue(self, approver: str, *, now: float | None = None) -> str:
        """Create a new token for ``approver`` and return it (shown once, never stored).

        Raises:
            IdentityError: ``approver`` is not a valid principal id.
            ConfigError: the token file cannot be read.
        """
        validate_principal_id(approver)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._changing() as entries:
            entries[approver] = {
                "sha256": _hash_token(token),
                "created_at": time.time() if now is None else now,
            }
        return token

    def revoke(self, approver: str) -> bool:
        """Forget ``approver``'s token; returns whether there was one.

        Raises:
            ConfigError: the token file cannot be read.
        """
        with self._changing() as entries:
            found = entries.pop(approver, None) is not None
        return found

    def current_hash(self, approver: str) -> str | None:
        """The stored hash of ``approver``'s token, or ``None`` when it has none.

        Raises:
            ConfigError: the token file cannot be read.
        """
        stored = self._read().get(approver, {}).get("sha256")
        return stored if isinstance(stored, str) else None

    def approvers(self) -> list[str]:
        """Approvers that currently hold a token, sorted.

        Raises:
            ConfigError: the token file cannot be read.
        """
        return sorted(self._read())

    def identify(self, token: str) -> str | None:
        """The approver a presented token belongs to, or ``None``.

        Every stored hash is compared in constant time.

        Raises:
            ConfigError: the token file cannot be read.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        presented = _hash_token(token)
        found: str | None = None
        for approver, entry in self._read().items():
            stored = entry.get("sha256")
            if isinstance(stored, str) and hmac.compare_digest(stored, presented):
                found = approver
        return found


@dataclass
class _Session:
    csrf: str
    expires: float
    approver: str | None = None
    flashes: list[tuple[str, str]] = field(default_factory=list)
    #: Hash of the token the approver logged in with: revoking or reissuing it
    #: ends the session at its next request.
    token_hash: str | None = None
    #: The single sign-on settings a signed-in person came through: a change to
    #: them (or their removal) ends the session at its next request.
    sso: SingleSignOn | None = None
    #: Passkey answer statements waiting for their assertion, by statement id
    #: (see :mod:`agentguard.web_passkeys`).
    passkey_statements: dict[str, Any] = field(default_factory=dict)


class _Sessions:
    """Random session ids kept server-side (nothing to forge in the cookie).

    Anonymous sessions (the login form's CSRF token) and signed-in ones are kept
    apart, each under its own cap: past it the oldest of that kind is dropped, so
    a client asking for login forms in a loop holds at most ``max_anonymous`` of
    them and never ends a signed-in person's session. Each client address (see
    :func:`agentguard.web_sso.client_of`) holds at most ``per_client`` anonymous
    ones, its own oldest dropped first, so one address's loop drops no one else's;
    likewise each approver holds at most ``per_approver`` signed-in sessions.
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_anonymous: int | None = None,
        max_signed_in: int | None = None,
        per_client: int | None = None,
        per_approver: int | None = None,
    ) -> None:
        self.ttl = ttl
        self.per_approver = (
            SIGNED_IN_SESSIONS_PER_APPROVER if per_approver is None else per_approver
        )
        self.per_client = ANONYMOUS_SESSIONS_PER_CLIENT if per_client is None else per_client
        self.max_anonymous = MAX_ANONYMOUS_SESSIONS if max_anonymous is None else max_anonymous
        self.max_signed_in = MAX_SIGNED_IN_SESSIONS if max_signed_in is None else max_signed_in
        if min(self.max_anonymous, self.max_signed_in, self.per_client, self.per_approver) < 1:
            raise ValueError("session caps must be at least 1")
        # Insertion order is expiry order (one TTL for all), so the oldest come first.
        self._anonymous: dict[str, _Session] = {}
        self._signed_in: dict[str, _Session] = {}
        #: Each anonymous session's client, and each client's anonymous sessions (oldest first).
        self._client: dict[str, str] = {}
        self._by_client: dict[str, dict[str, None]] = {}
        #: Each approver's signed-in sessions (oldest first).
        self._by_approver: dict[str, dict[str, None]] = {}
        self._lock = threading.Lock()

    def _forget(self, sid: str) -> None:
        """Drop session ``sid`` of either kind (the lock held)."""
        signed_in = self._signed_in.pop(sid, None)
        if signed_in is not None and signed_in.approver is not None:
            theirs = self._by_approver.get(signed_in.approver)
            if theirs is not None:
                theirs.pop(sid, None)
                if not theirs:
                    del self._by_approver[signed_in.approver]
        if self._anonymous.pop(sid, None) is None:
            return
        client = self._client.pop(sid, "")
        mine = self._by_client.get(client)
        if mine is not None:
            mine.pop(sid, None)
            if not mine:
                del self._by_client[client]

    def new(
        self, approver: str | None = None, *, address: str | None = None
    ) -> tuple[str, _Session]:
        sid = secrets.token_urlsafe(32)
        session = _Session(
            csrf=secrets.token_urlsafe(32), expires=time.monotonic() + self.ttl, approver=approver
        )
        kind, cap = (
            (self._anonymous, self.max_anonymous)
            if approver is None
            else (self._signed_in, self.max_signed_in)
        )
        with self._lock:
            now = time.monotonic()
            for held in (self._anonymous, self._signed_in):
                while held and next(iter(held.values())).expires <= now:
                    self._forget(next(iter(held)))
            if approver is None:
                from agentguard.web_sso import client_of

                client = client_of(address)
                mine = self._by_client.setdefault(client, {})
                while len(mine) >= self.per_client:
                    self._forget(next(iter(mine)))
                mine = self._by_client.setdefault(client, {})
                mine[sid] = None
                self._client[sid] = client
            else:
                theirs = self._by_approver.setdefault(approver, {})
                while len(theirs) >= self.per_approver:
                    self._forget(next(iter(theirs)))
                self._by_approver.setdefault(approver, {})[sid] = None
            while len(kind) >= cap:
                self._forget(next(iter(kind)))
            kind[sid] = session
        return sid, session

    def get(self, sid: str | None) -> _Session | None:
        if not sid:
            return None
        with self._lock:
            for held in (self._signed_in, self._anonymous):
                session = held.get(sid)
                if session is None:
                    continue
                if session.expires <= time.monotonic():
                    self._forget(sid)
                    return None
                return session
            return None

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._forget(sid or "")

    def counts(self) -> tuple[int, int]:
        """How many anonymous and signed-in sessions are held (expired ones included)."""
        with self._lock:
            return len(self._anonymous), len(self._signed_in)


_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1rem;max-width:60rem;color:#1f2328;
line-height:1.45}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin:0 0 .3rem}h3{font-size:1rem;margin:1rem 0 .3rem}
.req{border:1px solid #d0d7de;border-radius:8px;padding:1rem;margin:1rem 0}
.req.expired{opacity:.6}
code{overflow-wrap:anywhere}table{border-collapse:collapse;max-width:100%}
th,td{padding:.15rem .5rem .15rem 0;vertical-align:top;overflow-wrap:anywhere}
pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-width:100%}
.deadline{color:#59636e;margin:0 0 .5rem}
.chain{margin:.2rem 0;padding-left:1.5rem}.chain li{overflow-wrap:anywhere}
.answers{display:flex;flex-wrap:wrap;gap:1rem;margin-top:1rem}
.answers form{flex:1 1 16rem;display:flex;flex-direction:column;gap:.4rem}
label{display:flex;flex-direction:column;gap:.2rem;font-size:.9rem}
input,textarea{font:inherit;padding:.45rem;border:1px solid #8c959f;border-radius:6px;
width:100%}
textarea{min-height:8rem;font-family:monospace}
button{font:inherit;font-weight:600;padding:.6rem 1rem;border-radius:6px;cursor:pointer;
border:1px solid #8c959f;background:#f6f8fa;color:#1f2328}
button.primary{background:#1f883d;border-color:#1a7f37;color:#fff}
button.danger{background:#cf222e;border-color:#a40e26;color:#fff}
button:focus-visible,input:focus-visible,textarea:focus-visible,summary:focus-visible{
outline:3px solid #0969da;outline-offset:2px}
.cannot{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.6rem;flex:1 1 100%}
.flash{padding:.6rem;border-radius:6px;margin:.5rem 0}.ok{background:#dafbe1}
.error{background:#ffebe9}
header{display:flex;flex-wrap:wrap;justify-content:space-between;align-items:center;gap:.5rem}
header form{display:flex;gap:.5rem;align-items:center}
.login{display:flex;flex-direction:column;gap:.6rem;max-width:30rem}
#where{margin-top:2rem;max-width:42rem}
"""

#: Counts the deadlines down once a second, from the seconds left when the page was
#: made (the server's clock, so a wrong clock in the browser does not matter). The page
#: works without it: every deadline is also printed as a time.
_COUNTDOWN = (
    "(function(){var t0=Date.now();"
    "function fmt(s){var d=Math.floor(s/86400),h=Math.floor(s%86400/3600),"
    "m=Math.floor(s%3600/60),r=s%60,p=[];if(d)p.push(d+'d');if(h)p.push(h+'h');"
    "if(m)p.push(m+'m');if(r||!p.length)p.push(r+'s');return p.slice(0,2).join(' ');}"
    "function tick(){document.querySelectorAll('time.countdown').forEach(function(el){"
    "var left=Math.round(Number(el.dataset.left)-(Date.now()-t0)/1000);"
    "if(left>0){el.textContent=fmt(left);}else{el.textContent='no time';"
    "var s=el.closest('section');if(s){s.classList.add('expired');}}});}"
    "tick();setInterval(tick,1000);})();"
)
_COUNTDOWN_HASH = base64.b64encode(hashlib.sha256(_COUNTDOWN.encode()).digest()).decode()

_CSP = (
    f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_COUNTDOWN_HASH}' "
    f"'sha256-{PASSKEY_SCRIPT_HASH}'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


#: Where :func:`request_html`'s claims part begins (every value in it is escaped,
#: so the marker cannot come from an argument).
_CLAIMS_MARK = ' class="agentguard-claims"'


def _split_request_html(request: ApprovalRequest) -> tuple[str, str]:
    """The shared renderer's arguments part and its claims part (who states what)."""
    fragment = request_html(request)
    mark = fragment.find(_CLAIMS_MARK)
    start = fragment.rfind("<", 0, mark) if mark >= 0 else -1
    if start < 0:  # another shape: show it whole, in the first place
        return fragment, ""
    return fragment[:start], fragment[start:]


@dataclass(frozen=True)
class _Offer:
    """Which answers from the logged-in approver would count, and why not otherwise."""

    approve: str | None  # None: an approval would count; else why it would not
    deny: str | None


def _offer(book: ApprovalBook, request: ApprovalRequest, approver: str) -> _Offer:
    """Ask the book, as it will when the answer comes: only answers that count are offered."""

    # An approver with an enrolled passkey answers with it: the answer is 'signed'.
    level = "signed" if book.passkey_credential(approver) is not None else WEB_ASSURANCE

    def why_not(approving: bool) -> str | None:
        try:
            book.check_answerer(request.id, approver=approver, assurance=level, approving=approving)
        except DeniedError as exc:
            return exc.explanation
        except AgentGuardError as exc:  # cannot tell (the store did not answer): offer nothing
            return f"cannot tell whether this answer would count ({type(exc).__name__})"
        return None

    return _Offer(approve=why_not(True), deny=why_not(False))


def _budgets_html(request: ApprovalRequest, book: ApprovalBook) -> str:
    """The budgets the call is charged to if it runs, with what their windows have used.

    Read, not charged: the guard checks them again, exactly, when the answer comes.
    """
    if not request.budgets:
        return ""
    from agentguard.budgets import describe_usage, pending_usage

    read = getattr(book.store, "budget_states", None)
    try:
        if read is None:
            raise ValueError("the store keeps no budgets")
        views = pending_usage(request.budgets, read, book.clock.now())
        items = "".join(
            f"<li><b>{_e(v['budget'])}</b>: {_e(describe_usage(v))}</li>" for v in views
        )
    except (ValueError, AgentGuardError) as exc:  # show that it cannot tell, never guess
        log.warning("agentguard web: budgets of %s not shown: %s", request.id, exc)
        items = "<li>cannot tell what they have used (see the page's log)</li>"
    return (
        '<div class="budgets"><h3>Budgets</h3><p>If approved, the call is charged to '
        f"(this window, before this call):</p><ul>{items}</ul></div>"
    )


def _request_html(
    request: ApprovalRequest,
    csrf: str,
    now: float,
    offer: _Offer,
    *,
    passkey: bool = False,
    budgets: str = "",
) -> str:
    rid = _e(request.id)
    # The edit box holds the arguments as JSON (ASCII escapes for anything else).
    args = json.dumps(request.args_display, indent=2, sort_keys=True, default=str)
    view = request.view()
    left = max(0, round(request.deadline - now))
    arguments, claims = _split_request_html(request)
    chain = "".join(
        f"<li><code>{_e(p)}</code>{' <small>(asks)</small>' if i == len(view.path) - 1 else ''}"
        "</li>"
        for i, p in enumerate(view.path)
    )
    hidden = f'<input type="hidden" name="csrf" value="{_e(csrf)}">'

    def pk(action: str) -> str:
        """A passkey approver's form: the script runs the WebAuthn ceremony instead."""
        if not passkey:
            return ""
        return (
            f' data-passkey="{action}" data-begin="/requests/{rid}/passkey/begin"'
            f' data-finish="/requests/{rid}/passkey/finish"'
        )

    status = '<p class="passkey-status" role="status"></p>' if passkey else ""
    forms = []
    if offer.approve is None:
        forms.append(
            f'<form class="approve" method="post" action="/requests/{rid}/approve"'
            f"{pk('approve')}>{hidden}"
            f'<label for="approve-msg-{rid}">Note (optional)</label>'
            f'<input id="approve-msg-{rid}" name="message" maxlength="500">'
            f'{status}<button type="submit" class="primary">Approve</button></form>'
        )
    if offer.deny is None:
        forms.append(
            f'<form class="deny" method="post" action="/requests/{rid}/deny"{pk("deny")}>'
            f"{hidden}"
            f'<label for="deny-msg-{rid}">Reason (sent back to the caller)</label>'
            f'<input id="deny-msg-{rid}" name="message" maxlength="500">'
            f'{status}<button type="submit" class="danger">Deny</button></form>'
        )
    notes = []
    reasons = dict.fromkeys(r for r in (offer.approve, offer.deny) if r is not None)
    for reason in reasons:
        which = (
            "An approval or a denial"
            if offer.approve == offer.deny
            else ("An approval" if reason == offer.approve else "A denial")
        )
        notes.append(
            f'<p class="cannot" role="note">{which} from you on this page would not count: '
            f"{_e(reason)}</p>"
        )
    edit = ""
    if offer.approve is None:
        edit = f"""
<details><summary>Edit arguments and approve</summary>
<form class="edit" method="post" action="/requests/{rid}/edit"{pk("edit")}>{hidden}
<label for="edit-args-{rid}">Arguments (JSON object)</label>
<textarea id="edit-args-{rid}" name="args">{_e(args)}</textarea>
<small>The edited JSON object replaces the call's arguments entirely (redacted values
must be given again); the guard re-checks the call with them.</small>
<label for="edit-msg-{rid}">Note (optional)</label>
<input id="edit-msg-{rid}" name="message" maxlength="500">
{status}<button type="submit" class="primary">Approve edited call</button></form></details>"""
    return f"""
<section class="req" id="req-{rid}" data-request-id="{rid}" aria-labelledby="title-{rid}">
<h2 id="title-{rid}">Call <code class="tool">{_e(view.tool)}</code></h2>
<p class="deadline">Answer within <time class="countdown" data-left="{left}"
datetime="{_e(datetime.fromtimestamp(request.deadline, tz=UTC).isoformat())}">\
{_e(format_duration(left))}</time> (by {_e(_when(request.deadline))}) &middot;
request <code>{rid}</code></p>
<div class="call">{arguments}</div>
<h3>Who asks, for whom</h3>
<p class="requester"><code>{_e(view.requester)}</code> asks, delegated by (root first):</p>
<ol class="chain">{chain}</ol>
<div class="claims">{claims}</div>{budgets}
<p class="rules">Approval required by {_e("; ".join(view.rules))}
(minimum assurance <code>{_e(request.min_assurance)}</code>; this page carries
<code>{"signed" if passkey else WEB_ASSURANCE}</code>{" with your passkey" if passkey else ""}).</p>
<div class="answers">{"".join(notes + forms)}</div>{edit}
</section>"""


def _page(
    title: str, body: str, flashes: list[tuple[str, str]] | None = None, *, script: bool = False
) -> str:
    notes = "".join(
        f'<div class="flash {_e(kind)}" role="status">{_e(text)}</div>'
        for kind, text in flashes or []
    )
    tail = f"<script>{_COUNTDOWN}</script>" if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{notes}{body}</main>{tail}</body></html>"
    )


#: What an answer given on the page carries: a human who logged in with their own token.
WEB_ASSURANCE = "authenticated"

#: Host names the page answers to unless told more: loopback.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # noqa: S104 - names, not a bind
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a ``Host`` header value, or ``None`` when it is not one."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text: str | None = rest[1:] if rest else None
    else:
        name, sep, after = value.partition(":")
        port_text = after if sep else None
    if not name or any(c in name for c in "/\\@?# \t[]"):
        return None
    if port_text is None:
        return name, None
    if not (port_text.isascii() and port_text.isdigit() and 0 < len(port_text) <= 5):
        return None
    return name, int(port_text)


def _host_name(name: str) -> str:
    """An allow-list entry as the ``Host`` check compares it (lower case, no brackets)."""
    return name.strip().lower().removeprefix("[").removesuffix("]")


def _allowed_host(name: str) -> str:
    """An allow-list entry checked: a host name or an IP address, without a port.

    Raises:
        ConfigError: it is neither.
    """
    entry = _host_name(name)
    if ":" in entry:
        try:
            ipaddress.IPv6Address(entry)
        except ValueError:
            entry = ""
    if not entry or _split_host(f"[{entry}]" if ":" in entry else entry) is None:
        raise ConfigError(
            f"not a host name for the approval page: {name!r} (a name or address, no port)"
        )
    return entry


def _same_origin(url: str, host: str) -> bool:
    """Whether ``url`` (an ``Origin`` or ``Referer``) names the host and port ``host`` names.

    The scheme is not compared: behind a TLS proxy the browser sees ``https``
    while this server speaks ``http``; one host and port is one server.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.hostname is None or parts.username is not None:
        return False
    target = _split_host(host)
    if target is None:
        return False
    default = _DEFAULT_PORTS[scheme]
    return parts.hostname == target[0] and (port or default) == (target[1] or default)


def _refusal(
    request_headers: list[tuple[bytes, bytes]], hosts: frozenset[str], method: str
) -> str | None:
    """Why a request must be refused before any route sees it, or ``None``.

    Every request needs exactly one ``Host`` the page answers to (a page on
    loopback is reachable from any website through DNS rebinding, whose
    requests carry the attacker's host name). A request that may change state
    (anything but GET and HEAD) must come from the page itself: its ``Origin``
    must be the page's; without an ``Origin``, ``Sec-Fetch-Site`` must say
    ``same-origin``; without either, the ``Referer`` must be on the page. When
    none of them tells, it is refused (cannot tell is no).
    """
    headers: dict[bytes, list[str]] = {}
    for key, value in request_headers:
        headers.setdefault(key.lower(), []).append(value.decode("latin-1"))
    host_values = headers.get(b"host", [])
    if len(host_values) != 1:
        return "a request needs exactly one Host header"
    target = _split_host(host_values[0])
    if target is None or target[0] not in hosts:
        return (
            "this page does not answer to that host name (allowed: loopback names and "
            "those given with --allow-host)"
        )
    if method in ("GET", "HEAD"):
        return None
    host = host_values[0]
    for name, check in (
        (b"origin", lambda v: _same_origin(v, host)),
        (b"sec-fetch-site", lambda v: v.strip().lower() == "same-origin"),
        (b"referer", lambda v: _same_origin(v, host)),
    ):
        values = headers.get(name)
        if values is not None:
            if len(values) == 1 and check(values[0]):
                return None
            return f"the {name.decode().title()} header says this form was sent from another site"
    return "cannot tell which site sent this form (no Origin, Sec-Fetch-Site or Referer)"


class _Gate:
    """ASGI wrapper: the ``Host`` allow-list and the same-origin check (:func:`_refusal`)."""

    def __init__(self, app: Any, hosts: frozenset[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            why = _refusal(list(scope.get("headers") or []), self.hosts, scope.get("method", "GET"))
            if why is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                log.warning(
                    "agentguard web: refused %s %s: %s", scope.get("method"), scope.get("path"), why
                )
                body = _page("Refused", f"<p>Refused: {_e(why)}.</p>").encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/html; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"content-security-policy", _CSP.encode()),
                            (b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"cache-control", b"no-store"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class _Books:
    """The approval book answers go to, rebuilt from the policy file when it changes.

    The file is read on every request (it is small) and compared by SHA-256, so
    an approver added or removed counts from the next request on, without a
    restart. A policy that no longer loads refuses every answer until it is
    fixed: the page never answers with an old policy after a change.
    """

    def __init__(self, book: ApprovalBook, policy_file: str | Path | None) -> None:
        self._book = book
        self._base = book.policy
        self.path = None if policy_file is None else Path(policy_file)
        self._digest: str | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def current(self) -> ApprovalBook:
        """The book over the policy file as it is now.

        Raises:
            ConfigError: the policy file cannot be read or does not validate, or
                changed what only a restart can apply (``guard_id``, ``storage``).
        """
        if self.path is None:
            return self._book
        from agentguard.policy import POLICY_FILE_LIMIT, load_policy

        with self._lock:
            try:
                data = read_trusted_file(self.path, limit=POLICY_FILE_LIMIT)
            except (OSError, ValueError) as exc:
                self._digest = None
                raise ConfigError(f"cannot read policy {self.path}: {exc}") from exc
            digest = hashlib.sha256(data).hexdigest()
            if digest != self._digest:
                self._digest = digest
                try:
                    policy = load_policy(self.path)
                    if (
                        policy.guard_id != self._base.guard_id
                        or policy.storage != self._base.storage
                    ):
                        raise ConfigError(
                            f"{self.path} changed guard_id or storage, which apply only at start; "
                            "restart 'agentguard approvals serve'"
                        )
                    self._book = ApprovalBook(
                        self._book.store,
                        policy=policy,
                        guard_identity=self._book.guard_identity,
                        clock=self._book.clock,
                        keyring=self._book.keyring,
                    )
                except ConfigError as exc:
                    self._error = str(exc)
                    log.error("agentguard web: policy not reloaded, answers refused: %s", exc)
                else:
                    if self._error is not None:
                        log.warning("agentguard web: policy %s loads again", self.path)
                    self._error = None
            if self._error is not None:
                raise ConfigError(self._error)
            return self._book


def create_app(
    book: ApprovalBook,
    tokens: ApproverTokens,
    *,
    session_ttl: float = SESSION_TTL,
    allowed_hosts: Iterable[str] = (),
    policy_file: str | Path | None = None,
    rp_id: str = "localhost",
    enrolments: PasskeyEnrolments | None = None,
) -> Starlette:
    """The approval web app over ``book``, authenticating approvers with ``tokens``.

    Routes: ``GET /`` (pending requests), ``GET|POST /login``, ``POST /logout``,
    ``POST /requests/{id}/approve|deny|edit``, and for single sign-on (the
    policy's ``approval.sso``) ``POST /login/sso`` and ``GET /login/sso/callback``,
    and for passkeys (:mod:`agentguard.web_passkeys`)
    ``POST /requests/{id}/passkey/begin|finish``, ``GET /enroll`` and
    ``POST /enroll/status|begin|finish``. Every POST needs the session's CSRF
    token (an enrolment POST: the link's token) and must come from the page
    itself (``Origin``; 403 otherwise).
    Every request must name a host the page answers to: the loopback names
    and ``allowed_hosts`` (403 otherwise). The page offers only the answers the
    book would accept from the logged-in approver, and says why not otherwise.

    Args:
        book: where answers are recorded.
        tokens: the approvers' login tokens.
        session_ttl: how long a session lives, in seconds.
        allowed_hosts: host names (besides loopback) the page answers to, as the
            browser's address bar names it, e.g. ``approvals.example.com``.
        policy_file: the policy ``book`` was built from; read again on every
            request, so changes count without a restart (a policy that no
            longer loads refuses every answer until it is fixed).
        rp_id: the passkey relying-party id: ``localhost`` (open the page as
            ``http://localhost:PORT``) or the host name the page is served
            under over HTTPS; never an IP address.
        enrolments: the one-time passkey enrolment links
            (``agentguard approvals enroll``); without them, and a
            ``policy_file`` to write to, the page enrols no passkey.

    Raises:
        ConfigError: the ``web`` extra is not installed, an allowed host is
            empty, or ``rp_id`` is an IP address.
    """
    _require_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.responses import HTMLResponse, RedirectResponse
    from starlette.routing import Route

    hosts = {_host_name(h) for h in LOOPBACK_HOSTS}
    for name in allowed_hosts:
        hosts.add(_allowed_host(name))
    sessions = _Sessions(session_ttl)
    books = _Books(book, policy_file)
    from agentguard.web_sso import PRE_LOGIN_TTL, SignOn, SignOnRefused

    sign_on = SignOn()

    def sso_settings() -> tuple[tuple[SingleSignOn, Provider], Policy] | None:
        """The policy's single sign-on settings now; ``None`` without them or a policy."""
        try:
            policy = books.current().policy
        except ConfigError:
            return None
        found = SignOn.settings(policy)
        return None if found is None else (found, policy)

    def secure(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: a browser then sends the page's own Origin with
        # its forms (with no-referrer it sends "Origin: null", which is refused).
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def set_cookie(response: Response, sid: str, *, https: bool = False) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=int(session_ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=https,  # loopback http unless the page is known to be served over https
        )

    def html_page(
        title: str,
        body: str,
        session: _Session | None,
        status_code: int = 200,
        *,
        script: bool = False,
    ) -> Response:
        flashes = []
        if session is not None:
            flashes, session.flashes = session.flashes, []
        page = _page(title, body, flashes, script=script)
        return secure(HTMLResponse(page, status_code=status_code))

    def forbidden(text: str) -> Response:
        return secure(HTMLResponse(_page("Forbidden", f"<p>{_e(text)}</p>"), status_code=403))

    def redirect(to: str) -> Response:
        return secure(RedirectResponse(to, status_code=303))

    async def live(session: _Session | None) -> _Session | None:
        """``session`` unless its approver's token was revoked or reissued since login."""
        if session is None or session.approver is None:
            return session
        if session.sso is not None:
            found = await run_in_threadpool(sso_settings)
            return session if found is not None and found[0][0] == session.sso else None
        try:
            current = await run_in_threadpool(tokens.current_hash, session.approver)
        except ConfigError:
            current = None
        if current is None or session.token_hash is None:
            return None
        return session if hmac.compare_digest(current, session.token_hash) else None

    async def posted(request: Request) -> tuple[_Session | None, dict[str, str]]:
        """The session and form fields of a POST whose CSRF token checks out."""
        session = await live(sessions.get(request.cookies.get(SESSION_COOKIE)))
        async with request.form(max_files=0, max_fields=10, max_part_size=_MAX_FIELD) as form:
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        sent = fields.get("csrf", "")
        if session is None or not hmac.compare_digest(
            session.csrf.encode(), sent.encode("utf-8", "replace")
        ):
            return None, {}
        return session, fields

    def login_form(csrf: str, sso: tuple[SingleSignOn, Provider] | None = None) -> str:
        sign_in = sso_where = ""
        if sso is not None:
            label = sso[0].label or sso[1].alias
            before, after = sso[1].config.templates()["subject"].affixes(sso[1].alias)
            sign_in = (
                "<form method='post' action='/login/sso' class='login sso'>"
                f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
                f'<button type="submit" class="primary" autofocus>Sign in with {_e(label)}'
                "</button></form><p>Or log in with an approver token:</p>"
            )
            sso_where = (
                f"<p>Signing in with {_e(label)} names you <code>{_e(before)}&hellip;"
                f"{_e(after)}</code>, as the policy's <code>federation:</code> section names "
                "you everywhere else.</p>"
            )
        return (
            "<h1>Log in to answer approval requests</h1>"
            f"{sign_in}<form method='post' action='/login' class='login'>"
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<label for="token">Approver token</label>'
            '<input id="token" type="password" name="token" autocomplete="off" required '
            f'{"" if sso else "autofocus "}aria-describedby="where">'
            '<button type="submit" class="primary">Log in</button></form>'
            '<div id="where"><h2>Where access comes from</h2>'
            "<p>Each approver logs in with their own token. Whoever administers agentguard "
            "issues it on the machine that holds its state directory:</p>"
            "<pre><code>agentguard approvals token --for user:YOU</code></pre>"
            "<p>The token is shown once; issuing a new one revokes the old one and ends its "
            "sessions. Your answers count only where the policy (<code>approvers:</code> in "
            "agentguard.yaml) lists you for the tool and the page's assurance "
            f"(<code>{WEB_ASSURANCE}</code>) is enough for the request; the page says so "
            f"when it is not.</p>{sso_where}</div>"
        )

    async def login_get(request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        session = await live(sessions.get(sid))
        if session is not None and session.approver is not None:
            return redirect("/")
        if sid is None or session is None:
            sessions.drop(sid)  # ended (token revoked, settings changed): a fresh one
            sid, session = sessions.new(address=request.client.host if request.client else None)
        found = await run_in_threadpool(sso_settings)
        form = login_form(session.csrf, None if found is None else found[0])
        response = html_page("Log in", form, session)
        set_cookie(response, sid)
        return response

    async def sso_start(request: Request) -> Response:
        """Start a single sign-on: a pre-login cookie, then the provider's authorization page."""
        session, _ = await posted(request)
        if session is None:
            return forbidden("missing or wrong CSRF token; reload the login page")
        found = await run_in_threadpool(sso_settings)
        if found is None:
            session.flashes.append(("error", "Single sign-on is not configured."))
            return redirect("/login")
        config = found[0][0]
        try:
            pid, url = await run_in_threadpool(
                sign_on.begin,
                config,
                address=request.client.host if request.client else None,
                replaces=request.cookies.get(SSO_COOKIE),
            )
        except SignOnRefused as exc:
            log.warning("agentguard web: single sign-on unavailable (%s): %s", exc.reason, exc)
            session.flashes.append(("error", f"Single sign-on is unavailable: {exc}"))
            return redirect("/login")
        # A page that moves on, not a redirect: the login form's CSP (form-action 'self')
        # forbids a form whose answer redirects to another site.
        label = config.label or found[0][1].alias
        response = html_page(
            "Signing in",
            f'<p>Continuing to {_e(label)}&hellip; <a href="{_e(url)}" id="continue">'
            "Continue</a></p>",
            None,
        )
        response.headers["Refresh"] = f"0; url={url}"
        response.set_cookie(
            SSO_COOKIE,
            pid,
            max_age=int(PRE_LOGIN_TTL),
            path="/login/sso",
            httponly=True,
            samesite="lax",  # the provider sends the browser back from another site
            secure=config.redirect_uri.startswith("https:"),
        )
        return response

    async def sso_callback(request: Request) -> Response:
        """The provider sends the browser back here: finish the sign-in, open a session."""
        pending = sign_on.take(request.cookies.get(SSO_COOKIE))
        items = request.query_params.multi_items()
        params = dict(items)
        found = await run_in_threadpool(sso_settings)
        try:
            if len(params) != len(items):
                raise SignOnRefused("malformed_answer", "the answer repeats a parameter")
            if found is None:
                raise SignOnRefused("not_configured", "single sign-on is not configured now")
            approver = await run_in_threadpool(
                sign_on.finish, pending, params, found[0], secret_base=found[1].base_dir
            )
        except SignOnRefused as exc:
            log.warning("agentguard web: single sign-on refused (%s): %s", exc.reason, exc)
            body = (
                "<h1>Sign-in refused</h1>"
                f'<p class="flash error" role="alert">{_e(exc)}</p>'
                '<p><a href="/login">Back to the login page</a></p>'
            )
            response = html_page("Sign-in refused", body, None, 403)
            response.delete_cookie(SSO_COOKIE, path="/login/sso")
            return response
        config = found[0][0]
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        sid, fresh = sessions.new(approver)
        fresh.sso = config
        fresh.flashes.append(("ok", f"Signed in as {approver}."))
        # A page, not a redirect: the browser arrives here from the provider's site, and a
        # SameSite=Strict cookie is sent only once a page of this site asks for the next one.
        response = html_page(
            "Signed in",
            f"<p>Signed in as <b>{_e(approver)}</b>. "
            '<a href="/" id="continue">Continue to the pending approvals</a></p>',
            None,
        )
        response.headers["Refresh"] = "0; url=/"
        response.delete_cookie(SSO_COOKIE, path="/login/sso")
        set_cookie(response, sid, https=config.redirect_uri.startswith("https:"))
        return response

    async def login_post(request: Request) -> Response:
        session, fields = await posted(request)
        if session is None:
            return forbidden("missing or wrong CSRF token; reload the login page")
        presented = fields.get("token", "").strip()
        try:
            approver = await run_in_threadpool(tokens.identify, presented)
        except ConfigError:
            log.exception("agentguard web: cannot read approver tokens")
            approver = None
        if approver is None:
            session.flashes.append(("error", "Unknown or revoked token."))
            return redirect("/login")
        sessions.drop(request.cookies.get(SESSION_COOKIE))  # a fresh id after login
        sid, fresh = sessions.new(approver)
        fresh.token_hash = _hash_token(presented)
        fresh.flashes.append(("ok", f"Logged in as {approver}."))
        response = redirect("/")
        set_cookie(response, sid)
        return response

    async def logout(request: Request) -> Response:
        session, _ = await posted(request)
        if session is None:
            return forbidden("missing or wrong CSRF token")
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def index(request: Request) -> Response:
        session = await live(sessions.get(request.cookies.get(SESSION_COOKIE)))
        if session is None or session.approver is None:
            return redirect("/login")
        approver = session.approver

        def header(count: int | None) -> str:
            title = "Pending approvals" + ("" if count is None else f" ({count})")
            return (
                f"<header><h1>{title}</h1>"
                f'<form class="who" method="post" action="/logout">'
                f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
                f"<span>Signed in as <b id='approver'>{_e(approver)}</b></span>"
                "<button type='submit'>Log out</button></form></header>"
            )

        def cards() -> tuple[int, str]:
            current = books.current()
            pending = current.pending()
            now = current.clock.now()
            passkey = current.passkey_credential(approver) is not None
            shown = "".join(
                _request_html(
                    r,
                    session.csrf,
                    now,
                    _offer(current, r, approver),
                    passkey=passkey,
                    budgets=_budgets_html(r, current),
                )
                for r in pending
            )
            if passkey and pending:
                shown += f"<script>{PASSKEY_SCRIPT}</script>"
            return len(pending), shown

        try:
            count, shown = await run_in_threadpool(cards)
        except ConfigError as exc:
            body = header(None) + (
                '<p class="flash error" id="paused" role="alert">No answer is recorded until '
                f"the policy loads again: {_e(exc)}. Pending requests keep waiting until their "
                "deadline.</p>"
            )
            return html_page("agentguard approvals", body, session, 503)
        body = header(count) + (shown or "<p id='none'>Nothing is waiting for an answer.</p>")
        return html_page("agentguard approvals", body, session, script=bool(count))

    async def answer(request: Request) -> Response:
        action = str(request.path_params["action"])
        if action not in ("approve", "deny", "edit"):
            return secure(HTMLResponse(_page("Not found", "<p>No such action.</p>"), 404))
        session, fields = await posted(request)
        if session is None:
            return forbidden("missing or wrong CSRF token")
        if session.approver is None:
            return redirect("/login")
        request_id = str(request.path_params["request_id"])
        message = fields.get("message", "").strip()[:500] or None
        edited: dict[str, Any] | None = None
        if action == "edit":
            try:
                parsed = json.loads(fields.get("args", ""))
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                session.flashes.append(("error", "Edited arguments must be a JSON object."))
                return redirect("/")
            try:
                args_digest(parsed)
            except ValueError:  # NaN, infinities, integers beyond 2**53: typed in, not a bug
                session.flashes.append(
                    ("error", "Edited arguments must be canonical JSON (finite numbers only).")
                )
                return redirect("/")
            edited = parsed
        approver = session.approver
        try:
            await run_in_threadpool(
                lambda: books.current().answer(
                    request_id,
                    approver=approver,
                    approve=action != "deny",
                    channel="web",
                    assurance=WEB_ASSURANCE,
                    message=message,
                    edited_args=edited,
                )
            )
        except DeniedError as exc:
            session.flashes.append(("error", f"Not recorded: {exc.explanation}"))
        except AgentGuardError as exc:
            session.flashes.append(("error", f"Not recorded: {exc}"))
        except Exception:  # the page shows a message, never a traceback
            log.exception("agentguard web: answering %s failed", request_id)
            session.flashes.append(("error", "Not recorded: internal error (see the server log)."))
        else:
            verb = {"approve": "Approved", "deny": "Denied", "edit": "Approved (edited)"}[action]
            session.flashes.append(("ok", f"{verb} {request_id}."))
        return redirect("/")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/login", login_get, methods=["GET"]),
        Route("/login", login_post, methods=["POST"]),
        Route("/login/sso", sso_start, methods=["POST"]),
        Route(SSO_CALLBACK_PATH, sso_callback, methods=["GET"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/requests/{request_id}/{action:str}", answer, methods=["POST"]),
        *passkey_routes(
            books=books,
            rp_id=rp_id,
            enrolments=enrolments,
            policy_file=policy_file,
            posted=posted,
            secure=secure,
            page=lambda title, body: _page(title, body),
        ),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Gate, hosts=frozenset(hosts))])
    app.state.sessions = sessions
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    book: ApprovalBook,
    tokens: ApproverTokens,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
    allowed_hosts: Iterable[str] = (),
    policy_file: str | Path | None = None,
    rp_id: str = "localhost",
    enrolments: PasskeyEnrolments | None = None,
) -> None:
    """Run the approval page with Uvicorn until interrupted (loopback by default).

    The page answers to the loopback names, ``host`` (unless it is a wildcard
    such as ``0.0.0.0``) and ``allowed_hosts``; see :func:`create_app`.

    Raises:
        ConfigError: the ``web`` extra is not installed, or an allowed host is empty.
    """
    _require_web()
    import uvicorn

    names = list(allowed_hosts)
    if host.strip() not in _WILDCARD_HOSTS:
        names.append(host)
    elif not allowed_hosts:
        log.warning(
            "agentguard web: listening on every interface but answering only to loopback "
            "names; name the host browsers use with --allow-host"
        )
    if not _is_loopback(host):
        log.warning(
            "agentguard web: serving approvals on %s over plain HTTP; put TLS in front of it", host
        )
    uvicorn.run(
        create_app(
            book,
            tokens,
            allowed_hosts=names,
            policy_file=policy_file,
            rp_id=rp_id,
            enrolments=enrolments,
        ),
        host=host,
        port=port,
        log_level=log_level,
        ws="none",
        lifespan="off",
        server_header=False,
    )
