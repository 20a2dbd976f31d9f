"""The node's MEK file and sealing of secrets at rest under keys derived from it.

The MEK lives only in a 0600 file in the data dir; the database holds sealed secrets
(AES-256-GCM under HKDF(MEK, purpose)) and a fingerprint, so a dump alone reveals
nothing. Nothing here logs or returns the key in a printable form.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from django.conf import settings

from pamportal.core.files import write_private
from pamportal.crypto import mek


class MekMissing(RuntimeError):
    """The node has no MEK yet (setup not finalised) or its key file is gone."""


def mek_path() -> Path:
    return Path(settings.PAM_DATA_DIR) / "mek.key"


def mek_exists() -> bool:
    return mek_path().exists()


def mek_load() -> bytes:
    try:
        raw = mek_path().read_bytes()
    except FileNotFoundError:
        raise MekMissing("this node has no Master Encryption Key yet") from None
    if len(raw) != mek.MEK_BYTES:
        raise MekMissing("the Master Encryption Key file is damaged")
    return raw


def mek_install(key: bytes) -> None:
    """Write the MEK file (0600) once; refuses to replace an existing key."""
    if len(key) != mek.MEK_BYTES:
        raise ValueError("a MEK is 32 bytes")
    write_private(mek_path(), key, exclusive=True)


def seal(*, purpose: str, data: bytes) -> str:
    return mek.seal(mek_load(), purpose, data)


def unseal(*, purpose: str, sealed: str) -> bytes:
    return mek.unseal(mek_load(), purpose, sealed)


def mek_remove() -> None:
    """Remove the key file. Only for a key that nothing has been sealed with yet: the
    setup wizard's "discard and generate a new one" before the copy is confirmed."""
    try:
        mek_path().unlink()
    except FileNotFoundError:
        pass


def mek_matches(key: bytes) -> bool:
    """Whether ``key`` is the key in this node's file (constant-time)."""
    try:
        return hmac.compare_digest(mek_load(), key)
    except MekMissing:
        return False
