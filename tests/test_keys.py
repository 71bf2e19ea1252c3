"""Tests for agentguard.keys: principal ids, JWKs, thumbprints and the on-disk keyring."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentguard.errors import IdentityError
from agentguard.keys import (
    PRINCIPAL_KINDS,
    Identity,
    Keyring,
    Principal,
    b64url_decode,
    b64url_encode,
    validate_principal_id,
)

# RFC 8037 appendix A.1 (Ed25519 key pair) and A.3 (its RFC 7638 thumbprint).
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


# --- principal id grammar ---------------------------------------------------------------


@pytest.mark.parametrize(
    "principal_id",
    [
        "org:acme",
        "team:incident-response",
        "user:alice",
        "user:alice@example.com",
        "user:a.b+c_d-e",
        "agent:support-bot",
        "service:ci",
        "user:0",
        "user:" + "a" * 128,
    ],
)
def test_valid_principal_ids(principal_id: str) -> None:
    assert validate_principal_id(principal_id) == principal_id


@pytest.mark.parametrize(
    "principal_id",
    [
        "",
        "alice",
        "user:",
        ":alice",
        "User:alice",
        "robot:r2d2",
        "user:-alice",
        "user:.alice",
        "user:al ice",
        "user:alice\n",
        "user:alice\x00",
        "user:ali/ce",
        "user:ali:ce",
        "user:élodie",
        "user:" + "a" * 129,
        "user :alice",
    ],
)
def test_invalid_principal_ids_are_refused_naming_the_grammar(principal_id: str) -> None:
    with pytest.raises(IdentityError) as info:
        validate_principal_id(principal_id)
    message = str(info.value)
    assert "kind:name" in message
    for kind in PRINCIPAL_KINDS:
        assert kind in message


@pytest.mark.parametrize("value", [None, 42, b"user:alice", ["user:alice"]])
def test_non_string_principal_ids_are_refused(value: object) -> None:
    with pytest.raises(IdentityError, match="string like 'user:alice'"):
        validate_principal_id(value)


def test_invalid_id_message_truncates_long_input() -> None:
    with pytest.raises(IdentityError) as info:
        validate_principal_id("robot:" + "x" * 500)
    assert "x" * 100 not in str(info.value)


def test_identity_generate_checks_the_id() -> None:
    with pytest.raises(IdentityError):
        Identity.generate("nobody")


def test_principal_kind() -> None:
    assert Identity.generate("agent:bot").principal.kind == "agent"


# --- base64url -------------------------------------------------------------------------


def test_b64url_round_trip_and_strictness() -> None:
    for raw in (b"", b"\x00", b"\xff\xfe", bytes(range(40))):
        assert b64url_decode(b64url_encode(raw)) == raw
    for bad in ("a", "ab==", "a+b/", "YQ=", "YR", "é"):
        with pytest.raises(ValueError, match="base64url"):
            b64url_decode(bad)


# --- JWKs and thumbprints --------------------------------------------------------------


def test_public_jwk_round_trip() -> None:
    identity = Identity.generate("agent:bot")
    jwk = identity.principal.public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "kid"}
    assert (jwk["kty"], jwk["crv"], jwk["kid"]) == ("OKP", "Ed25519", identity.kid)
    again = Principal.from_jwk("agent:bot", jwk)
    assert again == identity.principal
    assert again.kid == identity.kid
    assert again.verify(identity.sign(b"hello"), b"hello")
    assert not again.verify(identity.sign(b"hello"), b"hellO")


def test_private_jwk_round_trip() -> None:
    identity = Identity.generate("user:alice")
    jwk = identity.private_jwk()
    assert "d" in jwk
    again = Identity.from_private_jwk("user:alice", jwk)
    assert again.kid == identity.kid
    assert identity.principal.verify(again.sign(b"x"), b"x")


def test_private_jwk_with_mismatched_halves_is_refused() -> None:
    jwk = Identity.generate("user:alice").private_jwk()
    jwk["x"] = Identity.generate("user:alice").principal.public_jwk()["x"]
    with pytest.raises(IdentityError, match="does not match"):
        Identity.from_private_jwk("user:alice", jwk)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": RFC8037_X},
        {"kty": "OKP", "crv": "X25519", "x": RFC8037_X},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X + "="},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(b"\x01" * 31)},
    ],
)
def test_bad_public_jwks_are_refused(jwk: dict[str, str]) -> None:
    with pytest.raises(IdentityError):
        Principal.from_jwk("user:alice", jwk)


def test_kid_is_the_rfc7638_thumbprint_of_the_rfc8037_example_key() -> None:
    principal = Principal.from_jwk("user:rfc", {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X})
    assert principal.kid == RFC8037_THUMBPRINT
    identity = Identity.from_private_jwk(
        "user:rfc", {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "d": RFC8037_D}
    )
    assert identity.kid == RFC8037_THUMBPRINT


def test_kid_is_computed_by_the_rfc7638_algorithm() -> None:
    """Required members only, sorted, no whitespace, SHA-256, unpadded base64url."""
    identity = Identity.generate("agent:bot")
    x = identity.principal.public_jwk()["x"]
    members = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    digest = hashlib.sha256(members.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
    assert identity.kid == expected
    assert len(identity.kid) == 43


# --- key files -------------------------------------------------------------------------


def test_private_key_file_is_created_0600(tmp_path: Path) -> None:
    identity = Identity.generate("agent:bot")
    path = tmp_path / "bot.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).kid == identity.kid


def test_saving_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "bot.key"
    Identity.generate("agent:bot").save(path)
    with pytest.raises(IdentityError, match="exists already"):
        Identity.generate("agent:bot").save(path)


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_loading_a_group_or_world_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "bot.key"
    Identity.generate("agent:bot").save(path)
    os.chmod(path, mode)
    with pytest.raises(IdentityError) as info:
        Identity.load(path)
    message = str(info.value)
    assert "group or others" in message
    assert f"{mode:04o}" in message
    assert "chmod 600" in message


def test_loading_a_missing_key_file_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="cannot open private key file"):
        Identity.load(tmp_path / "nope.key")


def test_loading_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    Identity.generate("agent:bot").save(target)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(IdentityError):
        Identity.load(link)


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b'{"id": "nobody", "jwk": {}}'])
def test_loading_a_malformed_key_file_fails(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    with pytest.raises(IdentityError):
        Identity.load(path)


# --- keyring ---------------------------------------------------------------------------


def test_keyring_create_list_load(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys")
    assert list(keyring) == []
    bot = keyring.create("agent:bot")
    org = keyring.create("org:acme")
    keyring.import_public(Identity.generate("user:alice").principal)
    assert list(keyring) == [("agent:bot", True), ("org:acme", True), ("user:alice", False)]
    assert keyring.identity("agent:bot").kid == bot.kid
    assert keyring.principal("org:acme").kid == org.kid
    assert keyring.has_private("agent:bot")
    assert not keyring.has_private("user:alice")
    assert stat.S_IMODE(keyring.private_path("agent:bot").stat().st_mode) == 0o600
    assert stat.S_IMODE(keyring.directory.stat().st_mode) & 0o077 == 0


def test_keyring_refuses_a_second_private_key_for_an_id(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.create("agent:bot")
    with pytest.raises(IdentityError, match="exists already"):
        keyring.create("agent:bot")


def test_keyring_missing_entries_say_how_to_fix(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    with pytest.raises(IdentityError, match="agentguard identity new agent:bot"):
        keyring.identity("agent:bot")
    with pytest.raises(IdentityError, match="agentguard identity import"):
        keyring.principal("agent:bot")


def test_keyring_refuses_unsafe_private_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.create("agent:bot")
    os.chmod(keyring.private_path("agent:bot"), 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        keyring.identity("agent:bot")


def test_keyring_import_of_a_different_public_key_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    first = Identity.generate("user:alice").principal
    keyring.import_public(first)
    keyring.import_public(first)  # the same key again is fine
    other = Identity.generate("user:alice").principal
    with pytest.raises(IdentityError, match="different public key for user:alice"):
        keyring.import_public(other)
    assert keyring.principal("user:alice").kid == first.kid
    keyring.import_public(other, overwrite=True)
    assert keyring.principal("user:alice").kid == other.kid


def test_keyring_import_over_an_own_identity_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    mine = keyring.create("agent:bot")
    with pytest.raises(IdentityError, match="different public key"):
        keyring.import_public(Identity.generate("agent:bot").principal)
    assert keyring.principal("agent:bot").kid == mine.kid


def test_keyring_detects_a_key_file_of_another_principal(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.create("agent:bot")
    os.replace(keyring.private_path("agent:bot"), keyring.private_path("agent:evil"))
    with pytest.raises(IdentityError, match="belongs to agent:bot"):
        keyring.identity("agent:evil")
    public = json.loads(keyring.public_path("agent:bot").read_text())
    public["id"] = "agent:other"
    keyring.public_path("agent:bot").write_text(json.dumps(public))
    with pytest.raises(IdentityError, match="another principal"):
        keyring.principal("agent:bot")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=512))
def test_identity_signatures_are_plain_ed25519_whichever_library_signs(data: bytes) -> None:
    """libsodium (the fast extra) and OpenSSL give the same deterministic signature."""
    identity = Identity.generate("service:agentguard")
    signature = identity.sign(data)
    assert signature == identity.private_key.sign(data)
    identity.principal.public_key.verify(signature, data)
