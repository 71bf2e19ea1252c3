"""``agentguard init``: the organisation key, the guard key, the trust entry and a policy."""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from agentguard.cli._common import HomeOption, PolicyOption, fail, say, workspace
from agentguard.guard import Guard
from agentguard.keys import Keyring, validate_principal_id
from agentguard.policy import load_policy
from agentguard.resolve import DEFAULT_HOME, STATE_FILE

__all__ = ["init_command", "policy_template"]

GUARD_ID = "service:agentguard"


def policy_template(org_id: str, key_file: str, guard_id: str = GUARD_ID) -> str:
    """The commented ``agentguard.yaml`` template with the trust entry filled in."""
    text = (files("agentguard") / "templates" / "agentguard.yaml").read_text(encoding="utf-8")
    # json.dumps quotes the path so any file name is a valid YAML scalar.
    return Template(text).substitute(
        org_id=org_id, guard_id=guard_id, key_file=json.dumps(key_file)
    )


def init_command(
    ctx: typer.Context,
    org: Annotated[
        str, typer.Option("--org", help="The organisation's principal id (the trusted root).")
    ] = "org:example",
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing setup (existing keys are kept).")
    ] = False,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Create ./.agentguard/ (keys, state) and ./agentguard.yaml for an organisation."""
    org_id = validate_principal_id(org)
    ws = workspace(ctx, home, policy)
    state_dir = ws.explicit_home or Path(DEFAULT_HOME)
    policy_path = ws.policy_path
    keyring = Keyring(state_dir / "keys")
    existing = [
        str(p)
        for p in (
            policy_path,
            state_dir / STATE_FILE,
            keyring.private_path(org_id),
            keyring.private_path(GUARD_ID),
        )
        if p.exists()
    ]
    if existing and not force:
        fail(
            f"an agentguard setup exists already ({', '.join(existing)}); "
            "pass --force to overwrite it"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    for principal_id, role in ((org_id, "organisation"), (GUARD_ID, "guard")):
        if keyring.has_private(principal_id):
            identity = keyring.identity(principal_id)
            say(f"kept existing {role} key {principal_id} (kid {identity.kid[:12]})")
        else:
            identity = keyring.create(principal_id)
            say(f"created {role} key {principal_id} (kid {identity.kid[:12]})")
    key_file = os.path.relpath(keyring.public_path(org_id).resolve(), policy_path.resolve().parent)
    policy_path.write_text(policy_template(org_id, key_file), encoding="utf-8")
    loaded = load_policy(policy_path)
    loaded.root_principals()  # fails now, not on the first call, if the key file does not load
    Guard(loaded, home=state_dir).close()
    say(f"wrote {policy_path} (trusted root {org_id}, key file {key_file})")
    say(f"state in {state_dir / STATE_FILE}")
    say(
        "next: 'agentguard identity new user:alice', then "
        f"'agentguard grant --from {org_id} --to user:alice --tool \"tickets/*\" --ttl 8h'"
    )
