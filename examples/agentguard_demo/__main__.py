"""The command line: ``python examples/demo.py``, or ``python -m agentguard_demo`` in examples/."""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
from rich.console import Console

from . import __doc__ as overview
from .story import story


@contextmanager
def state_dir(keep: Path | None) -> Iterator[Path]:
    """The run's state directory: ``keep`` when given (kept), else a temporary one (removed)."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise SystemExit(f"--keep {keep}: the directory is not empty")
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="agentguard-demo-") as tmp:
        yield Path(tmp)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse the options, play the story once, return the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog, description=overview.split("\n\n")[0] if overview else None
    )
    parser.add_argument(
        "--interactive", action="store_true", help="answer the approval yourself, as user:alice"
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the state in DIR")
    opts = parser.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=120)
    with state_dir(opts.keep) as home:
        told = functools.partial(
            story, console, home, interactive=opts.interactive, kept=opts.keep is not None
        )
        code: int = anyio.run(told)
    return code


if __name__ == "__main__":
    # Run by ``python -m``, argv[0] is this file; run by demo.py, it is demo.py.
    as_module = Path(sys.argv[0]).name == "__main__.py"
    sys.exit(main(prog="python -m agentguard_demo" if as_module else None))
