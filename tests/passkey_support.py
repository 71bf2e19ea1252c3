"""A software authenticator for passkey tests that need no browser.

It builds what a CTAP2 authenticator returns (COSE key, authenticator data,
client data JSON, signature) with ``cryptography`` and ``cbor2`` (a dependency
of py_webauthn), so the verifier meets both honest and hostile assertions.
The browser tests use Chromium's virtual authenticator instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agentguard.passkeys import PasskeyAssertion, PasskeyReceipt, statement_challenge

RP_ID = "localhost"
ORIGIN = "http://localhost:8780"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SoftKey:
    """One credential: an EdDSA (-8) or ES256 (-7) key and its id."""

    alg: int = -8
    credential_id: str = field(default_factory=lambda: b64(secrets.token_bytes(16)))
    count: int = 0

    def __post_init__(self) -> None:
        self.private: Any = (
            ed25519.Ed25519PrivateKey.generate()
            if self.alg == -8
            else ec.generate_private_key(ec.SECP256R1())
        )

    def cose(self, alg: int | None = None) -> str:
        """The COSE public key, base64url (``alg`` overrides the stated algorithm)."""
        public = self.private.public_key()
        if self.alg == -8:
            raw = public.public_bytes_raw()
            key = {1: 1, 3: self.alg if alg is None else alg, -1: 6, -2: raw}
        else:
            numbers = public.public_numbers()
            key = {
                1: 2,
                3: self.alg if alg is None else alg,
                -1: 1,
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        return b64(cbor2.dumps(key))

    def sign(self, data: bytes) -> bytes:
        if self.alg == -8:
            return bytes(self.private.sign(data))
        return bytes(self.private.sign(data, ec.ECDSA(hashes.SHA256())))

    def assertion(
        self,
        challenge: bytes,
        *,
        rp_id: str = RP_ID,
        origin: str = ORIGIN,
        uv: bool = True,
        kind: str = "webauthn.get",
    ) -> PasskeyAssertion:
        """An assertion over ``challenge`` as an authenticator would make it."""
        self.count += 1
        flags = 0x01 | (0x04 if uv else 0)
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags])
        auth_data += struct.pack(">I", self.count)
        client = json.dumps(
            {"type": kind, "challenge": b64(challenge), "origin": origin, "crossOrigin": False}
        ).encode()
        signature = self.sign(auth_data + hashlib.sha256(client).digest())
        return PasskeyAssertion(
            credential_id=self.credential_id,
            authenticator_data=b64(auth_data),
            client_data_json=b64(client),
            signature=b64(signature),
        )

    def browser(self, challenge: bytes, **options: Any) -> dict[str, Any]:
        """``PublicKeyCredential.toJSON()`` of an assertion over ``challenge``."""
        made = self.assertion(challenge, **options)
        return {
            "id": made.credential_id,
            "rawId": made.credential_id,
            "type": "public-key",
            "response": {
                "authenticatorData": made.authenticator_data,
                "clientDataJSON": made.client_data_json,
                "signature": made.signature,
            },
        }

    def register(
        self, challenge: bytes, *, rp_id: str = RP_ID, origin: str = ORIGIN, uv: bool = True
    ) -> dict[str, Any]:
        """``PublicKeyCredential.toJSON()`` of a registration (attestation ``none``)."""
        raw_id = base64.urlsafe_b64decode(self.credential_id + "==")
        cose = base64.urlsafe_b64decode(self.cose() + "==")
        flags = 0x41 | (0x04 if uv else 0)  # user present, attested credential data
        auth_data = hashlib.sha256(rp_id.encode()).digest() + bytes([flags])
        auth_data += struct.pack(">I", 0) + bytes(16) + struct.pack(">H", len(raw_id))
        auth_data += raw_id + cose
        client = json.dumps(
            {"type": "webauthn.create", "challenge": b64(challenge), "origin": origin}
        ).encode()
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        return {
            "id": self.credential_id,
            "rawId": self.credential_id,
            "type": "public-key",
            "response": {"clientDataJSON": b64(client), "attestationObject": b64(attestation)},
        }

    def receipt(self, statement: dict[str, Any], **options: Any) -> PasskeyReceipt:
        """A receipt whose assertion signs ``statement``'s digest."""
        return PasskeyReceipt(statement, self.assertion(statement_challenge(statement), **options))
