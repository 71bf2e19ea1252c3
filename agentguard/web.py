"""The approval web page (the ``web`` extra: Starlette + Uvicorn).

Approvers log in with a per-approver token (see :class:`ApproverTokens`), see
the pending requests (tool, redacted arguments, delegation path, rules,
deadline, requester and sponsor) and approve, deny or edit them. Answers are
recorded through :meth:`ApprovalBook.answer` with assurance ``authenticated``;
the guard attests them with its key and checks them before the tool runs.

Security: only a SHA-256 hash of each token is stored (file mode 0600); the
session cookie is a random id kept server-side (HttpOnly, SameSite=Strict);
every POST carries a per-session CSRF token; every value shown is HTML-escaped;
the server binds to loopback unless told otherwise.

Starlette and Uvicorn are imported only when an app is built, so
:class:`ApproverTokens` works without the extra (the CLI issues tokens with it).
"""

from __future__ import annotations

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard.approval import ApprovalBook, ApprovalRequest, request_html
from agentguard.clock import format_duration
from agentguard.errors import AgentGuardError, ConfigError, DeniedError
from agentguard.keys import validate_principal_id
from agentguard.tokens import args_digest

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["TOKENS_FILE", "ApproverTokens", "create_app", "serve"]

log = logging.getLogger("agentguard.web")

#: Name of the token file inside the agentguard home directory.
TOKENS_FILE = "approver-tokens.json"
TOKEN_PREFIX = "agt_"  # noqa: S105 - a public prefix, not a secret
SESSION_COOKIE = "agentguard_session"
SESSION_TTL = 8 * 3600
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
    """

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

    def _write(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"version": 1, "tokens": dict(entries)}, out, indent=2, sort_keys=True)
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
        with self._lock:
            entries = self._read()
            entries[approver] = {
                "sha256": _hash_token(token),
                "created_at": time.time() if now is None else now,
            }
            self._write(entries)
        return token

    def revoke(self, approver: str) -> bool:
        """Forget ``approver``'s token; returns whether there was one.

        Raises:
            ConfigError: the token file cannot be read.
        """
        with self._lock:
            entries = self._read()
            if entries.pop(approver, None) is None:
                return False
            self._write(entries)
        return True

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


class _Sessions:
    """Random session ids kept server-side (nothing to forge in the cookie)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def new(self, approver: str | None = None) -> tuple[str, _Session]:
        sid = secrets.token_urlsafe(32)
        session = _Session(
            csrf=secrets.token_urlsafe(32), expires=time.monotonic() + self.ttl, approver=approver
        )
        with self._lock:
            now = time.monotonic()
            for old in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[old]
            self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> _Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if session.expires <= time.monotonic():
                del self._sessions[sid]
                return None
            return session

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#1f2328}
h1{font-size:1.4rem}.req{border:1px solid #d0d7de;border-radius:6px;padding:1rem;margin:1rem 0}
.req h2{font-size:1.1rem;margin:0 0 .5rem}dl{display:grid;grid-template-columns:10rem 1fr;gap:.2rem}
dt{color:#59636e}dd{margin:0}pre{background:#f6f8fa;padding:.5rem;overflow:auto}
form{display:inline-block;margin:.3rem .5rem .3rem 0;vertical-align:top}
textarea{width:28rem;height:6rem;font-family:monospace}
.flash{padding:.6rem;border-radius:6px;margin:.5rem 0}.ok{background:#dafbe1}
.error{background:#ffebe9}.who{float:right}
"""

_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _request_html(request: ApprovalRequest, csrf: str, now: float) -> str:
    rid = _e(request.id)
    # The edit box holds the arguments as JSON (ASCII escapes for anything else).
    args = json.dumps(request.args_display, indent=2, sort_keys=True, default=str)
    view = request.view()
    left = request.deadline - now
    rows = [
        ("Requester", view.requester),
        ("Delegation path", " \u2192 ".join(view.path)),
        ("Required by", "; ".join(view.rules)),
        ("Minimum assurance", request.min_assurance),
        ("Deadline", f"{_when(request.deadline)} (in {format_duration(left)})"),
    ]
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    hidden = f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
    return f"""
<section class="req" id="req-{rid}" data-request-id="{rid}">
<h2><code class="tool">{_e(view.tool)}</code> <small>{rid}</small></h2>
<dl>{details}</dl>
{request_html(request)}
<form class="approve" method="post" action="/requests/{rid}/approve">{hidden}
<input name="message" placeholder="note (optional)" maxlength="500">
<button type="submit">Approve</button></form>
<form class="deny" method="post" action="/requests/{rid}/deny">{hidden}
<input name="message" placeholder="reason sent back to the caller" maxlength="500">
<button type="submit">Deny</button></form>
<details><summary>Edit arguments and approve</summary>
<form class="edit" method="post" action="/requests/{rid}/edit">{hidden}
<div><textarea name="args">{_e(args)}</textarea></div>
<div><small>The edited JSON object replaces the call's arguments entirely (redacted values
must be given again); the guard re-checks the call with them.</small></div>
<input name="message" placeholder="note (optional)" maxlength="500">
<button type="submit">Approve edited call</button></form></details>
</section>"""


def _page(title: str, body: str, flashes: list[tuple[str, str]] | None = None) -> str:
    notes = "".join(
        f'<div class="flash {_e(kind)}" role="status">{_e(text)}</div>'
        for kind, text in flashes or []
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{notes}{body}</body></html>"
    )


def create_app(
    book: ApprovalBook, tokens: ApproverTokens, *, session_ttl: float = SESSION_TTL
) -> Starlette:
    """The approval web app over ``book``, authenticating approvers with ``tokens``.

    Routes: ``GET /`` (pending requests), ``GET|POST /login``, ``POST /logout``,
    ``POST /requests/{id}/approve|deny|edit``. Every POST needs the session's
    CSRF token (403 otherwise).

    Raises:
        ConfigError: the ``web`` extra is not installed.
    """
    _require_web()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, RedirectResponse
    from starlette.routing import Route

    sessions = _Sessions(session_ttl)

    def secure(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def set_cookie(response: Response, sid: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            sid,
            max_age=int(session_ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=False,  # loopback http; put TLS in front for anything else
        )

    def html_page(
        title: str, body: str, session: _Session | None, status_code: int = 200
    ) -> Response:
        flashes = []
        if session is not None:
            flashes, session.flashes = session.flashes, []
        return secure(HTMLResponse(_page(title, body, flashes), status_code=status_code))

    def forbidden(text: str) -> Response:
        return secure(HTMLResponse(_page("Forbidden", f"<p>{_e(text)}</p>"), status_code=403))

    def redirect(to: str) -> Response:
        return secure(RedirectResponse(to, status_code=303))

    async def live(session: _Session | None) -> _Session | None:
        """``session`` unless its approver's token was revoked or reissued since login."""
        if session is None or session.approver is None:
            return session
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

    def login_form(csrf: str) -> str:
        return (
            "<h1>agentguard approvals</h1><form method='post' action='/login' class='login'>"
            f'<input type="hidden" name="csrf" value="{_e(csrf)}">'
            '<label>Approver token <input type="password" name="token" autocomplete="off" '
            'required autofocus></label> <button type="submit">Log in</button></form>'
        )

    async def login_get(request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        session = sessions.get(sid)
        if session is not None and session.approver is not None:
            return redirect("/")
        if sid is None or session is None:
            sid, session = sessions.new()
        response = html_page("Log in", login_form(session.csrf), session)
        set_cookie(response, sid)
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
        pending = await run_in_threadpool(book.pending)
        now = book.clock.now()
        cards = "".join(_request_html(r, session.csrf, now) for r in pending)
        body = (
            f'<form class="who" method="post" action="/logout">'
            f'<input type="hidden" name="csrf" value="{_e(session.csrf)}">'
            f"Signed in as <b id='approver'>{_e(session.approver)}</b> "
            "<button type='submit'>Log out</button></form>"
            f"<h1>Pending approvals ({len(pending)})</h1>"
            + (cards or "<p id='none'>Nothing is waiting for an answer.</p>")
        )
        return html_page("agentguard approvals", body, session)

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
                lambda: book.answer(
                    request_id,
                    approver=approver,
                    approve=action != "deny",
                    channel="web",
                    assurance="authenticated",
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
        Route("/logout", logout, methods=["POST"]),
        Route("/requests/{request_id}/{action:str}", answer, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
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
) -> None:
    """Run the approval page with Uvicorn until interrupted (loopback by default).

    Raises:
        ConfigError: the ``web`` extra is not installed.
    """
    _require_web()
    import uvicorn

    if not _is_loopback(host):
        log.warning(
            "agentguard web: serving approvals on %s over plain HTTP; put TLS in front of it", host
        )
    uvicorn.run(
        create_app(book, tokens),
        host=host,
        port=port,
        log_level=log_level,
        ws="none",
        lifespan="off",
        server_header=False,
    )
