"""Sealing of TOTP secrets at rest: AES-256-GCM under a node key kept outside the
database, bound to the user the secret belongs to.

The key is a random 32-byte file in the data dir (0600), created on first use. It is not
derived from the MEK because the first administrator enrols TOTP before the MEK exists.
A database dump alone therefore yields no second factor. Nothing here logs or returns
the key or a secret in a printable form.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

from pamportal.core.files import write_private

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = b"\x01"
AAD_PREFIX = b"pamportal-totp-v1:"


class TOTPKeyUnreadable(RuntimeError):
    """A sealed TOTP secret cannot be opened on this node; the message says why, in
    words fit for a log (never the secret or the key)."""


def key_path() -> Path:
    return Path(settings.PAM_DATA_DIR) / "totp-seal.key"


def _load(*, create: bool) -> bytes:
    path = key_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not create:
            raise TOTPKeyUnreadable(f"the TOTP key file {path.name} is missing from the data dir") from None
        raw = _create(path)
    if len(raw) != KEY_BYTES:
        raise TOTPKeyUnreadable(f"the TOTP key file {path.name} is damaged (not {KEY_BYTES} bytes)")
    return raw


def _create(path: Path) -> bytes:
    """Write a new key file once: another process either sees no file or a whole one,
    and the first writer wins."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        write_private(path, key, exclusive=True)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_bytes()
    return key


def _aad(user_id) -> bytes:
    if user_id is None:
        raise ValueError("a TOTP secret is sealed for a saved user")
    return AAD_PREFIX + str(user_id).encode()


def seal(secret: bytes, *, user_id) -> bytes:
    """``version || nonce || AES-256-GCM(secret)`` for the user ``user_id``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return VERSION + nonce + AESGCM(_load(create=True)).encrypt(nonce, secret, _aad(user_id))


def unseal(sealed: bytes, *, user_id) -> bytes:
    sealed = bytes(sealed or b"")
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != VERSION:
        raise TOTPKeyUnreadable("the sealed TOTP secret is not in a format this version knows")
    key = _load(create=False)
    nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, _aad(user_id))
    except InvalidTag:
        raise TOTPKeyUnreadable(
            "the sealed TOTP secret does not open: the TOTP key file was replaced, "
            "or the row was altered or moved to another user"
        ) from None


# --- one key for the cluster ------------------------------------------------------------------
# On a replicated cluster every node reads the same TOTP devices from the cluster's
# database, so every node needs the key they were sealed with: a joining node adopts the
# leader's, handed over sealed under the MEK (``cluster.api.join_status_payload``). Its own
# key is kept beside it, for its own database, to which it goes back if it is removed.
OWN_SUFFIX = ".own"


def own_key_path() -> Path:
    return key_path().with_name(key_path().name + OWN_SUFFIX)


def key_export() -> bytes:
    """This node's key (made now when there is none): for sealing under the MEK only."""
    return _load(create=True)


def key_adopt(key: bytes) -> bool:
    """Seal and open TOTP secrets with ``key`` (the cluster's) from now on, keeping this
    node's own key as ``totp-seal.key.own`` the first time. Returns True when the key
    file changed. Idempotent."""
    if len(key) != KEY_BYTES:
        raise TOTPKeyUnreadable(f"the cluster's TOTP key is not {KEY_BYTES} bytes")
    path = key_path()
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        current = None
    if current == key:
        return False
    if current is not None and not own_key_path().exists():
        write_private(own_key_path(), current, exclusive=True)
    write_private(path, key)
    return True


def key_restore_own() -> bool:
    """Back to this node's own key (it left the cluster's database). Returns True when a
    kept key was put back."""
    own = own_key_path()
    if not own.exists():
        return False
    own.replace(key_path())
    return True
