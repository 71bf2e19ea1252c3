"""The full agentguard story in one run: ``make demo`` (or ``python examples/demo.py``).

    python examples/demo.py [--interactive] [--keep DIR]

The story lives in the ``agentguard_demo`` package next to this file (its docstring
tells the five scenarios); this file runs it as ``python -m agentguard_demo`` would,
so every documented command keeps working.
"""

import runpy

if __name__ == "__main__":
    # run_module rather than an import: mypy resolves examples/ files as
    # ``examples.*`` and would not find ``agentguard_demo`` from here.
    runpy.run_module("agentguard_demo", run_name="__main__")
