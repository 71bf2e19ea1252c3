"""Step-up approval: requests, signed receipts and the channels that collect them.

A request is persisted as *pending* with the exact call digest (tool, argument
digest, leaf link id), a redacted view of the arguments, the delegation path,
the rules that asked for approval and a deadline. The answer is a receipt, a
JWS of type ``agentguard-approval+jwt``:

* signed by the approver's own key (the CLI queue; assurance ``signed``), or
* a passkey (WebAuthn) assertion by the approver's own authenticator over the
  digest of the whole answer (the approval page; assurance ``signed``; a
  different format, see ``docs/receipts.md`` and :mod:`agentguard.passkeys`), or
* signed by the guard's key on behalf of a channel that authenticated the
  human in its own way (terminal: ``local``; web page with a per-approver
  token: ``authenticated``; an answer typed into the agent's own client:
  ``agent``).

Before a tool runs the guard verifies the receipt (:meth:`ApprovalBook.verify_receipt`)
and burns it atomically. A resume value from a framework is never trusted by
itself: only the stored, signed receipt counts.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import secrets
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agentguard import _jws
from agentguard.addresses import pattern_matches
from agentguard.audit import REDACTED, sets_redacted_field
from agentguard.clock import Clock, format_duration
from agentguard.decision import Reason
from agentguard.errors import (
    AgentGuardError,
    ConfigError,
    DeniedError,
    IdentityError,
    TokenFormatError,
)
from agentguard.keys import Identity, Keyring, Principal
from agentguard.passkeys import (
    PasskeyAssertion,
    PasskeyReceipt,
    answer_statement,
    is_passkey_receipt,
    passkey_key_id,
    verify_passkey_receipt,
)
from agentguard.policy import ASSURANCE_LEVELS, Passkey, Policy, assurance_at_least
from agentguard.store.base import ApprovalRow, Store
from agentguard.tokens import TYP_APPROVAL, args_digest, new_jti

if TYPE_CHECKING:
    from agentguard.tokens import Grant
    from agentguard.verify import VerifiedChain

__all__ = [
    "FOLD_NAME",
    "FOLD_VALUE",
    "ApprovalBook",
    "ApprovalRequest",
    "CallbackChannel",
    "Channel",
    "LinkAssertion",
    "NoChannel",
    "QueueChannel",
    "Receipt",
    "RequestView",
    "Shown",
    "ShownArgument",
    "ShownClaim",
    "TerminalChannel",
    "answer_routes",
    "approval_arguments",
    "call_digest",
    "display_size",
    "excluded_approvers",
    "link_assertions",
    "name_list",
    "no_approver_text",
    "peek_receipt",
    "pending_note",
    "receipt_check",
    "receipt_lifetime",
    "request_html",
    "verify_receipt_signature",
    "visible_text",
]

RECEIPT_TTL = 600


def receipt_lifetime(policy: Policy) -> int:
    """How long a receipt lives: ten minutes, or the reuse window when that is longer."""
    return int(max(RECEIPT_TTL, policy.approval.reusable_for))


def call_digest(tool: str, args_hash: str, leaf_link_id: str) -> str:
    """Digest an approval binds: the tool, the canonical arguments and the leaf link."""
    return _jws.canonical_digest({"tool": tool, "args": args_hash, "link": leaf_link_id})


def excluded_approvers(grants: Sequence[Grant], demanding_links: Iterable[int]) -> frozenset[str]:
    """Who may not approve what the given links demanded (separation of duties).

    For a demand made by a rule of link *k*, the subjects and ``on_behalf_of``
    sponsors of links *k* to the leaf are excluded, except the issuer of link
    *k*: a delegator may approve what it demanded of its own delegate. A policy
    step-up counts as demanded by link 0, so everyone in the chain but the
    root's issuer is excluded. One receipt answers every demand, so the
    exclusions of all demanding links add up.
    """
    excluded: set[str] = set()
    for k in set(demanding_links):
        below = grants[k:]
        people = {g.subject for g in below} | {g.on_behalf_of for g in below if g.on_behalf_of}
        excluded |= people - {grants[k].issuer}
    return frozenset(excluded)


def receipt_assurance(row: ApprovalRow) -> str | None:
    """The assurance a stored answer claims, *unverified*: only for deciding whether to ask
    again; :meth:`ApprovalBook.verify_receipt` is what admits a receipt."""
    if row.receipt is None:
        return None
    claims = _peek_receipt(row.receipt)
    if claims.get("iss") is not None and claims.get("iss") == claims.get("approver"):
        return "signed"
    level = claims.get("assurance")
    return level if isinstance(level, str) else None


# -- what the approver sees ------------------------------------------------------------------
#
# Every channel (CLI, terminal, MCP form, web page, notebook card, webhook) renders
# the same RequestView, so they show the same facts. Text is made safe to show
# before it is shown: control, format (bidi, zero-width) and separator characters
# become visible escapes, so an argument name or a purpose cannot forge a line or
# reorder what the approver reads. Nothing is dropped: a long name or value is
# folded with the count of what it hides, and the full view shows it all.

#: Characters of a value (or purpose) a folded view shows before "… N more characters".
FOLD_VALUE = 160
#: Characters of an argument name a folded view shows.
FOLD_NAME = 64
#: Nesting deeper than this cannot be shown (the guard refuses such a call).
_MAX_DEPTH = 64

# Names made of these characters are shown bare; any other name is quoted as JSON.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/-]*\Z")
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_AGENT_KINDS = ("agent", "service")


def _unsafe(char: str) -> bool:
    category = unicodedata.category(char)
    return category in _UNSAFE or (category == "Zs" and char != " ")


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _text_pieces(text: str) -> list[str]:
    """``text`` as display pieces, each unsafe character one escape piece."""
    return [_escape(c) if _unsafe(c) else c for c in text]


def _json_pieces(value: Any) -> list[str]:
    """``value`` as JSON in display pieces; an escape is one piece, so folding never splits it."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    pieces: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":  # an escape json.dumps wrote: \n, \", \\ or \u001b
            width = 6 if text[i + 1] == "u" else 2
            pieces.append(text[i : i + width])
            i += width
            continue
        pieces.append(_escape(char) if _unsafe(char) else char)
        i += 1
    return pieces


def _name_pieces(name: str) -> list[str]:
    return list(name) if _PLAIN.match(name) else _json_pieces(name)


def visible_text(text: str) -> str:
    """``text`` with control, format (bidi, zero-width) and separator characters escaped."""
    return "".join(_text_pieces(text))


@dataclass(frozen=True)
class Shown:
    """A text as an approver sees it: escaped, and maybe folded (``more`` characters hidden)."""

    text: str
    more: int = 0

    @property
    def marker(self) -> str:
        """`` … N more characters`` when folded, else empty."""
        if not self.more:
            return ""
        return f" … {self.more} more character{'s' if self.more != 1 else ''}"

    def __str__(self) -> str:
        return self.text + self.marker


def _fold(pieces: Sequence[str], width: int | None) -> Shown:
    total = sum(len(p) for p in pieces)
    if width is None or total <= width:
        return Shown("".join(pieces))
    kept: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) > width:
            break
        kept.append(piece)
        size += len(piece)
    return Shown("".join(kept), total - size)


@dataclass(frozen=True)
class ShownArgument:
    """One argument as shown: its name and its value (JSON)."""

    name: Shown
    value: Shown


@dataclass(frozen=True)
class LinkAssertion:
    """What one link of the delegation states, and who stated it: the link's issuer.

    A purpose or sponsor is a claim of whoever signed the link; an agent can
    write anything into the links it issues to its sub-agents.
    """

    issuer: str
    subject: str
    purpose: str | None = None
    on_behalf_of: str | None = None
    #: An agent or service is the subject of an earlier link: whoever signed this
    #: link may be a principal that agent made up (it can mint any ``user:`` key).
    below_agent: bool = False

    @property
    def by_agent(self) -> bool:
        """Whether an agent or service asserted it, or may have: it issued the link, or
        the link lies below one an agent or service holds."""
        return self.below_agent or self.issuer.split(":", 1)[0] in _AGENT_KINDS

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "purpose": self.purpose,
            "on_behalf_of": self.on_behalf_of,
            "below_agent": self.below_agent,
        }

    @classmethod
    def from_json(cls, data: Any) -> LinkAssertion | None:
        """Read the stored form back (``None`` when it is not one)."""
        if not isinstance(data, dict):
            return None
        issuer, subject = data.get("issuer"), data.get("subject")
        purpose, sponsor = data.get("purpose"), data.get("on_behalf_of")
        if not isinstance(issuer, str) or not isinstance(subject, str):
            return None
        return cls(
            issuer=issuer,
            subject=subject,
            purpose=purpose if isinstance(purpose, str) else None,
            on_behalf_of=sponsor if isinstance(sponsor, str) else None,
            below_agent=data.get("below_agent") is True,
        )


def link_assertions(grants: Iterable[Grant]) -> tuple[LinkAssertion, ...]:
    """The purpose and sponsor each link states, root first, with the link's issuer."""
    out: list[LinkAssertion] = []
    below_agent = False
    for g in grants:
        out.append(
            LinkAssertion(
                issuer=g.issuer,
                subject=g.subject,
                purpose=g.purpose,
                on_behalf_of=g.on_behalf_of,
                below_agent=below_agent,
            )
        )
        below_agent = below_agent or g.subject.split(":", 1)[0] in _AGENT_KINDS
    return tuple(out)


def accountable_claims(links: Sequence[LinkAssertion]) -> tuple[str | None, str | None]:
    """The sponsor and purpose stated by the nearest link no agent or service issued.

    These are the request's summary fields: what an agent wrote into its own
    sub-agents' links never stands there unmarked.
    """
    sponsor = next(
        (a.on_behalf_of for a in reversed(links) if not a.by_agent and a.on_behalf_of), None
    )
    purpose = next((a.purpose for a in reversed(links) if not a.by_agent and a.purpose), None)
    return sponsor, purpose


@dataclass(frozen=True)
class ShownClaim:
    """One purpose or sponsor one link states, with the principal who asserted it.

    ``link`` and ``asserted_by`` are ``None`` for a request filed before the
    per-link assertions were recorded.
    """

    field: str
    value: Shown
    link: int | None
    asserted_by: str | None
    by_agent: bool

    def to_json(self) -> dict[str, Any]:
        """The transported form."""
        return {
            "field": self.field,
            "value": self.value.text,
            "more": self.value.more,
            "link": self.link,
            "asserted_by": self.asserted_by,
            "by_agent": self.by_agent,
        }


def _asserter(claim: ShownClaim) -> str:
    if claim.asserted_by is None:
        return "(not recorded)"
    if not claim.by_agent:
        return claim.asserted_by
    if claim.asserted_by.split(":", 1)[0] in _AGENT_KINDS:
        return claim.asserted_by + " (an agent)"
    return claim.asserted_by + " (below an agent in the chain: possibly the agent's own key)"


@dataclass(frozen=True)
class RequestView:
    """A request as every channel shows it: escaped, folded unless ``full``."""

    tool: str
    requester: str
    path: tuple[str, ...]
    arguments: tuple[ShownArgument, ...]
    claims: tuple[ShownClaim, ...]
    rules: tuple[str, ...]
    full: bool

    @property
    def folded(self) -> bool:
        """Whether anything is folded (the full view then shows more)."""
        shown = [t for a in self.arguments for t in (a.name, a.value)]
        return any(t.more for t in [*shown, *(c.value for c in self.claims)])

    def argument_lines(self) -> list[str]:
        """``name = value``, one line per argument."""
        return [f"{a.name} = {a.value}" for a in self.arguments]

    def claim_lines(self) -> list[str]:
        """Each stated purpose and sponsor once, with every principal who asserted it."""
        groups: dict[tuple[str, str], list[ShownClaim]] = {}
        for claim in self.claims:
            groups.setdefault((claim.field, str(claim.value)), []).append(claim)
        lines = []
        for (field_name, value), claims in groups.items():
            label = "on behalf of" if field_name == "on_behalf_of" else "purpose"
            asserters = ", ".join(dict.fromkeys(_asserter(c) for c in claims))
            lines.append(f"{label} {value} — asserted by {asserters}")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The transported form (webhook payloads)."""
        return {
            "full": self.full,
            "arguments": [
                {
                    "name": str(a.name) if self.full else a.name.text,
                    "name_more": a.name.more,
                    "value": a.value.text,
                    "more": a.value.more,
                }
                for a in self.arguments
            ],
            "assertions": [c.to_json() for c in self.claims],
            "rules": list(self.rules),
        }


def approval_arguments(args: Mapping[str, Any], redact: Iterable[str]) -> dict[str, Any]:
    """The arguments as an approver sees them: every field, redacted keys masked, nothing cut.

    Unlike the audit log's summary, nothing is truncated or dropped here; the
    guard bounds the whole with ``approval.display_limit`` instead.

    Raises:
        ValueError: the arguments nest too deeply to be shown.
    """
    names = {f.lower() for f in redact}

    def walk(value: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise ValueError("arguments nest too deeply to be shown")
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED if str(k).lower() in names else walk(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [walk(v, depth + 1) for v in value]
        return value

    return {str(k): REDACTED if str(k).lower() in names else walk(v, 1) for k, v in args.items()}


def display_size(args: Mapping[str, Any], *, stop_after: int | None = None) -> int:
    """Characters the full view of ``args`` takes (names and values, as escaped).

    With ``stop_after`` the count stops early once it exceeds that bound, so an
    oversized call costs little to refuse.
    """
    size = 0
    for name, value in args.items():
        size += len(json.dumps(value, ensure_ascii=False, default=str)) + len(name)
        if stop_after is not None and size > stop_after:
            return size  # escaping only lengthens: a lower bound already too large
    size = sum(
        sum(len(p) for p in _name_pieces(n)) + sum(len(p) for p in _json_pieces(v))
        for n, v in args.items()
    )
    return size


def _claims(request: ApprovalRequest, full: bool) -> tuple[ShownClaim, ...]:
    width = None if full else FOLD_VALUE
    if request.links is None:  # filed before per-link assertions were recorded
        legacy = [("on_behalf_of", request.on_behalf_of), ("purpose", request.purpose)]
        return tuple(
            ShownClaim(
                field_name,
                _fold(_name_pieces(v) if field_name == "on_behalf_of" else _json_pieces(v), width),
                None,
                None,
                False,
            )
            for field_name, v in legacy
            if v
        )
    claims = []
    for index, link in enumerate(request.links):
        for field_name, value in (("on_behalf_of", link.on_behalf_of), ("purpose", link.purpose)):
            if value:
                pieces = (
                    _name_pieces(value) if field_name == "on_behalf_of" else _json_pieces(value)
                )
                claims.append(
                    ShownClaim(field_name, _fold(pieces, width), index, link.issuer, link.by_agent)
                )
    return tuple(claims)


def request_html(request: ApprovalRequest) -> str:
    """The arguments and per-link claims of ``request`` as an HTML fragment (every value escaped).

    Folded values come with their full text in a ``<details>`` element (no script needed).
    """
    folded, full = request.view(), request.view(full=True)
    rows = []
    for short, whole in zip(folded.arguments, full.arguments, strict=True):
        name = f"<code>{_h(short.name.text)}</code>{_h(short.name.marker)}"
        cell = f"<code>{_h(short.value.text)}</code>{_h(short.value.marker)}"
        if short.value.more or short.name.more:
            cell += (
                "<details><summary>show all</summary>"
                '<pre style="white-space:pre-wrap;word-break:break-all">'
                f"{_h(whole.name.text)} = {_h(whole.value.text)}</pre></details>"
            )
        rows.append(f'<tr><th scope="row">{name}</th><td>{cell}</td></tr>')
    count = len(folded.arguments)
    arguments = (
        f'<div class="agentguard-args"><div>Arguments ({count}, redacted where the policy says):'
        f'</div><table style="text-align:left">{"".join(rows)}</table></div>'
        if rows
        else '<div class="agentguard-args">No arguments.</div>'
    )
    claim_lines = folded.claim_lines()
    claims = (
        '<ul class="agentguard-claims">'
        + "".join(f"<li>{_h(c)}</li>" for c in claim_lines)
        + "</ul>"
        if claim_lines
        else '<p class="agentguard-claims">No link states a purpose or sponsor.</p>'
    )
    return arguments + claims


def _h(text: str) -> str:
    return html.escape(text, quote=True)


@dataclass(frozen=True)
class ApprovalRequest:
    """What a human reviewer is asked to approve, in words they can judge."""

    id: str
    decision_id: str
    call_digest: str
    tool: str
    args_display: dict[str, Any]
    path: tuple[str, ...]
    requester: str
    on_behalf_of: str | None
    purpose: str | None
    rules: tuple[str, ...]
    min_assurance: str
    created_at: float
    deadline: float
    status: str = "pending"
    reusable_until: float | None = None
    message: str | None = None
    approver: str | None = None
    #: Trace and span (hex) of the call that filed the request, for a span link.
    trace_id: str | None = None
    span_id: str | None = None
    #: The purpose and sponsor each link states, with its issuer; ``None`` for
    #: a request filed before they were recorded. ``on_behalf_of`` and
    #: ``purpose`` above are only what the nearest link no agent issued states.
    links: tuple[LinkAssertion, ...] | None = None
    #: Principals who may not answer (separation of duties, see
    #: :func:`excluded_approvers`), fixed when the request was filed.
    excluded: tuple[str, ...] = ()
    #: The budgets the call is charged to when it runs, as
    #: :func:`agentguard.budgets.request_budgets` records them (no amounts).
    budgets: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_row(cls, row: ApprovalRow) -> ApprovalRequest:
        """Rebuild a request from its stored row (status from the row)."""
        data = row.request
        receipt = _peek_receipt(row.receipt) if row.receipt else {}
        stored = data.get("links")
        links = (
            tuple(a for a in map(LinkAssertion.from_json, stored) if a is not None)
            if isinstance(stored, list)
            else None
        )
        return cls(
            id=row.id,
            decision_id=str(data.get("decision_id", "")),
            call_digest=row.call_digest,
            tool=str(data.get("tool", "")),
            args_display=dict(data.get("args_display", {})),
            path=tuple(data.get("path", ())),
            requester=str(data.get("requester", "")),
            on_behalf_of=data.get("on_behalf_of"),
            purpose=data.get("purpose"),
            rules=tuple(data.get("rules", ())),
            min_assurance=str(data.get("min_assurance", "signed")),
            created_at=row.created_at,
            deadline=row.deadline,
            status=row.status,
            reusable_until=row.reusable_until,
            message=receipt.get("msg"),
            approver=receipt.get("approver"),
            trace_id=data.get("trace_id"),
            span_id=data.get("span_id"),
            links=links,
            excluded=tuple(str(p) for p in data.get("excluded_approvers", ())),
            budgets=tuple(data["budgets"]) if isinstance(data.get("budgets"), list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored/transported form (no secrets: arguments are redacted)."""
        data: dict[str, Any] = {
            "decision_id": self.decision_id,
            "tool": self.tool,
            "args_display": self.args_display,
            "path": list(self.path),
            "requester": self.requester,
            "on_behalf_of": self.on_behalf_of,
            "purpose": self.purpose,
            "rules": list(self.rules),
            "min_assurance": self.min_assurance,
        }
        if self.excluded:
            data["excluded_approvers"] = list(self.excluded)
        if self.trace_id and self.span_id:
            data["trace_id"], data["span_id"] = self.trace_id, self.span_id
        if self.links is not None:
            data["links"] = [link.to_json() for link in self.links]
        if self.budgets:
            data["budgets"] = list(self.budgets)
        return data

    def state(self, now: float) -> str:
        """``pending``, ``expired``, ``approved``, ``rejected``, ``used`` or ``closed``."""
        if self.status == "pending" and now >= self.deadline:
            return "expired"
        return self.status

    def view(self, *, full: bool = False) -> RequestView:
        """What every channel shows: every argument and claim, escaped; folded unless ``full``."""
        return RequestView(
            tool=visible_text(self.tool),
            requester=visible_text(self.requester),
            path=tuple(visible_text(p) for p in self.path),
            arguments=tuple(
                ShownArgument(
                    _fold(_name_pieces(name), None if full else FOLD_NAME),
                    _fold(_json_pieces(value), None if full else FOLD_VALUE),
                )
                for name, value in self.args_display.items()
            ),
            claims=_claims(self, full),
            rules=tuple(visible_text(r) for r in self.rules),
            full=full,
        )

    def describe(self, now: float | None = None, *, full: bool = False) -> str:
        """A reviewer-friendly text: who wants to call what with which arguments, what each
        link claims and who asserted it, and why it asks. Folded unless ``full``."""
        view = self.view(full=full)
        count = len(view.arguments)
        lines = [f"{view.requester} wants to call {view.tool}"]
        if count:
            lines.append(f"  with {count} argument{'s' if count != 1 else ''}:")
            lines += ["    " + line for line in view.argument_lines()]
        else:
            lines.append("  with no arguments")
        lines.append("  delegated by " + " -> ".join(view.path))
        claims = view.claim_lines()
        lines += ["  " + line for line in claims] or ["  no link states a purpose or sponsor"]
        lines.append("  approval required by " + "; ".join(view.rules))
        if now is not None:
            left = self.deadline - now
            lines.append(
                f"  answer within {format_duration(left)}" if left > 0 else "  deadline passed"
            )
        if view.folded:
            lines.append(
                "  long values are folded; see them whole: "
                f"agentguard approvals show {self.id} --full"
            )
        return "\n".join(lines)

    def unfolded(self) -> str:
        """The full form of whatever :meth:`describe` folds (empty when nothing is folded)."""
        folded, full = self.view(), self.view(full=True)
        lines = [
            "  " + whole
            for short, whole in zip(folded.argument_lines(), full.argument_lines(), strict=True)
            if short != whole
        ]
        lines += ["  " + c for c in full.claim_lines() if c not in folded.claim_lines()]
        return "\n".join(lines)


@dataclass(frozen=True)
class Receipt:
    """A verified approval receipt."""

    request_id: str
    approver: str
    decision: str
    assurance: str
    channel: str
    message: str | None
    edited_args: dict[str, Any] | None = field(default=None)


def _peek_receipt(token: str) -> dict[str, Any]:
    try:
        return peek_receipt(token)[1]
    except AgentGuardError:
        return {}


def peek_receipt(receipt: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of an approval receipt, *unverified* (to find its key).

    A passkey receipt (docs/receipts.md) reads as header ``{"typ": "passkey"}``
    and its answer statement as the claims (with ``edited_args`` when it
    carries an edit): the same names a JWS receipt uses.

    Raises:
        TokenFormatError: it is not an approval receipt.
    """
    if is_passkey_receipt(receipt):
        parsed = PasskeyReceipt.decode(receipt)
        claims = dict(parsed.statement)
        if claims.get("edited") is None:  # as in a JWS receipt: no edit, no 'edited' claim
            claims.pop("edited", None)
        if parsed.edited_args is not None:
            claims["edited_args"] = parsed.edited_args
        return {"typ": "passkey", "kid": parsed.assertion.credential_id}, claims
    return _jws.peek(receipt, TYP_APPROVAL)


def receipt_check(book: ApprovalBook, request_id: str) -> str | None:
    """What checking the stored receipt of ``request_id`` offline finds, in one line
    (``None`` when it has none): its kind, approver, assurance and decision, or why it
    does not verify or no longer counts (expired, approver removed or revoked); for a
    passkey receipt, the key id of the approver's enrolled passkey too
    (:func:`agentguard.passkeys.passkey_key_id`: what ``agentguard revoke --key`` takes).

    Raises:
        StoreError: the request cannot be read.
    """
    row = book.store.approval_get(request_id)
    if row is None or not row.receipt:
        return None
    kind, key, kid = "signed receipt (JWS)", "", None
    if is_passkey_receipt(row.receipt):
        kind = "passkey assertion"
        kid = _passkey_kid(book, row.receipt)
        key = "" if kid is None else f"; passkey key {kid}"
    try:
        verified = book.verify_receipt(row, expected_digest=row.call_digest)
    except DeniedError as exc:
        why = visible_text(exc.explanation)
        if kid is not None and kid in why:
            key = ""  # named already
        return f"{kind}; does not verify or no longer counts: {why}{key}"
    return (
        f"{kind} by {verified.approver}, verified ({verified.decision}, "
        f"assurance {verified.assurance}, channel {visible_text(verified.channel)}){key}"
    )


def _passkey_kid(book: ApprovalBook, receipt: str) -> str | None:
    """The key id of the passkey a stored passkey receipt is checked with: its
    approver's enrolled one (``None`` when the receipt or the entry is unusable)."""
    try:
        approver = str(PasskeyReceipt.decode(receipt).statement["approver"])
        entry = book.policy.approver(approver)
        if entry is None or entry.passkey is None:
            return None
        return passkey_key_id(entry.passkey.public_key)
    except (TokenFormatError, KeyError):
        return None


def verify_receipt_signature(receipt: str, key: Principal) -> None:
    """Check that ``key`` signed the approval receipt (and nothing else about it).

    Raises:
        DeniedError: the signature does not verify (``bad_signature``).
        TokenFormatError: it is not an approval receipt.
    """
    _jws.verify_signature(receipt, key, TYP_APPROVAL)


#: How a human answers at each assurance level, strongest first (``{id}``: the request).
_ROUTES = (
    ("signed", "`agentguard approvals approve {id} --as ID` (the approver's own key)"),
    ("authenticated", "the approval page (`agentguard approvals serve`) or a webhook"),
    ("local", "a terminal prompt or a notebook card"),
    ("agent", "a form in the agent's own MCP client"),
)


def answer_routes(request: ApprovalRequest, *, level: str | None = None) -> str:
    """The ways of answering whose answer counts for ``request`` (at ``level``, default
    the request's own minimum): each channel of at least that assurance."""
    needed = level or request.min_assurance
    routes = [
        text.format(id=request.id) for lvl, text in _ROUTES if assurance_at_least(lvl, needed)
    ]
    if not routes:  # a level this version does not know: nothing can be promised
        return f"no channel known to carry assurance {visible_text(needed)!r}"
    return f"{', or '.join(routes)} ('{needed}' assurance or more)"


def no_approver_text(request: ApprovalRequest) -> str:
    """What to add when nobody may approve ``request``: an entry that would cover it."""
    namespace = request.tool.split("/", 1)[0]
    return (
        f"nobody in the policy may approve {request.tool} for this chain; add a person "
        "(a user: principal outside the chain when separation_of_duties is on) under "
        f"'approvers:' in agentguard.yaml, e.g. `- {{id: user:NAME, tools: [\"{namespace}/*\"], "
        f"min_assurance: {request.min_assurance}}}` (`agentguard init --approver user:NAME` "
        "writes one in a new setup)"
    )


def pending_note(approvers: Sequence[str]) -> str:
    """What a model may be told of a pending approval: that a person must approve it and
    who can, never how (a command an agent could run, a key's location)."""
    if not approvers:
        return "a person must approve it"
    return f"a person must approve it ({name_list(approvers)} can)"


def name_list(ids: Sequence[str]) -> str:
    """Up to five ids, then how many more."""
    shown = ", ".join(ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


class Channel(Protocol):
    """Where approval requests go. ``deliver`` must return quickly unless it is
    the channel's nature to ask interactively (terminal); answers come back
    through the :class:`ApprovalBook` (possibly from another process).

    A channel may declare ``assurance``, the highest level its answers carry;
    the guard then refuses at once a request that needs more, instead of
    letting a human answer in vain until the deadline.
    """

    name: str

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Hand the request to the humans (or refuse with ``DeniedError``)."""
        ...


class NoChannel:
    """The default: nobody can be asked, so approval-required calls are denied."""

    name = "none"

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Refuse at once with reason ``approval_unavailable``."""
        raise DeniedError(
            f"{request.tool} needs approval and no approval channel is configured",
            reason=Reason.APPROVAL_UNAVAILABLE,
        )


class QueueChannel:
    """Requests wait in the store; humans answer with ``agentguard approvals approve|deny``."""

    name = "queue"
    assurance = "signed"

    def __init__(self, announce: Callable[[ApprovalRequest], None] | None = None) -> None:
        self._announce = announce

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Nothing to send: the pending request is in the store already."""
        if self._announce is not None:
            self._announce(request)


class CallbackChannel:
    """Calls a function with each request; for tests and custom integrations.

    The function may answer at once through the book (``book.answer(...)`` or
    ``book.approve(...)``), later from elsewhere, or raise to refuse. An async
    function is awaited by the async driver (and run to completion by the sync
    one in a private event loop).
    """

    name = "callback"

    def __init__(
        self,
        callback: Callable[[ApprovalRequest, ApprovalBook], Awaitable[None] | None],
        *,
        name: str = "callback",
    ) -> None:
        self._callback = callback
        self.name = name

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Run the callback (an async one is driven to completion here)."""
        result = self._callback(request, book)
        if result is not None:
            import anyio

            async def wait() -> None:
                await result

            anyio.run(wait)

    async def adeliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Run the callback, awaiting it when it is async."""
        result = self._callback(request, book)
        if result is not None:
            await result


class TerminalChannel:
    """Asks the person at this terminal; only when stdin is a TTY (assurance ``local``)."""

    name = "terminal"
    #: The highest assurance an answer through this channel can carry.
    assurance = "local"

    def __init__(self, approver: str, *, stdin: Any = None, stdout: Any = None) -> None:
        self.approver = approver
        self._stdin = stdin
        self._stdout = stdout

    def deliver(self, request: ApprovalRequest, book: ApprovalBook) -> None:
        """Prompt and record the answer, or refuse when there is no terminal."""
        stdin = self._stdin or sys.stdin
        stdout = self._stdout or sys.stderr
        if not (hasattr(stdin, "isatty") and stdin.isatty()):
            raise DeniedError(
                "approval by terminal prompt needs an interactive terminal (stdin is not a TTY)",
                reason=Reason.APPROVAL_UNAVAILABLE,
            )
        # Never ask a question whose "yes" would be refused: say what would count instead.
        book.check_answerer(request.id, approver=self.approver, assurance=self.assurance)
        stdout.write("\n" + request.describe(book.clock.now()) + "\n")
        folded = request.view().folded
        choices = "y/N/f = full view/message to deny" if folded else "y/N/message to deny"
        stdout.write(f"Approve as {self.approver}? [{choices}] ")
        stdout.flush()
        answer = (stdin.readline() or "").strip()
        if folded and answer.lower() == "f":
            stdout.write("\n" + request.describe(book.clock.now(), full=True) + "\n")
            stdout.write(f"Approve as {self.approver}? [y/N/message to deny] ")
            stdout.flush()
            answer = (stdin.readline() or "").strip()
        approve = answer.lower() in ("y", "yes")
        book.answer(
            request.id,
            approver=self.approver,
            approve=approve,
            message=None if approve or answer.lower() in ("", "n", "no") else answer,
            channel="terminal",
            assurance="local",
        )


class ApprovalBook:
    """The approval side of a guard: files requests, records answers, checks receipts.

    It is reachable as ``guard.approvals``; the CLI builds one over the same
    store to approve from another process.
    """

    def __init__(
        self,
        store: Store,
        *,
        policy: Policy,
        guard_identity: Identity,
        clock: Clock,
        keyring: Keyring | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.guard_identity = guard_identity
        self.clock = clock
        self.keyring = keyring
        #: The guard keys whose attested receipts count (every replica's, see
        #: ``guard_keys`` in the policy); loaded once, so a bad key file fails here.
        self.guard_keys = policy.guard_key_set(guard_identity.principal)

    # -- reading --------------------------------------------------------------
    def get(self, request_id: str) -> ApprovalRequest:
        """One request by id.

        Raises:
            AgentGuardError: no such request.
        """
        row = self.store.approval_get(request_id)
        if row is None:
            raise AgentGuardError(f"no approval request {request_id!r}")
        return ApprovalRequest.from_row(row)

    def pending(self) -> list[ApprovalRequest]:
        """Requests still waiting for an answer (deadline not passed)."""
        now = self.clock.now()
        rows = self.store.approval_list("pending")
        return [ApprovalRequest.from_row(r) for r in rows if r.deadline > now]

    def all(self) -> list[ApprovalRequest]:
        """Every request, newest first."""
        return [ApprovalRequest.from_row(r) for r in self.store.approval_list()]

    # -- filing -----------------------------------------------------------------
    def file(self, request: ApprovalRequest) -> ApprovalRequest:
        """Persist a new pending request, or join the one pending for the same call.

        Returns the request that is pending: ``request``, or the one a racing call
        filed first (a store with ``approval_file`` decides atomically; others
        file every request).
        """
        row = ApprovalRow(
            id=request.id,
            created_at=request.created_at,
            deadline=request.deadline,
            status="pending",
            call_digest=request.call_digest,
            request=request.to_json(),
        )
        file_once = getattr(self.store, "approval_file", None)
        if file_once is None:
            self.store.approval_insert(row)
            return request
        stored: ApprovalRow = file_once(row)
        return request if stored.id == request.id else ApprovalRequest.from_row(stored)

    @staticmethod
    def new_id() -> str:
        """A short, unguessable request id."""
        return "apr_" + secrets.token_urlsafe(9)

    def withdraw(self, request_id: str) -> bool:
        """Close a pending request without an answer (its call will ask again).

        Returns ``False`` when the request was no longer pending.
        """
        return self.store.approval_answer(
            request_id,
            status="closed",
            receipt="",
            answered_at=self.clock.now(),
            reusable_until=None,
        )

    # -- answering ----------------------------------------------------------------
    def approve(
        self,
        request_id: str,
        approver: Identity,
        *,
        message: str | None = None,
        edited_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Approve with the approver's own key (assurance ``signed``); returns the receipt.

        Raises:
            DeniedError: the approver may not approve this request, or it is
                no longer pending.
        """
        return self._sign_answer(
            request_id,
            signer=approver,
            approver_id=approver.id,
            approve=True,
            message=message,
            edited_args=edited_args,
            channel="queue",
            assurance="signed",
        )

    def deny(self, request_id: str, approver: Identity, *, message: str | None = None) -> str:
        """Reject with the approver's own key; the message goes back to the caller.

        Raises:
            DeniedError: the approver may not answer this request, or it is
                no longer pending.
        """
        return self._sign_answer(
            request_id,
            signer=approver,
            approver_id=approver.id,
            approve=False,
            message=message,
            edited_args=None,
            channel="queue",
            assurance="signed",
        )

    def answer(
        self,
        request_id: str,
        *,
        approver: str,
        approve: bool,
        channel: str,
        assurance: str,
        message: str | None = None,
        edited_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Record an answer a channel collected; the guard's key attests it.

        ``assurance`` says how the channel identified the human; it is checked
        against the policy when the receipt is used.

        Raises:
            DeniedError: the approver may not answer this request, or it is
                no longer pending.
        """
        if assurance not in ASSURANCE_LEVELS or assurance == "signed":
            raise ValueError("a channel attests at most 'authenticated' assurance")
        return self._sign_answer(
            request_id,
            signer=self.guard_identity,
            approver_id=approver,
            approve=approve,
            message=message,
            edited_args=edited_args,
            channel=channel,
            assurance=assurance,
        )

    def passkey_credential(self, approver: str) -> Passkey | None:
        """``approver``'s enrolled passkey in the policy, if any."""
        entry = self.policy.approver(approver)
        return entry.passkey if entry is not None else None

    def passkey_statement(
        self,
        request_id: str,
        *,
        approver: str,
        approve: bool,
        message: str | None = None,
        edited_args: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The answer statement ``approver``'s passkey is to sign (docs/receipts.md); the
        WebAuthn challenge is its digest (:func:`agentguard.passkeys.statement_challenge`).

        Refuses at once what :meth:`record_passkey_answer` would refuse, so nobody is
        asked to sign an answer that cannot count.

        Raises:
            DeniedError: the request is not pending, ``approver`` has no passkey, may
                not answer it, or the edit sets a redacted field.
        """
        request = self.get(request_id)
        now = self.clock.now()
        if request.state(now) != "pending":
            raise DeniedError(
                f"approval request {request_id} is {request.state(now)}, not pending",
                reason=Reason.APPROVAL_CLOSED,
            )
        if self.passkey_credential(approver) is None:
            raise DeniedError(
                f"no passkey is enrolled for {approver} (agentguard approvals enroll {approver})",
                reason=Reason.APPROVER_NOT_AUTHORIZED,
            )
        self._check_approver(request, approver, "signed", approving=approve)
        edited: str | None = None
        if edited_args is not None:
            if not approve:
                raise ValueError("only an approval carries edited arguments")
            if sets_redacted_field(edited_args, self.policy.redact):
                raise DeniedError(
                    "an edit may not set a redacted field; leave it as "
                    f"{REDACTED!r} to keep the caller's value",
                    reason=Reason.APPROVAL_INVALID,
                )
            edited = args_digest(edited_args)
        return answer_statement(
            request_id=request_id,
            call_digest=request.call_digest,
            approve=approve,
            approver=approver,
            issued_at=int(now),
            expires_at=int(now) + receipt_lifetime(self.policy),
            edited_digest=edited,
            message=message,
        )

    def record_passkey_answer(
        self,
        statement: Mapping[str, Any],
        assertion: PasskeyAssertion,
        *,
        edited_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Check a passkey-signed answer as the guard will, and record it; returns the receipt.

        The receipt is verified completely (:meth:`verify_receipt`: the assertion
        over the statement's digest with the approver's enrolled credential, the
        request and call it binds, time, approver, separation of duties) before
        the request is answered, at most once.

        Raises:
            DeniedError: it does not verify or count, or the request is not pending.
        """
        receipt = PasskeyReceipt(
            dict(statement), assertion, dict(edited_args) if edited_args is not None else None
        ).encode()
        request_id = statement.get("req")
        row = self.store.approval_get(request_id) if isinstance(request_id, str) else None
        now = self.clock.now()
        if row is None:
            raise DeniedError(
                "the statement names no known request", reason=Reason.APPROVAL_INVALID
            )
        state = ApprovalRequest.from_row(row).state(now)
        if state != "pending":
            raise DeniedError(
                f"approval request {row.id} is {state}, not pending", reason=Reason.APPROVAL_CLOSED
            )
        verified = self.verify_receipt(
            dataclasses.replace(row, receipt=receipt), expected_digest=row.call_digest
        )
        approve = verified.decision == "approve"
        reusable = self.policy.approval.reusable_for
        if not self.store.approval_answer(
            row.id,
            status="approved" if approve else "rejected",
            receipt=receipt,
            answered_at=now,
            reusable_until=now + reusable if approve and reusable else None,
        ):
            raise DeniedError(
                f"approval request {row.id} was answered or expired meanwhile",
                reason=Reason.APPROVAL_CLOSED,
            )
        return receipt

    def check_answerer(
        self, request_id: str, *, approver: str, assurance: str, approving: bool = True
    ) -> None:
        """Refuse now what :meth:`answer` would refuse from ``approver`` at ``assurance``.

        A channel that can only ever collect answers from one approver (an MCP
        client form, a terminal, a notebook card) uses it to decide whether to
        offer the question at all: a form whose approval would then be refused
        only misleads its reader. The refusal says what would count instead
        (:meth:`what_would_count`).

        Raises:
            DeniedError: the request is not pending, or an approval (a denial
                when ``approving`` is false) by ``approver`` at ``assurance``
                would not be accepted (approver list, assurance, separation of
                duties).
        """
        request = self.get(request_id)
        state = request.state(self.clock.now())
        if state != "pending":
            raise DeniedError(
                f"approval request {request_id} is {state}, not pending",
                reason=Reason.APPROVAL_CLOSED,
            )
        try:
            self._check_approver(request, approver, assurance, approving=approving)
        except DeniedError as exc:
            raise DeniedError(
                f"{exc.explanation}; {self.what_would_count(request)}", reason=exc.reason
            ) from None

    def what_would_count(self, request: ApprovalRequest) -> str:
        """Who could answer ``request`` and through which channels, for a refusal text.

        Raises:
            StoreError: revocations cannot be read (cannot tell who may answer).
        """
        who = self.who_may_approve(request)
        if not who:
            return "nobody in the policy may approve it (add an approver under 'approvers:')"
        return self.ways_to_answer(request, who, verb="can approve it")

    def ways_to_answer(
        self, request: ApprovalRequest, approvers: Sequence[str], *, verb: str = "can answer"
    ) -> str:
        """``approvers`` (who may approve ``request``) and the channels through which each
        one's answer counts: the request's assurance, or the approver's own higher floor.
        Reads only the policy."""
        by_level: dict[str, list[str]] = {}
        for approver_id in approvers:
            entry = self.policy.approver(approver_id)
            floor = entry.min_assurance if entry is not None else request.min_assurance
            level = (
                floor if assurance_at_least(floor, request.min_assurance) else request.min_assurance
            )
            by_level.setdefault(level, []).append(approver_id)
        if not by_level:
            return f"an approver {verb} through {answer_routes(request)}"
        ways = []
        for level, ids in by_level.items():
            text = f"{name_list(ids)} {verb} through {answer_routes(request, level=level)}"
            keyed = [i for i in ids if self.passkey_credential(i) is not None]
            if keyed and not assurance_at_least("authenticated", level):
                # The page carries 'signed' only for a passkey: named for those who have one.
                text += (
                    f", and {name_list(keyed)} through the approval page with their passkey "
                    "(`agentguard approvals serve`)"
                )
            ways.append(text)
        return "; ".join(ways)

    def how_to_answer(self, request: ApprovalRequest, approvers: Sequence[str]) -> str:
        """One line for whoever waits on ``request``: the request, who can answer it and how.

        Only the ways of answering whose answer would count are named (the approval
        page is not offered for a ``signed`` rule). ``approvers`` is
        :meth:`who_may_approve`'s answer. Reads only the policy.
        """
        line = (
            f"request {request.id} ({request.tool}, needs '{request.min_assurance}' "
            f"assurance): {self.ways_to_answer(request, approvers)}"
        )
        keyless = [
            a for a in approvers if not self._has_key(a) and self.passkey_credential(a) is None
        ]
        if request.min_assurance == "signed" and keyless:
            line += (
                f"; no key is known yet for {name_list(keyless)}: their answer verifies once "
                "they have one (`agentguard identity new ID`, or `public_key:` in the policy)"
            )
        return line

    def who_may_approve(self, request: ApprovalRequest) -> list[str]:
        """The policy's approvers who could approve ``request`` through a channel of
        enough assurance: approver list and tools, revocation, separation of duties.

        Used to tell a waiting caller who can answer; an empty list means nobody can.

        Raises:
            StoreError: the revocation or approval state cannot be read (cannot tell).
        """
        if request.min_assurance not in ASSURANCE_LEVELS:
            # A row from a newer release or a damaged one: say so, not "nobody may".
            raise DeniedError(
                f"approval request {request.id} demands assurance "
                f"{visible_text(request.min_assurance)!r}, which this version does not know",
                reason=Reason.APPROVAL_INVALID,
            )
        # At 'signed', the strongest level: an approver whose key is not known yet may
        # still make one before the deadline (how_to_answer says so).
        return [e.id for e in self.policy.approvers if self.would_accept(request, e.id, "signed")]

    def would_accept(
        self, request: ApprovalRequest, approver: str, assurance: str, *, approving: bool = True
    ) -> bool:
        """Whether an answer by ``approver`` at ``assurance`` would pass the approver
        checks (list, tools, revocation, assurance, separation of duties); builds no text.

        Raises:
            StoreError: revocations cannot be read (cannot tell).
        """
        try:
            self._check_approver(request, approver, assurance, approving=approving)
        except DeniedError:
            return False
        return True

    def _has_key(self, approver_id: str) -> bool:
        """Whether a key of ``approver_id`` is known (so a receipt they sign verifies)."""
        try:
            self._approver_key(approver_id)
        except AgentGuardError:  # no key, or one that does not load
            return False
        return True

    def _sign_answer(
        self,
        request_id: str,
        *,
        signer: Identity,
        approver_id: str,
        approve: bool,
        message: str | None,
        edited_args: Mapping[str, Any] | None,
        channel: str,
        assurance: str,
    ) -> str:
        request = self.get(request_id)
        now = self.clock.now()
        if request.state(now) != "pending":
            raise DeniedError(
                f"approval request {request_id} is {request.state(now)}, not pending",
                reason=Reason.APPROVAL_CLOSED,
            )
        # Refuse at once what the guard would refuse later, so humans are not misled.
        self._check_approver(request, approver_id, assurance, approving=approve)
        claims: dict[str, Any] = {
            "ver": 1,
            "iss": signer.id,
            "approver": approver_id,
            "req": request_id,
            "call": request.call_digest,
            "decision": "approve" if approve else "reject",
            "iat": int(now),
            "exp": int(now) + receipt_lifetime(self.policy),
            "jti": new_jti(),
            "channel": channel,
            "assurance": assurance,
        }
        if message:
            claims["msg"] = message[:500]
        if edited_args is not None:
            if sets_redacted_field(edited_args, self.policy.redact):
                raise DeniedError(
                    "an edit may not set a redacted field; leave it as "
                    f"{REDACTED!r} to keep the caller's value",
                    reason=Reason.APPROVAL_INVALID,
                )
            claims["edited"] = args_digest(edited_args)
            claims["edited_args"] = dict(edited_args)
        token = _jws.sign(claims, signer, TYP_APPROVAL)
        reusable = self.policy.approval.reusable_for
        if not self.store.approval_answer(
            request_id,
            status="approved" if approve else "rejected",
            receipt=token,
            answered_at=now,
            reusable_until=now + reusable if approve and reusable else None,
        ):
            raise DeniedError(
                f"approval request {request_id} was answered or expired meanwhile",
                reason=Reason.APPROVAL_CLOSED,
            )
        return token

    def _check_approver(
        self,
        request: ApprovalRequest,
        approver_id: str,
        assurance: str,
        *,
        required: str | None = None,
        excluded: Collection[str] = (),
        approving: bool = True,
    ) -> None:
        entry = self.policy.approver(approver_id)
        if entry is None:
            raise DeniedError(
                f"{approver_id} is not an approver in the policy",
                reason=Reason.APPROVER_NOT_AUTHORIZED,
            )
        if not any(pattern_matches(p, request.tool) for p in entry.tools):
            raise DeniedError(
                f"{approver_id} may not approve {request.tool}",
                reason=Reason.APPROVER_NOT_AUTHORIZED,
            )
        if self._revoked(principals=[approver_id]):
            raise DeniedError(f"{approver_id} is revoked", reason=Reason.APPROVER_NOT_AUTHORIZED)
        # The strongest of: the approver's own floor, what the call demanded when
        # it was filed, and what it demands now (a policy may have been tightened).
        needed = max(
            entry.min_assurance,
            request.min_assurance,
            required or "agent",
            key=lambda lvl: ASSURANCE_LEVELS.index(lvl) if lvl in ASSURANCE_LEVELS else 99,
        )
        # A rejection only restricts, so any channel of a known level may carry one from
        # an approver who passes every other check; an approval needs the level.
        if assurance not in ASSURANCE_LEVELS or (
            approving and not assurance_at_least(assurance, needed)
        ):
            raise DeniedError(
                f"an answer through this channel has assurance '{assurance}', "
                f"but '{needed}' is required",
                reason=Reason.APPROVAL_ASSURANCE,
            )
        if self.policy.approval.separation_of_duties:
            if not approver_id.startswith("user:"):
                raise DeniedError(
                    f"{approver_id} is not a human (user:) principal",
                    reason=Reason.SEPARATION_OF_DUTIES,
                )
            acting = {p for p in request.path if p.split(":", 1)[0] in ("agent", "service")}
            if approver_id == request.requester or approver_id in acting:
                raise DeniedError(
                    f"{approver_id} acts in the requesting chain and may not approve it",
                    reason=Reason.SEPARATION_OF_DUTIES,
                )
            # A rejection never grants anything: the people of the chain may say no.
            if approving and (approver_id in request.excluded or approver_id in excluded):
                raise DeniedError(
                    f"{approver_id} is a subject or sponsor of the link that demanded this "
                    "approval, or of a link below it, and may not approve it",
                    reason=Reason.SEPARATION_OF_DUTIES,
                )

    def _revoked(self, *, kids: Sequence[str] = (), principals: Sequence[str] = ()) -> bool:
        """Whether an approver's key or principal is revoked."""
        return self.store.find_revoked([], list(kids), list(principals)) is not None

    # -- using ----------------------------------------------------------------------
    def _approver_key(self, approver_id: str) -> Principal:
        entry = self.policy.approver(approver_id)
        if entry is not None and entry.public_key is not None:
            return Principal.from_jwk(approver_id, entry.public_key)
        if self.keyring is not None:
            try:
                return self.keyring.principal(approver_id)
            except IdentityError:
                pass
        raise DeniedError(
            f"no public key known for approver {approver_id}", reason=Reason.APPROVER_NOT_AUTHORIZED
        )

    def verify_receipt(
        self,
        row: ApprovalRow,
        *,
        expected_digest: str,
        chain: VerifiedChain | None = None,
        required: str | None = None,
        excluded: Collection[str] = (),
    ) -> Receipt:
        """Check a stored receipt completely (signature, binding, time, authority).

        ``required`` is the assurance the call demands *now* and ``excluded``
        the approvers separation of duties rules out now; both apply on top of
        what the request recorded when it was filed.

        Raises:
            DeniedError: the receipt does not authorise this call.
        """
        if row.receipt is None:
            raise DeniedError("approval has no receipt", reason=Reason.APPROVAL_INVALID)
        try:
            if is_passkey_receipt(row.receipt):
                claims = self._verify_passkey(row.receipt)
                signer_id = approver_id = str(claims["approver"])
            else:
                claims = self._verify_jws(row.receipt)
                signer_id, approver_id = str(claims.get("iss")), str(claims.get("approver"))
        except TokenFormatError as exc:
            raise DeniedError(
                f"receipt is malformed: {exc.explanation}", reason=Reason.APPROVAL_INVALID
            ) from None
        except DeniedError as exc:
            raise DeniedError(
                f"receipt rejected: {exc.explanation}", reason=Reason.APPROVAL_INVALID
            ) from None
        return self._judge_claims(
            row, claims, signer_id, approver_id, expected_digest, chain, required, excluded
        )

    def _verify_jws(self, receipt: str) -> dict[str, Any]:
        """The claims of a JWS receipt signed by a trusted guard key or its approver."""
        _, unverified = _jws.peek(receipt, TYP_APPROVAL)
        signer_id = str(unverified.get("iss"))
        approver_id = str(unverified.get("approver"))
        if signer_id == self.guard_identity.id:
            # Attested by this guard or another replica: a trusted guard key.
            return _jws.verify_with(receipt, self.guard_keys, TYP_APPROVAL)
        if signer_id == approver_id:
            key = self._approver_key(approver_id)
            if self._revoked(kids=[key.kid]):
                raise DeniedError(f"the signing key of {approver_id} is revoked")
            return _jws.verify(receipt, key, TYP_APPROVAL)
        raise DeniedError("receipt signer is neither guard nor approver")

    def _verify_passkey(self, receipt: str) -> dict[str, Any]:
        """The statement of a passkey receipt, checked with its approver's enrolled
        credential from the policy (docs/receipts.md); ``edited_args`` joins the claims
        only when the statement binds an edit and they digest to it."""
        parsed = PasskeyReceipt.decode(receipt)
        approver_id = str(parsed.statement["approver"])
        if self._revoked(principals=[approver_id]):
            raise DeniedError(f"{approver_id} is revoked")
        entry = self.policy.approver(approver_id)
        passkey = entry.passkey if entry is not None else None
        if passkey is None:
            raise DeniedError(f"no passkey is enrolled for {approver_id}")
        kid = passkey_key_id(passkey.public_key)
        if self._revoked(kids=[kid]):
            raise DeniedError(f"the passkey of {approver_id} (key {kid}) is revoked")
        if parsed.statement.get("iss") != approver_id:
            raise DeniedError("a passkey statement is the approver's own")
        try:
            claims = verify_passkey_receipt(
                parsed,
                passkey.public_key,
                passkey.rp_id,
                passkey.origin,
                credential_id=passkey.credential_id,
            )
        except ConfigError as exc:  # the passkeys extra is missing: cannot tell is no
            raise DeniedError(str(exc)) from None
        bound = claims.get("edited")
        if (bound is None) != (parsed.edited_args is None):
            raise DeniedError("edited arguments do not match the receipt")
        if parsed.edited_args is not None:
            claims["edited_args"] = parsed.edited_args
        return claims

    def _judge_claims(
        self,
        row: ApprovalRow,
        claims: Mapping[str, Any],
        signer_id: str,
        approver_id: str,
        expected_digest: str,
        chain: VerifiedChain | None,
        required: str | None,
        excluded: Collection[str],
    ) -> Receipt:
        """What a receipt's verified claims allow: binding, time, authority."""
        now = self.clock.now()
        if claims.get("call") != expected_digest or claims.get("req") != row.id:
            raise DeniedError("receipt is bound to another call", reason=Reason.APPROVAL_MISMATCH)
        if row.call_digest != expected_digest:
            raise DeniedError("approval is for another call", reason=Reason.APPROVAL_MISMATCH)
        exp, iat = claims.get("exp"), claims.get("iat")
        leeway = self.policy.limits.leeway
        if not isinstance(exp, int) or not isinstance(iat, int) or iat > now + leeway:
            raise DeniedError("receipt has no valid issue time", reason=Reason.APPROVAL_INVALID)
        if exp - iat > receipt_lifetime(self.policy):
            raise DeniedError("receipt claims too long a lifetime", reason=Reason.APPROVAL_INVALID)
        if now >= exp + leeway:
            raise DeniedError("receipt has expired", reason=Reason.APPROVAL_EXPIRED)
        assurance = str(claims.get("assurance"))
        if signer_id != self.guard_identity.id:
            assurance = "signed"
        request = ApprovalRequest.from_row(row)
        self._check_approver(
            request,
            approver_id,
            assurance,
            required=required,
            excluded=excluded,
            approving=claims.get("decision") == "approve",
        )
        if chain is not None:
            self._check_chain(approver_id, chain)
        edited = claims.get("edited_args")
        try:  # args_digest raises ValueError on non-canonical JSON (found by tests/test_fuzz.py)
            edited_ok = edited is None or (
                isinstance(edited, dict) and args_digest(edited) == claims.get("edited")
            )
        except ValueError:
            edited_ok = False
        if not edited_ok:
            raise DeniedError(
                "edited arguments do not match the receipt", reason=Reason.APPROVAL_INVALID
            )
        return Receipt(
            request_id=row.id,
            approver=approver_id,
            decision=str(claims.get("decision")),
            assurance=assurance,
            channel=str(claims.get("channel")),
            message=claims.get("msg"),
            edited_args=edited,
        )

    def _check_chain(self, approver_id: str, chain: VerifiedChain) -> None:
        if not self.policy.approval.separation_of_duties:
            return
        acting = {p for p in chain.path if p.split(":", 1)[0] in ("agent", "service")}
        if approver_id in acting or approver_id == chain.holder.id:
            raise DeniedError(
                f"{approver_id} acts in the requesting chain and may not approve it",
                reason=Reason.SEPARATION_OF_DUTIES,
            )
