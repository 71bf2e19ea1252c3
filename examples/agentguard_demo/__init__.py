"""The full agentguard story in one run: ``make demo`` (or ``python examples/demo.py``).

Five scenarios of delegated machine identity, on embedded defaults, in a
temporary directory (no API key, no network, no service to start):

1. an AI support agent acting for the incident-response team opens tickets and
   searches the knowledge base for its own business unit only, within its
   shift window; an out-of-unit ticket is denied, naming the link and rule;
2. it hands a log-collection sub-agent a narrower delegation; the sub-agent's
   attempt to quarantine a host crosses the MCP proxy to a real MCP server
   process and waits for step-up approval from user:alice through the queue;
3. a CI/CD pipeline deploys only the release digest its short-lived grant names;
4. the team sponsoring a partner integration is revoked, and every chain made
   on its behalf stops (the team never signed a link: naming it is enough);
5. the grant inventory shows an expired grant and a stale one.

The agents are LangChain ``create_agent`` agents driven by a scripted chat
model. The output ends with the delegation tree, the decisions, the trace
(OpenTelemetry spans in memory, joined with what the proxy process recorded)
and the audit log verified.

    python examples/demo.py [--interactive] [--keep DIR]

``--interactive`` lets the person at the terminal answer the approval as
user:alice; ``--keep DIR`` keeps the state in DIR and prints commands to explore it.

The modules, in reading order: ``world`` (who is who, the policy, the grants),
``agents`` (scripted LangChain agents, their tools, the MCP proxy),
``scenarios`` (the five stories), ``rendering`` (trees and tables),
``run`` (what the scenarios share and how they narrate), ``story`` (one run
from start to summary) and ``__main__`` (the command line).
"""
