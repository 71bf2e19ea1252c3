"""A long outage of one upstream: capped, jittered back-off; the other upstreams stay listed.

The clock is simulated (the back-off reads an injected ``monotonic``); every
reconnection attempt is real: it spawns a process that exits before the MCP
handshake. ``make hardening`` (``AGENTGUARD_HARDENING=1``) runs a whole day of
outage; the normal run simulates half an hour (some 70 attempts, most of them at the cap).
"""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from agentguard_mcp import Caller, GuardedProxy, Upstream, UpstreamSpec, UpstreamUnavailable
from agentguard_mcp.cli import build_guard
from agentguard_mcp.upstream import backoff_delay
from mcp import Client

from tests.adapters.mcp.mcp_support import Setup, notes_command, text_of
from tests.adapters.mcp.test_resilience import Ticks, _reason

pytestmark = pytest.mark.anyio

HARDENING = os.environ.get("AGENTGUARD_HARDENING") == "1"
DIES_AT_ONCE = (shutil.which("true") or "/bin/true",)


@pytest.mark.parametrize("failures", [0, 1, 5, 62, 63, 1023, 1024, 1025, 10**6, 10**12])
def test_backoff_delay_is_capped_and_jittered_for_any_failure_count(failures: int) -> None:
    """No overflow at any count; never above the cap; jitter shortens by at most its share."""
    plain = backoff_delay(failures, first=1.0, cap=30.0)
    assert plain == min(30.0, 2.0 ** min(failures, 62))
    assert backoff_delay(failures, first=1.0, cap=30.0, jitter=0.5, draw=lambda: 0.0) == plain
    shortest = backoff_delay(failures, first=1.0, cap=30.0, jitter=0.5, draw=lambda: 0.999999)
    assert plain * 0.5 <= shortest < plain
    # A draw outside [0, 1) from a foreign source cannot push the delay out of range.
    assert backoff_delay(failures, first=1.0, cap=30.0, jitter=0.5, draw=lambda: 7.0) == plain * 0.5
    assert backoff_delay(failures, first=1.0, cap=30.0, jitter=0.5, draw=lambda: -3.0) == plain


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"retry_after": 0.0}, "retry_after"),
        ({"retry_after": 5.0, "retry_max": 1.0}, "retry_after"),
        ({"retry_max": float("inf")}, "retry_after"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_retry_settings_out_of_range_are_refused(kwargs: dict[str, float], problem: str) -> None:
    spec = UpstreamSpec(namespace="notes", command=DIES_AT_ONCE)
    with pytest.raises(ValueError, match=problem):
        Upstream(spec, **kwargs)  # type: ignore[arg-type]


@pytest.mark.slow
async def test_over_a_thousand_failed_reconnects_keep_backing_off(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past 1024 failures (where 2.0**n overflowed): still backing off, healthy tools listed.

    The lost upstream's tools leave the listing, its calls are refused with
    upstream_unavailable, the failure is logged once (no traceback), and the
    healthy upstream keeps working throughout.
    """
    caplog.set_level(logging.WARNING, logger="agentguard_mcp")
    record = tmp_path / "calls.jsonl"
    command = notes_command(record, "--crash-tool")
    ticks = Ticks()
    healthy = Upstream(UpstreamSpec(namespace="notes", command=tuple(command), trusted=True))
    spec = UpstreamSpec(namespace="flaky", command=tuple(command), trusted=True)
    flaky = Upstream(spec, monotonic=ticks)
    delegation = setup.delegation(["notes/*", "flaky/*"])
    guard = build_guard(setup.home, str(setup.policy_file))
    with anyio.fail_after(240):
        async with AsyncExitStack() as stack:
            proxy = GuardedProxy(
                guard,
                [healthy, flaky],
                caller=Caller(delegation.serialize(), holder=setup.agent),
                monotonic=ticks,
            )
            await proxy.start(stack)
            async with Client(proxy.server, mode="legacy") as client:
                assert len((await client.list_tools()).tools) == 8
                flaky.spec = replace(spec, command=DIES_AT_ONCE)
                crashed = await client.call_tool("flaky__crash", {})
                assert _reason(crashed) == "upstream_unavailable"
                assert flaky.health.state == "lost"

                attempt = 0
                while attempt < 1100:
                    if attempt == 10 and not HARDENING:
                        # make test: after 10 real attempts the count jumps to 1000 (as if
                        # 990 more had failed); the 100 across 1024, where 2.0**n overflowed,
                        # are real. make hardening spawns all 1100.
                        flaky._failures = attempt = 1000
                    attempt += 1
                    ticks.advance(flaky.retry_max)  # always due
                    with pytest.raises(UpstreamUnavailable):
                        await flaky.recover()
                    assert flaky.health.failures == attempt
                health = flaky.health
                assert health.state == "backing_off"
                assert health.last_error is not None
                assert health.retry_at is not None
                assert flaky.retry_max == 30  # the README's "at most 30 s apart"
                wait = health.retry_at - ticks.now
                assert flaky.retry_max * (1 - flaky.jitter) <= wait <= flaky.retry_max

                # Not due: refused at once, nothing spawned.
                refused = await client.call_tool("flaky__read_note", {"id": "x"})
                assert text_of(refused) == "upstream unavailable (flaky); try again shortly"
                assert _reason(refused) == "upstream_unavailable"
                listed = sorted(t.name for t in (await client.list_tools()).tools)
                assert listed == [
                    "notes__crash",
                    "notes__delete_note",
                    "notes__read_note",
                    "notes__write_note",
                ]
                assert flaky.health.failures == 1100

                # Due again: one more real attempt, through the listing; still clean.
                ticks.advance(flaky.retry_max)
                assert len((await client.list_tools()).tools) == 4
                assert flaky.health.failures == 1101
                ok = await client.call_tool("notes__read_note", {"id": "n1"})
                assert not ok.is_error, text_of(ok)

                # The server is back: the next due attempt reconnects it and lists it again.
                flaky.spec = spec
                ticks.advance(flaky.retry_max)
                assert len((await client.list_tools()).tools) == 8
                assert flaky.health.state == "healthy"
                back = await client.call_tool("flaky__read_note", {"id": "n2"})
                assert not back.is_error, text_of(back)
    guard.close()
    failed = [r for r in caplog.records if "reconnection failed" in r.getMessage()]
    assert len(failed) == 1  # once per outage, not once per attempt
    assert not any(r.exc_info for r in caplog.records)
    assert any("reconnected after 1101 failed attempt(s)" in m for m in caplog.messages)


@pytest.mark.slow
async def test_a_day_of_outage_with_simulated_time(setup: Setup, tmp_path: Path) -> None:
    """Attempts follow the jittered, capped schedule for a whole (simulated) day, then recover."""
    outage = 86400.0 if HARDENING else 1800.0
    record = tmp_path / "calls.jsonl"
    spec = UpstreamSpec(namespace="notes", command=tuple(notes_command(record)), trusted=True)
    ticks = Ticks()
    upstream = Upstream(spec, monotonic=ticks)
    gaps: list[float] = []
    with anyio.fail_after(900 if HARDENING else 120):
        async with AsyncExitStack() as stack:
            await upstream.connect(stack)
            upstream.spec = replace(spec, command=DIES_AT_ONCE)
            upstream._mark_broken(ConnectionError("the test cut it off"))
            start = ticks.now
            last_attempt = None
            while ticks.now - start < outage:
                health = upstream.health
                if health.retry_at is not None:
                    ticks.now = health.retry_at
                if last_attempt is not None:
                    gaps.append(ticks.now - last_attempt)
                last_attempt = ticks.now
                with pytest.raises(UpstreamUnavailable):
                    await upstream.recover()
                # Not due a moment later: no attempt, no spawn.
                failures = upstream.health.failures
                with pytest.raises(UpstreamUnavailable):
                    await upstream.recover()
                assert upstream.health.failures == failures
            upstream.spec = spec
            ticks.now = upstream.health.retry_at or ticks.now
            assert await upstream.recover()
            assert sorted(upstream.tools) == ["delete_note", "read_note", "write_note"]
    assert max(gaps) <= upstream.retry_max
    steady = gaps[10:]  # past the doubling
    assert min(steady) >= upstream.retry_max * (1 - upstream.jitter)
    # Jitter: the gaps are not all the same (two equal draws in a row are possible).
    assert len({round(g, 6) for g in steady}) > len(steady) // 2
    assert len(gaps) <= outage / (upstream.retry_max * (1 - upstream.jitter)) + 10
