"""A verifier needs an explicit revocation source; running without one is a warned opt-out.

A ``Verifier`` built without ``revocations=`` used to consult a fresh, empty
in-memory store: every revoked chain verified. Now the argument is required,
``None`` is refused, and only the ``NO_REVOCATION_CHECK`` sentinel skips the
check — with a warning, and a store that refuses to record revocations.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentguard.clock import ManualClock
from agentguard.delegation import Delegation
from agentguard.errors import DeniedError, StoreError
from agentguard.keys import Identity
from agentguard.store.memory import MemoryStore
from agentguard.testing import START
from agentguard.verify import NO_REVOCATION_CHECK, RevocationCheckDisabledWarning, Verifier
from tests.test_verify_attacks import denial


def test_a_verifier_without_a_revocation_source_cannot_be_built(org: Identity) -> None:
    """The reproduction: ``Verifier([org])`` silently ignored every revocation; now it fails."""
    untyped: Any = Verifier
    with pytest.raises(TypeError, match="revocations"):
        untyped([org.principal])
    with pytest.raises(TypeError, match="NO_REVOCATION_CHECK"):
        untyped([org.principal], revocations=None)


def test_a_verifier_with_a_store_refuses_a_revoked_chain(
    chain: Delegation, org: Identity, clock: ManualClock
) -> None:
    """The store passed in is the one consulted on every chain."""
    store = MemoryStore()
    verifier = Verifier([org.principal], revocations=store, clock=clock)
    verifier.verify_chain(chain)
    store.revoke("link", chain.root.link_id, reason="", at=START)
    denial(lambda: verifier.verify_chain(chain), DeniedError, "revoked")


def test_no_revocation_check_is_explicit_and_warned(
    chain: Delegation, org: Identity, clock: ManualClock
) -> None:
    """The sentinel verifies without revocations, warns once, and cannot record any."""
    with pytest.warns(RevocationCheckDisabledWarning, match="revoked"):
        verifier = Verifier([org.principal], revocations=NO_REVOCATION_CHECK, clock=clock)
    assert verifier.verify_chain(chain).holder.id == "agent:sub"
    assert verifier.revocations.find_revoked([chain.root.link_id], [], ["team:ir"]) is None
    assert verifier.revocations.revocations() == []
    with pytest.raises(StoreError, match="NO_REVOCATION_CHECK"):
        verifier.revocations.revoke("link", chain.root.link_id, reason="", at=START)
    assert repr(NO_REVOCATION_CHECK) == "NO_REVOCATION_CHECK"
