"""Budgets: how many calls, and how much of an argument, a rule allows per window.

A :class:`Budget` rides on a delegation rule (``Rule(..., budget=...)``) and is
signed with its grant. At call time every budget along the chain whose rule may
apply is charged (:func:`charges_for`): a parent's budget is keyed by the
parent's link id, so all its descendants share it, and a child can never spend
more than its parent allows.

Windows are **fixed**: a window of length *w* covers ``[k*w, (k+1)*w)`` seconds
since the Unix epoch (``1d`` runs from midnight to midnight UTC). A fixed window
is one counter per budget and window, which the store can check and raise in
the decision record's own transaction, and its reset time is one number a
refusal can name. A sliding window would need every charge kept and would make
the reset time depend on the history; the price of the fixed window is that up
to twice the budget can be spent across a window boundary.

Sums are exact :class:`~decimal.Decimal` arithmetic. An amount that is missing,
not a JSON number, negative, not finite or not exactly representable is refused
(:attr:`~agentguard.decision.Reason.BUDGET_UNMEASURABLE`): unknown is never zero.
Stores keep the counters (:func:`settle` is the logic they share).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Any, Protocol, TypeGuard

from agentguard.clock import format_duration, parse_duration
from agentguard.decision import Reason
from agentguard.errors import DeniedError, StoreError
from agentguard.predicates import Truth, evaluate


class _Rule(Protocol):
    """What :func:`charges_for` reads of a rule (:class:`agentguard.tokens.Rule`)."""

    @property
    def budget(self) -> object: ...

    @property
    def predicate(self) -> list[Any] | None: ...

    def matches_tool(self, address: str) -> bool: ...


class _Link(Protocol):
    """What :func:`charges_for` reads of a grant (:class:`agentguard.tokens.Grant`)."""

    @property
    def link_id(self) -> str: ...

    @property
    def scope(self) -> Sequence[_Rule]: ...


class _Root(Protocol):
    """What :func:`chain_key` reads of a chain's root (:class:`agentguard.tokens.Grant`)."""

    @property
    def link_id(self) -> str: ...

    @property
    def issuer(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def on_behalf_of(self) -> str | None: ...

    @property
    def meta(self) -> Mapping[str, Any] | None: ...


__all__ = [
    "FEDERATION_EVIDENCE_KEY",
    "MAX_CALLS",
    "MAX_SUM",
    "MAX_WINDOW",
    "Budget",
    "BudgetExhausted",
    "BudgetState",
    "BudgetUnmeasurable",
    "Charge",
    "Usage",
    "amount_of",
    "chain_key",
    "charges_for",
    "charge_of",
    "charged_record",
    "describe_usage",
    "judge",
    "pending_usage",
    "refuse_unless_fits",
    "request_budgets",
    "rule_usage",
    "settle",
    "window_bounds",
]

#: The longest window a budget may have (seconds): 366 days.
MAX_WINDOW = 366 * 86400
#: The most calls a budget may allow per window.
MAX_CALLS = 10**9
#: The largest sum a budget may allow per window.
MAX_SUM = Decimal(10) ** 18
#: How many fractional digits a limit or an amount may have.
MAX_FRACTION_DIGITS = 18
#: How many arguments one budget may sum.
MAX_SUMS = 8

# A limit as signed in a grant: a plain positive decimal, no sign, exponent or
# leading zeros, so one value has one spelling.
_DECIMAL_TEXT = re.compile(r"(?:0|[1-9][0-9]{0,18})(?:\.[0-9]{0,17}[1-9])?")
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# Exact arithmetic: anything that would round is an error, never a silent change.
_EXACT = Context(prec=60, traps=[Inexact, Rounded, InvalidOperation, Overflow])
_SPEC_KEYS = frozenset({"window", "calls", "sum"})


class BudgetExhausted(DeniedError):
    """The call would exceed a budget of its chain (or of the policy) in this window.

    Attributes:
        budget: which budget (``link 0 rule 1``, ``policy budget 0``).
        resets_at: when the budget's window ends (Unix seconds, the store's clock).
    """

    default_reason = Reason.BUDGET_EXHAUSTED

    def __init__(
        self,
        explanation: str,
        *,
        budget: str,
        resets_at: float,
        link: int | None = None,
        rule: int | None = None,
    ) -> None:
        super().__init__(explanation, link=link, rule=rule)
        self.budget = budget
        self.resets_at = resets_at


class BudgetUnmeasurable(DeniedError):
    """A budgeted sum's argument is missing, not a number, negative or not finite."""

    default_reason = Reason.BUDGET_UNMEASURABLE


def _fail(message: str) -> ValueError:
    return ValueError(f"budget: {message}")


def _decimal_limit(value: object, name: str) -> Decimal:
    """A sum limit from a spec: an int, a decimal string, a Decimal or a finite float."""
    if isinstance(value, bool):
        raise _fail(f"sum limit of {name!r} must be a number")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(f"sum limit of {name!r} must be finite")
        number = Decimal(repr(value))  # the decimal the float was written as
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise _fail(f"sum limit of {name!r} is too long")
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise _fail(f"sum limit of {name!r} is not a decimal number") from None
    else:
        raise _fail(f"sum limit of {name!r} must be a number")
    return _checked_limit(number, name)


def _checked_limit(number: Decimal, name: str) -> Decimal:
    if not number.is_finite():
        raise _fail(f"sum limit of {name!r} must be finite")
    if number <= 0:
        raise _fail(f"sum limit of {name!r} must be positive")
    if number > MAX_SUM:
        raise _fail(f"sum limit of {name!r} is above {MAX_SUM}")
    if _fraction_digits(number) > MAX_FRACTION_DIGITS:
        raise _fail(f"sum limit of {name!r} has more than {MAX_FRACTION_DIGITS} decimals")
    return number


def _fraction_digits(number: Decimal) -> int:
    """How many digits after the point ``number`` needs (trailing zeros do not count)."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # noqa: S101 - finite numbers only
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0") or "0")
    return max(0, -(exponent + trailing)) if any(digits) else 0


def _decimal_text(number: Decimal) -> str:
    """The one spelling of a decimal in a grant: ``500``, ``12.5`` (no exponent)."""
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@dataclass(frozen=True)
class Budget:
    """At most ``calls`` calls and ``sum`` of each named argument per ``window`` seconds.

    Build one from the friendly form with :meth:`parse` (what ``Rule(budget=...)``
    and the policy accept); :meth:`to_claim` is the form signed in a grant and
    :meth:`from_claim` reads it back strictly.

    Attributes:
        window: the window's length in seconds (fixed windows, aligned to the epoch).
        calls: the most allowed calls per window, or ``None``.
        sums: ``(argument, limit)`` pairs, sorted by argument.
    """

    window: int
    calls: int | None = None
    sums: tuple[tuple[str, Decimal], ...] = field(default=())

    @classmethod
    def parse(cls, spec: object) -> Budget:
        """A budget from ``{"window": "1d", "calls": 10, "sum": {"amount": 500}}``.

        ``window`` is text like ``1h``/``1d`` or whole seconds; ``calls`` a
        positive integer; ``sum`` maps top-level argument names to positive
        decimal limits (ints, decimal strings, ``Decimal``, finite floats).
        At least one of ``calls`` and ``sum`` is required.

        Raises:
            ValueError: the budget is malformed, zero, negative, not finite,
                too large or names unknown keys.
        """
        if isinstance(spec, Budget):
            return spec
        if not isinstance(spec, Mapping):
            raise _fail("must be a mapping with window and calls and/or sum")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise _fail(f"unknown key(s) {sorted(map(str, unknown))}; use window, calls, sum")
        if "window" not in spec:
            raise _fail("needs a window (e.g. '1h', '1d')")
        window_value = spec["window"]
        if isinstance(window_value, float) and not window_value.is_integer():
            raise _fail("window must be whole seconds")
        try:
            seconds = parse_duration(window_value)
        except ValueError as exc:
            raise _fail(f"window: {exc}") from None
        if not seconds.is_integer():  # a timedelta with a fraction of a second
            raise _fail("window must be whole seconds")
        window = int(seconds)
        calls = spec.get("calls")
        sums_spec = spec.get("sum")
        if sums_spec is not None and not isinstance(sums_spec, Mapping):
            raise _fail("sum must map argument names to limits")
        sums = tuple(
            sorted(
                (_arg_name(name), _decimal_limit(v, str(name)))
                for name, v in (sums_spec or {}).items()
            )
        )
        return cls._checked(window, calls, sums)

    @classmethod
    def _checked(
        cls, window: object, calls: object, sums: tuple[tuple[str, Decimal], ...]
    ) -> Budget:
        if isinstance(window, bool) or not isinstance(window, int) or not 0 < window <= MAX_WINDOW:
            raise _fail(f"window must be 1 second to {MAX_WINDOW // 86400} days")
        if calls is not None and (
            isinstance(calls, bool) or not isinstance(calls, int) or not 0 < calls <= MAX_CALLS
        ):
            raise _fail(f"calls must be a whole number from 1 to {MAX_CALLS}")
        if calls is None and not sums:
            raise _fail("needs calls or sum (or both)")
        if len(sums) > MAX_SUMS:
            raise _fail(f"sums at most {MAX_SUMS} arguments")
        return cls(window=window, calls=calls, sums=sums)

    def to_claim(self) -> dict[str, Any]:
        """The budget as signed in a grant: seconds, a count, decimal strings."""
        claim: dict[str, Any] = {"window": self.window}
        if self.calls is not None:
            claim["calls"] = self.calls
        if self.sums:
            claim["sum"] = {name: _decimal_text(limit) for name, limit in self.sums}
        return claim

    @classmethod
    def from_claim(cls, claim: object) -> Budget:
        """Read a budget from a grant (strict: the exact form :meth:`to_claim` writes).

        Raises:
            ValueError: the claim is malformed.
        """
        if not isinstance(claim, dict) or not set(claim) <= _SPEC_KEYS:
            raise _fail("must be an object with window, calls, sum")
        sums_claim = claim.get("sum")
        if "sum" in claim and (not isinstance(sums_claim, dict) or not sums_claim):
            raise _fail("sum must be a non-empty object")
        sums: list[tuple[str, Decimal]] = []
        for name, text in (sums_claim or {}).items():
            if not isinstance(text, str) or _DECIMAL_TEXT.fullmatch(text) is None:
                raise _fail("a sum limit is signed as a plain decimal string")
            sums.append((_arg_name(name), _checked_limit(Decimal(text), name)))
        if "calls" in claim and claim["calls"] is None:
            raise _fail("calls must be a number")
        return cls._checked(claim.get("window"), claim.get("calls"), tuple(sorted(sums)))

    def describe(self) -> str:
        """``10 calls, amount <= 500 per 1d``."""
        parts = [] if self.calls is None else [f"{self.calls} call{'s' * (self.calls != 1)}"]
        parts += [f"{name} <= {_decimal_text(limit)}" for name, limit in self.sums]
        return f"{', '.join(parts)} per {_window_text(self.window)}"

    def never_binds_under(self, parent: Budget) -> list[str]:
        """Which of this budget's limits can never bind under ``parent``'s.

        A limit never binds when the parent allows no more in a window that
        holds this budget's window whole (epoch-aligned windows nest when the
        parent's length is a multiple of this one's).
        """
        if parent.window % self.window:
            return []
        notes = []
        if self.calls is not None and parent.calls is not None and self.calls >= parent.calls:
            notes.append(f"calls ({self.calls} >= {parent.calls})")
        mine = dict(self.sums)
        for name, limit in parent.sums:
            if name in mine and mine[name] >= limit:
                notes.append(
                    f"sum of {name} ({_decimal_text(mine[name])} >= {_decimal_text(limit)})"
                )
        return notes


def _window_text(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _arg_name(name: object) -> str:
    if not isinstance(name, str) or _ARG_NAME.fullmatch(name) is None:
        raise _fail("a summed argument is named by a top-level argument name")
    return name


def window_bounds(now: float, window: int) -> tuple[int, int]:
    """The fixed window holding ``now``: ``(start, end)`` in whole seconds."""
    start = math.floor(now / window) * window
    return start, start + window


def amount_of(args: Mapping[str, Any], name: str) -> Decimal:
    """The exact amount of argument ``name``: a finite, non-negative JSON number.

    Raises:
        BudgetUnmeasurable: the argument is missing, not a number (a string, a
            bool), negative, not finite or not exactly representable.
    """
    value = args.get(name) if isinstance(args, Mapping) else None
    if value is None:
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is not finite")
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not number.is_finite():
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is not finite")
    if number < 0:
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is negative")
    if number > MAX_SUM:
        raise BudgetUnmeasurable(f"the budgeted argument {name!r} is larger than any budget")
    if _fraction_digits(number) > MAX_FRACTION_DIGITS:
        raise BudgetUnmeasurable(
            f"the budgeted argument {name!r} has more than {MAX_FRACTION_DIGITS} decimals"
        )
    return number


@dataclass(frozen=True)
class Charge:
    """What one call costs one budget.

    Attributes:
        key: the budget's counter (link id and rule, or the policy budget's key).
        label: which budget, for people (``link 0 rule 1``).
        budget: the budget.
        amounts: ``(argument, amount)`` for each of the budget's sums.
        link: the link index of a rule budget (``None`` for a policy budget).
        rule: the rule index of a rule budget.
    """

    key: str
    label: str
    budget: Budget
    amounts: tuple[tuple[str, Decimal], ...] = ()
    link: int | None = None
    rule: int | None = None


@dataclass(frozen=True)
class Usage:
    """What a budget's window has used: calls and each summed argument's total."""

    calls: int = 0
    sums: tuple[tuple[str, Decimal], ...] = ()

    def to_text(self) -> str:
        """Stored form: canonical JSON-like text of decimal strings."""
        inner = ",".join(f'"{k}":"{_decimal_text(v)}"' for k, v in sorted(self.sums))
        return "{" + inner + "}"

    @classmethod
    def from_row(cls, calls: int, sums_text: str) -> Usage:
        """Read a stored row back.

        Raises:
            StoreError: the row is damaged.
        """
        try:
            raw = json.loads(sums_text)
            if not isinstance(raw, dict) or isinstance(calls, bool) or not isinstance(calls, int):
                raise ValueError("not a usage row")
            sums = tuple(sorted((str(k), Decimal(str(v))) for k, v in raw.items()))
        except (ValueError, TypeError, InvalidOperation) as exc:
            # A counter that cannot be read cannot be trusted to be low: refuse.
            raise StoreError("a stored budget counter is damaged") from exc
        return cls(calls, sums)


@dataclass(frozen=True)
class BudgetState:
    """One budget in one window, before or after a call.

    Attributes:
        charge: the charge it was judged for.
        start, end: the window (Unix seconds).
        used: what the window had used before this call.
        fits: whether this call fits.
    """

    charge: Charge
    start: int
    end: int
    used: Usage
    fits: bool

    def after(self) -> Usage:
        """What the window has used once this call is charged."""
        sums = dict(self.used.sums)
        for name, amount in self.charge.amounts:
            sums[name] = _EXACT.add(sums.get(name, Decimal(0)), amount)
        return Usage(self.used.calls + 1, tuple(sorted(sums.items())))

    def as_record(self, *, charged: bool) -> dict[str, Any]:
        """The budget as the audit record shows it (used includes this call when charged)."""
        used = self.after() if charged else self.used
        budget = self.charge.budget
        out: dict[str, Any] = {
            "budget": self.charge.label,
            "key": self.charge.key,
            "window": budget.window,
            "window_start": self.start,
            "resets_at": self.end,
        }
        if budget.calls is not None:
            out["calls"] = {"used": used.calls, "limit": budget.calls}
        totals = dict(used.sums)
        for name, limit in budget.sums:
            out.setdefault("sum", {})[name] = {
                "used": _decimal_text(totals.get(name, Decimal(0))),
                "limit": _decimal_text(limit),
            }
        return out


def _judge(charge: Charge, start: int, end: int, used: Usage) -> BudgetState:
    budget = charge.budget
    fits = budget.calls is None or used.calls + 1 <= budget.calls
    totals = dict(used.sums)
    limits = dict(budget.sums)
    for name, amount in charge.amounts:
        try:
            fits = fits and _EXACT.add(totals.get(name, Decimal(0)), amount) <= limits[name]
        except (Inexact, Rounded, InvalidOperation, Overflow):
            fits = False
    return BudgetState(charge, start, end, used, fits)


def judge(
    charges: Sequence[Charge], now: float, read: Callable[[str, int], Usage | None]
) -> list[BudgetState]:
    """Each charge judged against its window's usage (``read(key, window_start)``,
    ``None`` when the window has used nothing); nothing is written or refused."""
    states = []
    for charge in charges:
        start, end = window_bounds(now, charge.budget.window)
        states.append(_judge(charge, start, end, read(charge.key, start) or Usage()))
    return states


def refuse_unless_fits(states: Sequence[BudgetState], now: float) -> None:
    """Raise the refusal for the first state that does not fit, if any.

    Raises:
        BudgetExhausted: some charge does not fit; ``resets_at`` is when every
            refusing window has reset.
    """
    refused = [s for s in states if not s.fits]
    if not refused:
        return
    first = refused[0]
    latest = max(s.end for s in refused)
    raise BudgetExhausted(
        f"{first.charge.label}'s budget ({first.charge.budget.describe()}) is spent "
        f"for this window; it resets at {_stamp(latest)} "
        f"(in {format_duration(max(latest - now, 0))})",
        budget=first.charge.label,
        resets_at=latest,
        link=first.charge.link,
        rule=first.charge.rule,
    )


def settle(
    charges: Sequence[Charge],
    now: float,
    read: Callable[[str, int], Usage | None],
    write: Callable[[BudgetState, Usage], None],
) -> list[BudgetState]:
    """Charge every budget, or none: stores call this inside their transaction.

    ``read(key, window_start)`` is the stored usage; ``write(state, usage)``
    stores a window's new usage. Nothing is written unless every charge fits.

    Raises:
        BudgetExhausted: some charge does not fit (nothing was written).
    """
    states = judge(charges, now, read)
    refuse_unless_fits(states, now)
    for state in states:
        write(state, state.after())
    return states


def charged_record(
    record: dict[str, Any],
    charges: Sequence[Charge],
    now: float,
    read: Callable[[str, int], Usage | None],
    write: Callable[[BudgetState, Usage], None],
) -> dict[str, Any]:
    """:func:`settle` the charges; ``record`` with the budgets' new state as ``budget``.

    Raises:
        BudgetExhausted: some charge does not fit (nothing was written).
    """
    states = settle(charges, now, read, write)
    return {**record, "budget": [s.as_record(charged=True) for s in states]}


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rule_key(link_id: str, rule: int) -> str:
    """The counter key of rule ``rule`` of the link ``link_id``."""
    return f"rule/{link_id}/{rule}"


def charges_for(
    links: Sequence[_Link],
    tool: str,
    args: Mapping[str, Any],
    extra: Sequence[Charge] = (),
) -> list[Charge]:
    """Every budget of ``links`` (a chain's grants) this call is charged to, root
    first, then ``extra``.

    A budget rule restricts: it applies whenever its pattern selects the tool
    and its predicate is not definitely false, even when another rule of the
    same link admits the call.

    Raises:
        BudgetUnmeasurable: a budgeted sum's argument has no exact amount.
    """
    charges: list[Charge] = []
    for index, grant in enumerate(links):
        for r_index, rule in enumerate(grant.scope):
            budget = rule.budget
            if not isinstance(budget, Budget) or not rule.matches_tool(tool):
                continue
            predicate = rule.predicate
            if predicate is not None and evaluate(predicate, args) is Truth.FALSE:
                continue
            label = f"link {index} rule {r_index}"
            charges.append(
                Charge(
                    key=rule_key(grant.link_id, r_index),
                    label=label,
                    budget=budget,
                    amounts=_amounts(budget, args, label, index, r_index),
                    link=index,
                    rule=r_index,
                )
            )
    return [*charges, *extra]


def charge_of(key: str, label: str, budget: Budget, args: Mapping[str, Any]) -> Charge:
    """The charge of one call to a budget that is not a rule's (a policy budget).

    Raises:
        BudgetUnmeasurable: a summed argument has no exact amount.
    """
    return Charge(key=key, label=label, budget=budget, amounts=_amounts(budget, args, label))


def _amounts(
    budget: Budget,
    args: Mapping[str, Any],
    label: str,
    link: int | None = None,
    rule: int | None = None,
) -> tuple[tuple[str, Decimal], ...]:
    out = []
    for name, _ in budget.sums:
        try:
            out.append((name, amount_of(args, name)))
        except BudgetUnmeasurable as exc:
            exc.explanation = f"{label}: {exc.explanation}; a budgeted call needs its amount"
            exc.link, exc.rule = link, rule
            raise
    return tuple(out)


#: The ``meta`` member of a federation-derived link holding its evidence
#: (``agentguard.federation.EVIDENCE_KEY``, which imports the policy, which imports this).
FEDERATION_EVIDENCE_KEY = "federation"


def chain_key(root: _Root, federation_signers: Mapping[str, str]) -> str:
    """Whose ``per: chain`` count a chain is: ``chain/`` and what identifies its root.

    A root grant someone issued is its link id: everything delegated below it
    shares the count, and a new grant is a new authority. A root the guard
    derived from a federated token is different: each derivation (a token
    exchange, a cache miss, a restart, another replica) signs a new link for
    the same authority, so its count is keyed by what the link states that
    authority is: the provider's issuer, the person (``on_behalf_of``) and the
    client (``subject``), as a digest. ``federation_signers`` maps each
    provider's issuer to the id of the key that signs its derived links; a
    root signed by any other key counts by its link id, whatever its ``meta``
    says.
    """
    evidence = (root.meta or {}).get(FEDERATION_EVIDENCE_KEY)
    issuer = evidence.get("iss") if isinstance(evidence, Mapping) else None
    if (
        isinstance(issuer, str)
        and root.on_behalf_of is not None
        and federation_signers.get(issuer) == root.issuer
    ):
        stated = json.dumps([issuer, root.on_behalf_of, root.subject], separators=(",", ":"))
        return f"chain/federated/{hashlib.sha256(stated.encode()).hexdigest()[:32]}"
    return f"chain/{root.link_id}"


def policy_key(definition: Mapping[str, Any], who: str) -> str:
    """The counter key of a policy budget: its definition's digest and whose count it is.

    A budget whose definition changes starts new counters.
    """
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode())
    return f"policy/{digest.hexdigest()[:32]}/{who}"


def rule_usage(
    links: Sequence[_Link],
    read: Callable[[Sequence[Charge], float], list[BudgetState]],
    now: float,
) -> dict[tuple[int, int], dict[str, Any]]:
    """What each budgeted rule of ``links`` has used in its current window, by
    ``(link, rule)``: the audit record's form (:meth:`BudgetState.as_record`).

    ``read`` is a store's ``budget_states``; nothing is charged.

    Raises:
        StoreError: the counters cannot be read.
    """
    charges = [
        Charge(rule_key(grant.link_id, r), f"link {i} rule {r}", rule.budget, link=i, rule=r)
        for i, grant in enumerate(links)
        for r, rule in enumerate(grant.scope)
        if isinstance(rule.budget, Budget)
    ]
    if not charges:
        return {}
    states = read(charges, now)
    return {
        (int(c.link or 0), int(c.rule or 0)): s.as_record(charged=False)
        for c, s in zip(charges, states, strict=True)
    }


# The most budgets one call can be charged to: rules of every link, and the policy's.
_MAX_RECORDED = 256


def request_budgets(charges: Sequence[Charge]) -> list[dict[str, Any]]:
    """What an approval request records of the budgets its call is charged to.

    Each budget's label, counter key and signed form (:meth:`Budget.to_claim`),
    so the approval page can show what it has used; not the call's amounts,
    which may be redacted arguments.
    """
    return [{"budget": c.label, "key": c.key, **c.budget.to_claim()} for c in charges]


def _usable_name(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= 200


def pending_usage(
    recorded: Sequence[object],
    read: Callable[[Sequence[Charge], float], list[BudgetState]],
    now: float,
) -> list[dict[str, Any]]:
    """What each budget an approval request recorded (:func:`request_budgets`) has
    used in its current window: the audit record's form, this call not counted.

    ``read`` is a store's ``budget_states``; nothing is charged.

    Raises:
        ValueError: an entry is not one :func:`request_budgets` writes.
        StoreError: the counters cannot be read.
    """
    if len(recorded) > _MAX_RECORDED:
        raise ValueError("too many recorded budgets")
    charges = []
    for entry in recorded:
        if not isinstance(entry, Mapping):
            raise ValueError("a recorded budget is not an object")
        label, key = entry.get("budget"), entry.get("key")
        if not (_usable_name(label) and _usable_name(key)):
            raise ValueError("a recorded budget has no usable label or key")
        claim = {k: v for k, v in entry.items() if k not in ("budget", "key")}
        charges.append(Charge(key, label, Budget.from_claim(claim)))
    if not charges:
        return []
    return [s.as_record(charged=False) for s in read(charges, now)]


def describe_usage(view: Mapping[str, Any], sep: str = ", ") -> str:
    """``2/10 calls used (8 left), 120/500 amount used (380 left), resets 2027-01-16T00:00:00Z``.

    ``view`` is the audit record's form (:meth:`BudgetState.as_record`).
    """
    parts = []
    if "calls" in view:
        used, limit = view["calls"]["used"], view["calls"]["limit"]
        parts.append(f"{used}/{limit} calls used ({max(limit - used, 0)} left)")
    for name, total in view.get("sum", {}).items():
        left = max(Decimal(total["limit"]) - Decimal(total["used"]), Decimal(0))
        parts.append(f"{total['used']}/{total['limit']} {name} used ({_decimal_text(left)} left)")
    parts.append(f"resets {_stamp(view['resets_at'])}")
    return sep.join(parts)
