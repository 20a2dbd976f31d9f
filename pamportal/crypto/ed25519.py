"""Ed25519 keys as the audit trail stores them: raw 32-byte keys, the public key in
base64, a short key id derived from the public key, signatures in base64."""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

RAW_KEY_BYTES = 32


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_from_raw(raw: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(raw)


def private_raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id_of(public: bytes) -> str:
    """A key's id: the first 16 hex digits of the SHA-256 of its raw public key."""
    return hashlib.sha256(public).hexdigest()[:16]


@lru_cache(maxsize=16)
def public_pem(public_b64: str) -> str:
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def sign_b64(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")
