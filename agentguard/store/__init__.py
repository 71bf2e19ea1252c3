"""State stores: revocations, replay nonces, the grant inventory, audit and approvals.

:class:`MemoryStore` keeps everything in the process (notebooks, tests);
:class:`SQLiteStore` keeps it in one SQLite file (WAL) that several processes
may share. Both implement the small protocols of :mod:`agentguard.store.base`.
"""

from agentguard.store.base import (
    GrantRecord,
    ReplayStore,
    Revocation,
    RevocationStore,
)
from agentguard.store.memory import MemoryStore
from agentguard.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "GrantRecord",
    "MemoryStore",
    "ReplayStore",
    "Revocation",
    "RevocationStore",
    "SQLiteStore",
]
