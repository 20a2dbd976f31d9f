"""The Master Encryption Key (MEK): 256 random bits, how people copy it, and the keys
derived from it.

Shown as base32 in groups of four with a final checksum group. The checksum group's
first character is a Luhn mod 32 check character, which catches every single-character
substitution (and most swaps of neighbours) with certainty; its other three characters
are 15 bits of SHA-256 over the key, which catch most other slips. Secrets at rest are
sealed with AES-256-GCM under keys derived from the MEK with HKDF-SHA256, one per
purpose.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MEK_BYTES = 32
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
BODY_CHARS = 52  # 256 bits in base32, without padding
GROUP = 4
_SEAL_VERSION = "v1"


class MekFormatError(ValueError):
    """A typed MEK that cannot be a MEK; the message says what is wrong."""


def generate() -> bytes:
    return os.urandom(MEK_BYTES)


def _luhn_mod32(chars: str) -> str:
    factor, total = 2, 0
    for char in reversed(chars):
        addend = factor * _INDEX[char]
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return ALPHABET[(32 - total % 32) % 32]


def _checksum(body: str, key: bytes) -> str:
    digest = base64.b32encode(hashlib.sha256(b"pamportal-mek-check-v1" + key).digest()).decode()
    return _luhn_mod32(body) + digest[:3]


def encode(key: bytes) -> str:
    """The MEK as an operator copies it: 13 groups of base32 and one checksum group."""
    if len(key) != MEK_BYTES:
        raise ValueError("a MEK is 32 bytes")
    body = base64.b32encode(key).decode().rstrip("=")
    text = body + _checksum(body, key)
    return "-".join(text[i : i + GROUP] for i in range(0, len(text), GROUP))


def decode(text: str) -> bytes:
    """Parse a typed MEK; spaces, dashes and case do not matter. Raises MekFormatError."""
    compact = re.sub(r"[\s\-]", "", text or "").upper()
    if not compact:
        raise MekFormatError("Type the Master Encryption Key.")
    bad = sorted({c for c in compact if c not in _INDEX})
    if bad:
        raise MekFormatError(
            f"The key contains characters that are not in its alphabet ({', '.join(bad)}); "
            "it uses only the letters A–Z and the digits 2–7."
        )
    expected = BODY_CHARS + GROUP
    if len(compact) != expected:
        raise MekFormatError(
            f"The key has {len(compact)} characters; a Master Encryption Key has {expected} "
            f"({expected // GROUP} groups of {GROUP})."
        )
    body, check = compact[:BODY_CHARS], compact[BODY_CHARS:]
    try:
        key = base64.b32decode(body + "====")
    except (ValueError, base64.binascii.Error):
        raise MekFormatError("The key is not valid base32; check it against your copy.") from None
    if len(key) != MEK_BYTES or not hmac.compare_digest(_checksum(body, key), check):
        raise MekFormatError("The checksum group does not match: a character was mistyped. Check it against your copy.")
    return key


def fingerprint(key: bytes) -> str:
    """What the database keeps to recognise the MEK: an HMAC, not the key."""
    return hmac.new(key, b"pamportal-mek-fingerprint-v1", hashlib.sha256).hexdigest()


def derive(key: bytes, purpose: str, length: int = 32) -> bytes:
    """A key for one purpose, derived from the MEK with HKDF-SHA256."""
    if not purpose:
        raise ValueError("a derived key needs a purpose")
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=b"pamportal-mek-v1", info=purpose.encode()
    ).derive(key)


def seal(key: bytes, purpose: str, plaintext: bytes) -> str:
    """Encrypt a secret at rest: AES-256-GCM under derive(key, purpose), the purpose
    bound as associated data so a sealed value cannot be moved to another use."""
    nonce = os.urandom(12)
    ciphertext = AESGCM(derive(key, "seal:" + purpose)).encrypt(nonce, plaintext, purpose.encode())
    return f"{_SEAL_VERSION}:" + base64.urlsafe_b64encode(nonce + ciphertext).decode()


class UnsealError(ValueError):
    pass


def unseal(key: bytes, purpose: str, sealed: str) -> bytes:
    version, _, data = (sealed or "").partition(":")
    if version != _SEAL_VERSION or not data:
        raise UnsealError("not a sealed value")
    try:
        raw = base64.urlsafe_b64decode(data.encode())
    except (ValueError, base64.binascii.Error):
        raise UnsealError("not a sealed value") from None
    if len(raw) < 12 + 16:
        raise UnsealError("sealed value is truncated")
    try:
        return AESGCM(derive(key, "seal:" + purpose)).decrypt(raw[:12], raw[12:], purpose.encode())
    except InvalidTag:
        raise UnsealError("sealed value does not open with this key (wrong MEK, purpose or tampered)") from None
