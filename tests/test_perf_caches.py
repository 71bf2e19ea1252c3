"""Attacks on the per-call caches: a cached chain must never outlive what made it valid.

The verifier remembers a verified chain by its exact text (or its links' exact
texts) so that a warm call skips signatures and structure. Revocation, the
clock, the root's key and the chain-length limit are checked on every call;
each test below caches a chain first and then changes one of those.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentguard import Delegation, Identity, Verifier, _jws
from agentguard.addresses import _parse_text, parse_address
from agentguard.clock import ManualClock
from agentguard.decision import Reason
from agentguard.errors import DeniedError, InvalidAddressError
from agentguard.keys import TrustedKey
from agentguard.store import MemoryStore
from agentguard.testing import World
from agentguard.tokens import TYP_CALL, Grant


@pytest.fixture
def world() -> World:
    return World()


def _verifier(world: World, store: MemoryStore, **options: object) -> Verifier:
    return Verifier([world.org.principal], revocations=store, clock=world.clock, **options)  # type: ignore[arg-type]


def _refusal(verifier: Verifier, delegation: str | Delegation) -> str:
    with pytest.raises(DeniedError) as caught:
        verifier.verify_chain(delegation)
    return caught.value.reason


def test_a_verified_chain_is_remembered_by_its_text(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    first = verifier.verify_chain(text)
    # The same verified grants come back: nothing was parsed or checked again.
    assert verifier.verify_chain(text).delegation is first.delegation
    assert verifier.verify_chain(world.delegation).delegation is not first.delegation
    assert (
        verifier.verify_chain(world.delegation).delegation
        is verifier.verify_chain(world.delegation).delegation
    )


@pytest.mark.parametrize("what", ["link", "key", "principal", "sponsor"])
def test_revoked_after_caching_is_refused_on_the_next_call(world: World, what: str) -> None:
    store = MemoryStore()
    verifier = _verifier(world, store)
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    leaf = world.delegation.leaf
    kind, value = {
        "link": ("link", world.delegation.root.link_id),
        "key": ("key", leaf.subject_key.kid),
        "principal": ("principal", "agent:bot"),
        "sponsor": ("principal", "user:alice"),
    }[what]
    # Written straight to the store, as another process sharing it would: no cache is cleared.
    store.revoke(kind, value, reason="test", at=world.clock.now())  # type: ignore[arg-type]
    assert _refusal(verifier, text) == Reason.REVOKED
    assert _refusal(verifier, world.delegation) == Reason.REVOKED


def test_a_guard_refuses_a_cached_chain_revoked_in_its_store(world: World) -> None:
    store = MemoryStore()
    guard = world.guard(store=store)
    ran: list[str] = []
    guard.call(world.delegation, "tickets/read", {}, lambda: ran.append("x"), holder=world.bot)
    store.revoke("link", world.delegation.leaf.link_id, reason="test", at=world.clock.now())
    with pytest.raises(DeniedError) as caught:
        guard.call(world.delegation, "tickets/read", {}, lambda: ran.append("y"), holder=world.bot)
    assert caught.value.reason == Reason.REVOKED
    assert ran == ["x"]


def test_a_chain_expiring_between_two_calls_is_refused(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    expires = world.delegation.leaf.expires_at  # the leaf lives one hour, the root a day
    world.clock.set(expires + verifier.leeway - 0.5)
    verifier.verify_chain(text)
    world.clock.set(expires + verifier.leeway)
    assert _refusal(verifier, text) == Reason.LINK_EXPIRED
    assert _refusal(verifier, world.delegation) == Reason.LINK_EXPIRED


def test_a_clock_set_back_before_the_window_is_refused(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    world.clock.advance(-(verifier.leeway + 60))
    assert _refusal(verifier, text) == Reason.LINK_NOT_YET_VALID


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]


@pytest.mark.parametrize("segment", [1, 2])
def test_a_chain_differing_by_one_byte_is_not_a_cache_hit(world: World, segment: int) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    links = text.split("~")
    # One character in the middle of the leaf's payload or signature.
    start = sum(len(part) + 1 for part in links[-1].split(".")[:segment])
    tampered_leaf = _flip(links[-1], start + 10)
    tampered = "~".join([*links[:-1], tampered_leaf])
    # Whatever the flipped byte breaks first (a claim, or the signature), it is refused.
    reason = _refusal(verifier, tampered)
    assert reason == Reason.BAD_SIGNATURE or segment == 1
    # The same tampered link inside a Delegation object.
    grants = list(world.delegation)
    forged = Delegation([*grants[:-1], _grant_with_token(grants[-1], tampered_leaf)])
    assert _refusal(verifier, forged) == reason
    # And the genuine chain still verifies.
    verifier.verify_chain(text)


def _grant_with_token(grant: Grant, token: str) -> Grant:
    """``grant`` claiming another token (the verifier must go by the token, not the fields)."""
    import dataclasses

    return dataclasses.replace(grant, token=token)


def test_a_root_no_longer_trusted_with_that_key_is_refused(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    rotated = Identity.generate("org:acme")
    # The verifier's roots are fixed at construction; should they ever change in
    # place, a cached chain is checked against the root's key on every hit.
    verifier._roots = {rotated.id: rotated.principal}
    verifier._root_keys = {rotated.id: {rotated.kid: TrustedKey(rotated.principal)}}
    assert _refusal(verifier, text) == Reason.BAD_SIGNATURE
    verifier._roots, verifier._root_keys = {}, {}
    assert _refusal(verifier, text) == Reason.UNTRUSTED_ROOT


def test_a_new_policy_with_other_roots_does_not_inherit_the_cache(world: World) -> None:
    store = MemoryStore()
    old = world.guard(store=store)
    assert old.check(world.delegation, "tickets/read", {}, holder=world.bot).allowed
    rotated = Identity.generate("org:acme")
    root = {"id": rotated.id, "public_key": rotated.principal.public_jwk()}
    new = world.guard(store=store, trusted_roots=[root])
    decision = new.check(world.delegation, "tickets/read", {}, holder=world.bot)
    assert decision.reason == Reason.BAD_SIGNATURE


def test_a_lower_link_limit_applies_to_a_cached_chain(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    verifier.verify_chain(text)
    verifier.max_links = 1
    assert _refusal(verifier, text) == Reason.CHAIN_TOO_LONG


def test_the_chain_cache_is_bounded(world: World) -> None:
    verifier = _verifier(world, MemoryStore(), cache_size=3)
    chains = [world.chain(world.identity(f"agent:a{i}")).serialize() for i in range(5)]
    first = verifier.verify_chain(chains[0]).delegation
    for text in chains[1:]:
        verifier.verify_chain(text)
    assert len(verifier._chains) == 3
    # The oldest was evicted: verified afresh, it is another object.
    assert verifier.verify_chain(chains[0]).delegation is not first
    assert len(verifier._chains) == 3


def test_cache_size_zero_remembers_no_chain(world: World) -> None:
    verifier = _verifier(world, MemoryStore(), cache_size=0)
    text = world.delegation.serialize()
    assert verifier.verify_chain(text).delegation is not verifier.verify_chain(text).delegation
    assert len(verifier._chains) == 0


def test_clear_cache_forgets_verified_chains(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    text = world.delegation.serialize()
    first = verifier.verify_chain(text).delegation
    verifier.clear_cache()
    assert len(verifier._chains) == 0
    assert verifier.verify_chain(text).delegation is not first


@pytest.mark.parametrize("hostile", [b"abc", 42, None, ["a.b.c"], ("a.b.c",)])
def test_hostile_inputs_are_refused_and_never_cached(world: World, hostile: object) -> None:
    verifier = _verifier(world, MemoryStore())
    with pytest.raises(DeniedError):
        verifier.verify_chain(hostile)  # type: ignore[arg-type]
    assert len(verifier._chains) == 0


def test_a_refused_chain_is_not_cached(world: World) -> None:
    clock = ManualClock()
    verifier = Verifier([world.org.principal], revocations=MemoryStore(), clock=clock)
    text = world.delegation.serialize()
    clock.set(world.clock.now() + 30 * 86400)  # long after every link expired
    assert _refusal(verifier, text) == Reason.LINK_EXPIRED
    assert len(verifier._chains) == 0


# -- tracing's fast path when no provider is installed ---------------------------------------

_LATER_PROVIDERS = """
import json, sys
from opentelemetry import metrics, trace
from agentguard import tracing
from agentguard.testing import World

world = World()
guard = world.guard()
ran = []
for _ in range(3):  # no provider yet: the fast path
    guard.call(world.delegation, "tickets/read", {}, lambda: ran.append(1), holder=world.bot)
assert not tracing._enabled() and not tracing._metering()

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

reader = InMemoryMetricReader()
if sys.argv[1] in ("meter", "both"):
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
exporter = InMemorySpanExporter()
if sys.argv[1] in ("tracer", "both"):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
guard.call(world.delegation, "tickets/read", {}, lambda: ran.append(1), holder=world.bot)
spans = sorted(span.name for span in exporter.get_finished_spans())
counted = {}
data = reader.get_metrics_data()
for rm in (data.resource_metrics if data else []):
    for sm in rm.scope_metrics:
        for metric in sm.metrics:
            counted[metric.name] = sum(
                getattr(point, "value", getattr(point, "count", 0))
                for point in metric.data.data_points
            )
print(json.dumps({"spans": spans, "metrics": counted, "ran": len(ran)}))
"""


@pytest.mark.parametrize("installed", ["tracer", "meter", "both"])
def test_providers_installed_after_calls_without_them_record_the_next_call(
    installed: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTGUARD_"))}
    done = subprocess.run(
        [sys.executable, "-c", _LATER_PROVIDERS, installed],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ran"] == 4
    if installed in ("tracer", "both"):
        assert seen["spans"] == ["agentguard.authorize tickets/read", "execute_tool tickets/read"]
    else:
        assert seen["spans"] == []
    if installed in ("meter", "both"):
        # Only the call made after the meter provider was installed is counted.
        assert seen["metrics"]["agentguard.decisions"] == 1
        assert seen["metrics"]["agentguard.authorization.duration"] == 1
    else:
        assert seen["metrics"] == {}


# -- the tool-address cache --------------------------------------------------------------------


class _SneakyStr(str):
    """A string that claims to equal every other one (never trusted to a cache)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("tickets/read")


@pytest.mark.parametrize(
    "hostile", [["tickets/read"], b"tickets/read", None, 7, "tickets/*", "tickets/../x", " a/b"]
)
def test_invalid_addresses_are_refused_every_time(hostile: object) -> None:
    for _ in range(2):  # a refusal is never remembered as a success
        with pytest.raises(InvalidAddressError):
            parse_address(hostile)  # type: ignore[arg-type]


def test_a_str_subclass_is_parsed_for_itself() -> None:
    assert parse_address("tickets/read") == ("tickets", "read")
    with pytest.raises(InvalidAddressError):
        parse_address(_SneakyStr("tickets/*"))


def test_the_address_cache_is_bounded() -> None:
    for i in range(1100):
        assert parse_address(f"ns/tool{i}") == ("ns", f"tool{i}")
    info = _parse_text.cache_info()
    assert info.maxsize is not None
    assert info.currsize <= info.maxsize == 1024


# -- the scope plan (which rules of a chain select a tool) -------------------------------------


def test_a_remembered_scope_plan_still_evaluates_every_predicate(world: World) -> None:
    verifier = _verifier(world, MemoryStore())
    chain = verifier.verify_chain(world.delegation)
    verifier.authorize(chain, "billing/refund", {"amount": 10})
    assert len(verifier._plans) == 1
    with pytest.raises(DeniedError) as caught:
        verifier.authorize(
            verifier.verify_chain(world.delegation), "billing/refund", {"amount": 5000}
        )
    assert caught.value.reason == Reason.PREDICATE_FAILED
    assert len(verifier._plans) == 1  # the same plan, evaluated against the new arguments


def test_scope_plans_are_per_delegation_and_per_tool(world: World) -> None:
    verifier = _verifier(world, MemoryStore(), cache_size=1)
    wide = verifier.verify_chain(world.delegation)
    narrow_delegation = world.chain(world.bot, scope=["tickets/read"])
    narrow = verifier.verify_chain(narrow_delegation)
    verifier.authorize(wide, "tickets/close", {})
    # Another delegation, one slot: the wide chain's plan is never used for it.
    with pytest.raises(DeniedError) as caught:
        verifier.authorize(narrow, "tickets/close", {})
    assert caught.value.reason == Reason.OUT_OF_SCOPE
    verifier.authorize(narrow, "tickets/read", {})
    assert len(verifier._plans) == 1
    # Objects built afresh on every call (no chain cache) never share a plan either.
    cold = _verifier(world, MemoryStore(), cache_size=0)
    for _ in range(3):
        cold.authorize(cold.verify_chain(world.delegation), "tickets/close", {})
        with pytest.raises(DeniedError):
            cold.authorize(cold.verify_chain(narrow_delegation), "tickets/close", {})
    assert len(cold._plans) == 0


def test_the_scope_plan_cache_is_bounded(world: World) -> None:
    verifier = _verifier(world, MemoryStore(), cache_size=4)
    chain = verifier.verify_chain(world.delegation)
    for i in range(10):
        verifier.authorize(chain, f"tickets/t{i}", {})
    assert len(verifier._plans) == 4
    verifier.clear_cache()
    assert len(verifier._plans) == 0


def test_with_no_provider_set_a_guarded_call_skips_spans_and_metrics(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    from agentguard import tracing

    # This process may have providers installed by other tests: look as if none were.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(tracing._metrics_state, "_METER_PROVIDER", None)
    assert not tracing._enabled()
    assert not tracing._metering()
    guard = world.guard()
    assert (
        guard.call(world.delegation, "tickets/read", {}, lambda: "ran", holder=world.bot) == "ran"
    )
    with pytest.raises(DeniedError):
        guard.call(world.delegation, "admin/wipe", {}, lambda: "ran", holder=world.bot)
    with tracing.Authorization("tickets/read", enforcement_point="python") as scope:
        assert tracing._current.get() is None  # quiet: not even the context variable is set
    assert scope.span is None
    # Once a provider is there, the documented path decides again.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", trace.NoOpTracerProvider())
    assert not tracing._enabled()


_ENV_AFTER_IMPORT = """
import os
from agentguard import tracing
assert not tracing._enabled() and not tracing._metering()
os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
os.environ["OTEL_PYTHON_METER_PROVIDER"] = "sdk_meter_provider"
# Named after the import: not seen until something asks OpenTelemetry for the providers.
assert not tracing._enabled() and not tracing._metering()
from opentelemetry import metrics, trace
trace.get_tracer_provider()
metrics.get_meter_provider()
assert tracing._enabled() and tracing._metering()
print("ok")
"""

_ENV_BEFORE_IMPORT = """
from agentguard import tracing
assert tracing._enabled() and tracing._metering()
print("ok")
"""


def test_providers_named_in_the_environment(tmp_path: Path) -> None:
    """The CHANGELOG's upgrade note: set before the import, or looked up once after it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTGUARD_"))}
    before = {
        **env,
        "OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider",
        "OTEL_PYTHON_METER_PROVIDER": "sdk_meter_provider",
    }
    for program, environment in ((_ENV_AFTER_IMPORT, env), (_ENV_BEFORE_IMPORT, before)):
        done = subprocess.run(
            [sys.executable, "-c", program],
            env=environment,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "ok"


# -- no decision is remembered ------------------------------------------------------------


def test_the_same_call_twice_is_decided_twice(world: World) -> None:
    """A warm call is decided again in full: its own decision, its own call token signed
    by the holder and spent once, its own records; and a predicate is judged again."""
    store = MemoryStore()
    guard = world.guard(store=store)
    ran: list[int] = []

    def refund(amount: int) -> None:
        ran.append(amount)

    for amount in (5, 5):
        guard.call(world.delegation, "billing/refund", {"amount": amount}, refund, holder=world.bot)
    records = [json.loads(entry.body) for entry in store.audit_entries()]
    decisions = [r for r in records if r["type"] == "decision"]
    assert [r["type"] for r in records] == ["decision", "completion"] * 2
    assert decisions[0]["decision_id"] != decisions[1]["decision_id"]
    tokens = [r["call_token"] for r in decisions]
    assert tokens[0] != tokens[1]
    for token in tokens:
        claims = _jws.verify(token, world.bot.principal, TYP_CALL)  # signed by the holder
        assert store.is_consumed(f"{claims['iss']}/{claims['jti']}", now=world.clock.now())
    # The same warm chain and tool with an amount its predicate refuses: refused.
    with pytest.raises(DeniedError) as caught:
        guard.call(world.delegation, "billing/refund", {"amount": 10**6}, refund, holder=world.bot)
    assert caught.value.reason == Reason.PREDICATE_FAILED
    assert ran == [5, 5]


def test_every_cache_keeps_cache_size_entries_and_zero_keeps_none(world: World) -> None:
    store = MemoryStore()
    default = _verifier(world, store)
    assert (default._chains._size, default._cache._size, default._plans._size) == (4096,) * 3
    verifier = _verifier(world, store, cache_size=0)
    chain = verifier.verify_chain(world.delegation.serialize())
    verifier.authorize(chain, "tickets/read", {})
    assert (len(verifier._chains), len(verifier._cache), len(verifier._plans)) == (0, 0, 0)
