"""Validity windows for trusted root keys: rotating the key a root signs its grants with.

A root may be listed several times in ``trusted_roots``, each time with another
key and an optional ``not_before``/``retired_at``. A root link counts when it
claims (its signed ``iat``) to have been signed inside its key's window, and only
while the key is not retired: chains are checked when they are used, so a
retired root key stops everything it signed, including a chain backdated by
whoever stole the key.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.delegation import Delegation
from agentguard.errors import ConfigError, DeniedError
from agentguard.keys import Identity, TrustedKey, b64url_encode
from agentguard.policy import load_policy
from agentguard.policy_file import rewrite_policy_section
from agentguard.store.memory import MemoryStore
from agentguard.testing import START, RecordingTool, World
from agentguard.verify import Verifier

from .cli.cli_support import CLI, one_line_error

RETIRED = START + 1000
NOT_BEFORE = START + 100


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()


def _issue(root: Identity, world: World, at: float) -> Delegation:
    """A one-link chain ``root -> agent:bot`` signed at ``at``."""
    clock = ManualClock(at)
    return Delegation.issue(root, world.bot, ["tickets/*"], ttl="1d", clock=clock)


def _refused(verifier: Verifier, chain: Delegation | str) -> DeniedError:
    with pytest.raises(DeniedError) as caught:
        verifier.verify_chain(chain)
    return caught.value


@pytest.fixture
def keys(world: World) -> tuple[Identity, Identity]:
    """The root's old key (the world's, retired at RETIRED) and its new one."""
    return world.org, Identity.generate(world.org.id)


def _verifier(world: World, old: Identity, new: Identity) -> Verifier:
    return Verifier(
        [
            TrustedKey(old.principal, retired_at=RETIRED),
            TrustedKey(new.principal, not_before=NOT_BEFORE),
        ],
        revocations=MemoryStore(),
        clock=world.clock,
    )


def test_both_keys_verify_in_their_windows_and_the_old_one_stops_at_retirement(
    world: World, keys: tuple[Identity, Identity]
) -> None:
    old, new = keys
    verifier = _verifier(world, old, new)
    by_old = _issue(old, world, START)
    by_new = _issue(new, world, NOT_BEFORE + 10)
    world.clock.set(NOT_BEFORE + 20)
    verifier.verify_chain(by_old)  # remembered by the chain cache from here on
    verifier.verify_chain(by_new)
    world.clock.set(RETIRED - 1)
    verifier.verify_chain(by_old.serialize())
    world.clock.set(RETIRED)
    for chain in (by_old, by_old.serialize()):  # a cached chain and a fresh parse
        refused = _refused(verifier, chain)
        assert refused.reason == Reason.UNTRUSTED_ROOT
        assert f"was retired at {int(RETIRED)}:" in refused.explanation
    verifier.verify_chain(by_new)
    assert [k.principal.kid for k in verifier.root_keys(old.id)] == [old.kid, new.kid]


def test_attacks_on_the_windows_are_refused(world: World, keys: tuple[Identity, Identity]) -> None:
    old, new = keys
    verifier = _verifier(world, old, new)
    world.clock.set(NOT_BEFORE + 50)
    # The new key signs a chain dated before its not_before.
    early = _issue(new, world, NOT_BEFORE - 1)
    refused = _refused(verifier, early)
    assert refused.reason == Reason.UNTRUSTED_ROOT
    assert "was not valid when this link claims to have been signed" in refused.explanation
    # The old key signs a chain dated after its retirement, checked before it.
    late = _issue(old, world, RETIRED + 5)
    assert _refused(verifier, late).reason == Reason.UNTRUSTED_ROOT
    # After retirement, the stolen old key backdates a chain into its window: refused.
    world.clock.set(RETIRED + 10)
    backdated = _issue(old, world, START + 1)
    refused = _refused(verifier, backdated)
    assert refused.reason == Reason.UNTRUSTED_ROOT
    assert "retired" in refused.explanation


def _resigned(chain: Delegation, header_kid: str, signer: Identity) -> str:
    """The chain's root link with its header naming ``header_kid``, signed by ``signer``."""
    token = chain.root.token
    header_b64, payload_b64, _ = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    header["kid"] = header_kid
    new_header = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    signing_input = f"{new_header}.{payload_b64}"
    signature = b64url_encode(signer.sign(signing_input.encode("ascii")))
    return f"{signing_input}.{signature}"


def test_a_header_naming_one_key_signed_by_another_is_refused(
    world: World, keys: tuple[Identity, Identity]
) -> None:
    old, new = keys
    verifier = _verifier(world, old, new)
    world.clock.set(NOT_BEFORE + 50)
    chain = _issue(new, world, NOT_BEFORE + 10)
    verifier.verify_chain(chain)
    # The new key's link claims to be the old key's (whose window is wider): refused.
    swapped = _resigned(chain, old.kid, new)
    assert _refused(verifier, swapped).reason == Reason.BAD_SIGNATURE
    # A stranger signs under the new key's id.
    stranger = Identity.generate(old.id)
    forged = _resigned(chain, new.kid, stranger)
    assert _refused(verifier, forged).reason == Reason.BAD_SIGNATURE
    # And under a key id the root does not have.
    unknown = _resigned(chain, stranger.kid, stranger)
    assert _refused(verifier, unknown).reason == Reason.BAD_SIGNATURE


def _root(key: Identity, **window: Any) -> dict[str, Any]:
    return {"id": key.id, "public_key": key.principal.public_jwk(), **window}


def test_a_guard_follows_the_windows_in_its_policy(
    world: World, keys: tuple[Identity, Identity], tmp_path: Path
) -> None:
    old, new = keys
    roots = [_root(old, retired_at=_iso(RETIRED)), _root(new, not_before=_iso(NOT_BEFORE))]
    guard = world.guard(trusted_roots=roots)
    by_new = new_chain = _issue(new, world, NOT_BEFORE + 10)
    world.clock.set(NOT_BEFORE + 20)
    for chain in (world.delegation, new_chain):
        tool = RecordingTool()
        guard.call(chain, "tickets/read", {}, tool, holder=world.bot)
        assert tool.ran
    world.clock.set(RETIRED)
    decision = guard.check(world.delegation, "tickets/read", {}, holder=world.bot)
    assert decision.reason == Reason.UNTRUSTED_ROOT
    assert guard.check(by_new, "tickets/read", {}, holder=world.bot).allowed


def test_policy_windows_are_checked_when_it_loads(
    world: World, keys: tuple[Identity, Identity], tmp_path: Path
) -> None:
    old, _ = keys
    twice = world.write_policy(tmp_path / "twice.yaml", trusted_roots=[_root(old), _root(old)])
    with pytest.raises(ConfigError, match="listed twice for org:acme"):
        load_policy(twice).root_keys()
    with pytest.raises(ConfigError, match="listed twice for org:acme"):
        world.guard(trusted_roots=[_root(old), _root(old)])
    backwards = world.write_policy(
        tmp_path / "backwards.yaml",
        trusted_roots=[_root(old, not_before=_iso(RETIRED), retired_at=_iso(NOT_BEFORE))],
    )
    with pytest.raises(ConfigError, match="retired_at must come after not_before"):
        load_policy(backwards)
    naive = world.write_policy(
        tmp_path / "naive.yaml", trusted_roots=[_root(old, retired_at="2027-01-31T12:00:00")]
    )
    assert (
        load_policy(naive).root_keys()[0].retired_at
        == datetime(2027, 1, 31, 12, tzinfo=UTC).timestamp()
    )


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CLI:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / ".agentguard"))
    monkeypatch.delenv("AGENTGUARD_POLICY", raising=False)
    monkeypatch.delenv("AGENTGUARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CLI(tmp_path)


def test_keys_add_and_retire_a_root_key_then_chains_follow(
    cli: CLI, world: World, keys: tuple[Identity, Identity]
) -> None:
    old, new = keys
    policy = world.write_policy(cli.root / "agentguard.yaml")
    text = policy.read_text()
    policy.write_text("# rotation below\n" + text)
    (cli.root / "new.pub").write_text(json.dumps({"id": new.id, "jwk": new.principal.public_jwk()}))
    one_line_error(cli("keys", "add", "--root", "org:other", "--public-key", "new.pub"), "not a")
    added = cli.ok(
        "keys", "add", "--root", old.id, "--public-key", "new.pub", "--not-before", _iso(NOT_BEFORE)
    )
    assert new.kid in added.stdout
    one_line_error(cli("keys", "add", "--root", old.id, "--public-key", "new.pub"), "already")
    rows = json.loads(cli.ok("keys", "list", "--root", old.id, "--json").stdout)
    assert [r["kid"] for r in rows] == [old.kid, new.kid]
    assert rows[1]["not_before"] is not None
    # The guard keys are a different block: untouched, still empty.
    assert json.loads(cli.ok("keys", "list", "--json").stdout) == []
    one_line_error(cli("keys", "retire", old.kid), "no guard key")
    retired = cli.ok("keys", "retire", old.kid, "--root", old.id, "--at", _iso(RETIRED))
    assert "retired key" in retired.stdout
    one_line_error(
        cli("keys", "retire", old.kid, "--root", old.id, "--at", _iso(RETIRED)), "already"
    )
    one_line_error(cli("keys", "retire", "nope", "--root", old.id), "no key of trusted root")
    assert policy.read_text().startswith("# rotation below\n")
    loaded = load_policy(policy)
    assert [k.window() for k in loaded.trusted_roots] == [(None, RETIRED), (NOT_BEFORE, None)]

    guard = world.guard(
        trusted_roots=[r.model_dump(mode="json", exclude_none=True) for r in loaded.trusted_roots]
    )
    world.clock.set(RETIRED - 1)
    assert guard.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed
    world.clock.set(RETIRED)
    decision = guard.check(world.delegation, "tickets/read", {}, holder=world.bot)
    assert decision.reason == Reason.UNTRUSTED_ROOT
    by_new = _issue(new, world, RETIRED)
    assert guard.check(by_new, "tickets/read", {}, holder=world.bot).allowed
    # Retiring the root's last key says that nothing of it will verify.
    last = cli.ok("keys", "retire", new.kid, "--root", old.id, "--at", _iso(RETIRED + 50))
    assert "no grant of it verifies" in last.stderr
    assert "not a trusted root" in cli.ok("keys", "list", "--root", "org:other").stdout


def test_grant_from_any_listed_root_key_issues_without_a_warning(cli: CLI) -> None:
    """``agentguard grant`` warns when the root's key is not trusted; a root with two
    keys trusts either, whichever is listed first."""
    cli.ok("init", "--org", "org:acme")
    cli.ok("identity", "new", "agent:bot")
    other = Identity.generate("org:acme")
    (cli.root / "other.pub").write_text(
        json.dumps({"id": other.id, "jwk": other.principal.public_jwk()})
    )
    cli.ok("keys", "add", "--root", "org:acme", "--public-key", "other.pub")
    policy = cli.root / "agentguard.yaml"
    base = (
        "grant",
        "--from",
        "org:acme",
        "--to",
        "agent:bot",
        "--tool",
        "tickets/*",
        "--ttl",
        "1h",
    )
    roots = [
        r.model_dump(mode="json", exclude_none=True) for r in load_policy(policy).trusted_roots
    ]
    assert len(roots) == 2
    for order in (roots, list(reversed(roots))):
        rewrite_policy_section(policy, "trusted_roots", order)
        issued = cli.ok(*base, "-o", "bot.chain")
        assert "is not a trusted root" not in issued.stderr
        assert cli("inspect", "bot.chain").exit_code == 0
    # Without the keyring's key in the list, grant warns (and the chain does not verify).
    rewrite_policy_section(
        policy,
        "trusted_roots",
        [r for r in roots if r.get("public_key") == other.principal.public_jwk()],
    )
    warned = cli.ok(*base, "-o", "bot.chain")
    assert "is not a trusted root" in warned.stderr
    assert cli("inspect", "bot.chain").exit_code == 3
