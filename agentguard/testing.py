"""Helpers for testing code that agentguard governs: a world, a clock, a guard, recorders.

A test needs a trusted root, someone to delegate, an agent holding the
delegation, an approver with a key, a clock that only moves when told to, and
a guard that keeps everything in memory. :class:`World` is that cast::

    import pytest
    from agentguard import DeniedError
    from agentguard.testing import RecordingTool, World, audit_records

    def test_refunds_over_the_limit_never_run() -> None:
        world = World()
        guard = world.guard()
        refund = RecordingTool()
        with pytest.raises(DeniedError):
            guard.call(world.delegation, "billing/refund", {"amount": 5000}, refund,
                       holder=world.bot)
        assert not refund.ran
        assert audit_records(guard)[-1]["reason"] == "predicate_failed"

:func:`capture_spans` collects the OpenTelemetry spans the guard opens (it
needs the ``telemetry`` extra). The helpers use only the public API of
:class:`~agentguard.guard.Guard`, so they keep working as its insides change.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from agentguard.approval import ApprovalBook, ApprovalRequest, CallbackChannel, Channel
from agentguard.clock import Clock, ManualClock
from agentguard.delegation import Delegation, ScopeSpec
from agentguard.guard import Guard
from agentguard.keys import Identity
from agentguard.store.base import Store
from agentguard.store.memory import MemoryStore
from agentguard.telemetry import capture_spans

__all__ = [
    "DEFAULT_SCOPE",
    "ManualClock",
    "RecordingTool",
    "START",
    "World",
    "audit_records",
    "capture_spans",
]

#: Where a world's clock starts unless told otherwise (2027-01-15T08:00:00Z).
START = 1_800_000_000.0

#: The scope of :attr:`World.delegation`: every ``tickets`` tool; ``billing/refund``
#: up to an amount of 1000; every ``admin`` tool, with approval; every ``fs`` tool.
DEFAULT_SCOPE: tuple[str | dict[str, Any], ...] = (
    "tickets/*",
    {"tool": "billing/refund", "where": {"amount": {"<=": 1000}}},
    {"tool": "admin/*", "approval": True},
    "fs/*",
)


class World:
    """The identities, delegations and clock of one test.

    The cast, each an :class:`~agentguard.keys.Identity` with a fresh key:

    * ``org`` (``org:acme``), the trusted root of every delegation and guard here;
    * ``alice`` (``user:alice``), the human the agent works for: the org delegates
      to her and she delegates to the agent;
    * ``bot`` (``agent:bot``), the agent, holder of :attr:`delegation`;
    * ``carol`` (``user:carol``), the approver the guard's policy lists with her key.

    :attr:`delegation` is ``org:acme -> user:alice -> agent:bot`` over
    :data:`DEFAULT_SCOPE`, issued at the clock's time, for customer support on
    behalf of ``user:alice``. Other identities come from :meth:`identity`, other
    delegations from :meth:`chain` and :meth:`delegate`.

    Example::

        world = World()
        guard = world.guard()
        assert guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed
        world.clock.advance(2 * 3600)  # the agent's link lasts one hour
        assert not guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed
    """

    def __init__(self, *, clock: ManualClock | None = None) -> None:
        self.clock = clock if clock is not None else ManualClock(START)
        self._identities: dict[str, Identity] = {}
        self.org = self.identity("org:acme")
        self.alice = self.identity("user:alice")
        self.bot = self.identity("agent:bot")
        self.carol = self.identity("user:carol")
        self.delegation = self.chain(self.bot)

    def identity(self, principal_id: str) -> Identity:
        """The identity named ``principal_id`` (``kind:name``), generated on first use.

        Raises:
            IdentityError: the id is not a valid principal id.
        """
        if principal_id not in self._identities:
            self._identities[principal_id] = Identity.generate(principal_id)
        return self._identities[principal_id]

    def chain(
        self,
        holder: Identity,
        *,
        scope: ScopeSpec | None = None,
        root_ttl: str = "1d",
        leaf_ttl: str = "1h",
        purpose: str | None = "customer support",
        sponsor: str | None = "user:alice",
    ) -> Delegation:
        """A fresh two-link delegation ``org:acme -> user:alice -> holder``.

        Both links carry ``scope`` (default :data:`DEFAULT_SCOPE`); the root
        allows two delegations, so the holder may delegate once more.

        Raises:
            IssuanceError: the scope or a lifetime is invalid.
        """
        rules = DEFAULT_SCOPE if scope is None else scope
        root = Delegation.issue(
            self.org,
            self.alice,
            rules,
            ttl=root_ttl,
            purpose=purpose,
            on_behalf_of=sponsor,
            max_depth=2,
            clock=self.clock,
        )
        return root.attenuate(self.alice, holder, rules, ttl=leaf_ttl, clock=self.clock)

    def delegate(
        self,
        *path: Identity | str,
        scope: ScopeSpec | None = None,
        ttl: str = "1h",
        purpose: str | None = "customer support",
        sponsor: str | None = "user:alice",
    ) -> Delegation:
        """A delegation of any length from the org through ``path``; the last one holds it.

        The org delegates to ``path[0]``, who delegates to ``path[1]``, and so on.
        Ids in ``path`` name identities of this world (see :meth:`identity`).
        Every link carries ``scope`` (default :data:`DEFAULT_SCOPE`) and
        expires with the root, ``ttl`` from now; the root allows one delegation
        more than the path uses, so the holder may delegate once more.

        Example::

            three = world.delegate("team:ir", "user:alice", "agent:bot")
            assert [grant.subject for grant in three] == ["team:ir", "user:alice", "agent:bot"]

        Raises:
            ValueError: ``path`` is empty.
            IssuanceError: the scope or the lifetime is invalid.
        """
        if not path:
            raise ValueError("delegate() needs at least one identity to delegate to")
        holders = [p if isinstance(p, Identity) else self.identity(p) for p in path]
        rules = DEFAULT_SCOPE if scope is None else scope
        delegation = Delegation.issue(
            self.org,
            holders[0],
            rules,
            ttl=ttl,
            purpose=purpose,
            on_behalf_of=sponsor,
            max_depth=len(holders),
            clock=self.clock,
        )
        for issuer, subject in pairwise(holders):
            delegation = delegation.attenuate(issuer, subject, rules, clock=self.clock)
        return delegation

    def policy(self, **overrides: Any) -> dict[str, Any]:
        """A policy document trusting ``org:acme``, with ``user:carol`` approving any tool.

        Carol's public key is listed, so her signed receipts count, and any
        assurance from ``local`` up is accepted from her. Keyword arguments
        replace top-level keys (``deny=[...]``, ``step_up=[...]``, ``limits={...}``).
        """
        doc: dict[str, Any] = {
            "version": 1,
            "trusted_roots": [{"id": self.org.id, "public_key": self.org.principal.public_jwk()}],
            "approvers": [
                {
                    "id": self.carol.id,
                    "tools": ["*/*"],
                    "min_assurance": "local",
                    "public_key": self.carol.principal.public_jwk(),
                }
            ],
        }
        doc.update(overrides)
        return doc

    def write_policy(self, path: Path, **overrides: Any) -> Path:
        """Write :meth:`policy` as YAML to ``path`` (for a CLI, a proxy or another process).

        Returns ``path``.
        """
        path.write_text(yaml.safe_dump(self.policy(**overrides), sort_keys=False), encoding="utf-8")
        return path

    def guard(
        self,
        *,
        store: Store | None = None,
        home: Path | None = None,
        approver: Channel | None = None,
        approval_mode: str | None = None,
        enforcement_point: str = "python",
        clock: Clock | None = None,
        **policy: Any,
    ) -> Guard:
        """A :class:`~agentguard.guard.Guard` over :meth:`policy`, on this world's clock.

        Everything is in memory (a fresh :class:`~agentguard.store.memory.MemoryStore`)
        unless ``store`` or ``home`` is given. Without ``approver`` the policy's
        channel applies, ``none`` by default: a call that needs approval is
        refused with ``approval_unavailable``. ``clock`` replaces the world's
        (a :class:`~agentguard.clock.SystemClock` for tests that really wait).
        Other keyword arguments are top-level policy keys, as in :meth:`policy`.

        Example::

            guard = world.guard(deny=[{"tools": ["tickets/delete"]}])

        Raises:
            ConfigError: an override makes the policy invalid.
        """
        if store is None and home is None:
            store = MemoryStore()
        return Guard(
            self.policy(**policy),
            home=home,
            store=store,
            clock=self.clock if clock is None else clock,
            approver=approver,
            approval_mode=approval_mode,
            enforcement_point=enforcement_point,
        )

    def approver(self, *, approve: bool = True, message: str | None = None) -> Channel:
        """An approval channel on which ``user:carol`` answers every request at once.

        She signs each answer with her own key (assurance ``signed``), so it
        satisfies any rule that she may approve.

        Example::

            guard = world.guard(approver=world.approver())
            guard.call(world.delegation, "admin/reset", {}, RecordingTool(), holder=world.bot)
        """

        def answer(request: ApprovalRequest, book: ApprovalBook) -> None:
            if approve:
                book.approve(request.id, self.carol, message=message)
            else:
                book.deny(request.id, self.carol, message=message)

        return CallbackChannel(answer, name="carol")


class RecordingTool:
    """A tool function that remembers every call and returns ``result``.

    Example::

        tool = RecordingTool()
        guard.call(world.delegation, "tickets/read", {"id": 7}, tool, holder=world.bot)
        assert tool.calls == [{"id": 7}]
    """

    def __init__(self, result: Any = "done") -> None:
        self.result = result
        #: The keyword arguments of each call, oldest first.
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.result

    @property
    def ran(self) -> bool:
        """Whether the tool ran at all."""
        return bool(self.calls)


def audit_records(guard: Guard) -> list[dict[str, Any]]:
    """Every audit record ``guard`` wrote, oldest first, as dictionaries.

    Each decision writes a ``decision`` record (``outcome``, ``reason``,
    ``tool``, ``path``, ``link_ids``, ``call_token``, ...); each tool that ran
    adds a ``completion`` record with the same ``decision_id``.

    Raises:
        StoreError: the guard's store cannot be read.
    """
    return [json.loads(entry.body) for entry in guard.store.audit_entries()]
