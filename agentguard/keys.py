"""Principals, identities and the on-disk keyring.

A :class:`Principal` is an id such as ``user:alice`` plus an Ed25519 public key.
An :class:`Identity` is a principal together with its private key: something
that can sign grants, call tokens and approvals. The :class:`Keyring` stores
identities under ``.agentguard/keys/``; private key files are created with mode
0600 and refused when group or others can read them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from agentguard.decision import Reason
from agentguard.errors import DeniedError, IdentityError

try:  # libsodium verifies Ed25519 about twice as fast as OpenSSL here (the `fast` extra)
    from nacl.bindings import crypto_sign as _sodium_sign
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.bindings import crypto_sign_seed_keypair as _sodium_keypair
    from nacl.exceptions import BadSignatureError as _SodiumBadSignature
except ImportError:  # pragma: no cover - exercised when the extra is absent
    _sodium_open = None  # type: ignore[assignment]  # the fallback path checks for None

__all__ = [
    "PRINCIPAL_KINDS",
    "Identity",
    "KeySet",
    "Keyring",
    "Principal",
    "TrustedKey",
    "b64url_decode",
    "b64url_encode",
    "read_trusted_file",
    "secret_keys",
    "validate_principal_id",
]

#: The most bytes a key file may hold (a JWK is a few hundred).
KEY_FILE_LIMIT = 65536

PRINCIPAL_KINDS = ("agent", "org", "service", "team", "user")
_ID = re.compile(r"^([a-z]+):([A-Za-z0-9][A-Za-z0-9._@+-]{0,127})$")


_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url decoding without padding.

    Raises:
        ValueError: the text is not canonical unpadded base64url.
    """
    if not isinstance(text, str) or "=" in text or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    # binascii directly: the base64 module's wrappers cost more than the decoding.
    try:
        padded = text.encode("ascii") + b"=" * (-len(text) % 4)
        raw = binascii.a2b_base64(padded.translate(_URL_TO_STD))
    except (ValueError, binascii.Error) as exc:
        raise ValueError("not base64url") from exc
    # Canonical means the bytes re-encode to exactly the input: this refuses stray
    # characters (a2b_base64 skips them), '+' and '/', and non-zero trailing bits.
    if binascii.b2a_base64(raw, newline=False).translate(_STD_TO_URL) != padded:
        raise ValueError("not canonical base64url")
    return raw


def validate_principal_id(principal_id: object) -> str:
    """Return ``principal_id`` if it follows the ``kind:name`` grammar.

    ``kind`` is one of ``agent``, ``org``, ``service``, ``team``, ``user``;
    ``name`` starts with a letter or digit and may contain letters, digits and
    ``. _ @ + -`` (at most 128 characters).

    Raises:
        IdentityError: the id is malformed.
    """
    if not isinstance(principal_id, str):
        raise IdentityError("a principal id must be a string like 'user:alice'")
    # fullmatch: with match(), '$' would accept a trailing newline ('user:alice\n').
    match = _ID.fullmatch(principal_id)
    if match is None or match.group(1) not in PRINCIPAL_KINDS:
        shown = principal_id if len(principal_id) <= 80 else principal_id[:77] + "..."
        raise IdentityError(
            f"invalid principal id {shown!r}: expected 'kind:name' with kind one of "
            f"{', '.join(PRINCIPAL_KINDS)} and a name of letters, digits and . _ @ + - "
            "(e.g. 'user:alice', 'agent:support-bot')"
        )
    return principal_id


def read_trusted_file(path: Path, *, limit: int, follow_symlinks: bool = True) -> bytes:
    """The bytes of a trusted file (policy, key, delegation), read with a bound.

    Only a regular file is read, and its size is checked on the opened file
    before anything is read: a FIFO, a device (``/dev/zero``) or a file larger
    than ``limit`` is refused at once, never waited on or loaded whole. At
    most ``limit + 1`` bytes are read, so a file that grows meanwhile is
    refused too. The FIFO is opened non-blocking, so a missing writer cannot
    make the open hang.

    Raises:
        OSError: the file cannot be opened or read (with ``follow_symlinks``
            false, also when it is a symbolic link).
        ValueError: it is not a regular file, or holds more than ``limit`` bytes;
            the message names the file.
    """
    fd = _open_trusted(path, follow_symlinks=follow_symlinks)
    try:
        return _read_bounded(fd, path, limit)
    finally:
        os.close(fd)


def _open_trusted(path: Path, *, follow_symlinks: bool) -> int:
    # Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags)


def _read_bounded(fd: int, path: Path, limit: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    if info.st_size > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    raw = b"".join(chunks)
    if len(raw) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return raw


def _read_key_file(path: Path) -> bytes:
    """A public key file's bytes (see :func:`read_trusted_file`).

    Raises:
        IdentityError: it cannot be read, is not a regular file or is too large.
    """
    try:
        return read_trusted_file(path, limit=KEY_FILE_LIMIT)
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise IdentityError(f"refusing key file: {exc}") from exc


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Principal:
    """A principal id with its Ed25519 public key."""

    id: str
    public_key: Ed25519PublicKey = field(repr=False, compare=False)
    kid: str = field(init=False, compare=True)
    _raw: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_principal_id(self.id)
        raw = _public_bytes(self.public_key)
        object.__setattr__(self, "_raw", raw)
        object.__setattr__(self, "kid", thumbprint(raw))

    @property
    def kind(self) -> str:
        """The part before the colon: ``user``, ``agent``, ..."""
        return self.id.split(":", 1)[0]

    def public_jwk(self) -> dict[str, str]:
        """The public key as an RFC 8037 OKP JWK, with ``kid``."""
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(_public_bytes(self.public_key)),
            "kid": self.kid,
        }

    @classmethod
    def from_jwk(cls, principal_id: str, jwk: Mapping[str, Any]) -> Principal:
        """Build a principal from a public OKP/Ed25519 JWK.

        Raises:
            IdentityError: the JWK is not an Ed25519 public key.
        """
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("x"), str):
            raise IdentityError("key is not an OKP/Ed25519 JWK")
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise IdentityError("key is not an OKP/Ed25519 JWK")
        return _principal_from_x(principal_id, jwk["x"])

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Check a raw Ed25519 signature (libsodium when installed, else OpenSSL)."""
        if _sodium_open is not None:
            try:
                _sodium_open(signature + data, self._raw)
            except (_SodiumBadSignature, ValueError, TypeError):
                return False
            return True
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def public_key_from_jwk(jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """Decode an OKP/Ed25519 public JWK.

    Raises:
        IdentityError: the JWK is not an Ed25519 public key.
    """
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise IdentityError("key is not an OKP/Ed25519 JWK")
    try:
        raw = b64url_decode(jwk["x"])
    except (KeyError, ValueError) as exc:
        raise IdentityError("JWK has no valid 'x' member") from exc
    if len(raw) != 32:
        raise IdentityError("Ed25519 public key must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@lru_cache(maxsize=2048)
def _principal_from_x(principal_id: str, x: str) -> Principal:
    # Grants repeat the same keys constantly; decoding and thumbprinting once is enough.
    return Principal(principal_id, public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": x}))


def thumbprint(public_raw: bytes) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(public_raw)},
        separators=(",", ":"),
        sort_keys=True,
    )
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


@dataclass(frozen=True)
class Identity:
    """A principal together with its private key.

    The private key must be the one the principal's public key (its ``kid``)
    names: an identity that signs with another key would produce call tokens
    and approvals nobody can verify, so it cannot be constructed.

    Raises:
        IdentityError: (on construction) the private key does not match the
            principal's public key.
    """

    principal: Principal
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if _public_bytes(self.private_key.public_key()) != self.principal._raw:
            raise IdentityError(
                f"the private key of {self.principal.id} does not match the public key "
                f"its kid {self.principal.kid} names"
            )
        # libsodium signs about 1.6x faster than OpenSSL here; Ed25519 signatures are
        # deterministic, so both give the same bytes. The audit log signs a head
        # inside every allowing decision's transaction.
        sodium_key: bytes | None = None
        if _sodium_open is not None:
            seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            sodium_key = _sodium_keypair(seed)[1]
        object.__setattr__(self, "_sodium_key", sodium_key)

    @property
    def id(self) -> str:
        """The principal id."""
        return self.principal.id

    @property
    def kid(self) -> str:
        """RFC 7638 thumbprint of the public key."""
        return self.principal.kid

    @classmethod
    def generate(cls, principal_id: str) -> Identity:
        """Create a new identity with a fresh Ed25519 key.

        Raises:
            IdentityError: the id is malformed.
        """
        validate_principal_id(principal_id)
        key = Ed25519PrivateKey.generate()
        return cls(Principal(principal_id, key.public_key()), key)

    def sign(self, data: bytes) -> bytes:
        """Raw Ed25519 signature over ``data``."""
        sodium_key: bytes | None = getattr(self, "_sodium_key", None)
        if sodium_key is not None:
            return bytes(_sodium_sign(data, sodium_key)[:64])
        return self.private_key.sign(data)

    def private_jwk(self) -> dict[str, str]:
        """The key pair as a private OKP JWK (contains the secret ``d``)."""
        raw = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return {**self.principal.public_jwk(), "d": b64url_encode(raw)}

    @classmethod
    def from_private_jwk(cls, principal_id: str, jwk: Mapping[str, Any]) -> Identity:
        """Rebuild an identity from a private OKP JWK.

        Raises:
            IdentityError: the JWK is malformed or its public half does not match.
        """
        public = public_key_from_jwk(jwk)
        try:
            d = b64url_decode(jwk["d"])
        except (KeyError, ValueError) as exc:
            raise IdentityError("private JWK has no valid 'd' member") from exc
        if len(d) != 32:
            raise IdentityError("Ed25519 private key must be 32 bytes")
        private = Ed25519PrivateKey.from_private_bytes(d)
        if _public_bytes(private.public_key()) != _public_bytes(public):
            raise IdentityError("private JWK's 'x' does not match its 'd'")
        principal = Principal(principal_id, public)
        if "kid" in jwk and jwk["kid"] != principal.kid:
            raise IdentityError("private JWK's 'kid' is not the thumbprint of its key")
        return cls(principal, private)

    def save(self, path: Path) -> None:
        """Write the private key to ``path`` with mode 0600 (never overwrites).

        Raises:
            IdentityError: the file exists already.
        """
        data = json.dumps({"id": self.id, "jwk": self.private_jwk()}, indent=2).encode()
        if path.exists():
            raise IdentityError(f"key file {path} exists already")
        # Write a private temporary file, then link it into place: the key
        # appears complete or not at all, even to another process racing us.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data + b"\n")
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise IdentityError(f"key file {path} exists already") from exc
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a private key file written by :meth:`save`.

        Raises:
            IdentityError: the file is unreadable, malformed, or readable by
                group or others.
        """
        doc = _read_owner_only(path, "private key")
        return cls.from_private_jwk(validate_principal_id(doc.get("id")), doc.get("jwk", {}))


def _read_owner_only(path: Path, what: str) -> Any:
    """The JSON of a key file only its owner may read (no symlink, bounded read).

    Raises:
        IdentityError: the file is unreadable, malformed, or readable by group or others.
    """
    try:
        fd = _open_trusted(path, follow_symlinks=False)
    except OSError as exc:
        raise IdentityError(f"cannot open {what} file {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"refusing {what} file {path}: it is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run 'chmod 600 {path}'"
            )
        raw = _read_bounded(fd, path, KEY_FILE_LIMIT)
    except OSError as exc:
        raise IdentityError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise IdentityError(f"refusing {what} file: {exc}") from exc
    finally:
        os.close(fd)
    return _read_json(raw, path)


def _read_json(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise IdentityError(f"key file {path} is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise IdentityError(f"key file {path} is not a JSON object")
    return doc


class Keyring:
    """Identities and trusted public keys stored in a directory.

    Layout: ``<dir>/<kind>_<name>.key`` holds a private key (mode 0600) and
    ``<dir>/<kind>_<name>.pub`` a public key, each as JSON ``{"id", "jwk"}``.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _stem(self, principal_id: str) -> str:
        kind, name = validate_principal_id(principal_id).split(":", 1)
        return f"{kind}_{name}"

    def private_path(self, principal_id: str) -> Path:
        """Where the private key of ``principal_id`` lives."""
        return self.directory / f"{self._stem(principal_id)}.key"

    def public_path(self, principal_id: str) -> Path:
        """Where the public key of ``principal_id`` lives."""
        return self.directory / f"{self._stem(principal_id)}.pub"

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def create(self, principal_id: str) -> Identity:
        """Generate and store a new identity.

        Raises:
            IdentityError: the id is malformed or already has a key here.
        """
        identity = Identity.generate(principal_id)
        self.add(identity)
        return identity

    def add(self, identity: Identity) -> None:
        """Store an identity's private and public key.

        Raises:
            IdentityError: a private key for that id exists already.
        """
        self._ensure_dir()
        identity.save(self.private_path(identity.id))
        self._write_public(identity.principal, overwrite=True)

    def import_public(self, principal: Principal, *, overwrite: bool = False) -> None:
        """Store a public key held elsewhere (to grant to it, or trust it).

        Raises:
            IdentityError: a different key for that id is stored already.
        """
        self._ensure_dir()
        existing = self.public_path(principal.id)
        if existing.exists() and not overwrite:
            current = self.principal(principal.id)
            if current.kid != principal.kid:
                raise IdentityError(
                    f"a different public key for {principal.id} is stored already "
                    "(use --force to replace it)"
                )
            return
        self._write_public(principal, overwrite=True)

    def _write_public(self, principal: Principal, *, overwrite: bool) -> None:
        path = self.public_path(principal.id)
        if path.exists() and not overwrite:
            return
        tmp = path.with_suffix(".pub.tmp")
        tmp.write_text(json.dumps({"id": principal.id, "jwk": principal.public_jwk()}, indent=2))
        tmp.replace(path)

    def identity(self, principal_id: str) -> Identity:
        """Load the identity (private key) for ``principal_id``.

        Raises:
            IdentityError: no private key is stored for it, or the file is unsafe.
        """
        path = self.private_path(principal_id)
        if not path.exists():
            raise IdentityError(
                f"no private key for {principal_id} in {self.directory} "
                f"(create one with 'agentguard identity new {principal_id}')"
            )
        identity = Identity.load(path)
        if identity.id != principal_id:
            raise IdentityError(f"key file {path} belongs to {identity.id}, not {principal_id}")
        public = self.public_path(principal_id)
        if public.exists():
            doc = _read_json(_read_key_file(public), public)
            stored = Principal.from_jwk(principal_id, doc.get("jwk", {}))
            if stored.kid != identity.kid:
                raise IdentityError(
                    f"key file {path} does not hold the key {public} names "
                    f"(kid {stored.kid}, not {identity.kid})"
                )
        return identity

    def principal(self, principal_id: str) -> Principal:
        """Load the public key for ``principal_id`` (from its public or private file).

        Raises:
            IdentityError: no key is stored for it.
        """
        path = self.public_path(principal_id)
        if path.exists():
            doc = _read_json(_read_key_file(path), path)
            if doc.get("id") != principal_id:
                raise IdentityError(f"key file {path} belongs to another principal")
            return Principal.from_jwk(principal_id, doc.get("jwk", {}))
        if self.private_path(principal_id).exists():
            return self.identity(principal_id).principal
        raise IdentityError(
            f"no key for {principal_id} in {self.directory} "
            f"(import it with 'agentguard identity import {principal_id} --public-key FILE')"
        )

    def has_private(self, principal_id: str) -> bool:
        """Whether a private key for ``principal_id`` is stored."""
        return self.private_path(principal_id).exists()

    def __iter__(self) -> Iterator[tuple[str, bool]]:
        """Yield ``(principal id, has private key)`` for every stored entry, sorted."""
        if not self.directory.is_dir():
            return
        seen: dict[str, bool] = {}
        for path in sorted(self.directory.iterdir()):
            if path.suffix not in (".key", ".pub"):
                continue
            try:
                doc = _read_json(_read_key_file(path), path)
                principal_id = validate_principal_id(doc.get("id"))
            except IdentityError:
                continue
            seen[principal_id] = seen.get(principal_id, False) or path.suffix == ".key"
        yield from sorted(seen.items())


@dataclass(frozen=True)
class TrustedKey:
    """A public key trusted to sign for a principal, within an optional validity window.

    :meth:`valid_at` says whether the time a signature claims to have been
    made (its signed ``iat``) is at or after ``not_before`` and before
    ``retired_at``; ``None`` leaves that side open. What retirement means then
    depends on the key:

    * a guard key (``guard_keys``, :class:`KeySet`): what it signed before
      ``retired_at`` keeps verifying after that time; only later signatures
      are refused;
    * a trusted root's key (:class:`~agentguard.verify.Verifier`): the
      window is checked against the link's ``iat``, and in addition, from
      ``retired_at`` on (by the verifier's clock) nothing the key signed
      verifies, whenever it claims to have signed it, since whoever holds a
      key can write an earlier ``iat``.
    """

    principal: Principal
    not_before: float | None = None
    retired_at: float | None = None

    def valid_at(self, when: float) -> bool:
        """Whether a signature made at ``when`` (seconds since the epoch) counts."""
        if self.not_before is not None and when < self.not_before:
            return False
        return self.retired_at is None or when < self.retired_at


class KeySet:
    """The keys trusted to sign for one principal (a guard's replicas, or rotations).

    Args:
        keys: the trusted keys; a key id given twice keeps its first entry.

    Raises:
        ValueError: ``keys`` is empty, or names keys of several principals.
    """

    def __init__(self, keys: Iterable[TrustedKey]) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            self._keys.setdefault(key.principal.kid, key)
        if not self._keys:
            raise ValueError("a key set needs at least one key")
        if len({k.principal.id for k in self._keys.values()}) != 1:
            raise ValueError("every key of a key set belongs to the same principal")

    @property
    def keys(self) -> list[TrustedKey]:
        """The trusted keys, in the order given."""
        return list(self._keys.values())

    def key_for(self, kid: object, signed_at: object) -> Principal:
        """The key that may have made a signature with key id ``kid`` at ``signed_at``.

        Raises:
            DeniedError: (reason ``bad_signature``) the key id is not trusted, the
                time is missing, or the key was not valid at that time.
        """
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise DeniedError(
                f"signed by key {str(kid)[:64]!r}, which is not a trusted key",
                reason=Reason.BAD_SIGNATURE,
            )
        if not isinstance(signed_at, int | float) or isinstance(signed_at, bool):
            raise DeniedError("the signature claims no time", reason=Reason.BAD_SIGNATURE)
        if not key.valid_at(float(signed_at)):
            raise DeniedError(
                f"key {key.principal.kid} was not valid when this claims to have been signed "
                f"({int(signed_at)})",
                reason=Reason.BAD_SIGNATURE,
            )
        return key.principal


#: The most secret keys a secret key file may hold (a rotation ring).
_MAX_SECRET_KEYS = 8


def secret_keys(path: Path, *, create: bool = True) -> list[bytes]:
    """The symmetric keys in ``path``, made once (one random 32-byte key) when missing.

    The file is JSON, ``{"keys": ["<base64url>", ...]}``: the first key seals,
    every key unseals (a rotation ring, at most 8). Processes that share the
    file share the keys: put a copy next to every replica's policy. It is
    created with mode 0600 and published atomically, so processes racing to
    create it all end up with the one that won.

    Raises:
        IdentityError: the file is unreadable, readable by group or others,
            malformed, or holds a key that is not 32 bytes; or it is missing
            and ``create`` is false.
    """
    if create and not path.exists():
        doc = {"keys": [b64url_encode(secrets.token_bytes(32))]}
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(json.dumps(doc).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            # Another process may have made it first: then use theirs.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    doc = _read_owner_only(path, "secret key")
    texts = doc.get("keys")
    if not isinstance(texts, list) or not 1 <= len(texts) <= _MAX_SECRET_KEYS:
        raise IdentityError(f"{path}: 'keys' must list 1 to {_MAX_SECRET_KEYS} keys")
    keys = []
    for index, text in enumerate(texts):
        try:
            key = b64url_decode(text) if isinstance(text, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:
            raise IdentityError(f"{path}: key {index} is not 32 bytes of base64url")
        keys.append(key)
    return keys
