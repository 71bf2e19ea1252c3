"""agentguard for LangChain: guarded tools, step-up as LangGraph interrupts, sub-agents.

``guard_tools`` wraps tools so that every call is verified, decided, (approved,)
and audited by an :class:`agentguard.Guard`. The ``AgentMiddleware`` variant
lives in :mod:`agentguard_langchain.middleware` (extra ``agents``).
"""

from agentguard_langchain._gate import INTERRUPT_KIND, ReviewerRejected, ToolGate
from agentguard_langchain._subagents import attenuate_for
from agentguard_langchain._tools import AlreadyGuardedError, GuardedTool, guard_tools

__version__ = "0.1.0"

__all__ = [
    "INTERRUPT_KIND",
    "AlreadyGuardedError",
    "GuardedTool",
    "ReviewerRejected",
    "ToolGate",
    "__version__",
    "attenuate_for",
    "guard_tools",
]
