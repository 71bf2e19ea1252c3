"""Who is who in the story, the organisation's policy and every grant issued before it starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from agentguard import Delegation, Identity, ManualClock
from agentguard.guard import Guard
from agentguard.keys import Keyring

HOST = "web-17.emea"
#: The internal team on whose behalf the partner integration acts (scenario 4).
PARTNER_SPONSOR = "team:partnerships"
GOOD_DIGEST = "sha256:9f2c4e7a1b"
OTHER_DIGEST = "sha256:5d01b8c3e2"


@dataclass
class Cast:
    """Every identity in the story, created in the run's keyring."""

    org: Identity
    team: Identity
    bot: Identity
    collector: Identity
    alice: Identity
    ci: Identity
    partner: Identity
    partner_events: Identity
    enricher: Identity
    backup: Identity
    reporter: Identity
    payments: Identity

    @classmethod
    def create(cls, keyring: Keyring) -> Cast:
        return cls(
            org=keyring.create("org:acme"),
            team=keyring.create("team:incident-response"),
            bot=keyring.create("agent:support-bot"),
            collector=keyring.create("agent:log-collector"),
            alice=keyring.create("user:alice"),
            ci=keyring.create("service:ci-deployer"),
            partner=keyring.create("org:partner-co"),
            partner_events=keyring.create("service:partner-events"),
            enricher=keyring.create("agent:event-enricher"),
            backup=keyring.create("service:legacy-backup"),
            reporter=keyring.create("agent:quarterly-report"),
            payments=keyring.create("agent:payments"),
        )


def write_policy(home: Path, cast: Cast) -> Path:
    """The organisation's policy: the trusted root, alice as approver, the approval queue."""
    policy = {
        "version": 1,
        "trusted_roots": [{"id": cast.org.id, "public_key": cast.org.principal.public_jwk()}],
        "approvers": [
            {
                "id": cast.alice.id,
                "tools": ["edr/*"],
                "min_assurance": "signed",
                "public_key": cast.alice.principal.public_jwk(),
            }
        ],
        "approval": {"channel": "queue", "mode": "raise", "timeout": "15m"},
        "limits": {"max_root_ttl": "7d", "max_link_ttl": "24h", "max_chain_length": 5},
    }
    path = home / "agentguard.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def issue_grants(guard: Guard, c: Cast) -> dict[str, Delegation]:
    """Issue every grant of the story (the inventory records each link)."""
    now = guard.clock.now()
    chains: dict[str, Delegation] = {}
    chains["team"] = guard.issue(
        c.org,
        c.team,
        ["tickets/*", "kb/*", "logs/*", "edr/*"],
        ttl="7d",
        purpose="incident response",
        on_behalf_of=c.org.id,
    )
    emea = {"business_unit": "emea"}
    chains["bot"] = guard.attenuate(
        chains["team"],
        c.team,
        c.bot,
        [
            {"tool": "tickets/open_ticket", "where": emea},
            {"tool": "kb/search_articles", "where": emea},
            "logs/collect_logs",
            "edr/get_host_status",
            {"tool": "edr/quarantine_host", "approval": True},
        ],
        ttl="8h",
        purpose="EMEA support shift",
        on_behalf_of=c.team.id,
    )
    chains["ci"] = guard.issue(
        c.org,
        c.ci,
        [{"tool": "deploy/release", "where": {"digest": GOOD_DIGEST}}],
        ttl="10m",
        purpose="roll out checkout 2.4.1",
        on_behalf_of="team:platform",
    )
    chains["partner"] = guard.issue(
        c.org,
        c.partner,
        ["events/submit"],
        ttl="7d",
        purpose="partner event programme",
        on_behalf_of=PARTNER_SPONSOR,
    )
    chains["partner_events"] = guard.attenuate(
        chains["partner"], c.partner, c.partner_events, ["events/submit"], ttl="24h"
    )
    chains["enricher"] = guard.attenuate(
        chains["partner_events"], c.partner_events, c.enricher, ["events/submit"], ttl="1h"
    )
    chains["payments"] = guard.issue(
        c.org,
        c.payments,
        [{"tool": "billing/refund", "budget": {"window": "1d", "sum": {"amount": 500}}}],
        ttl="8h",
        purpose="customer refunds",
        on_behalf_of="team:finance",
    )
    # Two grants issued in the past: one that has expired, one nobody has used.
    expired = Delegation.issue(
        c.org,
        c.backup,
        ["backups/*"],
        ttl="1d",
        purpose="nightly backups (retired system)",
        on_behalf_of="team:platform",
        clock=ManualClock(now - 2 * 86400),
    )
    stale = Delegation.issue(
        c.org,
        c.reporter,
        ["kb/search_articles"],
        ttl="24h",
        purpose="quarterly report",
        on_behalf_of="team:finance",
        clock=ManualClock(now - 3 * 3600),
    )
    for delegation in (expired, stale):
        guard.record(delegation)
    return chains
