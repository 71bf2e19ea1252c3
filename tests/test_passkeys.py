"""The passkey receipt and its offline check (:func:`verify_passkey_receipt`), without a browser.

Assertions come from a software authenticator (:mod:`tests.passkey_support`);
the browser tests (``test_passkeys_browser.py``) use Chromium's virtual one.
Every refusal is a ``DeniedError`` with reason ``approval_invalid``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentguard.errors import ConfigError, DeniedError, TokenFormatError
from agentguard.passkeys import (
    RECEIPT_PREFIX,
    PasskeyAssertion,
    PasskeyEnrolments,
    PasskeyReceipt,
    answer_statement,
    check_rp_id,
    is_passkey_receipt,
    origin_fits,
    registration_options,
    statement_challenge,
    verify_passkey_receipt,
    verify_registration,
    write_passkey,
)
from agentguard.policy import load_policy
from tests.passkey_support import ORIGIN, RP_ID, SoftKey, b64


def statement(**changes: Any) -> dict[str, Any]:
    base = answer_statement(
        request_id="apr_1",
        call_digest="digest-of-the-call",
        approve=True,
        approver="user:alice",
        issued_at=1000,
        expires_at=1600,
    )
    return {**base, **changes}


def refused(receipt: PasskeyReceipt | str, key: SoftKey, **options: Any) -> str:
    with pytest.raises(DeniedError) as caught:
        verify_passkey_receipt(
            receipt,
            options.pop("cose", key.cose()),
            options.pop("rp_id", RP_ID),
            options.pop("origin", ORIGIN),
            **options,
        )
    assert caught.value.reason == "approval_invalid"
    return caught.value.explanation


@pytest.mark.parametrize("alg", [-8, -7])
def test_an_honest_receipt_verifies_and_returns_its_statement(alg: int) -> None:
    key = SoftKey(alg)
    signed = statement()
    text = key.receipt(signed).encode()
    assert text.startswith(RECEIPT_PREFIX)
    assert is_passkey_receipt(text)
    got = verify_passkey_receipt(text, key.cose(), RP_ID, ORIGIN, credential_id=key.credential_id)
    assert got == signed


def test_the_challenge_is_the_sha256_of_the_canonical_statement() -> None:
    signed = statement(msg="ok")
    canonical = json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()
    assert statement_challenge(signed) == hashlib.sha256(canonical).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"decision": "reject"},
        {"req": "apr_2"},
        {"call": "another-call"},
        {"edited": "digest-of-other-arguments"},
        {"approver": "user:bob", "iss": "user:bob"},
        {"exp": 999_999},
        {"jti": "another-id"},
    ],
)
def test_an_assertion_rewrapped_into_another_statement_is_refused(change: dict[str, Any]) -> None:
    """The challenge binds the whole statement: no field can be changed under the signature."""
    key = SoftKey()
    honest = key.receipt(statement())
    moved = replace(honest, statement={**honest.statement, **change})
    assert "challenge" in refused(moved, key)


def test_another_credentials_key_is_refused() -> None:
    alice, bob = SoftKey(), SoftKey()
    receipt = alice.receipt(statement())
    refused(receipt, alice, cose=bob.cose())
    assert "another credential" in refused(receipt, alice, credential_id=bob.credential_id)


def test_user_verification_is_required() -> None:
    key = SoftKey()
    assert "UV flag off" in refused(key.receipt(statement(), uv=False), key)


def test_wrong_rp_id_hash_origin_or_type_is_refused() -> None:
    key = SoftKey()
    assert "RP ID" in refused(key.receipt(statement(), rp_id="evil.example"), key)
    assert "origin" in refused(key.receipt(statement(), origin="http://localhost:9999"), key)
    assert "type" in refused(key.receipt(statement(), kind="webauthn.create"), key)
    refused(key.receipt(statement()), key, rp_id="example.com")


@pytest.mark.parametrize("alg", [-257, -36, -35, 0, 7])
def test_an_algorithm_other_than_eddsa_or_es256_is_refused(alg: int) -> None:
    key = SoftKey()
    assert "not" in refused(key.receipt(statement()), key, cose=key.cose(alg=alg))


def test_a_key_whose_stated_algorithm_does_not_fit_its_type_is_refused() -> None:
    ed, ec = SoftKey(-8), SoftKey(-7)
    assert "not accepted" in refused(ed.receipt(statement()), ed, cose=ed.cose(alg=-7))
    assert "not accepted" in refused(ec.receipt(statement()), ec, cose=ec.cose(alg=-8))


@pytest.mark.parametrize(
    "cose", [b64(b"\x04" + b"\x01" * 64), b64(b"\xa1\x01"), b64(b"garbage"), b64(b"\xff")]
)
def test_garbage_credential_keys_are_refused(cose: str) -> None:
    key = SoftKey()
    refused(key.receipt(statement()), key, cose=cose)


def _with(receipt: PasskeyReceipt, **parts: str) -> PasskeyReceipt:
    return replace(receipt, assertion=replace(receipt.assertion, **parts))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 10, b"\x00" * 36, b"\xff" * 37 + b"\x01", b"\x00" * 32 + b"\x45" + b"\x00"],
)
def test_truncated_or_garbage_authenticator_data_is_refused(data: bytes) -> None:
    key = SoftKey()
    receipt = key.receipt(statement())
    if not data:
        with pytest.raises(TokenFormatError):
            PasskeyReceipt.decode(_with(receipt, authenticator_data="").encode())
        return
    refused(_with(receipt, authenticator_data=b64(data)), key)


def test_garbage_client_data_or_signature_is_refused() -> None:
    key = SoftKey()
    receipt = key.receipt(statement())
    refused(_with(receipt, client_data_json=b64(b"not json")), key)
    refused(_with(receipt, client_data_json=b64(b"[]")), key)
    refused(_with(receipt, signature=b64(b"\x00" * 64)), key)
    refused(_with(receipt, signature=b64(b"\x30\x02\x01")), SoftKey(-7), cose=SoftKey(-7).cose())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "eyJhbGciOiJFZERTQSJ9.e30.sig",
        RECEIPT_PREFIX,
        RECEIPT_PREFIX + "!!!",
        RECEIPT_PREFIX + "e30=",  # padding is not base64url as stored
        RECEIPT_PREFIX + b64(b"not json"),
        RECEIPT_PREFIX + b64(b"[]"),
        RECEIPT_PREFIX + b64(b'{"statement": {}, "assertion": {}}'),
        RECEIPT_PREFIX + "A" * 40_000,
    ],
)
def test_bad_base64_or_shapes_are_malformed_receipts(text: str) -> None:
    with pytest.raises(TokenFormatError) as caught:
        PasskeyReceipt.decode(text)
    assert caught.value.reason == "approval_invalid"
    assert "AAAA" not in caught.value.explanation


def test_a_statement_with_a_mistyped_field_is_malformed() -> None:
    key = SoftKey()
    for change in ({"iat": "1000"}, {"exp": True}, {"typ": "other"}, {"ver": 2}):
        receipt = key.receipt(statement(**change))
        with pytest.raises(TokenFormatError):
            PasskeyReceipt.decode(receipt.encode())


def test_bad_base64_in_the_assertion_parts_is_refused() -> None:
    key = SoftKey()
    receipt = key.receipt(statement())
    for name in ("credential_id", "authenticator_data", "client_data_json", "signature"):
        broken = _with(receipt, **{name: "a+b/c="})
        with pytest.raises(TokenFormatError):
            PasskeyReceipt.decode(broken.encode())
    with pytest.raises(TokenFormatError):
        verify_passkey_receipt(receipt, "not base64!", RP_ID, ORIGIN)


def test_the_browser_form_of_an_assertion_is_read_strictly() -> None:
    key = SoftKey()
    parts = key.assertion(b"c")
    browser: dict[str, Any] = {
        "id": parts.credential_id,
        "rawId": parts.credential_id,
        "type": "public-key",
        "response": {
            "authenticatorData": parts.authenticator_data,
            "clientDataJSON": parts.client_data_json,
            "signature": parts.signature,
        },
    }
    assert PasskeyAssertion.from_browser(browser) == parts
    hostile: object
    for hostile in (
        None,
        [],
        {**browser, "type": "password"},
        {**browser, "rawId": "other"},
        {**browser, "response": "x"},
        {**browser, "response": {**browser["response"], "signature": 7}},
    ):
        with pytest.raises(TokenFormatError):
            PasskeyAssertion.from_browser(hostile)


def test_ip_addresses_are_refused_as_relying_party_ids() -> None:
    for bad in ("127.0.0.1", "::1", "[::1]", "10.0.0.7"):
        with pytest.raises(ConfigError, match="IP address"):
            check_rp_id(bad)
    for bad in ("", "a..b", "bad_name", "x" * 64):
        with pytest.raises(ConfigError):
            check_rp_id(bad)
    assert check_rp_id("Approvals.Example.com.") == "approvals.example.com"
    assert check_rp_id("localhost") == "localhost"


def test_which_origins_may_use_a_relying_party_id() -> None:
    assert origin_fits("http://localhost:8780", "localhost")
    assert origin_fits("https://approvals.example.com", "example.com")
    assert not origin_fits("http://approvals.example.com", "example.com")  # no TLS
    assert not origin_fits("https://evilexample.com", "example.com")
    assert not origin_fits("http://127.0.0.1:8780", "localhost")
    assert not origin_fits("https://example.com/path", "example.com")
    assert not origin_fits("https://example.com:bad", "example.com")


def test_an_enrolment_link_is_single_use_and_expires(tmp_path: Path) -> None:
    links = PasskeyEnrolments.in_home(tmp_path)
    token = links.issue("user:alice", ttl=600, now=1000)
    assert token not in (tmp_path / "passkey-enrolments.json").read_text()  # stored hashed
    assert links.approver(token, now=1001) == "user:alice"
    assert links.consume(token, now=1002) == "user:alice"
    with pytest.raises(DeniedError, match="used already"):
        links.consume(token, now=1003)
    late = links.issue("user:bob", ttl=60, now=1000)
    with pytest.raises(DeniedError, match="expired"):
        links.approver(late, now=1060)
    for unknown in ("agp_nope", "nothing", ""):
        with pytest.raises(DeniedError, match="unknown"):
            links.consume(unknown, now=1000)
    assert oct((tmp_path / "passkey-enrolments.json").stat().st_mode & 0o777) == "0o600"


def test_an_unreadable_enrolment_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "passkey-enrolments.json").write_text("{not json")
    with pytest.raises(ConfigError):
        PasskeyEnrolments.in_home(tmp_path).approver("agp_x")


def test_a_receipt_is_plain_base64url_json() -> None:
    """The stored form is readable by anyone (docs/receipts.md): prefix + base64url JSON."""
    key = SoftKey()
    text = key.receipt(statement()).encode()
    body = json.loads(base64.urlsafe_b64decode(text[len(RECEIPT_PREFIX) :] + "=="))
    assert set(body) == {"statement", "assertion"}
    assert set(body["assertion"]) == {
        "credential_id",
        "authenticator_data",
        "client_data_json",
        "signature",
    }


POLICY = """\
# the organisation's policy
version: 1
trusted_roots: []
approvers:
  # people
  - id: user:alice
    tools: ["admin/*"]
  - {id: user:bob}
step_up: []
"""


def test_write_passkey_edits_only_that_approvers_entry(tmp_path: Path) -> None:
    path = tmp_path / "agentguard.yaml"
    path.write_text(POLICY)
    key = SoftKey()
    entry = {
        "credential_id": key.credential_id,
        "public_key": key.cose(),
        "rp_id": RP_ID,
        "origin": ORIGIN,
    }
    write_passkey(path, "user:alice", entry)
    policy = load_policy(path)
    alice, bob = policy.approvers
    assert alice.passkey is not None
    assert alice.passkey.model_dump() == entry
    assert alice.tools == ["admin/*"]
    assert bob.passkey is None
    assert path.read_text().startswith("# the organisation's policy\n")
    with pytest.raises(ConfigError, match="not an approver"):
        write_passkey(path, "user:nobody", entry)
    with pytest.raises(ValidationError, match="public_key"):  # not base64url
        write_passkey(path, "user:bob", {**entry, "public_key": "not base64!"})
    assert load_policy(path).approvers[1].passkey is None


@pytest.mark.parametrize(
    "credential",
    [None, [], {}, {"id": "x", "rawId": "x", "type": "public-key", "response": {}}],
)
def test_a_garbage_registration_is_refused(credential: object) -> None:
    with pytest.raises(DeniedError) as caught:
        verify_registration(credential, challenge=b"c" * 32, rp_id=RP_ID, origin=ORIGIN)
    assert caught.value.reason == "approval_invalid"


def test_registration_options_ask_for_user_verification_and_eddsa_or_es256() -> None:
    options = registration_options(rp_id=RP_ID, approver="user:alice", challenge=b"c" * 32)
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert [p["alg"] for p in options["pubKeyCredParams"]] == [-8, -7]
    assert options["rp"]["id"] == "localhost"


@settings(max_examples=300, deadline=None, database=None)
@given(
    body=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=12), inner, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda v: b64(json.dumps(v).encode())),
    )
)
def test_any_receipt_text_is_parsed_or_refused_never_crashes(body: str) -> None:
    """Hostile stored text: a TokenFormatError, or a receipt that then fails verification."""
    key = SoftKey()
    try:
        parsed = PasskeyReceipt.decode(RECEIPT_PREFIX + body)
    except TokenFormatError:
        return
    with pytest.raises(DeniedError):
        verify_passkey_receipt(parsed, key.cose(), RP_ID, ORIGIN)


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.binary(max_size=120), flags=st.integers(0, 255))
def test_any_authenticator_data_is_refused_unless_signed(data: bytes, flags: int) -> None:
    key = SoftKey()
    receipt = key.receipt(statement())
    forged = hashlib.sha256(RP_ID.encode()).digest() + bytes([flags]) + data
    for candidate in (data, forged):
        if candidate:
            refused(_with(receipt, authenticator_data=b64(candidate)), key)
