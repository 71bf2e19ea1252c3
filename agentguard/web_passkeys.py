"""The approval page's passkey routes: enrolment and passkey-signed answers.

Enrolment: ``agentguard approvals enroll ID`` prints a one-time link
``/enroll#<token>`` (in the fragment, which browsers never send: the token
reaches no request line or access log; the page's script posts it); the page
there registers a WebAuthn credential (user verification required, EdDSA or
ES256) for the relying-party id the page is served under, and writes its id
and COSE public key into that approver's entry in the policy file.
The link is used once and expires.

Answering: for an approver with an enrolled passkey, the page's Approve, Deny
and Edit forms run a WebAuthn assertion whose challenge is the digest of the
whole answer statement (:func:`agentguard.passkeys.statement_challenge`). The
statement is built and kept server-side in the session; the browser only
signs it. The answer is recorded through
:meth:`~agentguard.approval.ApprovalBook.record_passkey_answer`, which checks it
as the guard will (assurance ``signed``).

Every POST here passes the page's ``Host`` and same-origin gate; answer
routes also need the session's CSRF token, enrolment routes the link's token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentguard.errors import AgentGuardError, ConfigError, DeniedError
from agentguard.passkeys import (
    PasskeyAssertion,
    PasskeyEnrolments,
    assertion_options,
    check_rp_id,
    origin_fits,
    passkey_key_id,
    registration_options,
    statement_challenge,
    verify_registration,
    write_passkey,
)
from agentguard.tokens import args_digest

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from agentguard.approval import ApprovalBook

__all__ = ["PASSKEY_SCRIPT", "PASSKEY_SCRIPT_HASH", "passkey_routes"]

#: Drives the WebAuthn ceremonies: forms marked ``data-passkey`` (answers) and the
#: enrolment button. Data comes only from the page's own attributes and JSON answers.
PASSKEY_SCRIPT = (
    "(function(){"
    "function say(el,kind,text){if(!el)return;"
    "el.className='passkey-status flash '+kind;el.textContent=text;}"
    "async function post(url,data){var r=await fetch(url,{method:'POST',"
    "credentials:'same-origin',headers:{'Content-Type':'application/x-www-form-urlencoded'},"
    "body:new URLSearchParams(data)});var j=await r.json();"
    "if(!r.ok){throw new Error(j.error||('HTTP '+r.status));}return j;}"
    "document.querySelectorAll('form[data-passkey]').forEach(function(f){"
    "f.addEventListener('submit',async function(ev){ev.preventDefault();"
    "var out=f.querySelector('.passkey-status');var fields=Object.fromEntries(new FormData(f));"
    "fields.action=f.dataset.passkey;try{say(out,'ok','Waiting for your passkey\\u2026');"
    "var begun=await post(f.dataset.begin,fields);"
    "var cred=await navigator.credentials.get({publicKey:"
    "PublicKeyCredential.parseRequestOptionsFromJSON(begun.options)});"
    "await post(f.dataset.finish,{csrf:fields.csrf,statement:begun.statement,"
    "credential:JSON.stringify(cred.toJSON())});location.assign('/');}"
    "catch(e){say(out,'error','Not recorded: '+e.message);}});});"
    "var b=document.getElementById('enrol');if(b){"
    "var out=document.getElementById('enrol-status');var token=location.hash.slice(1);"
    "history.replaceState(null,'',location.pathname);"
    "post('/enroll/status',{token:token}).then(function(j){"
    "document.getElementById('enrol-approver').textContent=j.approver;b.disabled=false;})"
    ".catch(function(e){say(out,'error','Not enrolled: '+e.message);});"
    "b.addEventListener('click',async function(){b.disabled=true;"
    "try{say(out,'ok','Waiting for your authenticator\\u2026');"
    "var begun=await post('/enroll/begin',{token:token});"
    "var cred=await navigator.credentials.create({publicKey:"
    "PublicKeyCredential.parseCreationOptionsFromJSON(begun.options)});"
    "var done=await post('/enroll/finish',{token:token,"
    "credential:JSON.stringify(cred.toJSON())});"
    "say(out,'ok',done.message);}catch(e){b.disabled=false;say(out,'error',"
    "'Not enrolled: '+e.message);}});}"
    "})();"
)
PASSKEY_SCRIPT_HASH = base64.b64encode(hashlib.sha256(PASSKEY_SCRIPT.encode()).digest()).decode()

#: How long a registration challenge or an answer statement waits for its ceremony.
CEREMONY_TTL = 300.0
#: Answer statements one session may have waiting for a signature at once.
_MAX_WAITING = 16


@dataclass
class _Registration:
    challenge: bytes
    origin: str
    approver: str
    expires: float


class _Ceremonies:
    """Registration challenges waiting for their answer, by enrolment token (in memory)."""

    def __init__(self) -> None:
        self._waiting: dict[str, _Registration] = {}
        self._lock = threading.Lock()

    def put(self, token: str, registration: _Registration) -> None:
        with self._lock:
            now = time.monotonic()
            for key in [k for k, r in self._waiting.items() if r.expires <= now]:
                del self._waiting[key]
            self._waiting[hashlib.sha256(token.encode()).hexdigest()] = registration

    def take(self, token: str) -> _Registration | None:
        with self._lock:
            found = self._waiting.pop(hashlib.sha256(token.encode()).hexdigest(), None)
        return found if found is not None and found.expires > time.monotonic() else None


def _origin(request: Request) -> str | None:
    """The page's origin as the browser named it (the gate checked it is this server)."""
    origin = request.headers.get("origin")
    if not origin:
        return None
    parts = urllib.parse.urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def passkey_routes(
    *,
    books: Any,
    rp_id: str,
    enrolments: PasskeyEnrolments | None,
    policy_file: str | Path | None,
    posted: Callable[[Request], Awaitable[tuple[Any, dict[str, str]]]],
    secure: Callable[[Response], Response],
    page: Callable[[str, str], str],
) -> list[Route]:
    """The passkey routes of the approval page (see the module docstring).

    ``books`` gives the current :class:`~agentguard.approval.ApprovalBook`
    (``books.current()``); ``posted`` reads a POST's session and fields once its
    CSRF token checks out; ``secure`` adds the page's security headers; ``page``
    renders a full page from a title and an HTML body.

    Raises:
        ConfigError: ``rp_id`` is an IP address or not a host name.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    rp_id = check_rp_id(rp_id)
    ceremonies = _Ceremonies()

    def reply(data: dict[str, Any], status: int = 200) -> Response:
        return secure(JSONResponse(data, status_code=status))

    def refuse(text: str, status: int = 400) -> Response:
        return reply({"error": text}, status)

    # -- answers ------------------------------------------------------------------------

    async def begin(request: Request) -> Response:
        session, fields = await posted(request)
        if session is None or session.approver is None:
            return refuse("missing or wrong CSRF token, or not logged in", 403)
        request_id = str(request.path_params["request_id"])
        action = fields.get("action", "")
        if action not in ("approve", "deny", "edit"):
            return refuse("no such answer")
        message = fields.get("message", "").strip()[:500] or None
        edited: dict[str, Any] | None = None
        if action == "edit":
            try:
                parsed = json.loads(fields.get("args", ""))
                args_digest(parsed)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                return refuse("edited arguments must be a canonical JSON object")
            edited = parsed
        approver = session.approver

        def statement() -> tuple[dict[str, Any], dict[str, Any]]:
            book: ApprovalBook = books.current()
            made = book.passkey_statement(
                request_id,
                approver=approver,
                approve=action != "deny",
                message=message,
                edited_args=edited,
            )
            passkey = book.passkey_credential(approver)
            assert passkey is not None  # noqa: S101 - passkey_statement refused otherwise
            if passkey.rp_id != rp_id:
                raise DeniedError(
                    f"your passkey was enrolled for {passkey.rp_id}, this page serves {rp_id}"
                )
            options = assertion_options(
                rp_id=rp_id,
                credential_id=passkey.credential_id,
                challenge=statement_challenge(made),
            )
            return made, options

        try:
            made, options = await run_in_threadpool(statement)
        except AgentGuardError as exc:  # refused, no such request, or the policy does not load
            return refuse(exc.explanation if isinstance(exc, DeniedError) else str(exc))
        waiting = session.passkey_statements
        while len(waiting) >= _MAX_WAITING:
            waiting.pop(next(iter(waiting)))
        waiting[made["jti"]] = (made, edited, time.monotonic() + CEREMONY_TTL)
        return reply({"statement": made["jti"], "options": options})

    async def finish(request: Request) -> Response:
        session, fields = await posted(request)
        if session is None or session.approver is None:
            return refuse("missing or wrong CSRF token, or not logged in", 403)
        request_id = str(request.path_params["request_id"])
        waiting = session.passkey_statements.pop(fields.get("statement", ""), None)
        if waiting is None or waiting[2] <= time.monotonic():
            return refuse("unknown, used or expired answer; answer again")
        made, edited, _ = waiting
        if made["req"] != request_id or made["approver"] != session.approver:
            return refuse("that answer belongs to another request")
        try:
            assertion = PasskeyAssertion.from_browser(json.loads(fields.get("credential", "")))
        except (ValueError, DeniedError):
            return refuse("not a WebAuthn assertion")
        try:
            await run_in_threadpool(
                lambda: books.current().record_passkey_answer(made, assertion, edited_args=edited)
            )
        except DeniedError as exc:
            session.flashes.append(("error", f"Not recorded: {exc.explanation}"))
            return refuse(exc.explanation)
        except AgentGuardError as exc:
            return refuse(str(exc))
        verb = "Approved" if made["decision"] == "approve" else "Denied"
        edited_note = " (edited)" if edited is not None else ""
        session.flashes.append(("ok", f"{verb}{edited_note} {request_id} with your passkey."))
        return reply({"ok": True})

    # -- enrolment ------------------------------------------------------------------------

    def enrolment_approver(token: str) -> str:
        if enrolments is None or policy_file is None:
            raise ConfigError("this page cannot enrol passkeys (no state directory or policy file)")
        return enrolments.approver(token)

    async def token_of(request: Request) -> tuple[str, str | None]:
        """The enrolment token a POST carries (never in its URL), and its credential field."""
        async with request.form(max_files=0, max_fields=4, max_part_size=32_768) as form:
            token, credential = form.get("token"), form.get("credential")
        return (
            token if isinstance(token, str) else "",
            credential if isinstance(credential, str) else None,
        )

    async def enrol_page(request: Request) -> Response:
        # The token is in the link's fragment: browsers never send it, so it reaches
        # no request line, proxy or access log; the script posts it.
        body = (
            "<h1>Enrol a passkey</h1>"
            "<p>For <b id='enrol-approver'>(checking the link\u2026)</b>, relying party "
            f"<code>{_e(rp_id)}</code>. Your authenticator asks you to verify yourself "
            "(PIN, fingerprint or face); the page then writes the passkey's public key into "
            "your entry in the policy file. Your answers on this page are then signed by "
            "your passkey and count as <code>signed</code>.</p>"
            '<button id="enrol" type="button" class="primary" disabled>Create passkey</button>'
            '<p id="enrol-status" role="status"></p>'
            "<p><small>This link works once and expires in minutes.</small></p>"
            f"<script>{PASSKEY_SCRIPT}</script>"
        )
        return secure(HTMLResponse(page("Passkey enrolment", body)))

    async def enrol_status(request: Request) -> Response:
        token, _ = await token_of(request)
        try:
            approver = await run_in_threadpool(enrolment_approver, token)
        except DeniedError as exc:
            return refuse(f"{exc.explanation}; ask for a new link", 403)
        except ConfigError as exc:
            return refuse(str(exc), 503)
        return reply({"approver": approver})

    async def enrol_begin(request: Request) -> Response:
        token, _ = await token_of(request)
        try:
            approver = await run_in_threadpool(enrolment_approver, token)
        except DeniedError as exc:
            return refuse(exc.explanation, 403)
        except ConfigError as exc:
            return refuse(str(exc), 503)
        origin = _origin(request)
        if origin is None or not origin_fits(origin, rp_id):
            return refuse(
                f"a passkey for {rp_id} cannot be made from {origin or 'this page'}: open the "
                f"link on https under {rp_id}, or as http://localhost:PORT for rp id localhost"
            )
        current = books.current().passkey_credential(approver)
        challenge = secrets.token_bytes(32)
        options = registration_options(
            rp_id=rp_id,
            approver=approver,
            challenge=challenge,
            exclude=[current.credential_id] if current is not None else None,
        )
        ceremonies.put(
            token, _Registration(challenge, origin, approver, time.monotonic() + CEREMONY_TTL)
        )
        return reply({"options": options})

    async def enrol_finish(request: Request) -> Response:
        token, sent = await token_of(request)
        waiting = ceremonies.take(token)
        if waiting is None or sent is None:
            return refuse("no enrolment is waiting for this answer; start again", 403)
        try:
            credential = json.loads(sent)
        except ValueError:
            return refuse("not a WebAuthn credential")

        def enrol() -> tuple[str, str]:
            assert enrolments is not None  # noqa: S101 - enrolment_approver checked
            assert policy_file is not None  # noqa: S101 - enrolment_approver checked
            credential_id, public_key = verify_registration(
                credential, challenge=waiting.challenge, rp_id=rp_id, origin=waiting.origin
            )
            approver = enrolments.consume(token)  # once: a second use is refused here
            write_passkey(
                policy_file,
                approver,
                {
                    "credential_id": credential_id,
                    "public_key": public_key,
                    "rp_id": rp_id,
                    "origin": waiting.origin,
                },
            )
            return approver, passkey_key_id(public_key)

        try:
            approver, kid = await run_in_threadpool(enrol)
        except DeniedError as exc:
            return refuse(exc.explanation, 403)
        except ConfigError as exc:
            return refuse(str(exc), 500)
        return reply(
            {
                "ok": True,
                "message": f"Passkey enrolled for {approver} (key id {kid}: if this "
                f"authenticator is lost, 'agentguard revoke --key {kid}' stops its answers); "
                "you can close this page.",
            }
        )

    return [
        Route("/requests/{request_id}/passkey/begin", begin, methods=["POST"]),
        Route("/requests/{request_id}/passkey/finish", finish, methods=["POST"]),
        Route("/enroll", enrol_page, methods=["GET"]),
        Route("/enroll/status", enrol_status, methods=["POST"]),
        Route("/enroll/begin", enrol_begin, methods=["POST"]),
        Route("/enroll/finish", enrol_finish, methods=["POST"]),
    ]


def _e(value: object) -> str:
    import html

    return html.escape(str(value), quote=True)
