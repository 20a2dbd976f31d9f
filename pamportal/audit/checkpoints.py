"""Signed checkpoints of the chain head, and the record of how far the chain was
verified (the audit page's badge)."""

from __future__ import annotations

import base64
import logging
import time
from datetime import timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.db import connection, transaction
from django.utils import timezone

from . import chain, conf, offline
from .models import AuditChainStatus, AuditCheckpoint, AuditEvent, AuditExport
from .selectors import _check_head, audit_chain_rows, audit_head
from .signing import signing_key_load

logger = logging.getLogger(__name__)


def audit_checkpoint_sign(*, position: int, hash: str, reason: str) -> AuditCheckpoint:
    """Sign (position, hash, now) with the node's audit key and keep it."""
    key = signing_key_load(record=reason != AuditCheckpoint.Reason.EVENTS)
    now = timezone.now()
    message = offline.checkpoint_message(position=position, hash=hash, time=chain.canonical_time(now), key_id=key.key_id)
    return AuditCheckpoint.objects.create(
        position=position, hash=hash, time=now, key_id=key.key_id, signature=key.sign(message), reason=reason
    )


def checkpoint_verifies(checkpoint: AuditCheckpoint, public_b64: str) -> bool:
    message = offline.checkpoint_message(
        position=checkpoint.position, hash=checkpoint.hash, time=chain.canonical_time(checkpoint.time),
        key_id=checkpoint.key_id,
    )
    try:
        Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64)).verify(base64.b64decode(checkpoint.signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def chain_status_record(result: chain.ChainResult, *, full: bool) -> AuditChainStatus:
    now = timezone.now()
    status, _ = AuditChainStatus.objects.get_or_create(pk=1)
    status.checked_at = now
    if full:
        status.full_checked_at = now
    status.ok = result.ok
    if result.ok:
        status.verified_position, status.verified_hash = result.last_position, result.last_hash
        status.first_bad_position, status.reason = None, ""
    else:
        status.verified_position = result.verified
        status.first_bad_position, status.reason = result.first_bad_position, result.reason
    status.save()
    return status


def audit_chain_check(*, full: bool = False) -> chain.ChainResult:
    """Verify the chain from where it was last verified (or from the start when
    ``full``, or when it was last found broken) and record the result."""
    status = AuditChainStatus.objects.filter(pk=1).first()
    start_position, start_hash = 0, chain.GENESIS_HASH
    if not full and status is not None and status.ok and status.verified_position:
        stored = AuditEvent.objects.filter(position=status.verified_position).values_list("hash", flat=True).first()
        if stored == status.verified_hash:
            start_position, start_hash = status.verified_position, status.verified_hash
        else:
            full = True  # the event verified last time changed: walk everything to name the damage
    head_position, head_hash = audit_head()

    def walk():
        return chain.verify_rows(
            audit_chain_rows(after=start_position), start_position=start_position + 1, start_hash=start_hash
        )

    if _is_postgres():
        with transaction.atomic():
            result = walk()
    else:
        result = walk()
    if result.ok:
        result = _check_head(result, head_position, head_hash)
    chain_status_record(result, full=full or start_position == 0)
    return result


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def audit_checkpoint_periodic(*, reason: str = AuditCheckpoint.Reason.PERIODIC) -> dict:
    """The hourly round: verify what was appended since the last check, sign the head
    (also when no event came, so a checkpoint's age shows the signer is alive), and
    remove expired export files. A broken chain is reported and not signed."""
    started = time.perf_counter()
    result = audit_chain_check()
    outcome = {"ok": result.ok, "verified_position": result.verified, "seconds": round(time.perf_counter() - started, 3)}
    if not result.ok:
        logger.error("audit chain broken at position %s: %s", result.first_bad_position, result.reason)
        outcome["first_bad_position"] = result.first_bad_position
        outcome["reason"] = result.reason
        return outcome
    checkpoint = audit_checkpoint_sign(position=result.last_position, hash=result.last_hash, reason=reason)
    outcome["checkpoint"] = checkpoint.pk
    outcome["exports_removed"] = exports_expire()
    return outcome


def exports_expire() -> int:
    cutoff = timezone.now() - timedelta(days=conf.export_keep_days())
    removed = 0
    for export in AuditExport.objects.filter(created_at__lt=cutoff).exclude(file_name=""):
        path = conf.export_dir() / export.file_name
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        AuditExport.objects.filter(pk=export.pk).update(file_name="", state=AuditExport.State.FAILED, error="expired")
    return removed


def latest_checkpoint() -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.order_by("-time").first()
