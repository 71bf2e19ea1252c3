"""Canonical JSON's fast-path check and orjson's write, on what a warm `Guard.call` encodes.

A warm allowed call (the 3-link chain of ``benchmarks/methods.py``, in-memory
store) canonicalises its arguments (their digest), its decision record and its
completion record. This records those values from one such call and times, on
them alone, the check that admits a value to orjson (``_plain``), orjson's
write, and the whole ``canonical_json``, back to back. Run it on two checkouts
to compare them: ``.venv/bin/python benchmarks/canonical.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import timeit
from pathlib import Path
from typing import Any

from agentguard import canonical


def _values_of_a_warm_call() -> list[Any]:
    """The values the third call of a warm guard has orjson write (each one it canonicalises)."""
    spec = importlib.util.spec_from_file_location(
        "bench_methods", Path(__file__).with_name("methods.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError("benchmarks/methods.py is missing")
    methods = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(methods)
    call = methods._guard_call()
    call()
    call()
    seen: list[Any] = []
    write = canonical._dumps

    def recording(value: Any) -> bytes:
        seen.append(value)
        return write(value)

    canonical._dumps = recording
    try:
        call()
    finally:
        canonical._dumps = write
    return seen


def _us_per_round(work: Any, rounds: int) -> float:
    """Best of seven runs of ``rounds`` rounds, in microseconds per round."""
    return min(timeit.repeat(work, number=rounds, repeat=7)) / rounds * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000)
    rounds = parser.parse_args().rounds
    values = _values_of_a_warm_call()
    kinds = ", ".join(str(value.get("type", "arguments")) for value in values)
    print(f"{len(values)} values ({kinds}), all admitted: {all(map(canonical._plain, values))}")
    for name, encode in (
        ("check (_plain)", canonical._plain),
        ("orjson write", canonical._dumps),
        ("canonical_json", canonical.canonical_json),
    ):
        us = _us_per_round(lambda encode=encode: [encode(value) for value in values], rounds)
        print(f"{name:15} {us:5.2f} µs for all {len(values)}")


if __name__ == "__main__":
    main()
