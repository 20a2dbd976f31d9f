"""Recording audit events. The only code that writes the audit table."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from pamportal.core import context

from . import chain
from .actions import AuditAction, Outcome
from .models import AuditEvent, AuditHead


@transaction.atomic
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

    The chain head row is locked (``SELECT ... FOR UPDATE``; on SQLite the IMMEDIATE
    transaction holds the database write lock), so concurrent writers queue and the
    chain never forks.
    """
    ctx = context.current()
    if actor_name is None:
        actor_id, actor_name = ctx.actor_id, ctx.actor_name
    action = AuditAction(action)
    target = (target or "")[:512]
    outcome = Outcome(outcome)
    head = AuditHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        AuditHead.objects.get_or_create(pk=1, defaults={"position": 0, "hash": chain.GENESIS_HASH})
        head = AuditHead.objects.select_for_update().get(pk=1)
    now = timezone.now()
    details_text = chain.canonical_details(details)
    position = head.position + 1
    digest = chain.event_hash(
        position, now, actor_id, actor_name, ctx.source_ip, ctx.request_id,
        action.value, target, outcome.value, details_text, head.hash,
    )
    event = AuditEvent.objects.create(
        position=position,
        time=now,
        actor_id=actor_id,
        actor_name=actor_name,
        source_ip=ctx.source_ip,
        request_id=ctx.request_id,
        action=action.value,
        target=target,
        outcome=outcome.value,
        details=details_text,
        prev_hash=head.hash,
        hash=digest,
    )
    AuditHead.objects.filter(pk=1).update(position=position, hash=digest)
    return event
