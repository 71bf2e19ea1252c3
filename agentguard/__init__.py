"""agentguard: delegation chains, per-call attenuation, step-up approval and audit for AI agents.

The public API is the short list below; everything else lives in submodules.
"""

from agentguard.clock import Clock, ManualClock, SystemClock
from agentguard.delegation import Delegation
from agentguard.errors import AgentGuardError, ApprovalPending, DeniedError
from agentguard.keys import Identity, Keyring, Principal
from agentguard.tokens import Rule
from agentguard.verify import Verifier

__version__ = "0.1.0"

__all__ = [
    "AgentGuardError",
    "ApprovalPending",
    "Clock",
    "Delegation",
    "DeniedError",
    "Identity",
    "Keyring",
    "ManualClock",
    "Principal",
    "Rule",
    "SystemClock",
    "Verifier",
    "__version__",
]
