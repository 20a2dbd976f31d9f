"""The node's audit signing key (Ed25519): where its private part lives, and signing.

Before the node has a MEK the private key is a 0600 file in the data dir; once the MEK
exists it is sealed under it (purpose ``audit-signing-key``) in the database and the
file is removed after the commit. ``signing_key_load`` makes that move whenever it
finds the file and a MEK, so it is idempotent and safe in any order or process.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import transaction
from django.utils import timezone

from pamportal.core.files import write_private
from pamportal.crypto import ed25519
from pamportal.crypto import mek as mek_format
from pamportal.crypto.ed25519 import key_id_of, public_pem  # noqa: F401 (part of this module's interface)
from pamportal.nodes import keystore

from . import conf
from .actions import AuditAction
from .models import AuditSigningKey
from .services import audit_record

logger = logging.getLogger(__name__)

PURPOSE = "audit-signing-key"
_cache_lock = threading.Lock()
_cache: dict[str, Ed25519PrivateKey] = {}


class SigningKeyUnavailable(RuntimeError):
    """The private key cannot be read (its file is gone, or the MEK that sealed it)."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    public_b64: str
    private: Ed25519PrivateKey

    def sign(self, message: bytes) -> str:
        return ed25519.sign_b64(self.private, message)

    @property
    def public_pem(self) -> str:
        return public_pem(self.public_b64)


def _read_file() -> Ed25519PrivateKey | None:
    try:
        raw = conf.signing_key_path().read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != ed25519.RAW_KEY_BYTES:
        raise SigningKeyUnavailable(f"the audit signing key file {conf.signing_key_path()} is damaged")
    return ed25519.private_from_raw(raw)


def _write_file(key: Ed25519PrivateKey) -> Ed25519PrivateKey:
    """Write the key file once (0600); if another process won the race, use theirs."""
    try:
        write_private(conf.signing_key_path(), ed25519.private_raw(key), exclusive=True)
    except FileExistsError:
        return _read_file()
    return key


def _remove_file_if(public_raw: bytes) -> None:
    """Remove the key file, but only if it still holds this key."""
    try:
        on_disk = _read_file()
    except SigningKeyUnavailable:
        return
    if on_disk is not None and ed25519.public_raw(on_disk) == public_raw:
        try:
            conf.signing_key_path().unlink()
        except FileNotFoundError:
            pass


@transaction.atomic
def signing_key_load(*, record: bool = True) -> SigningKey:
    """The active signing key, created on first use (an audit event unless ``record``
    is false: the checkpoint inside ``audit_record`` must not add events to the
    caller's); sealed under the MEK once there is one (the file is removed only after
    that commit)."""
    row = AuditSigningKey.objects.select_for_update().filter(retired_at__isnull=True).first()
    on_disk = _read_file()
    if row is None:
        on_disk = _write_file(on_disk or ed25519.generate())
        public_raw = ed25519.public_raw(on_disk)
        row, _ = AuditSigningKey.objects.get_or_create(
            key_id=key_id_of(public_raw), defaults={"public_key": base64.b64encode(public_raw).decode("ascii")}
        )
        logger.info("audit signing key %s created", row.key_id)
        if record:
            audit_record(action=AuditAction.AUDIT_SIGNING_KEY_CREATED, target=f"audit-key:{row.key_id}",
                         details={"key_id": row.key_id, "public_key": row.public_key})
    public_raw = base64.b64decode(row.public_key)
    private = _cache.get(row.key_id)
    if private is None:
        if row.sealed_private:
            if not keystore.mek_exists():
                raise SigningKeyUnavailable(
                    f"the audit signing key {row.key_id} is sealed under the MEK, and this node has no MEK file"
                )
            try:
                private = ed25519.private_from_raw(keystore.unseal(purpose=PURPOSE, sealed=row.sealed_private))
            except Exception as exc:
                raise SigningKeyUnavailable(f"the audit signing key {row.key_id} cannot be unsealed: {exc}") from None
        elif on_disk is not None and ed25519.public_raw(on_disk) == public_raw:
            private = on_disk
        else:
            raise SigningKeyUnavailable(
                f"the private part of audit signing key {row.key_id} is missing ({conf.signing_key_path()} is gone)"
            )
        if ed25519.public_raw(private) != public_raw:
            raise SigningKeyUnavailable(f"the private part of audit signing key {row.key_id} does not match it")
    if not row.sealed_private and keystore.mek_exists():
        row.sealed_private = keystore.seal(purpose=PURPOSE, data=ed25519.private_raw(private))
        row.save(update_fields=["sealed_private"])
        transaction.on_commit(lambda: _remove_file_if(public_raw))
        logger.info("audit signing key %s sealed under the MEK", row.key_id)
    elif row.sealed_private and on_disk is not None:
        transaction.on_commit(lambda: _remove_file_if(public_raw))  # a move cut short earlier
    with _cache_lock:
        _cache[row.key_id] = private
    return SigningKey(row.key_id, row.public_key, private)


@transaction.atomic
def signing_key_rotate() -> SigningKey:
    """Retire the active key and make a new one (old checkpoints keep their key id,
    and the retired public key stays listed so they can still be checked)."""
    AuditSigningKey.objects.select_for_update().filter(retired_at__isnull=True).update(retired_at=timezone.now())
    try:
        conf.signing_key_path().unlink()
    except FileNotFoundError:
        pass
    return signing_key_load()


def signing_keys_reseal(*, old_mek: bytes, new_mek: bytes | None) -> dict[str, int]:
    """Inside the caller's transaction, before the node's MEK file changes: move every
    audit signing key sealed under ``old_mek`` to ``new_mek``, so the trail's signatures
    outlive a change of MEK. Without a new MEK (the node forgets a MEK it held only for
    a join) the active key goes back to its 0600 file, where it lives before a node has
    a MEK, and is sealed again under the next MEK; a retired key loses its private part,
    which nothing uses again (its checkpoints are checked with its public key). The rows
    stay locked until the caller commits, so no other process seals a key meanwhile."""
    counts = {"resealed": 0, "to_file": 0, "retired_dropped": 0, "unreadable": 0}
    for row in AuditSigningKey.objects.select_for_update().exclude(sealed_private="").order_by("pk"):
        try:
            raw = mek_format.unseal(old_mek, PURPOSE, row.sealed_private)
        except mek_format.UnsealError:
            counts["unreadable"] += 1  # not under this MEK: nothing this change can save or lose
            continue
        if new_mek is not None:
            row.sealed_private = mek_format.seal(new_mek, PURPOSE, raw)
            counts["resealed"] += 1
        elif row.retired_at is None:
            write_private(conf.signing_key_path(), raw)
            row.sealed_private = ""
            counts["to_file"] += 1
        else:
            row.sealed_private = ""
            counts["retired_dropped"] += 1
        row.save(update_fields=["sealed_private"])
    return counts


def public_keys() -> list[AuditSigningKey]:
    return list(AuditSigningKey.objects.order_by("-created_at"))


def active_public_key() -> AuditSigningKey | None:
    return AuditSigningKey.objects.filter(retired_at__isnull=True).first()


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
