"""atheris harness: delegation strings and call tokens through parse and verification.

.venv/bin/python fuzz/fuzz_delegation.py -max_total_time=60 build/fuzz/delegation
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from _world import World, seed

    from agentguard.delegation import Delegation
    from agentguard.errors import AgentGuardError
    from agentguard.tokens import CallClaims

WORLD = World()
TEXT = WORLD.delegation.serialize()
CALL = WORLD.delegation.mint_call_token(WORLD.bot, "tickets/read", {"ticket": 1}, clock=WORLD.clock)
CHAIN = WORLD.verifier.verify_chain(TEXT)


def test_one_input(data: bytes) -> None:
    """Delegation.parse, verify_chain, authorize, CallClaims.parse, verify_call_token."""
    text = data.decode("utf-8", errors="surrogateescape")
    with contextlib.suppress(AgentGuardError):
        Delegation.parse(text)
    try:
        chain = WORLD.verifier.verify_chain(text)
        WORLD.verifier.authorize(chain, "tickets/read", {"ticket": 1})
    except AgentGuardError:
        pass
    with contextlib.suppress(AgentGuardError):
        CallClaims.parse(text)
    with contextlib.suppress(AgentGuardError):
        WORLD.verifier.verify_call_token(
            CHAIN, text, tool="tickets/read", args={"ticket": 1}, consume=False
        )


def main() -> None:
    seed([TEXT.encode(), *(link.encode() for link in TEXT.split("~")), CALL.encode()])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
