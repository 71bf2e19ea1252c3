"""`make bench`: verification cost side by side with biscuit-python and raw PyJWT.

Every row is measured in this one run on this machine; the table reports
medians and the ratios the design's targets are stated in (DESIGN §10):

* cold: a 4-link delegation plus an external call token, nothing cached;
* warm: links cached, call token minted in-process (what the guard does);
* biscuit: parse + authorize of a 4-block token with equivalent checks
  (Datalog time limit raised from its 1 ms default, which fails valid tokens
  under load);
* raw PyJWT: decoding the same five JWS, signatures only.

Run: ``.venv/bin/python benchmarks/run.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from collections.abc import Callable

import jwt

from agentguard import Delegation, Identity, Rule, Verifier
from agentguard.clock import SystemClock
from agentguard.store import MemoryStore

TOOL = "kb/search"
ARGS = {"business_unit": "emea", "query": "vpn outage"}


def _median_us(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(min(50, rounds)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _chain() -> tuple[Delegation, Identity, Identity]:
    org = Identity.generate("org:acme")
    team = Identity.generate("team:incident-response")
    agent = Identity.generate("agent:support-bot")
    sub = Identity.generate("agent:log-collector")
    holder = Identity.generate("agent:kb-reader")
    d = Delegation.issue(
        org,
        team,
        ["tickets/*", Rule("kb/*", where={"business_unit": "emea"})],
        ttl="7d",
        purpose="incident response",
        on_behalf_of="org:acme",
    )
    d = d.attenuate(team, agent, ["tickets/open", "kb/search"], ttl="24h")
    d = d.attenuate(agent, sub, ["kb/search"], ttl="1h")
    d = d.attenuate(sub, holder, [Rule("kb/search", where={"query": {"like": "*"}})], ttl="10m")
    return d, org, holder


def bench_agentguard(rounds: int) -> dict[str, float]:
    delegation, org, holder = _chain()
    text = delegation.serialize()
    clock = SystemClock()
    tokens = [delegation.mint_call_token(holder, TOOL, ARGS) for _ in range(rounds + 60)]
    store = MemoryStore()
    cold = Verifier([org.principal], revocations=store, replay=store, cache_size=0, clock=clock)
    it = iter(tokens)

    def run_cold() -> None:
        chain = cold.verify_chain(text)
        cold.authorize(chain, TOOL, ARGS)
        cold.verify_call_token(chain, next(it), tool=TOOL, args=ARGS)

    warm = Verifier([org.principal], revocations=store, replay=store, clock=clock)

    def run_warm() -> None:
        chain = warm.verify_chain(text)
        warm.authorize(chain, TOOL, ARGS)
        token = delegation.mint_call_token(holder, TOOL, ARGS, clock=clock)
        warm.accept_minted(chain, token, tool=TOOL, args=ARGS)

    jws = [*text.split("~"), tokens[-1]]
    keys = [org.principal.public_key] + [g.subject_key.public_key for g in delegation]

    def run_pyjwt() -> None:
        for token, key in zip(jws, keys, strict=True):
            jwt.api_jws.decode_complete(token, key, algorithms=["EdDSA"])

    return {
        "agentguard cold (4 links + call token)": _median_us(run_cold, rounds),
        "agentguard warm (cached links, minted token)": _median_us(run_warm, rounds),
        "raw PyJWT decode of the same 5 JWS": _median_us(run_pyjwt, rounds),
    }


def bench_biscuit(rounds: int) -> dict[str, float]:
    import biscuit_auth as b

    root = b.KeyPair()
    far = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    token = b.BiscuitBuilder(
        'right("tickets/*"); right("kb/*"); check if time($t), $t < {exp};'
        ' check if business_unit("emea") or tool($t), $t.starts_with("tickets/");',
        {"exp": far},
    ).build(root.private_key)
    token = token.append(
        b.BlockBuilder(
            'check if tool($t), ["tickets/open", "kb/search"].contains($t);'
            " check if time($t), $t < {exp};",
            {"exp": far},
        )
    )
    token = token.append(
        b.BlockBuilder('check if tool("kb/search"); check if time($t), $t < {exp};', {"exp": far})
    )
    token = token.append(
        b.BlockBuilder(
            'check if tool("kb/search"), query($q); check if time($t), $t < {exp};', {"exp": far}
        )
    )
    data = token.to_base64()
    limits = b.AuthorizerBuilder("allow if true;").limits()
    limits.max_time = dt.timedelta(milliseconds=100)

    def run() -> None:
        parsed = b.Biscuit.from_base64(data, root.public_key)
        builder = b.AuthorizerBuilder(
            'tool("kb/search"); business_unit("emea"); query("vpn outage"); time({now});'
            ' allow if tool("kb/search"), right("kb/*");',
            {"now": dt.datetime.now(tz=dt.UTC)},
        )
        builder.set_limits(limits)
        builder.build(parsed).authorize()

    return {"biscuit-python parse + authorize (4 blocks)": _median_us(run, rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    opts = parser.parse_args()
    rows = {**bench_agentguard(opts.rounds), **bench_biscuit(opts.rounds)}
    biscuit = rows["biscuit-python parse + authorize (4 blocks)"]
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()}; rounds={opts.rounds}"
    )
    print(f"{'benchmark':48} {'median µs':>10} {'vs biscuit':>11}")
    for name, value in rows.items():
        print(f"{name:48} {value:10.1f} {value / biscuit:10.2f}x")
    cold = rows["agentguard cold (4 links + call token)"]
    warm = rows["agentguard warm (cached links, minted token)"]
    print(
        f"targets: cold <= 1.0x biscuit -> {cold / biscuit:.2f}x; "
        f"warm <= 0.5x biscuit -> {warm / biscuit:.2f}x"
    )


if __name__ == "__main__":
    main()
