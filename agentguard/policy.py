"""The organisation's policy file, ``agentguard.yaml``, as strict pydantic models.

Policy rules only ever restrict: a tool the delegation does not reach is denied
whatever the policy says. Loading reports every problem with its key path and,
for YAML, its line: ``agentguard.yaml:12: limits.max_link_ttl: invalid duration``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from agentguard.addresses import pattern_matches, validate_pattern
from agentguard.budgets import Budget, Charge, chain_key, charge_of, policy_key
from agentguard.clock import parse_duration
from agentguard.decision import Reason
from agentguard.errors import (
    ConfigError,
    DeniedError,
    IdentityError,
    InvalidAddressError,
    PredicateError,
)
from agentguard.keys import (
    KEY_FILE_LIMIT,
    PRINCIPAL_KINDS,
    KeySet,
    Principal,
    TrustedKey,
    read_trusted_file,
    validate_principal_id,
)
from agentguard.predicates import compile_predicate, restricts

if TYPE_CHECKING:
    from agentguard.delegation import Delegation

__all__ = [
    "ASSURANCE_LEVELS",
    "ApprovalSettings",
    "Approver",
    "FederationKey",
    "FederationProvider",
    "FederationRule",
    "IdTemplate",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyRule",
    "SingleSignOn",
    "TrustedRoot",
    "assurance_at_least",
    "escape_claim_value",
    "load_policy",
    "load_strict_yaml",
    "policy_schema",
    "templates_may_collide",
]

ASSURANCE_LEVELS = ("agent", "local", "authenticated", "signed")
Assurance = Literal["agent", "local", "authenticated", "signed"]
#: The most bytes a policy file may hold.
POLICY_FILE_LIMIT = 1_000_000
DEFAULT_REDACT = ("password", "secret", "token", "api_key", "authorization", "credential")


def assurance_at_least(level: str, minimum: str) -> bool:
    """Whether assurance ``level`` meets ``minimum`` (unknown levels never do)."""
    if level not in ASSURANCE_LEVELS or minimum not in ASSURANCE_LEVELS:
        return False
    return ASSURANCE_LEVELS.index(level) >= ASSURANCE_LEVELS.index(minimum)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _patterns(value: Any) -> list[str]:
    # A "before" validator sees raw YAML: anything that is not a pattern or a list
    # of patterns must become a ValueError (pydantic does not wrap TypeError).
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError("expected a tool pattern or a list of tool patterns")
    out = []
    for pattern in value:
        try:
            out.append(validate_pattern(pattern))
        except InvalidAddressError as exc:
            raise ValueError(str(exc)) from exc
    if not out:
        raise ValueError("list at least one tool pattern")
    return out


#: A rule's ``tools`` in the policy file: one tool pattern, or a list of at least one
#: (the loader takes one pattern as a list of it, never as its characters).
ToolPatterns = Annotated[
    list[str],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ],
            "description": "A tool pattern (e.g. billing/*) or a list of them",
        }
    ),
]

#: What ``parse_duration`` accepts as text: 1 to 9 digits and an optional unit.
_DURATION_TEXT = r"^\s*(?=[0-9]{1,9}\s*[smhdw]?\s*$)0*[1-9][0-9]*\s*[smhdw]?\s*$"

#: A duration in the policy file: seconds, or text such as ``90s``, ``15m``, ``24h``, ``7d``.
Duration = Annotated[
    float,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION_TEXT},
            ],
            "description": "Seconds, or a number with a unit s, m, h, d or w (e.g. 15m, 7d)",
        }
    ),
]
#: A duration that may also be zero (``leeway``, ``reusable_for``).
DurationOrZero = Annotated[
    float,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION_TEXT},
                {"enum": ["0", "0s"]},
            ],
            "description": "Seconds (0 for none), or a number with a unit s, m, h, d or w",
        }
    ),
]


def _compiled_where(value: Any) -> Any:
    """A rule's ``where`` compiled to the canonical predicate form (``None`` stays)."""
    if value is None:
        return None
    try:
        return compile_predicate(value)
    except PredicateError as exc:
        raise ValueError(str(exc)) from exc


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(str(exc)) from exc


def _utc_time(value: datetime | None) -> datetime | None:
    # A time without a zone is read as UTC, never as the reader's local time.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _key_window(
    not_before: datetime | None, retired_at: datetime | None
) -> tuple[float | None, float | None]:
    """``(not_before, retired_at)`` in seconds since the epoch (``None``: open)."""
    return (
        None if not_before is None else not_before.timestamp(),
        None if retired_at is None else retired_at.timestamp(),
    )


class TrustedRoot(_Strict):
    """A principal whose root grants are accepted, with one of its public keys.

    A root may be listed several times with different keys (rotation).
    ``not_before`` and ``retired_at`` (ISO 8601, or seconds since the epoch)
    bound the key: a root link counts only when it was signed (its ``iat``) at or
    after ``not_before`` and before ``retired_at``, and only while the key is not
    retired yet: from ``retired_at`` on, nothing the key signed verifies.
    """

    id: str = Field(description="Principal id, e.g. org:acme")
    public_key: dict[str, str] | None = Field(None, description="Public OKP/Ed25519 JWK")
    key_file: str | None = Field(
        None, description="Path to a public key file written by 'agentguard identity export'"
    )
    not_before: datetime | None = Field(None, description="Links signed before this do not count")
    retired_at: datetime | None = Field(
        None, description="From this time on, nothing this key signed counts"
    )
    note: str | None = Field(None, description="Free text, e.g. why the key was added")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _principal(value)

    @field_validator("not_before", "retired_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _utc_time(value)

    @model_validator(mode="after")
    def _one_key(self) -> TrustedRoot:
        if (self.public_key is None) == (self.key_file is None):
            raise ValueError("give exactly one of public_key or key_file")
        if self.not_before and self.retired_at and self.retired_at <= self.not_before:
            raise ValueError("retired_at must come after not_before")
        return self

    def window(self) -> tuple[float | None, float | None]:
        """``(not_before, retired_at)`` in seconds since the epoch (``None``: open)."""
        return _key_window(self.not_before, self.retired_at)


class GuardKey(_Strict):
    """A public key the guard's processes sign with, trusted by every one of them.

    List one per replica (or one all replicas share). ``not_before`` and
    ``retired_at`` (ISO 8601, or seconds since the epoch) bound when its
    signatures count: a head or receipt it signed while valid keeps verifying
    after it is retired; one signed at or after ``retired_at`` is refused.
    """

    public_key: dict[str, str] | None = Field(None, description="Public OKP/Ed25519 JWK")
    key_file: str | None = Field(
        None, description="Path to a public key file written by 'agentguard identity export'"
    )
    not_before: datetime | None = Field(None, description="Signatures before this do not count")
    retired_at: datetime | None = Field(None, description="Signatures from this on do not count")
    note: str | None = Field(None, description="Free text, e.g. which replica holds the key")

    @field_validator("not_before", "retired_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _utc_time(value)

    @model_validator(mode="after")
    def _valid(self) -> GuardKey:
        if (self.public_key is None) == (self.key_file is None):
            raise ValueError("give exactly one of public_key or key_file")
        if self.not_before and self.retired_at and self.retired_at <= self.not_before:
            raise ValueError("retired_at must come after not_before")
        return self

    def window(self) -> tuple[float | None, float | None]:
        """``(not_before, retired_at)`` in seconds since the epoch (``None``: open)."""
        return _key_window(self.not_before, self.retired_at)


_BASE64URL = r"^[A-Za-z0-9_-]+$"


class Passkey(_Strict):
    """An approver's enrolled passkey (``agentguard approvals enroll``): a WebAuthn
    credential whose assertions count as ``signed`` (see docs/receipts.md)."""

    credential_id: str = Field(pattern=_BASE64URL, max_length=1400)
    #: The credential's COSE public key, base64url.
    public_key: str = Field(pattern=_BASE64URL, max_length=1400)
    #: The relying-party id it was enrolled for (``localhost`` or the page's host name).
    rp_id: str = Field(min_length=1, max_length=253)
    #: The page origin it was enrolled on, e.g. ``http://localhost:8780``.
    origin: str = Field(min_length=1, max_length=300)


class Approver(_Strict):
    """Who may approve which tools, through channels of at least which assurance."""

    id: str
    tools: ToolPatterns = Field(default_factory=lambda: ["*/*"])
    min_assurance: Assurance = "local"
    public_key: dict[str, str] | None = None
    passkey: Passkey | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _principal(value)

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> list[str]:
        return _patterns(value)


def _principal(value: str) -> str:
    try:
        return validate_principal_id(value)
    except IdentityError as exc:
        raise ValueError(str(exc)) from exc


class _RestrictiveRule(_Strict):
    """Tool patterns and an optional argument predicate, for a policy rule that
    restricts (deny, step-up, budget): it selects a call of a matching tool unless
    its ``where`` is definitely false for the arguments."""

    tools: ToolPatterns
    where: Any = None

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> list[str]:
        return _patterns(value)

    @field_validator("where")
    @classmethod
    def _where(cls, value: Any) -> Any:
        return _compiled_where(value)

    def _selects(self, tool: str, args: Mapping[str, Any], *, skip_if_missing: bool) -> bool:
        if not any(pattern_matches(p, tool) for p in self.tools):
            return False
        # A restricting rule: "cannot tell" applies it.
        return restricts(self.where, args, skip_if_missing=skip_if_missing)


class PolicyRule(_RestrictiveRule):
    """A deny or step-up rule: tool patterns plus an optional argument predicate.

    Such a rule restricts, so it applies to every call of a matching tool unless
    its ``where`` predicate is definitely false for the arguments: a value of
    the wrong type (``"5000"`` for ``amount > 100``), an unusable path or a
    missing argument all leave the rule in force. ``if_missing: skip`` makes it
    step aside for calls that lack an argument the predicate names (for tools
    that have no such argument). See the README's "Argument predicates" section.
    """

    reason: str | None = None
    min_assurance: Assurance = "signed"
    if_missing: Literal["apply", "skip"] = "apply"
    #: For step_up rules: let subjects and sponsors of the chain approve (weaker
    #: than the default, which excludes everyone in the chain but the root's issuer).
    allow_self_approval: bool = False

    def matches(self, tool: str, args: Mapping[str, Any]) -> bool:
        """Whether the rule applies to this call."""
        return self._selects(tool, args, skip_if_missing=self.if_missing == "skip")

    def describe(self) -> str:
        """Short text for explanations."""
        text = ", ".join(self.tools)
        return f"{text} ({self.reason})" if self.reason else text


class PolicyBudget(_RestrictiveRule):
    """An organisation's budget on tools, whatever the delegations say (issue 19).

    Every call of a tool ``tools`` selects is charged, unless ``where`` is
    definitely false for its arguments (a budget restricts). ``per`` says whose
    count it is: ``chain`` (one count per root grant, shared by everything
    delegated below it, so delegating further never resets it), ``holder`` (one
    per principal holding the chain) or ``global`` (one for all). ``window``,
    ``calls`` and ``sum`` are those of a rule's budget (:class:`agentguard.budgets.Budget`).
    """

    window: Duration
    calls: int | None = None
    sum: dict[str, int | float | str] | None = None
    per: Literal["chain", "holder", "global"]

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> float:
        return _duration(value)

    @field_validator("calls", mode="before")
    @classmethod
    def _calls(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("calls must be a whole number")
        return value

    @field_validator("sum", mode="before")
    @classmethod
    def _sum(cls, value: Any) -> Any:
        # Raw YAML: a limit stays as written (no coercion between kinds).
        if value is not None and (
            not isinstance(value, dict)
            or any(
                isinstance(v, bool) or not isinstance(v, int | float | str) for v in value.values()
            )
        ):
            raise ValueError("sum maps argument names to numbers or decimal strings")
        return value

    @model_validator(mode="after")
    def _valid(self) -> PolicyBudget:
        self.budget  # noqa: B018 - parsed once here so a bad budget fails the policy
        return self

    @property
    def budget(self) -> Budget:
        """The budget itself.

        Raises:
            ValueError: malformed (refused when the policy loads).
        """
        spec: dict[str, Any] = {
            "window": int(self.window) if self.window.is_integer() else self.window
        }
        if self.calls is not None:
            spec["calls"] = self.calls
        if self.sum is not None:
            spec["sum"] = self.sum
        return Budget.parse(spec)

    def charge(
        self,
        index: int,
        tool: str,
        args: Mapping[str, Any],
        delegation: Delegation,
        *,
        chain: str | None = None,
    ) -> Charge | None:
        """This call's charge to the budget, or ``None`` when the budget does not apply.

        ``chain`` is the chain's count for ``per: chain``
        (:func:`agentguard.budgets.chain_key`; its root link id by default).

        Raises:
            BudgetUnmeasurable: a summed argument has no exact amount.
        """
        if not self._selects(tool, args, skip_if_missing=False):
            return None
        key = self.counter_key(delegation, chain=chain)
        return charge_of(key, f"policy budget {index}", self.budget, args)

    def counter_key(self, delegation: Delegation, *, chain: str | None = None) -> str:
        """The counter a call under ``delegation`` is charged to (``chain``: see :meth:`charge`)."""
        who = {
            "chain": chain or f"chain/{delegation.root.link_id}",
            "holder": f"holder/{delegation.holder}",
            "global": "global",
        }[self.per]
        return policy_key(self.model_dump(mode="json"), who)


class Limits(_Strict):
    """Bounds every chain must respect."""

    max_root_ttl: Duration = Field(7 * 86400, description="Longest lifetime of a root grant")
    max_link_ttl: Duration = Field(86400, description="Longest lifetime of any other link")
    max_chain_length: int = Field(5, ge=1, le=16)
    require_purpose: bool = False
    require_sponsor: bool = False
    call_token_ttl: Duration = Field(30, description="Lifetime of call tokens the guard mints")
    leeway: DurationOrZero = Field(5, description="Clock skew tolerated on time checks, in seconds")

    @field_validator("max_root_ttl", "max_link_ttl", "call_token_ttl", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> float:
        return _duration(value)

    @field_validator("leeway", mode="before")
    @classmethod
    def _leeway(cls, value: Any) -> float:
        seconds = 0.0 if value in (0, "0", "0s") else _duration(value)
        if seconds > 300:
            raise ValueError("leeway above 300 seconds defeats short-lived tokens")
        return seconds


#: The approval page's single sign-on callback: the path its ``redirect_uri`` must name.
SSO_CALLBACK_PATH = "/login/sso/callback"
_SECRET_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]{0,127}\}$")


class SingleSignOn(_Strict):
    """The approval page's single sign-on: an OpenID Connect client of one federation provider.

    The person signing in is named by that provider's ``subject`` template, so
    one person has one id in chains, approver lists and sign-in.
    """

    issuer: str = Field(description="The issuer of one of the federation: providers")
    client_id: str = Field(description="The page's client id at the provider")
    client_secret: str | None = Field(
        None, description="A confidential client's secret, as ${VARIABLE} (never the secret)"
    )
    client_secret_file: str | None = Field(
        None, description="Or a file holding the secret (owner-only; relative to the policy)"
    )
    redirect_uri: str = Field(
        description=f"Where the provider sends people back: https://HOST{SSO_CALLBACK_PATH} "
        "(http only on a loopback address), registered at the provider"
    )
    scope: str = Field("openid", description="Scopes asked for (must include openid)")
    label: str | None = Field(None, description="The button says 'Sign in with LABEL'")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        if not value or len(value) > 255 or not all(" " < c <= "~" for c in value):
            raise ValueError("a client id is 1-255 printable ASCII characters without spaces")
        return value

    @field_validator("client_secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_VARIABLE.match(value):
            raise ValueError(
                "write the secret's environment variable as ${NAME} (or use "
                "client_secret_file), never the secret itself"
            )
        return value

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if not (parts.scheme == "https" and host) and not (
            parts.scheme == "http" and _is_loopback(host)
        ):
            raise ValueError("the redirect URI must be https (http only on a loopback address)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("the redirect URI has no query, fragment or user part")
        if parts.path != SSO_CALLBACK_PATH:
            raise ValueError(f"the redirect URI's path must be {SSO_CALLBACK_PATH}")
        return value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        words = value.split(" ")
        if "openid" not in words or not all(w and w.isascii() and w.isprintable() for w in words):
            raise ValueError("scopes are words separated by single spaces and include openid")
        return value

    @field_validator("label")
    @classmethod
    def _label(cls, value: str | None) -> str | None:
        if value is not None and not (0 < len(value) <= 64 and value.isprintable()):
            raise ValueError("a label is 1-64 printable characters")
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> SingleSignOn:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError("give client_secret or client_secret_file, not both")
        return self


class ApprovalSettings(_Strict):
    """How step-up approvals are requested and answered."""

    channel: Literal["none", "queue", "terminal", "web", "webhook", "callback"] = "none"
    timeout: Duration = 300
    mode: Literal["block", "raise"] = "block"
    reusable_for: DurationOrZero = 0
    separation_of_duties: bool = True
    webhook_url: str | None = None
    terminal_approver: str | None = None
    #: Assurance an answer typed into an agent-facing client (MCP form) carries.
    agent_channel_assurance: Assurance = "agent"
    #: Minimum assurance for approvals demanded by a grant's own rules
    #: (``approval: true`` in a delegation); policy step-up rules name their own.
    grant_rule_assurance: Assurance = "signed"
    #: The most characters the full view of a request's arguments may take
    #: (names and values together, as escaped for display); a call that needs
    #: approval and would take more is refused, never shown in part.
    display_limit: int = Field(20_000, ge=1_000, le=1_000_000)
    #: Single sign-on for the approval page (an OpenID Connect provider of ``federation:``).
    sso: SingleSignOn | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return _duration(value)

    @field_validator("reusable_for", mode="before")
    @classmethod
    def _reusable(cls, value: Any) -> float:
        seconds = 0.0 if value in (0, "0", "0s") else _duration(value)
        if seconds > 3600:
            raise ValueError("a receipt may be reusable for at most 1h")
        return seconds


class Storage(_Strict):
    """Where state lives."""

    home: str | None = Field(None, description="State directory (default ./.agentguard)")
    durability: Literal["normal", "full"] = "normal"
    busy_timeout: float = Field(
        5.0, description="How long a call waits for another process's lock on the state file"
    )
    url: str | None = Field(
        None,
        description="A postgresql:// URL of a database several guards share (${VAR} expanded; "
        "$AGENTGUARD_DATABASE_URL overrides it)",
    )

    @field_validator("busy_timeout", mode="before")
    @classmethod
    def _busy_timeout(cls, value: Any) -> float:
        seconds = 0.0 if value in (0, "0", "0s") else _duration(value)
        if seconds > 600:
            raise ValueError("a busy timeout above 600 seconds stalls every call behind a lock")
        return seconds


# -- federation (issue 16): an identity provider's claims as a root of authority ----

#: Characters a claim value keeps as they are in a principal id; every other
#: byte of its UTF-8 form (``.`` and ``+`` included) becomes ``+HH``.
_ID_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@-")
_TEMPLATE_PART = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}|([A-Za-z0-9._@+-]+)")
_CLAIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:/.-]{0,127}$")
#: The most names a dotted claim path may have (``federation.MAX_CLAIM_DEPTH``: the
#: matcher looks no deeper).
_CLAIM_PATH_NAMES = 8
_ALIAS = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
#: The most characters a principal id's name may hold (after ``kind:``).
_NAME_LIMIT = 128


def escape_claim_value(value: str) -> str:
    """A claim value written with principal-id characters only, reversibly.

    Letters, digits, ``_``, ``@`` and ``-`` stay; every other byte of the
    value's UTF-8 form (``.``, ``+``, ``:`` and spaces included) becomes ``+``
    and two upper-case hex digits, so distinct values stay distinct and no
    value can add a separator a template uses.

    Raises:
        ValueError: the value is empty.
    """
    if not value:
        raise ValueError("an empty claim value cannot name a principal")
    out = []
    for char in value:
        if char in _ID_SAFE:
            out.append(char)
        else:
            out.extend(f"+{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


class IdTemplate:
    """A parsed principal template such as ``user:{alias}.{sub}``.

    One placeholder names the claim whose (escaped) value goes in; ``{alias}``,
    at most once, is the provider's alias. The name must start with literal
    text (a letter or digit) or ``{alias}``.
    """

    __slots__ = ("claim", "kind", "parts", "text")

    def __init__(self, text: str, *, claims: Sequence[str] | None = None) -> None:
        self.text = text
        kind, colon, name = text.partition(":")
        if not colon or kind not in PRINCIPAL_KINDS:
            raise ValueError(
                f"template {text!r} must start with a principal kind "
                f"({', '.join(PRINCIPAL_KINDS)}) and ':'"
            )
        self.kind = kind
        parts: list[tuple[bool, str]] = []
        pos = 0
        while pos < len(name):
            match = _TEMPLATE_PART.match(name, pos)
            if match is None:
                raise ValueError(
                    f"template {text!r}: unexpected {name[pos]!r}; write letters, digits, "
                    ". _ @ + - and placeholders such as {{alias}} or {{sub}}"
                )
            parts.append((True, match[1]) if match[1] else (False, match[2]))
            pos = match.end()
        first_hole, first = parts[0] if parts else (False, "")
        if not (first_hole and first == "alias") and (first_hole or not first[:1].isalnum()):
            raise ValueError(f"template {text!r}: the name must start with a letter or digit")
        holes = [value for is_hole, value in parts if is_hole]
        values = [h for h in holes if h != "alias"]
        if holes.count("alias") > 1 or len(values) != 1:
            raise ValueError(
                f"template {text!r} needs exactly one claim placeholder "
                "(and {alias} at most once)"
            )
        if claims is not None and values[0] not in claims:
            raise ValueError(
                f"template {text!r}: placeholder {{{values[0]}}} must be one of "
                + ", ".join("{" + c + "}" for c in claims)
            )
        self.claim = values[0]
        self.parts = tuple(parts)

    def affixes(self, alias: str) -> tuple[str, str]:
        """The literal text before and after the claim's value, alias filled in."""
        before: list[str] = [f"{self.kind}:"]
        after: list[str] = []
        seen = False
        for is_hole, value in self.parts:
            if is_hole and value != "alias":
                seen = True
                continue
            (after if seen else before).append(alias if is_hole else value)
        return "".join(before), "".join(after)

    def render(self, alias: str, value: str) -> str:
        """The principal id for one claim value (escaped).

        Raises:
            ValueError: the value is empty or the id would be too long.
        """
        before, after = self.affixes(alias)
        principal = before + escape_claim_value(value) + after
        if len(principal) - len(self.kind) - 1 > _NAME_LIMIT:
            raise ValueError(
                f"the {self.claim!r} claim is too long for a principal id "
                f"(at most {_NAME_LIMIT} characters once escaped)"
            )
        return validate_principal_id(principal)


def _comparable(a: str, b: str, *, suffix: bool = False) -> bool:
    if suffix:
        return a.endswith(b) or b.endswith(a)
    return a.startswith(b) or b.startswith(a)


def templates_may_collide(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether ``before + v + after`` of ``a`` and of ``b`` can spell one id.

    Each side is ``(before, after)`` from :meth:`IdTemplate.affixes`. They
    cannot when the texts before the value differ at a position both have, or
    the texts after it do; otherwise this answers yes (fail closed).
    """
    return _comparable(a[0], b[0]) and _comparable(a[1], b[1], suffix=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FederationRule(_Strict):
    """What a token's claims allow: tool rules, under a claim (and scope) condition.

    The rule applies when the token's ``claim`` (a string, or a list of strings)
    equals or contains ``equals``, and, with ``scope``, when the token's scopes
    (``scope`` text or ``scp``) include it.
    """

    claim: str | None = Field(None, description="Claim to test, e.g. groups, roles")
    equals: str | None = Field(None, description="Value the claim must equal or contain")
    tools: ToolPatterns = Field(description="Tool patterns the rule allows")
    where: Any = Field(None, description="Optional argument predicate, as in grants")
    scope: str | None = Field(None, description="OAuth scope the token must carry")
    approval: bool = Field(False, description="Calls it allows need step-up approval")

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> list[str]:
        return _patterns(value)

    @field_validator("claim")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        if value is not None and not _CLAIM_NAME.match(value):
            raise ValueError(f"{value!r} is not a claim name")
        if value is not None and "." in value and not any(c in value for c in ":/"):
            # A dotted name is a path into nested objects (``realm_access.roles``), which
            # the matcher follows only with 1 to 8 non-empty names; a namespaced claim
            # (``https://example.com/roles``) is looked up whole and keeps its dots.
            names = value.split(".")
            if not all(names):
                raise ValueError(
                    f"claim {value!r} has an empty name in its dotted path (a leading, "
                    "trailing or doubled dot): a nested claim is names separated by single dots"
                )
            if len(names) > _CLAIM_PATH_NAMES:
                raise ValueError(
                    f"claim {value!r} is a path of {len(names)} names; the matcher follows "
                    f"at most {_CLAIM_PATH_NAMES}"
                )
        return value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise ValueError("a scope is one word without spaces")
        return value

    @field_validator("where")
    @classmethod
    def _where(cls, value: Any) -> Any:
        return _compiled_where(value)

    @model_validator(mode="after")
    def _condition(self) -> FederationRule:
        if (self.claim is None) != (self.equals is None):
            raise ValueError("give claim and equals together")
        if self.claim is None and self.scope is None:
            raise ValueError("a rule needs a condition: claim and equals, or scope")
        return self


class FederationKey(TrustedRoot):
    """The key that vouches for derived chains, when it is not the guard's own
    (``id``, e.g. ``service:federation``, and exactly one of its key forms).

    ``not_before`` and ``retired_at`` bound it as they bound a trusted root's key:
    a derived link counts only when signed inside the window and checked before
    ``retired_at``.
    """


#: The most keys one provider's ``keys:`` may list.
MAX_FEDERATION_KEYS = 16


class FederationProvider(_Strict):
    """One identity provider whose tokens become delegation chains."""

    issuer: str = Field(description="The issuer URL (https, or http on loopback only)")
    audience: str = Field(description="The audience tokens must name: the proxy's resource URI")
    alias: str = Field(description="Short name of this provider in principal ids")
    subject: str = Field("user:{alias}.{sub}", description="How the person is named")
    client: str = Field(
        "agent:{alias}.{client_id}",
        description="How the OAuth client is named: {client_id} is client_id, or azp when "
        "there is none; another placeholder names its claim (e.g. {cid} for Okta)",
    )
    rules: list[FederationRule] = Field(description="What the token's claims allow")
    key: FederationKey | None = Field(
        None, description="The key vouching for derived chains (default: the guard's own)"
    )
    keys: list[FederationKey] | None = Field(
        None,
        description="Several keys of one id vouching for derived chains (one per replica, or "
        "rotation with not_before/retired_at); instead of key",
    )
    max_depth: int = Field(0, ge=0, le=3, description="How far a derived chain may be delegated")

    @model_validator(mode="after")
    def _one_key_form(self) -> FederationProvider:
        if self.key is not None and self.keys is not None:
            raise ValueError("give key or keys, not both")
        if self.keys is not None:
            if not self.keys:
                raise ValueError("keys: list at least one key (or leave it out)")
            if len(self.keys) > MAX_FEDERATION_KEYS:
                raise ValueError(f"keys: at most {MAX_FEDERATION_KEYS} keys")
            ids = {entry.id for entry in self.keys}
            if len(ids) != 1:
                raise ValueError(
                    f"keys: every key belongs to one federation key id, not {sorted(ids)}"
                )
        return self

    def key_entries(self) -> list[FederationKey]:
        """The provider's own federation keys (``key`` or ``keys``); empty: the guard's."""
        if self.keys is not None:
            return list(self.keys)
        return [] if self.key is None else [self.key]

    def signer_id(self, guard_id: str) -> str:
        """The id of the federation key that vouches for this provider's chains."""
        entries = self.key_entries()
        return entries[0].id if entries else guard_id

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        host = parts.hostname or ""
        secure = parts.scheme == "https" and bool(host)
        if not secure and not (parts.scheme == "http" and _is_loopback(host)):
            raise ValueError("the issuer must be an https URL (http only on a loopback address)")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("the issuer URL has no query, fragment or user part")
        return value

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name the audience (the proxy's resource URI)")
        return value

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not _ALIAS.match(value):
            raise ValueError("an alias is 1-32 lower-case letters, digits and -")
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        IdTemplate(value)
        return value

    @field_validator("client")
    @classmethod
    def _client(cls, value: str) -> str:
        IdTemplate(value)
        return value

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: list[FederationRule]) -> list[FederationRule]:
        if not value:
            raise ValueError("list at least one rule")
        patterns = sum(len(rule.tools) for rule in value)
        if patterns > 64:
            raise ValueError(
                f"the rules name {patterns} tool patterns; a derived grant holds at most 64"
            )
        return value

    def templates(self) -> dict[str, IdTemplate]:
        """The parsed ``subject`` and ``client`` templates."""
        return {"subject": IdTemplate(self.subject), "client": IdTemplate(self.client)}


def _federation_problems(providers: Sequence[FederationProvider]) -> list[str]:
    problems = []
    for field_name in ("issuer", "alias"):
        seen: dict[str, int] = {}
        for index, provider in enumerate(providers):
            value = getattr(provider, field_name)
            if value in seen:
                problems.append(
                    f"federation[{index}].{field_name}: {value!r} is also federation"
                    f"[{seen[value]}]'s"
                )
            seen.setdefault(value, index)
    named = [
        (index, role, template.affixes(provider.alias))
        for index, provider in enumerate(providers)
        for role, template in provider.templates().items()
    ]
    for i, (index_a, role_a, a) in enumerate(named):
        for index_b, role_b, b in named[i + 1 :]:
            if templates_may_collide(a, b):
                problems.append(
                    f"federation[{index_b}].{role_b}: ids it makes could equal ids of "
                    f"federation[{index_a}].{role_a} ({a[0]}...{a[1]} and {b[0]}...{b[1]}); "
                    "give each provider its own text before the claim"
                )
    return problems


def _key_windows(keys: Sequence[TrustedKey]) -> list[tuple[str, float | None, float | None]]:
    return [(k.principal.kid, k.not_before, k.retired_at) for k in keys]


class Policy(_Strict):
    """The whole ``agentguard.yaml``."""

    version: Literal[1] = 1
    trusted_roots: list[TrustedRoot] = Field(default_factory=list)
    approvers: list[Approver] = Field(default_factory=list)
    step_up: list[PolicyRule] = Field(default_factory=list)
    deny: list[PolicyRule] = Field(default_factory=list)
    #: Budgets on tools, whatever the delegations say (issue 19).
    budgets: list[PolicyBudget] = Field(default_factory=list)
    limits: Limits = Limits()
    redact: list[str] = Field(default_factory=lambda: list(DEFAULT_REDACT))
    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    storage: Storage = Storage()
    shadow: bool = Field(False, description="Decide and record, but never block")
    guard_id: str = "service:agentguard"
    #: The keys every process of this guard trusts for its signed heads and
    #: attested receipts (empty: only the process's own key).
    guard_keys: list[GuardKey] = Field(default_factory=list)
    #: Identity providers whose bearer tokens become delegation chains (issue 16).
    federation: list[FederationProvider] = Field(default_factory=list)

    @field_validator("guard_id")
    @classmethod
    def _guard(cls, value: str) -> str:
        return _principal(value)

    @model_validator(mode="after")
    def _federation(self) -> Policy:
        problems = _federation_problems(self.federation)
        roots = {root.id for root in self.trusted_roots}
        sso = self.approval.sso
        if sso is not None and sso.issuer not in {p.issuer for p in self.federation}:
            problems.append(
                f"approval.sso.issuer: {sso.issuer!r} is not the issuer of a federation: "
                "provider; list the provider there, so its alias and subject template name "
                "the people who sign in"
            )
        for index, provider in enumerate(self.federation):
            signer = provider.signer_id(self.guard_id)
            if signer in roots:
                problems.append(
                    f"federation[{index}]: its key {signer} is also a trusted root; a "
                    "federation key is trusted only within the federation rules, so give "
                    "it an id of its own"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    #: Directory relative key files are resolved against (set by load_policy).
    base_dir: str | None = Field(None, exclude=True)

    def root_principals(self) -> list[Principal]:
        """Load every trusted root's public key (each key of a root listed with several).

        Raises:
            ConfigError: a key is missing or malformed, or listed twice for one root.
        """
        return [key.principal for key in self.root_keys()]

    def root_keys(self) -> list[TrustedKey]:
        """Every trusted root's public key with its validity window, in order.

        Raises:
            ConfigError: a key is missing or malformed, or listed twice for one root
                (which of its windows counted would be left to chance).
        """
        out: list[TrustedKey] = []
        for index, root in enumerate(self.trusted_roots):
            where = f"trusted_roots[{index}] ({root.id})"
            try:
                principal = self.load_key(root.id, root)
            except FileNotFoundError as exc:
                raise ConfigError(f"{where}: key file {root.key_file} does not exist") from exc
            except (OSError, ValueError, IdentityError) as exc:
                raise ConfigError(f"{where}: cannot load key: {exc}") from exc
            if any(k.principal.id == root.id and k.principal.kid == principal.kid for k in out):
                raise ConfigError(f"{where}: key {principal.kid} is listed twice for {root.id}")
            out.append(TrustedKey(principal, *root.window()))
        return out

    def load_key(self, principal_id: str, entry: TrustedRoot | GuardKey) -> Principal:
        """The public key an entry gives inline or in its key file (relative to the
        policy's directory), as ``principal_id``'s.

        Raises:
            OSError: the key file cannot be read (``FileNotFoundError`` when missing).
            ValueError: it is not JSON.
            IdentityError: the key is not an Ed25519 public key.
        """
        if entry.public_key is not None:
            return Principal.from_jwk(principal_id, entry.public_key)
        path = Path(entry.key_file or "")
        if not path.is_absolute() and self.base_dir:
            path = Path(self.base_dir) / path
        doc = json.loads(read_trusted_file(path, limit=KEY_FILE_LIMIT))
        jwk = doc.get("jwk", doc) if isinstance(doc, dict) else {}
        return Principal.from_jwk(principal_id, jwk)

    def guard_key_set(self, own: Principal) -> KeySet:
        """The keys trusted for the guard's signed heads and attested receipts.

        Without ``guard_keys`` that is ``own`` (the process's key) alone, as
        before; with them it is exactly the listed keys, each within its window.

        Raises:
            ConfigError: a listed key is missing or malformed.
        """
        listed = self.listed_guard_keys()
        return KeySet(listed if listed else [TrustedKey(own)])

    def listed_guard_keys(self) -> list[TrustedKey]:
        """The ``guard_keys`` entries, loaded, in order (empty when none are listed).

        Raises:
            ConfigError: a listed key is missing or malformed.
        """
        keys: list[TrustedKey] = []
        for index, entry in enumerate(self.guard_keys):
            try:
                principal = self.load_key(self.guard_id, entry)
            except FileNotFoundError as exc:
                raise ConfigError(
                    f"guard_keys[{index}]: key file {entry.key_file} does not exist"
                ) from exc
            except (OSError, ValueError, IdentityError) as exc:
                raise ConfigError(f"guard_keys[{index}]: cannot load key: {exc}") from exc
            same = next((i for i, k in enumerate(keys) if k.principal.kid == principal.kid), None)
            if same is not None:
                # Two windows for one key would leave which one counts to chance.
                raise ConfigError(f"guard_keys[{index}]: the same key as guard_keys[{same}]")
            keys.append(TrustedKey(principal, *entry.window()))
        return keys

    def federation_keys(self, own: Principal | None = None) -> dict[str, list[TrustedKey]]:
        """The keys that vouch for federated chains, by federation key id, with windows.

        A provider naming ``key`` or ``keys`` is vouched for by exactly those keys.
        One naming neither is vouched for by the guard's: every ``guard_keys``
        entry when the policy lists any (so a chain any replica derived verifies
        on every replica), else ``own`` (the process's key); without ``own`` such
        a provider is left out.

        Raises:
            ConfigError: a key cannot be loaded or is listed twice for one id; two
                providers name one federation key id with different keys or
                windows; a federation key is also a trusted root's key, or the key
                of another federation key id (a key listed as both); ``own`` is
                not named ``guard_id``.
        """
        sets: dict[str, list[TrustedKey]] = {}
        named_in: dict[str, str] = {}
        for index, provider in enumerate(self.federation):
            entries = provider.key_entries()
            if entries:
                field = "keys" if provider.keys is not None else "key"
                where = f"federation[{index}].{field}"
                keys = [
                    self._federation_key(
                        entry, f"{where}[{n}]" if provider.keys is not None else where
                    )
                    for n, entry in enumerate(entries)
                ]
                for n, key in enumerate(keys):
                    if any(k.principal.kid == key.principal.kid for k in keys[:n]):
                        raise ConfigError(f"{where}: key {key.principal.kid} is listed twice")
                signer = entries[0].id
            elif self.guard_keys:
                where, signer, keys = "guard_keys", self.guard_id, self.listed_guard_keys()
            elif own is not None:
                if own.id != self.guard_id:
                    raise ConfigError(
                        f"the guard key is {own.id}, but the policy's guard_id is {self.guard_id}"
                    )
                where, signer, keys = "the guard's own key", self.guard_id, [TrustedKey(own)]
            else:
                continue
            earlier = sets.setdefault(signer, keys)
            named_in.setdefault(signer, where)
            if _key_windows(earlier) != _key_windows(keys):
                raise ConfigError(
                    f"federation[{index}]: its federation key {signer} is also vouched for by "
                    f"{named_in[signer]}, with other keys or windows; give both the same keys"
                )
        roots = {key.principal.kid: key.principal.id for key in self.root_keys()}
        owners: dict[str, str] = {}
        for signer, keys in sets.items():
            for key in keys:
                kid = key.principal.kid
                if kid in roots:
                    raise ConfigError(
                        f"{named_in[signer]}: key {kid} of federation key {signer} is also a "
                        f"key of the trusted root {roots[kid]}; a federation key is trusted "
                        "only within the federation rules, so it needs a key of its own"
                    )
                if owners.setdefault(kid, signer) != signer:
                    raise ConfigError(
                        f"{named_in[signer]}: key {kid} is listed both for {owners[kid]} and "
                        f"for {signer}; give each federation key id keys of its own"
                    )
        return sets

    def _federation_key(self, entry: FederationKey, where: str) -> TrustedKey:
        try:
            principal = self.load_key(entry.id, entry)
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: key file {entry.key_file} does not exist") from exc
        except (OSError, ValueError, IdentityError) as exc:
            raise ConfigError(f"{where}: cannot load key: {exc}") from exc
        return TrustedKey(principal, *entry.window())

    def approver(self, principal_id: str) -> Approver | None:
        """The approver entry for ``principal_id``, if listed."""
        return next((a for a in self.approvers if a.id == principal_id), None)

    def check_limits(self, delegation: Delegation) -> None:
        """Check a chain against the limits (length, link lifetimes, purpose, sponsor).

        Raises:
            DeniedError: reason ``policy_limit``, naming the link that breaks a limit.
        """
        limits = self.limits
        if len(delegation) > limits.max_chain_length:
            raise DeniedError(
                f"chain has {len(delegation)} links; the policy allows {limits.max_chain_length}",
                reason=Reason.POLICY_LIMIT,
            )
        for index, grant in enumerate(delegation):
            lifetime = grant.expires_at - grant.not_before
            cap = limits.max_root_ttl if index == 0 else limits.max_link_ttl
            if lifetime > cap + limits.leeway:
                raise DeniedError(
                    f"link {index} lives {int(lifetime)} s; the policy allows {int(cap)} s",
                    reason=Reason.POLICY_LIMIT,
                    link=index,
                )
        root = delegation.root
        if limits.require_purpose and not root.purpose:
            raise DeniedError("the root grant names no purpose", reason=Reason.POLICY_LIMIT, link=0)
        if limits.require_sponsor and not root.on_behalf_of:
            raise DeniedError("the root grant names no sponsor", reason=Reason.POLICY_LIMIT, link=0)

    def check_deny(self, tool: str, args: Mapping[str, Any]) -> None:
        """Refuse the call if a deny rule applies (unless it is definitely false).

        Raises:
            DeniedError: reason ``policy_denied``, naming the rule.
        """
        for index, rule in enumerate(self.deny):
            if rule.matches(tool, args):
                raise DeniedError(
                    f"policy deny rule {index} ({rule.describe()}) forbids {tool}",
                    reason=Reason.POLICY_DENIED,
                    rule=index,
                )

    def budget_charges(
        self, tool: str, args: Mapping[str, Any], delegation: Delegation
    ) -> list[Charge]:
        """This call's charges to the policy's ``budgets``, in their order.

        A ``per: chain`` count of a chain the guard derived from a federated
        token follows the provider, person and client, not the derived link
        (:func:`agentguard.budgets.chain_key`).

        Raises:
            BudgetUnmeasurable: a summed argument has no exact amount.
        """
        chain = self._chain_key(delegation)
        charges = (
            b.charge(i, tool, args, delegation, chain=chain) for i, b in enumerate(self.budgets)
        )
        return [c for c in charges if c is not None]

    def _chain_key(self, delegation: Delegation) -> str:
        signers = {p.issuer: p.signer_id(self.guard_id) for p in self.federation}
        return chain_key(delegation.root, signers)

    def budget_counters(self, delegation: Delegation) -> list[Charge]:
        """Each policy budget's counter for calls under ``delegation``, in order.

        The charges :meth:`budget_charges` would make, without a call's amounts
        and whichever tool they select: what ``agentguard inspect`` and
        ``grants list`` read with a store's ``budget_states`` (nothing charged).
        """
        chain = self._chain_key(delegation)
        return [
            Charge(b.counter_key(delegation, chain=chain), f"policy budget {i}", b.budget)
            for i, b in enumerate(self.budgets)
        ]

    def step_up_rules(self, tool: str, args: Mapping[str, Any]) -> list[tuple[int, PolicyRule]]:
        """The ``step_up`` rules (with their indexes) that apply to this call."""
        return [(i, rule) for i, rule in enumerate(self.step_up) if rule.matches(tool, args)]


def policy_schema() -> dict[str, Any]:
    """JSON Schema of ``agentguard.yaml`` (for editors)."""
    schema = Policy.model_json_schema()
    schema.setdefault("properties", {}).pop("base_dir", None)
    schema["title"] = "agentguard policy"
    return schema


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (YAML and JSON alike keep the last).

    A second ``deny: []`` would otherwise silently erase the deny rules above it.
    Merge keys (``<<``) are refused too: a merged mapping, or a key written after
    it, silently replaces what it overlaps, which is the same hazard.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "merge keys ('<<') are not allowed in a policy: write each key once",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: the base constructor reports it
            if line is not None:
                shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {shown} (first defined on line {line})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_strict_yaml(text: str, name: str) -> Any:
    """Parse a configuration file's YAML (or JSON) text, refusing duplicate and merge keys.

    Used for the policy and for the MCP proxy's configuration: in both, a key
    written twice would silently replace a security setting.

    Raises:
        ConfigError: the text is not valid YAML or repeats a key; the message
            names ``name`` and the line.
    """
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{name}{line}: {problem}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{name}: YAML nesting is too deep") from exc


def _lines(
    node: yaml.Node,
    path: tuple[Any, ...],
    out: dict[tuple[Any, ...], int],
    seen: set[int] | None = None,
) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    # Walk each node once: aliases share nodes, and re-walking them expands an
    # alias bomb ("billion laughs") into millions of paths.
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, key.value)
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _lines(item, (*path, index), out, seen)


def _loc_text(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def load_policy(source: str | Path | Mapping[str, Any]) -> Policy:
    """Load and validate a policy from a YAML/JSON file path or a mapping.

    Raises:
        ConfigError: the file is unreadable or invalid; the message names the
            file, the line (for files) and the key path.
    """
    if isinstance(source, Mapping):
        return _validate(dict(source), "policy", {})
    path = Path(source)
    try:
        text = read_trusted_file(path, limit=POLICY_FILE_LIMIT).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read policy {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # found by fuzz/fuzz_policy.py
        raise ConfigError(f"{path}: policy file is not UTF-8 text") from exc
    except ValueError as exc:  # a FIFO, a device, or over the limit: refused before reading
        raise ConfigError(f"cannot read policy: {exc}") from exc
    data = load_strict_yaml(text, str(path))
    node = yaml.compose(text, Loader=_LineLoader)  # the text parsed above: for line numbers
    if data is None:
        data = {}
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    policy = _validate(data, str(path), lines)
    return policy.model_copy(update={"base_dir": str(path.resolve().parent)})


class PolicyError(ConfigError):
    """A policy that does not validate, with every problem found.

    ``problems`` lists each as ``file:line: key.path: message`` (without a line
    for a mapping); the message joins them.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The policy model that holds the key at ``loc`` (for "did you mean")."""
    model: type[BaseModel] = Policy
    for part in loc[:-1]:
        if isinstance(part, int):
            continue  # an item of a list: the same model as the list's
        field = model.model_fields.get(part)
        if field is None:
            return None
        found = _model_in(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: Sequence[Any]) -> str:
    """``unknown key``, with the closest known key of the same mapping when one is close."""
    model = _model_at(loc)
    key = loc[-1] if loc else None
    if model is None or not isinstance(key, str):
        return "unknown key"
    known = [name for name in model.model_fields if name != "base_dir"]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"


def _validate(data: Any, name: str, lines: dict[tuple[Any, ...], int]) -> Policy:
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the policy must be a mapping of keys to values")
    data = {k: v for k, v in data.items() if k != "base_dir"}
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            line = None
            for cut in range(len(loc), -1, -1):
                line = lines.get(loc[:cut])
                if line is not None:
                    break
            where = f"{name}:{line}" if line is not None else name
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = _unknown_key(loc)
            problems.append((line or 0, f"{where}: {_loc_text(loc)}: {message}"))
        # In file order, so an editor can walk them top to bottom.
        raise PolicyError([text for _, text in sorted(problems, key=lambda p: p[0])]) from None
