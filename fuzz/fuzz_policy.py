"""atheris harness: policy files (YAML/JSON) through load_policy.

.venv/bin/python fuzz/fuzz_policy.py -max_total_time=60 build/fuzz/policy
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from _world import seed

    from agentguard.errors import AgentGuardError
    from agentguard.policy import load_policy

SEEDS = [
    b"version: 1\n",
    b"version: 1\nlimits:\n  max_chain_length: 4\n  max_link_ttl: 1h\n",
    b'deny:\n  - tools: ["fs/*"]\n    where: {path: {within: /etc}}\n',
    b"approvers:\n  - id: user:carol\n    tools: ['*/*']\n    min_assurance: local\n",
    b'{"version": 1, "step_up": [{"tools": ["billing/*"], "min_assurance": "signed"}]}',
    b"a: &a [x, x]\nb: &b [*a, *a]\nredact: *b\n",
]
POLICY = Path(tempfile.mkdtemp(prefix="agentguard-fuzz-")) / "agentguard.yaml"


def test_one_input(data: bytes) -> None:
    """Write the bytes as a policy file and load it: a Policy or a ConfigError."""
    POLICY.write_bytes(data)
    with contextlib.suppress(AgentGuardError):
        load_policy(POLICY)


def main() -> None:
    seed(SEEDS)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
