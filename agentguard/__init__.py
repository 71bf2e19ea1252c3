"""agentguard: delegation chains, per-call attenuation, step-up approval and audit for AI agents.

The public API is the short list below; everything else lives in submodules
(``agentguard.policy``, ``agentguard.approval``, ``agentguard.store``, ...).
"""

from agentguard.approval import ApprovalRequest
from agentguard.clock import Clock, ManualClock, SystemClock
from agentguard.decision import Decision, Outcome, Reason
from agentguard.delegation import Delegation
from agentguard.errors import (
    AgentGuardError,
    ApprovalPending,
    ApprovalRejected,
    ConfigError,
    DeniedError,
)
from agentguard.guard import Guard
from agentguard.keys import Identity, Keyring, Principal
from agentguard.policy import Policy, load_policy
from agentguard.store import MemoryStore, SQLiteStore
from agentguard.store.base import Store
from agentguard.tokens import Rule
from agentguard.verify import Verifier

__version__ = "0.1.0"

__all__ = [
    "AgentGuardError",
    "ApprovalPending",
    "ApprovalRejected",
    "ApprovalRequest",
    "Clock",
    "ConfigError",
    "Decision",
    "Delegation",
    "DeniedError",
    "Guard",
    "Identity",
    "Keyring",
    "ManualClock",
    "MemoryStore",
    "Outcome",
    "Policy",
    "Principal",
    "Reason",
    "Rule",
    "SQLiteStore",
    "Store",
    "SystemClock",
    "Verifier",
    "__version__",
    "load_policy",
]
