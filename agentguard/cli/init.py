"""``agentguard init``: the organisation key, the guard key, the trust entry and a policy."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Annotated

import typer

from agentguard.cli._common import HomeOption, PolicyOption, fail, say, workspace
from agentguard.errors import IdentityError
from agentguard.guard import Guard
from agentguard.keys import Keyring, validate_principal_id
from agentguard.policy import load_policy
from agentguard.resolve import DEFAULT_HOME, STATE_FILE, channel_for

__all__ = ["init_command", "policy_template"]

GUARD_ID = "service:agentguard"


def policy_template(
    org_id: str,
    key_file: str,
    guard_id: str = GUARD_ID,
    approvers: Sequence[tuple[str, Mapping[str, str] | None]] = (),
    min_assurance: str | None = None,
) -> str:
    """The commented ``agentguard.yaml`` template with the trust entry filled in.

    ``approvers`` are ``(principal id, public JWK or None)`` pairs, written as
    approvers of every tool; with ``min_assurance``, each entry demands at least that
    level of every answer (without it, each rule's own level decides).

    Raises:
        IdentityError: an approver id is not a principal id.
    """
    text = (files("agentguard") / "templates" / "agentguard.yaml").read_text(encoding="utf-8")
    # json.dumps quotes the path so any file name is a valid YAML scalar.
    return Template(text).substitute(
        org_id=org_id,
        guard_id=guard_id,
        key_file=json.dumps(key_file),
        approvers=_approvers_yaml(approvers, min_assurance),
    )


def _approvers_yaml(
    approvers: Sequence[tuple[str, Mapping[str, str] | None]], min_assurance: str | None
) -> str:
    if not approvers:
        return "approvers: []"
    lines = ["approvers:"]
    for principal_id, public_key in approvers:
        # The grammar of an id (letters, digits, ". _ @ + -") leaves nothing YAML reads
        # specially; JSON (a YAML subset) quotes everything else written here.
        lines.append(f"  - id: {validate_principal_id(principal_id)}")
        lines.append('    tools: ["*/*"]  # narrow to the tools this person answers for')
        if min_assurance is not None:
            lines.append(f"    min_assurance: {json.dumps(min_assurance)}")
        if public_key is not None:
            lines.append(f"    public_key: {json.dumps(dict(public_key), sort_keys=True)}")
    return "\n".join(lines)


def _approver_ids(given: Sequence[str]) -> list[str]:
    """The ``--approver`` ids, each once, in order; only people may approve."""
    ids: list[str] = []
    for raw in given:
        try:
            principal_id = validate_principal_id(raw)
        except IdentityError as exc:
            fail(f"--approver: {exc}")
        if not principal_id.startswith("user:"):
            fail(
                f"--approver {principal_id}: an approver must be a person (a user: principal); "
                "separation of duties refuses answers from agents, services and organisations"
            )
        if principal_id not in ids:
            ids.append(principal_id)
    return ids


def init_command(
    ctx: typer.Context,
    org: Annotated[
        str, typer.Option("--org", help="The organisation's principal id (the trusted root).")
    ] = "org:example",
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing setup (existing keys are kept).")
    ] = False,
    approver: Annotated[
        list[str] | None,
        typer.Option(
            "--approver",
            metavar="ID",
            help="A person who may approve privileged calls (repeatable), e.g. user:alice.",
        ),
    ] = None,
    home: HomeOption = None,
    policy: PolicyOption = None,
) -> None:
    """Create ./.agentguard/ (keys, state) and ./agentguard.yaml for an organisation."""
    org_id = validate_principal_id(org)
    approver_ids = _approver_ids(approver or ())
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
    # Approvers answer through the channel the template configures, at its assurance;
    # the entries set no floor of their own, so a rule that accepts less (the page) can.
    template = load_policy(_yaml_mapping(policy_template(org_id, key_file)))
    assurance = getattr(channel_for(template), "assurance", "local")
    approvers = [(a, _public_key(keyring, a)) for a in approver_ids]
    policy_path.write_text(policy_template(org_id, key_file, approvers=approvers), encoding="utf-8")
    loaded = load_policy(policy_path)
    loaded.root_principals()  # fails now, not on the first call, if the key file does not load
    Guard(loaded, home=state_dir).close()
    say(f"wrote {policy_path} (trusted root {org_id}, key file {key_file})")
    say(f"state in {state_dir / STATE_FILE}")
    for principal_id, public_key in approvers:
        how = "their key in the keyring" if public_key is not None else "no key yet"
        say(f"approver {principal_id} for every tool, answering here at '{assurance}' ({how})")
        if keyring.has_private(principal_id):
            say(
                f"  warning: the private key of '{principal_id}' is in {state_dir}; an agent "
                "that can run commands here can approve as them: keep approvers' private "
                "keys out of the agents' home (their public key in the policy is enough)"
            )
        if public_key is None:
            say(
                f"  '{principal_id}' signs answers with their own key: "
                f"'agentguard identity new {principal_id}' (or 'identity import')"
            )
    if not approvers:
        say(
            "no approvers yet: calls that need approval are refused (no_approver) until "
            "one is listed under 'approvers:' (or run init with --approver user:NAME)"
        )
    say(
        "next: 'agentguard identity new user:alice', then "
        f"'agentguard grant --from {org_id} --to user:alice --tool \"tickets/*\" --ttl 8h'"
    )


def _public_key(keyring: Keyring, principal_id: str) -> dict[str, str] | None:
    """The approver's public JWK when the home's keyring has their key."""
    try:
        return keyring.principal(principal_id).public_jwk()
    except IdentityError:
        return None


def _yaml_mapping(text: str) -> dict[str, object]:
    """The policy text as a mapping (the template is ours: plain YAML)."""
    import yaml

    data = yaml.safe_load(text)
    assert isinstance(data, dict)  # noqa: S101 - our own template is a mapping
    return data
