"""Guard replicas on one PostgreSQL database trust each other's keys (``guard_keys``).

Each replica keeps its own guard key in its own state directory; the signed
heads in the shared database and the receipts a replica attests are checked
against the set of keys the policy lists, each within its validity window.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentguard import _jws
from agentguard.audit import TYP_CHECKPOINT
from agentguard.clock import ManualClock
from agentguard.errors import ApprovalPending, ConfigError, DeniedError
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring, KeySet, TrustedKey, b64url_encode
from agentguard.store.postgres import PostgresStore
from agentguard.testing import START, RecordingTool, World

GUARD_ID = "service:agentguard"


def _replica_key(home: Path) -> Identity:
    """The guard key a replica will sign with (made before its policy lists it)."""
    return Keyring(home / "keys").create(GUARD_ID)


def _entry(key: Identity, **window: Any) -> dict[str, Any]:
    return {"public_key": key.principal.public_jwk(), **window}


def _replica(policy: Path, home: Path, url: str, clock: ManualClock) -> Guard:
    return Guard(policy, home=home, store=PostgresStore(url), clock=clock, approval_mode="raise")


def _read(guard: Guard, world: World) -> None:
    tool = RecordingTool()
    guard.call(world.delegation, "tickets/read", {"id": 1}, tool, holder=world.bot)
    assert tool.ran


def _close(*guards: Guard) -> None:
    for guard in guards:
        guard.close()
        guard.store.close()


def test_without_guard_keys_a_head_signed_by_another_replica_does_not_verify(
    pg_url: str, tmp_path: Path
) -> None:
    """The old behaviour, kept for single-key setups: only the own key counts."""
    world = World()
    policy = world.write_policy(tmp_path / "agentguard.yaml")
    a = _replica(policy, tmp_path / "a", pg_url, world.clock)
    b = _replica(policy, tmp_path / "b", pg_url, world.clock)
    _read(a, world)
    _read(b, world)  # the database's signed head is now b's
    problem = a.audit.report().problem
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    assert b.audit.report().problem is None
    _close(a, b)


def test_heads_signed_by_every_listed_replica_verify_on_each(pg_url: str, tmp_path: Path) -> None:
    world = World()
    keys = [_replica_key(tmp_path / name) for name in ("a", "b", "c")]
    policy = world.write_policy(tmp_path / "agentguard.yaml", guard_keys=[_entry(k) for k in keys])
    replicas = [_replica(policy, tmp_path / n, pg_url, world.clock) for n in ("a", "b", "c")]
    for round_ in range(2):
        for index, guard in enumerate(replicas):
            _read(guard, world)
            world.clock.advance(1)
            # Force a checkpoint from every replica as well, so the chain
            # holds heads from all three keys.
            assert guard.audit.checkpoint(at=world.clock.now()) is not None, (round_, index)
    for guard in replicas:
        report = guard.audit.report()
        assert report.problem is None, report.problem
        assert report.checkpoints == 6
    _close(*replicas)


def test_a_head_signed_by_an_unlisted_key_is_refused(pg_url: str, tmp_path: Path) -> None:
    """Attack: a process with the database password but a key nobody listed signs a head."""
    world = World()
    keys = [_replica_key(tmp_path / name) for name in ("a", "b")]
    policy = world.write_policy(tmp_path / "agentguard.yaml", guard_keys=[_entry(k) for k in keys])
    a = _replica(policy, tmp_path / "a", pg_url, world.clock)
    _read(a, world)
    rogue = _replica(policy, tmp_path / "rogue", pg_url, world.clock)  # a fresh, unlisted key
    _read(rogue, world)
    problem = a.audit.report().problem
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    assert problem.tampering
    assert "not a trusted key" in problem.detail
    _close(a, rogue)


def test_a_retired_key_keeps_what_it_signed_before_and_not_after(
    pg_url: str, tmp_path: Path
) -> None:
    world = World()
    old, new = _replica_key(tmp_path / "old"), _replica_key(tmp_path / "new")
    retired = datetime.fromtimestamp(START + 100, tz=UTC)
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        guard_keys=[_entry(old, retired_at=retired.isoformat()), _entry(new)],
    )
    a = _replica(policy, tmp_path / "old", pg_url, world.clock)
    b = _replica(policy, tmp_path / "new", pg_url, world.clock)
    _read(a, world)
    assert a.audit.checkpoint(at=world.clock.now()) is not None  # signed while valid
    world.clock.advance(200)
    _read(b, world)
    report = b.audit.report()
    assert report.problem is None, report.problem  # the old key's checkpoint still counts
    # Attack: the retired key (say, stolen) signs a head after its retirement.
    _read(a, world)
    problem = b.audit.report().problem
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    assert "was not valid when" in problem.detail
    _close(a, b)


def test_a_key_not_yet_valid_signs_nothing_that_counts(pg_url: str, tmp_path: Path) -> None:
    world = World()
    early, later = _replica_key(tmp_path / "early"), _replica_key(tmp_path / "later")
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        guard_keys=[_entry(early), _entry(later, not_before=int(START + 1000))],
    )
    a = _replica(policy, tmp_path / "early", pg_url, world.clock)
    b = _replica(policy, tmp_path / "later", pg_url, world.clock)
    _read(a, world)
    _read(b, world)
    problem = a.audit.report().problem
    assert problem is not None
    assert "was not valid when" in problem.detail
    world.clock.advance(1000)
    _read(b, world)  # now within its window: the newest head counts again
    assert a.audit.checkpoint(at=world.clock.now()) is not None
    # The earlier head b signed too soon is no longer kept in the database (only the
    # newest head is), so the log verifies.
    assert a.audit.report().problem is None
    _close(a, b)


def _pending(guard: Guard, world: World) -> str:
    with pytest.raises(ApprovalPending) as raised:
        guard.call(
            world.delegation, "admin/reset", {"target": "db1"}, RecordingTool(), holder=world.bot
        )
    return raised.value.request_id


def test_a_receipt_attested_by_one_replica_is_used_on_another(pg_url: str, tmp_path: Path) -> None:
    world = World()
    keys = [_replica_key(tmp_path / name) for name in ("a", "b")]
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        approval={"channel": "queue", "grant_rule_assurance": "local"},
        guard_keys=[_entry(k) for k in keys],
    )
    a = _replica(policy, tmp_path / "a", pg_url, world.clock)
    b = _replica(policy, tmp_path / "b", pg_url, world.clock)
    request_id = _pending(a, world)
    # A channel on replica b (its web page, say) collects carol's answer; b's key attests it.
    b.approvals.answer(
        request_id, approver=world.carol.id, approve=True, channel="web", assurance="local"
    )
    tool = RecordingTool()
    a.call(world.delegation, "admin/reset", {"target": "db1"}, tool, holder=world.bot)
    assert tool.ran
    _close(a, b)


def test_a_receipt_attested_by_an_unlisted_key_is_refused(pg_url: str, tmp_path: Path) -> None:
    """Attack: a process sharing the database but holding no listed key attests an answer."""
    world = World()
    listed = _replica_key(tmp_path / "a")
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        approval={"channel": "queue", "grant_rule_assurance": "local"},
        guard_keys=[_entry(listed)],
    )
    a = _replica(policy, tmp_path / "a", pg_url, world.clock)
    rogue = _replica(policy, tmp_path / "rogue", pg_url, world.clock)
    request_id = _pending(a, world)
    rogue.approvals.answer(
        request_id, approver=world.carol.id, approve=True, channel="web", assurance="local"
    )
    tool = RecordingTool()
    with pytest.raises(DeniedError) as raised:
        a.call(world.delegation, "admin/reset", {"target": "db1"}, tool, holder=world.bot)
    assert raised.value.reason == "approval_invalid"
    assert not tool.ran
    _close(a, rogue)


def test_guard_keys_are_checked_when_the_policy_loads(tmp_path: Path) -> None:
    world = World()
    key = Identity.generate(GUARD_ID)
    for entry, says in (
        ({}, "exactly one of public_key or key_file"),
        (
            _entry(key, not_before="2027-01-02T00:00:00Z", retired_at="2027-01-01T00:00:00Z"),
            "retired_at must come after not_before",
        ),
        ({"key_file": "missing.json"}, "does not exist"),
        ({"public_key": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}, "cannot load key"),
        (_entry(key, not_before="yesterday"), "not_before"),
    ):
        policy = world.write_policy(tmp_path / "agentguard.yaml", guard_keys=[entry])
        with pytest.raises(ConfigError, match=says):
            Guard(policy, home=tmp_path / "home", clock=world.clock)
    # One key listed twice (with different windows): which window counts would be chance.
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        guard_keys=[_entry(key), _entry(key, retired_at="2027-01-01T00:00:00Z")],
    )
    with pytest.raises(ConfigError, match=r"guard_keys\[1\]: the same key as guard_keys\[0\]"):
        Guard(policy, home=tmp_path / "home", clock=world.clock)


def test_an_approver_key_only_in_one_keyring_counts_on_that_replica_only(
    pg_url: str, tmp_path: Path
) -> None:
    """Why the policy should carry approvers' public keys when replicas share a database."""
    world = World()
    policy = world.write_policy(
        tmp_path / "agentguard.yaml",
        approval={"channel": "queue"},
        approvers=[{"id": world.carol.id, "min_assurance": "local"}],  # no public_key
    )
    Keyring(tmp_path / "a" / "keys").import_public(world.carol.principal)
    a = _replica(policy, tmp_path / "a", pg_url, world.clock)
    b = _replica(policy, tmp_path / "b", pg_url, world.clock)
    request_id = _pending(a, world)
    a.approvals.approve(request_id, world.carol)
    refused = RecordingTool()
    with pytest.raises(DeniedError) as raised:
        b.call(world.delegation, "admin/reset", {"target": "db1"}, refused, holder=world.bot)
    assert raised.value.reason == "approval_invalid"
    assert "no public key known for approver user:carol" in raised.value.explanation
    assert not refused.ran
    ran = RecordingTool()
    a.call(world.delegation, "admin/reset", {"target": "db1"}, ran, holder=world.bot)
    assert ran.ran
    _close(a, b)


def test_key_set_edges_and_a_spoofed_key_id() -> None:
    a, b = Identity.generate(GUARD_ID), Identity.generate(GUARD_ID)
    with pytest.raises(ValueError, match="at least one key"):
        KeySet([])
    with pytest.raises(ValueError, match="same principal"):
        KeySet([TrustedKey(a.principal), TrustedKey(Identity.generate("service:other").principal)])
    keys = KeySet([TrustedKey(a.principal, not_before=100.0, retired_at=200.0)])
    assert keys.key_for(a.kid, 150) == a.principal
    for kid, when, says in (
        (b.kid, 150, "not a trusted key"),
        (None, 150, "not a trusted key"),
        (a.kid, None, "claims no time"),
        (a.kid, True, "claims no time"),
        (a.kid, "150", "claims no time"),
        (a.kid, 99.9, "was not valid"),
        (a.kid, 200, "was not valid"),
    ):
        with pytest.raises(DeniedError, match=says):
            keys.key_for(kid, when)
    # Attack: a head signed by an unlisted key that names a listed key's id.
    claims = {"head": "0" * 64, "iat": 150, "iss": GUARD_ID, "seq": 1}
    token = _jws.sign(claims, b, TYP_CHECKPOINT)
    _, payload, signature = token.split(".")
    forged_header = b64url_encode(
        json.dumps({"alg": "EdDSA", "kid": a.kid, "typ": TYP_CHECKPOINT}).encode()
    )
    with pytest.raises(DeniedError, match="does not verify"):
        _jws.verify_with(f"{forged_header}.{payload}.{signature}", keys, TYP_CHECKPOINT)
    assert _jws.verify_with(_jws.sign(claims, a, TYP_CHECKPOINT), keys, TYP_CHECKPOINT)["seq"] == 1


def test_a_window_is_judged_by_the_signed_time_so_a_stolen_key_can_backdate() -> None:
    """The limit the README states: retirement stops a key still in use, not a thief,
    who signs with an earlier time; taking the key off the list stops both."""
    old = Identity.generate(GUARD_ID)
    retired = KeySet([TrustedKey(old.principal, retired_at=START + 100)])
    backdated = _jws.sign({"iat": int(START + 50), "seq": 1}, old, TYP_CHECKPOINT)
    assert _jws.verify_with(backdated, retired, TYP_CHECKPOINT)["seq"] == 1
    removed = KeySet([TrustedKey(Identity.generate(GUARD_ID).principal)])
    with pytest.raises(DeniedError, match="not a trusted key"):
        _jws.verify_with(backdated, removed, TYP_CHECKPOINT)


def test_a_guard_signing_with_a_key_the_set_refuses_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    other = Identity.generate(GUARD_ID)
    policy = world.write_policy(tmp_path / "agentguard.yaml", guard_keys=[_entry(other)])
    guard = Guard(policy, home=tmp_path / "home", clock=world.clock)
    with caplog.at_level("WARNING", logger="agentguard.audit"):
        _read(guard, world)
        _read(guard, world)
    warned = [r.getMessage() for r in caplog.records if "guard_keys" in r.getMessage()]
    assert len(warned) == 1
    assert f"{guard.guard_identity.kid} is not listed" in warned[0]
    problem = guard.audit.report().problem
    assert problem is not None
    assert problem.kind == "bad_checkpoint"
    guard.close()
    # Listed, but retired before the time it signs: warned too.
    world2 = World()
    own = _replica_key(tmp_path / "h2")
    policy = world2.write_policy(
        tmp_path / "agentguard.yaml", guard_keys=[_entry(own, retired_at=int(START - 10))]
    )
    caplog.clear()
    guard = Guard(policy, home=tmp_path / "h2", clock=world2.clock)
    with caplog.at_level("WARNING", logger="agentguard.audit"):
        _read(guard, world2)
    assert any("outside its validity window" in r.getMessage() for r in caplog.records)
    guard.close()
    # Its own key listed and valid: no warning.
    caplog.clear()
    world3 = World()
    own3 = _replica_key(tmp_path / "h3")
    policy = world3.write_policy(tmp_path / "agentguard.yaml", guard_keys=[_entry(own3)])
    guard = Guard(policy, home=tmp_path / "h3", clock=world3.clock)
    with caplog.at_level("WARNING", logger="agentguard.audit"):
        _read(guard, world3)
    assert not [r for r in caplog.records if "guard_keys" in r.getMessage()]
    guard.close()
