"""Bounded recording of refusals anyone can cause without logging in (junk sent to the
cluster setup API, logins during a lockout), so a flood cannot grow the trail without
limit and nothing is lost.

Per source address and kind of refusal, the first ``conf.repeat_limit()`` refusals of a
window of ``conf.repeat_window()`` seconds are recorded one by one; the rest are only
counted, and the count reaches the trail as one ``audit.repeats_counted`` event when
that window is over: written by the next refusal of the kind from that source, or by
the periodic ``audit_repeats_flush``, whichever comes first.

So one source and kind adds at most ``limit + 1`` events per window.
"""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import chain, conf
from .actions import AuditAction, Outcome
from .models import AuditEvent, AuditRepeatCounter
from .services import audit_record


def window_start(now: datetime, seconds: int) -> datetime:
    """The start of the window ``now`` falls in (windows are aligned to the epoch)."""
    stamp = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(stamp, tz=dt_timezone.utc)


def _summary(counter: AuditRepeatCounter, seconds: int) -> None:
    """The count of the refusals only counted in ``counter``'s window, if any."""
    if counter.suppressed:
        audit_record(
            action=AuditAction.AUDIT_REPEATS_COUNTED,
            target=f"source:{counter.source or 'unknown'}",
            outcome=Outcome.DENIED,
            details={
                "source_ip": counter.source, "kind": counter.kind, "action": counter.action,
                "recorded": counter.recorded, "counted": counter.suppressed,
                "window_start": counter.window_start.isoformat(), "window_seconds": seconds,
            },
        )


@transaction.atomic
def audit_refusal_repeated(
    *,
    source: str,
    kind: str,
    action: AuditAction | str,
    target: str = "",
    outcome: Outcome | str = Outcome.DENIED,
    details: dict[str, Any] | None = None,
    actor_id: int | None = None,
    actor_name: str | None = None,
) -> AuditEvent | None:
    """``audit_record`` for a refusal from ``source`` (an address) that anyone may
    repeat: the event while under the limit of its window, else None (counted)."""
    limit = conf.repeat_limit()
    if limit <= 0:
        return audit_record(action=action, target=target, outcome=outcome, details=details, actor_id=actor_id,
                            actor_name=actor_name)
    seconds = conf.repeat_window()
    start = window_start(timezone.now(), seconds)
    source = chain.storable_text(source or "")[:64]
    kind = chain.storable_text(kind)[:128]
    # The counter row's lock is taken before the chain head's (in audit_record), by
    # every writer of counters, so the two locks are always taken in the same order.
    counter, _ = AuditRepeatCounter.objects.select_for_update().get_or_create(
        source=source, kind=kind, defaults={"action": str(AuditAction(action).value), "window_start": start},
    )
    if counter.window_start != start:
        _summary(counter, seconds)
        counter.window_start, counter.recorded, counter.suppressed = start, 0, 0
    if counter.recorded < limit:
        counter.recorded += 1
        counter.save(update_fields=["window_start", "recorded", "suppressed"])
        return audit_record(action=action, target=target, outcome=outcome, details=details, actor_id=actor_id,
                            actor_name=actor_name)
    counter.suppressed += 1
    counter.save(update_fields=["window_start", "recorded", "suppressed"])
    return None


def audit_repeats_flush(*, now: datetime | None = None) -> int:
    """Write the summary of every window that is over and drop its counter; returns
    the number of summaries written. One transaction per counter, so the lock order
    (counter, then chain head) is the same as ``audit_refusal_repeated``'s."""
    seconds = conf.repeat_window()
    start = window_start(now or timezone.now(), seconds)
    written = 0
    for pk in list(AuditRepeatCounter.objects.filter(window_start__lt=start).values_list("pk", flat=True)):
        with transaction.atomic():
            counter = AuditRepeatCounter.objects.select_for_update().filter(pk=pk, window_start__lt=start).first()
            if counter is None:  # a refusal moved it to the current window meanwhile
                continue
            if counter.suppressed:
                _summary(counter, seconds)
                written += 1
            counter.delete()
    return written
