"""`Guard.call` and a guarded LangChain tool against their baselines, measured two ways.

Back to back (all rounds of one, then all rounds of the other, as
``benchmarks/run.py`` used to) and interleaved (one call of each per round, as
``make bench`` does now). Run it on two checkouts to compare them:
``.venv/bin/python benchmarks/methods.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentguard import Guard
from agentguard.store import MemoryStore


def _load_run() -> Any:
    """``benchmarks/run.py``, the sibling module whose chains and biscuit token are reused."""
    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("run.py"))
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/run.py is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_run()


def _guard_call() -> Callable[[], object]:
    delegation, org, holder = bench._chain(links=3)
    root = {"id": org.id, "public_key": org.principal.public_jwk()}
    guard = Guard({"version": 1, "trusted_roots": [root]}, store=MemoryStore())

    def search(business_unit: str, query: str) -> str:
        return f"{len(query)} hits in {business_unit}"

    return lambda: guard.call(delegation, bench.TOOL, bench.ARGS, search, holder=holder)


def _langchain() -> tuple[Callable[[], object], Callable[[], object]]:
    from agentguard_langchain import guard_tools
    from langchain_core.tools import tool

    delegation, org, holder = bench._chain()

    @tool
    def search(business_unit: str, query: str) -> str:
        """Search the knowledge base."""
        return f"{len(query)} hits in {business_unit}"

    root = {"id": org.id, "public_key": org.principal.public_jwk()}
    guard = Guard({"version": 1, "trusted_roots": [root]}, store=MemoryStore())
    (guarded,) = guard_tools(
        [search], guard=guard, delegation=delegation, holder=holder, namespace="kb"
    )
    return (lambda: search.invoke(bench.ARGS)), (lambda: guarded.invoke(bench.ARGS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    rounds = parser.parse_args().rounds
    biscuit = bench._biscuit_run(3)
    call = _guard_call()
    call_alone, biscuit_alone = bench._median_us(call, rounds), bench._median_us(biscuit, rounds)
    paired = bench._paired_median_us({"call": _guard_call(), "biscuit": biscuit}, rounds)
    bare, guarded = _langchain()
    bare_alone, guarded_alone = bench._median_us(bare, rounds), bench._median_us(guarded, rounds)
    bare2, guarded2 = _langchain()
    tools = bench._paired_median_us({"bare": bare2, "guarded": guarded2}, rounds)
    for method, g, b, t, n in (
        ("back to back", call_alone, biscuit_alone, guarded_alone, bare_alone),
        ("interleaved", paired["call"], paired["biscuit"], tools["guarded"], tools["bare"]),
    ):
        print(
            f"{method:13} Guard.call {g:6.1f} µs / biscuit 3 blocks {b:6.1f} µs = {g / b:.2f}x; "
            f"guard_tools {t:6.1f} µs / bare tool {n:6.1f} µs = {t / n:.2f}x"
        )


if __name__ == "__main__":
    main()
