"""Recording audit events. The only code that writes the audit table."""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections, transaction
from django.utils import timezone

from pamportal.core import context

from . import chain, conf
from .actions import AuditAction, Outcome
from .models import AuditCheckpoint, AuditEvent, AuditHead

_COLUMNS = (
    "position", "time", "actor_id", "actor_name", "source_ip", "request_id",
    "action", "target", "outcome", "details", "prev_hash", "hash",
)
_INSERT = f"INSERT INTO audit_auditevent ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
# Taking the head row's lock and the next position is one statement; so is writing the
# event and the new head on PostgreSQL. Every round trip is spent holding the chain's
# lock, which is what bounds appends per second.
_CLAIM_NEXT = "UPDATE audit_audithead SET position = position + 1 WHERE id = 1 RETURNING position, hash"
_PG_APPEND = f"WITH event AS ({_INSERT} RETURNING position, hash) UPDATE audit_audithead SET hash = event.hash FROM event WHERE id = 1"
_SET_HEAD_HASH = "UPDATE audit_audithead SET hash = %s WHERE id = 1"

logger = logging.getLogger(__name__)


def _checkpoint_every() -> int:
    return conf.checkpoint_every()


def _checkpoint_inline(position: int, digest: str) -> None:
    """Sign the head every N events. A signing problem (no key, a lost MEK) must not
    undo the caller's action: it is logged, and the periodic checkpoint reports it."""
    # local import: checkpoints imports signing, which records through this module (a real cycle)
    from .checkpoints import audit_checkpoint_sign

    try:
        with transaction.atomic():  # a savepoint: its failure leaves the caller's work intact
            audit_checkpoint_sign(position=position, hash=digest, reason=AuditCheckpoint.Reason.EVENTS)
    except Exception:
        logger.exception("could not sign the audit checkpoint at position %s", position)


# No savepoint: a failed append must fail the caller's whole transaction anyway.
@transaction.atomic(savepoint=False)
def audit_record(
    *,
    action: AuditAction | str,
    target: str = "",
    outcome: Outcome | str = Outcome.SUCCEEDED,
    details: dict[str, Any] | None = None,
    actor_id: int | None = None,
    actor_name: str | None = None,
) -> AuditEvent:
    """Append one event inside the caller's transaction: no audit, no action.

    The chain head row is locked (its ``UPDATE`` on PostgreSQL; on SQLite the
    IMMEDIATE transaction holds the database write lock) until the caller commits, so
    concurrent writers queue and the chain never forks.
    """
    ctx = context.current()
    if actor_name is None:
        actor_id, actor_name = ctx.actor_id, ctx.actor_name
    action = AuditAction(action)
    # Whatever a request carried (a lone surrogate from a JSON escape, a NUL) is stored
    # as its escape: stored and hashed alike, so the event can always be written.
    actor_name = chain.storable_text(actor_name or "")[:150]
    target = chain.storable_text(target or "")[:512]
    source_ip = chain.storable_text(ctx.source_ip or "")[:64]
    request_id = chain.storable_text(ctx.request_id or "")[:64]
    outcome = Outcome(outcome)
    details_text = chain.canonical_details(details)
    connection = connections[AuditEvent.objects.db]
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_NEXT)
        row = cursor.fetchone()
        if row is None:  # only if the head row (made by migration 0003) was removed
            AuditHead.objects.get_or_create(pk=1, defaults={"position": 0, "hash": chain.GENESIS_HASH})
            cursor.execute(_CLAIM_NEXT)
            row = cursor.fetchone()
        position, prev_hash = row
        now = timezone.now()
        digest = chain.event_hash(
            position, now, actor_id, actor_name, source_ip, request_id,
            action.value, target, outcome.value, details_text, prev_hash,
        )
        event = AuditEvent(
            position=position,
            time=now,
            actor_id=actor_id,
            actor_name=actor_name,
            source_ip=source_ip,
            request_id=request_id,
            action=action.value,
            target=target,
            outcome=outcome.value,
            details=details_text,
            prev_hash=prev_hash,
            hash=digest,
        )
        values = [getattr(event, name) for name in _COLUMNS]
        values[1] = connection.ops.adapt_datetimefield_value(now)
        if connection.vendor == "postgresql":
            cursor.execute(_PG_APPEND, values)
        else:
            cursor.execute(_INSERT, values)
            cursor.execute(_SET_HEAD_HASH, [digest])
    if position % _checkpoint_every() == 0:
        # Still under the head lock, so exactly one writer signs this position.
        _checkpoint_inline(position, digest)
    event._state.adding = False
    event._state.db = connection.alias
    return event


def audit_checkpoint_request() -> dict:
    """An administrator asks for a checkpoint now: the request is recorded (and kept
    whatever the outcome), then the chain is verified and, when whole, its head signed.
    Returns the outcome of ``audit_checkpoint_periodic``."""
    # checkpoints imports signing, which records through this module: a real cycle.
    from .checkpoints import audit_checkpoint_periodic

    with transaction.atomic():
        audit_record(action=AuditAction.AUDIT_CHECKPOINT_REQUESTED, target="audit chain")
    return audit_checkpoint_periodic(reason=AuditCheckpoint.Reason.MANUAL)
