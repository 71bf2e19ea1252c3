"""``python -m agentguard_mcp``: the ``agentguard mcp`` commands without the core CLI."""

from agentguard_mcp.cli import main

main()
