"""Passkey (WebAuthn) answers to approval requests: the statement, the receipt, its check.

An approver who enrolled a passkey answers on the approval page by letting
their authenticator sign a WebAuthn assertion whose challenge is the SHA-256
of the *answer statement*: the request id, the call digest, the decision, the
edited arguments' digest (or ``null``), the approver, the issue and expiry
times and a unique id, in RFC 8785 canonical JSON. The stored receipt carries
that statement next to the assertion (authenticator data, client data JSON,
signature, credential id), so anyone holding the approver's credential public
key can check offline that the approver's own device signed exactly this
answer: :func:`verify_passkey_receipt`. The format is specified in
``docs/receipts.md``.

The WebAuthn parsing and signature checks are py_webauthn's (the ``passkeys``
extra); nothing here decodes CBOR or COSE by hand. Only the COSE algorithms
EdDSA (-8) and ES256 (-7) are accepted. Enrolment links are single-use tokens
stored hashed (:class:`PasskeyEnrolments`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import os
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentguard.canonical import canonical_json
from agentguard.decision import Reason
from agentguard.errors import ConfigError, DeniedError, TokenFormatError

__all__ = [
    "ALGORITHMS",
    "ENROLMENTS_FILE",
    "RECEIPT_PREFIX",
    "STATEMENT_TYPE",
    "PasskeyAssertion",
    "PasskeyEnrolments",
    "PasskeyReceipt",
    "answer_statement",
    "assertion_options",
    "check_rp_id",
    "is_passkey_receipt",
    "origin_fits",
    "passkey_key_id",
    "registration_options",
    "statement_challenge",
    "verify_passkey_receipt",
    "verify_registration",
    "write_passkey",
]

#: The ``typ`` of an answer statement.
STATEMENT_TYPE = "agentguard-passkey-answer"
#: How a stored passkey receipt begins (a JWS receipt never does: it has no dot-free prefix).
RECEIPT_PREFIX = "agentguard-passkey."
#: COSE algorithms accepted, by identifier: what platform and roaming authenticators use.
ALGORITHMS = {-8: "EdDSA", -7: "ES256"}
#: Name of the enrolment-token file inside the agentguard home directory.
ENROLMENTS_FILE = "passkey-enrolments.json"
ENROLMENT_PREFIX = "agp_"
#: A receipt is small; anything larger is refused before it is parsed.
_MAX_RECEIPT = 32_768
_MAX_FIELD = 8_192
_STATEMENT_FIELDS = {
    "ver": int,
    "typ": str,
    "iss": str,
    "approver": str,
    "req": str,
    "call": str,
    "decision": str,
    "iat": int,
    "exp": int,
    "jti": str,
    "channel": str,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    """Strict base64url (no padding, no other characters).

    Raises:
        TokenFormatError: it is not base64url text.
    """
    if not isinstance(text, str) or not text or len(text) > _MAX_FIELD:
        raise TokenFormatError(f"{what} is not base64url text", reason=Reason.APPROVAL_INVALID)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenFormatError(
            f"{what} is not base64url text", reason=Reason.APPROVAL_INVALID
        ) from None
    if _b64(raw) != text:  # stray characters or non-canonical trailing bits
        raise TokenFormatError(f"{what} is not base64url text", reason=Reason.APPROVAL_INVALID)
    return raw


def passkey_key_id(public_key: str) -> str:
    """The key id of an enrolled passkey: base64url (no padding) of the SHA-256 of its
    COSE public key bytes, as enrolled (``passkey.public_key`` decoded).

    ``agentguard revoke --key`` takes it: a revoked key id refuses that
    authenticator's answers, in the guard and in the MCP upstream verifier,
    without revoking the person.

    Raises:
        TokenFormatError: ``public_key`` is not base64url text.
    """
    return _b64(hashlib.sha256(_unb64(public_key, "passkey public key")).digest())


def answer_statement(
    *,
    request_id: str,
    call_digest: str,
    approve: bool,
    approver: str,
    issued_at: int,
    expires_at: int,
    edited_digest: str | None = None,
    message: str | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """The statement an approver's passkey signs: exactly one answer to one request.

    ``edited_digest`` is the digest of the edited arguments when the approver
    edited them (``None`` otherwise); ``message`` is what the caller is told.
    """
    statement: dict[str, Any] = {
        "ver": 1,
        "typ": STATEMENT_TYPE,
        "iss": approver,
        "approver": approver,
        "req": request_id,
        "call": call_digest,
        "decision": "approve" if approve else "reject",
        "edited": edited_digest,
        "iat": int(issued_at),
        "exp": int(expires_at),
        "jti": jti or secrets.token_urlsafe(16),
        "channel": "web",
    }
    if message:
        statement["msg"] = message[:500]
    return statement


def statement_challenge(statement: Mapping[str, Any]) -> bytes:
    """The WebAuthn challenge for ``statement``: SHA-256 of its canonical JSON.

    Raises:
        ValueError: the statement cannot be written as canonical JSON.
    """
    return hashlib.sha256(canonical_json(dict(statement))).digest()


@dataclass(frozen=True)
class PasskeyAssertion:
    """What the authenticator returned, each part base64url as the browser sends it."""

    credential_id: str
    authenticator_data: str
    client_data_json: str
    signature: str

    @classmethod
    def from_browser(cls, credential: object) -> PasskeyAssertion:
        """Read ``PublicKeyCredential.toJSON()`` of an assertion (``navigator.credentials.get``).

        Raises:
            TokenFormatError: it is not one.
        """
        if not isinstance(credential, Mapping) or credential.get("type") != "public-key":
            raise TokenFormatError("not a WebAuthn assertion", reason=Reason.APPROVAL_INVALID)
        response = credential.get("response")
        if not isinstance(response, Mapping) or credential.get("rawId") != credential.get("id"):
            raise TokenFormatError("not a WebAuthn assertion", reason=Reason.APPROVAL_INVALID)
        assertion = cls(
            credential_id=credential.get("id"),  # type: ignore[arg-type]  # checked below
            authenticator_data=response.get("authenticatorData"),  # type: ignore[arg-type]
            client_data_json=response.get("clientDataJSON"),  # type: ignore[arg-type]
            signature=response.get("signature"),  # type: ignore[arg-type]
        )
        assertion.check_form()
        return assertion

    def check_form(self) -> None:
        """Each part must be base64url text.

        Raises:
            TokenFormatError: one is not.
        """
        _unb64(self.credential_id, "credential id")
        _unb64(self.authenticator_data, "authenticator data")
        _unb64(self.client_data_json, "client data")
        _unb64(self.signature, "signature")

    def to_json(self) -> dict[str, str]:
        """The stored form."""
        return {
            "credential_id": self.credential_id,
            "authenticator_data": self.authenticator_data,
            "client_data_json": self.client_data_json,
            "signature": self.signature,
        }


@dataclass(frozen=True)
class PasskeyReceipt:
    """An answer statement with the assertion over its digest, *unverified*.

    ``edited_args`` are the edited arguments themselves (the statement binds
    their digest).
    """

    statement: dict[str, Any]
    assertion: PasskeyAssertion
    edited_args: dict[str, Any] | None = None

    def encode(self) -> str:
        """The stored text: :data:`RECEIPT_PREFIX` and base64url canonical JSON."""
        body: dict[str, Any] = {
            "statement": self.statement,
            "assertion": self.assertion.to_json(),
        }
        if self.edited_args is not None:
            body["edited_args"] = self.edited_args
        return RECEIPT_PREFIX + _b64(canonical_json(body))

    @classmethod
    def decode(cls, text: object) -> PasskeyReceipt:
        """Parse a stored receipt (nothing is verified).

        Raises:
            TokenFormatError: it is not a passkey receipt.
        """
        if not is_passkey_receipt(text) or len(str(text)) > _MAX_RECEIPT:
            raise TokenFormatError("not a passkey receipt", reason=Reason.APPROVAL_INVALID)
        raw = _unb64(str(text)[len(RECEIPT_PREFIX) :], "passkey receipt")
        try:
            body = json.loads(raw)
        except ValueError:
            raise TokenFormatError(
                "passkey receipt is not JSON", reason=Reason.APPROVAL_INVALID
            ) from None
        if not isinstance(body, dict) or not {"statement", "assertion"} <= body.keys():
            raise TokenFormatError("passkey receipt lacks parts", reason=Reason.APPROVAL_INVALID)
        statement, parts, edited = body["statement"], body["assertion"], body.get("edited_args")
        if not isinstance(statement, dict) or not isinstance(parts, dict):
            raise TokenFormatError("passkey receipt lacks parts", reason=Reason.APPROVAL_INVALID)
        for name, kind in _STATEMENT_FIELDS.items():
            value = statement.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TokenFormatError(
                    f"passkey statement field {name!r} is missing or mistyped",
                    reason=Reason.APPROVAL_INVALID,
                )
        if statement["typ"] != STATEMENT_TYPE or statement["ver"] != 1:
            raise TokenFormatError(
                "not an agentguard answer statement", reason=Reason.APPROVAL_INVALID
            )
        if edited is not None and not isinstance(edited, dict):
            raise TokenFormatError(
                "edited arguments are not an object", reason=Reason.APPROVAL_INVALID
            )
        assertion = PasskeyAssertion(
            credential_id=parts.get("credential_id"),  # type: ignore[arg-type]  # checked next
            authenticator_data=parts.get("authenticator_data"),  # type: ignore[arg-type]
            client_data_json=parts.get("client_data_json"),  # type: ignore[arg-type]
            signature=parts.get("signature"),  # type: ignore[arg-type]
        )
        assertion.check_form()
        return cls(statement=statement, assertion=assertion, edited_args=edited)


def is_passkey_receipt(value: object) -> bool:
    """Whether ``value`` is (shaped as) a stored passkey receipt."""
    return isinstance(value, str) and value.startswith(RECEIPT_PREFIX)


def _webauthn() -> Any:
    try:
        import webauthn
    except ImportError as exc:
        raise ConfigError(
            "passkeys need the 'passkeys' extra: pip install 'agentguard[passkeys]'"
        ) from exc
    return webauthn


def _accepted_key(public_key: bytes) -> None:
    """Refuse a COSE key whose algorithm is not EdDSA or ES256 (or that does not decode).

    Raises:
        DeniedError: it is not an accepted key.
    """
    from webauthn.helpers import decode_credential_public_key
    from webauthn.helpers.cose import COSECRV, COSEKTY

    if not public_key or public_key[0] == 0x04:  # a raw U2F point, not a COSE key
        raise DeniedError("the credential key is not a COSE key", reason=Reason.APPROVAL_INVALID)
    try:
        decoded = decode_credential_public_key(public_key)
    except Exception:  # noqa: BLE001 - any failure to decode is one refusal
        raise DeniedError(
            "the credential key is not a COSE key", reason=Reason.APPROVAL_INVALID
        ) from None
    alg, kty, crv = int(decoded.alg), decoded.kty, getattr(decoded, "crv", None)
    fits = (alg == -8 and kty == COSEKTY.OKP and crv == COSECRV.ED25519) or (
        alg == -7 and kty == COSEKTY.EC2 and crv == COSECRV.P256
    )
    if alg not in ALGORITHMS or not fits:
        raise DeniedError(
            f"credential algorithm {alg} is not accepted (only EdDSA -8 and ES256 -7)",
            reason=Reason.APPROVAL_INVALID,
        )


def verify_passkey_receipt(
    receipt: PasskeyReceipt | str,
    credential_public_key: str | bytes,
    rp_id: str,
    origin: str,
    *,
    credential_id: str | None = None,
) -> dict[str, Any]:
    """Check that the holder of ``credential_public_key`` signed exactly this answer.

    Checks, in order: the credential key is EdDSA or ES256; the assertion names
    ``credential_id`` (when given); the client data is a ``webauthn.get`` whose
    challenge is the SHA-256 of the canonical statement carried, from
    ``origin``; the authenticator data's RP id hash is SHA-256 of ``rp_id`` and
    its flags say the user was present *and verified*; the signature over
    authenticator data and client-data hash verifies with the key. Nothing
    about the statement's meaning (request, call, time, approver) is judged
    here: the caller does that with the statement returned.

    Args:
        receipt: the receipt, or its stored text.
        credential_public_key: the enrolled COSE key (bytes, or base64url text).
        rp_id: the relying-party id the credential was enrolled for.
        origin: the page's origin the answer must come from, e.g. ``http://localhost:8780``.
        credential_id: the enrolled credential id (base64url), when known.

    Returns:
        The verified statement.

    Raises:
        DeniedError: any check fails (``approval_invalid``); a receipt that does
            not even parse raises its subclass ``TokenFormatError``.
        ConfigError: the ``passkeys`` extra is not installed.
    """
    webauthn = _webauthn()
    from webauthn.helpers import parse_authenticator_data

    parsed = receipt if isinstance(receipt, PasskeyReceipt) else PasskeyReceipt.decode(receipt)
    key = (
        _unb64(credential_public_key, "credential key")
        if isinstance(credential_public_key, str)
        else bytes(credential_public_key)
    )
    _accepted_key(key)
    assertion = parsed.assertion
    if credential_id is not None and not secrets.compare_digest(
        assertion.credential_id.encode(), credential_id.encode()
    ):
        raise DeniedError(
            "the assertion was made with another credential", reason=Reason.APPROVAL_INVALID
        )
    try:
        expected = statement_challenge(parsed.statement)
    except ValueError:
        raise DeniedError(
            "the statement is not canonical JSON", reason=Reason.APPROVAL_INVALID
        ) from None
    try:  # the flags first, so the refusal says which one is off
        flags = parse_authenticator_data(_unb64(assertion.authenticator_data, "data")).flags
    except Exception:  # noqa: BLE001 - truncated or garbage authenticator data: one refusal
        raise DeniedError(
            "the authenticator data is malformed", reason=Reason.APPROVAL_INVALID
        ) from None
    if not flags.uv:
        raise DeniedError(
            "the authenticator did not verify the user (UV flag off)",
            reason=Reason.APPROVAL_INVALID,
        )
    try:
        webauthn.verify_authentication_response(
            credential={
                "id": assertion.credential_id,
                "rawId": assertion.credential_id,
                "type": "public-key",
                "response": {
                    "authenticatorData": assertion.authenticator_data,
                    "clientDataJSON": assertion.client_data_json,
                    "signature": assertion.signature,
                },
            },
            expected_challenge=expected,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=key,
            credential_current_sign_count=0,
            require_user_verification=True,
        )
    except Exception as exc:  # noqa: BLE001 - the library raises several kinds; one refusal
        detail = str(exc) if type(exc).__module__.startswith("webauthn") else type(exc).__name__
        raise DeniedError(
            f"the passkey assertion does not verify: {detail[:200]}",
            reason=Reason.APPROVAL_INVALID,
        ) from None
    return dict(parsed.statement)


# -- relying party ---------------------------------------------------------------------------


def check_rp_id(rp_id: str) -> str:
    """A relying-party id as WebAuthn accepts it: a host name, never an IP address.

    Raises:
        ConfigError: it is empty, an IP address, or not a host name.
    """
    name = rp_id.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        pass
    else:
        raise ConfigError(
            f"a passkey relying-party id cannot be an IP address ({rp_id!r}): WebAuthn "
            "refuses them; serve on localhost, or on HTTPS under a host name given as rp_id"
        )
    labels = name.split(".")
    if not name or any(
        not label or len(label) > 63 or not all(c.isalnum() or c == "-" for c in label)
        for label in labels
    ):
        raise ConfigError(f"not a host name for a passkey relying-party id: {rp_id!r}")
    return name


def origin_fits(origin: str, rp_id: str) -> bool:
    """Whether a page at ``origin`` may use credentials of ``rp_id`` (as browsers decide):
    its host is ``rp_id`` or below it, over HTTPS, or over HTTP on ``localhost``."""
    try:
        parts = urllib.parse.urlsplit(origin)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return False
    if not (host == rp_id or host.endswith("." + rp_id)):
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and host == "localhost")


def registration_options(
    *, rp_id: str, approver: str, challenge: bytes, exclude: list[str] | None = None
) -> dict[str, Any]:
    """``navigator.credentials.create`` options (JSON form) for enrolling ``approver``:
    user verification required, EdDSA or ES256 only, no attestation asked.

    Raises:
        ConfigError: the ``passkeys`` extra is not installed.
    """
    webauthn = _webauthn()
    from webauthn.helpers.cose import COSEAlgorithmIdentifier
    from webauthn.helpers.structs import (
        AuthenticatorSelectionCriteria,
        PublicKeyCredentialDescriptor,
        ResidentKeyRequirement,
        UserVerificationRequirement,
    )

    options = webauthn.generate_registration_options(
        rp_id=rp_id,
        rp_name="agentguard approvals",
        user_name=approver,
        user_id=hashlib.sha256(approver.encode("utf-8")).digest()[:32],
        challenge=challenge,
        timeout=120_000,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED,
            user_verification=UserVerificationRequirement.REQUIRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=_unb64(c, "credential id")) for c in exclude or []
        ],
        supported_pub_key_algs=[
            COSEAlgorithmIdentifier.EDDSA,
            COSEAlgorithmIdentifier.ECDSA_SHA_256,
        ],
    )
    result: dict[str, Any] = json.loads(webauthn.options_to_json(options))
    return result


def verify_registration(
    credential: object, *, challenge: bytes, rp_id: str, origin: str
) -> tuple[str, str]:
    """Check a ``navigator.credentials.create`` answer; returns (credential id, COSE key),
    both base64url.

    Raises:
        DeniedError: it does not verify, the user was not verified, or its
            algorithm is not EdDSA or ES256.
        ConfigError: the ``passkeys`` extra is not installed.
    """
    webauthn = _webauthn()
    from webauthn.helpers.cose import COSEAlgorithmIdentifier

    if not isinstance(credential, Mapping):
        raise DeniedError("not a WebAuthn credential", reason=Reason.APPROVAL_INVALID)
    try:
        verified = webauthn.verify_registration_response(
            credential=dict(credential),
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            require_user_verification=True,
            supported_pub_key_algs=[
                COSEAlgorithmIdentifier.EDDSA,
                COSEAlgorithmIdentifier.ECDSA_SHA_256,
            ],
        )
    except Exception as exc:  # noqa: BLE001 - the library raises several kinds; one refusal
        detail = str(exc) if type(exc).__module__.startswith("webauthn") else type(exc).__name__
        raise DeniedError(
            f"the passkey registration does not verify: {detail[:200]}",
            reason=Reason.APPROVAL_INVALID,
        ) from None
    key = bytes(verified.credential_public_key)
    _accepted_key(key)
    return _b64(bytes(verified.credential_id)), _b64(key)


def assertion_options(*, rp_id: str, credential_id: str, challenge: bytes) -> dict[str, Any]:
    """``navigator.credentials.get`` options (JSON form) asking ``credential_id`` to sign
    ``challenge`` with user verification.

    Raises:
        ConfigError: the ``passkeys`` extra is not installed.
    """
    webauthn = _webauthn()
    from webauthn.helpers.structs import PublicKeyCredentialDescriptor, UserVerificationRequirement

    options = webauthn.generate_authentication_options(
        rp_id=rp_id,
        challenge=challenge,
        timeout=120_000,
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=_unb64(credential_id, "credential id"))
        ],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    result: dict[str, Any] = json.loads(webauthn.options_to_json(options))
    return result


# -- enrolment links ---------------------------------------------------------------------------


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class PasskeyEnrolments:
    """One-time enrolment tokens: stored as SHA-256 hashes with their approver and expiry.

    The file is JSON (mode 0600), rewritten atomically under an exclusive lock,
    so the CLI issuing a link and the page using one do not lose each other's
    writes. A token is used once: :meth:`consume` marks it, and a used or
    expired token is refused.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @classmethod
    def in_home(cls, home: str | Path) -> PasskeyEnrolments:
        """The enrolment file of an agentguard home (``HOME/passkey-enrolments.json``)."""
        return cls(Path(home) / ENROLMENTS_FILE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        from agentguard.policy_file import exclusive_lock  # imported as write_passkey does

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file is never followed if it is a link, and the wait is bounded.
        with self._lock, exclusive_lock(self.path):
            entries = self._read()
            yield entries
            self._write(entries)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read passkey enrolments {self.path}: {exc}") from exc
        entries = doc.get("enrolments", {}) if isinstance(doc, dict) else {}
        return {str(k): v for k, v in entries.items() if isinstance(v, dict)}

    def _write(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"version": 1, "enrolments": dict(entries)}, out, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def issue(self, approver: str, *, ttl: float, now: float | None = None) -> str:
        """A new enrolment token for ``approver``, valid ``ttl`` seconds (shown once).

        Raises:
            ConfigError: the file cannot be read.
        """
        now = time.time() if now is None else now
        token = ENROLMENT_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as entries:
            for key in [k for k, e in entries.items() if float(e.get("expires", 0)) <= now]:
                del entries[key]  # expired links are forgotten
            entries[_hash(token)] = {"approver": approver, "expires": now + ttl, "used": False}
        return token

    def approver(self, token: str, *, now: float | None = None) -> str:
        """Whose enrolment ``token`` opens, while it is unused and unexpired.

        Raises:
            DeniedError: unknown, used or expired.
            ConfigError: the file cannot be read.
        """
        now = time.time() if now is None else now
        entry = self._read().get(_hash(token)) if token.startswith(ENROLMENT_PREFIX) else None
        return self._valid(entry, now)

    def consume(self, token: str, *, now: float | None = None) -> str:
        """Use ``token`` once; returns its approver.

        Raises:
            DeniedError: unknown, used before, or expired.
            ConfigError: the file cannot be read.
        """
        now = time.time() if now is None else now
        with self._locked() as entries:
            entry = entries.get(_hash(token)) if token.startswith(ENROLMENT_PREFIX) else None
            approver = self._valid(entry, now)
            entry["used"] = True  # type: ignore[index]  # _valid refused None
            entry["used_at"] = now  # type: ignore[index]
        return approver

    @staticmethod
    def _valid(entry: Mapping[str, Any] | None, now: float) -> str:
        if entry is None or not isinstance(entry.get("approver"), str):
            raise DeniedError("unknown enrolment link", reason=Reason.APPROVAL_INVALID)
        if entry.get("used"):
            raise DeniedError("this enrolment link was used already", reason=Reason.APPROVAL_CLOSED)
        if float(entry.get("expires", 0)) <= now:
            raise DeniedError("this enrolment link has expired", reason=Reason.APPROVAL_EXPIRED)
        return str(entry["approver"])


def write_passkey(policy_path: str | Path, approver: str, passkey: Mapping[str, str]) -> None:
    """Write ``passkey`` (credential id, COSE key, rp id, origin) into ``approver``'s entry
    of the policy file, replacing any earlier one; the rest of the file reads as before.

    The file is read, checked and replaced under its edit lock
    (:func:`agentguard.policy_file.editing_policy`), so a concurrent edit (another
    enrolment, ``agentguard keys``) is neither lost nor undone.

    Raises:
        ConfigError: ``approver`` is not listed, or the file cannot be edited safely.
    """
    from agentguard.policy import Passkey
    from agentguard.policy_file import editing_policy

    wanted = Passkey.model_validate(dict(passkey))
    with editing_policy(policy_path) as edit:
        policy = edit.policy
        index = next((i for i, a in enumerate(policy.approvers) if a.id == approver), None)
        raw = edit.document()
        entries = raw.get("approvers") if isinstance(raw, dict) else None
        if index is None or not isinstance(entries, list) or len(entries) != len(policy.approvers):
            raise ConfigError(f"{approver} is not an approver in {policy_path}; add them first")
        entry = entries[index]
        if not isinstance(entry, dict):
            raise ConfigError(f"cannot edit {approver}'s entry in {policy_path}; edit it by hand")
        entries[index] = {**entry, "passkey": wanted.model_dump()}

        def written(after: Any) -> bool:
            others = [a for i, a in enumerate(after.approvers) if i != index]
            return bool(
                after.approvers[index].passkey == wanted
                and after.approvers[index].model_dump(exclude={"passkey"})
                == policy.approvers[index].model_dump(exclude={"passkey"})
                and others == [a for i, a in enumerate(policy.approvers) if i != index]
            )

        edit.rewrite("approvers", entries, check=written)
