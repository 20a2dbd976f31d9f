"""Reading the audit trail: the filtered listing for the audit page, and the chain
walk that ``audit_verify`` runs."""

from __future__ import annotations

import dataclasses
import queue
import threading
from datetime import datetime
from typing import Iterator

from django.core.paginator import Page, Paginator
from django.db import connection, transaction
from django.db.models import QuerySet

from . import chain
from .models import AuditChainStatus, AuditCheckpoint, AuditEvent, AuditHead
from .signing import active_public_key, public_pem

VERIFY_CHUNK = 20_000

# The chain's FIELDS plus the stored hash, with the time already in chain.canonical_time
# form: PostgreSQL formats it in C, which is most of what makes verification fast.
_PG_CHAIN_SQL = """
SELECT position,
       to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       actor_id, actor_name, source_ip, request_id, action, target, outcome,
       details, prev_hash, hash
  FROM audit_auditevent
 WHERE position > %s
 ORDER BY position
"""


def audit_event_list(
    *,
    actor: str = "",
    action: str = "",
    outcome: str = "",
    time_from: datetime | None = None,
    time_to: datetime | None = None,
    target: str = "",
) -> QuerySet[AuditEvent]:
    """Events newest first, narrowed by the audit page's filters (empty means any)."""
    events = AuditEvent.objects.order_by("-position")
    if actor:
        events = events.filter(actor_name__icontains=actor)
    if action:
        events = events.filter(action=action)
    if outcome:
        events = events.filter(outcome=outcome)
    if target:
        events = events.filter(target__icontains=target)
    if time_from is not None:
        events = events.filter(time__gte=time_from)
    if time_to is not None:
        events = events.filter(time__lte=time_to)
    return events


def audit_event_page(filters: dict, number, *, per_page: int, head: tuple[int, str] | None = None) -> Page:
    """One page of ``audit_event_list(**filters)``. Unfiltered, the number of events is
    the chain head's position (positions run 1..head without gaps, events are never
    deleted), so the pager costs no COUNT(*) over the whole audit table. ``head``: the
    head the caller already read (one read for the page and its badge)."""
    paginator = Paginator(audit_event_list(**filters), per_page)
    if not filters:
        paginator.count = (head or audit_head())[0]  # Paginator.count is a cached_property
    return paginator.get_page(number)


def audit_event_neighbours(event: AuditEvent) -> tuple[int | None, int | None]:
    """Positions of the events before and after ``event`` (None at either end)."""
    positions = set(
        AuditEvent.objects.filter(position__in=(event.position - 1, event.position + 1)).values_list(
            "position", flat=True
        )
    )
    before = event.position - 1 if event.position - 1 in positions else None
    after = event.position + 1 if event.position + 1 in positions else None
    return before, after


def audit_head() -> tuple[int, str]:
    head = AuditHead.objects.filter(pk=1).values_list("position", "hash").first()
    return head if head is not None else (0, chain.GENESIS_HASH)


def audit_chain_rows(*, chunk_size: int = VERIFY_CHUNK, after: int = 0) -> Iterator[tuple]:
    """Every event (after position ``after``) as a ``chain.verify_rows`` row, in
    position order, streamed.

    On PostgreSQL this is a server-side cursor and must be consumed inside a
    transaction (``audit_chain_verify`` opens one).
    """
    if connection.vendor == "postgresql":
        connection.ensure_connection()
        with connection.connection.cursor(name="audit_chain_rows") as cursor:
            cursor.itersize = chunk_size
            cursor.execute(_PG_CHAIN_SQL, (after,))
            yield from _read_ahead(cursor, chunk_size)
    else:
        yield from (
            AuditEvent.objects.filter(position__gt=after).order_by("position")
            .values_list(*chain.FIELDS, "hash")
            .iterator(chunk_size=chunk_size)
        )


def _read_ahead(cursor, chunk_size: int) -> Iterator[tuple]:
    """Fetch the next chunk while the caller hashes this one: the server and the
    socket work while Python hashes, instead of taking turns."""
    chunks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def hand_over(item) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def fetch() -> None:
        try:
            while not stop.is_set():
                rows = cursor.fetchmany(chunk_size)
                hand_over(rows)
                if not rows:
                    return
        except BaseException as error:  # raised again on the reading side
            hand_over(error)

    reader = threading.Thread(target=fetch, name="audit-chain-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            rows = chunks.get()
            if isinstance(rows, BaseException):
                raise rows
            if not rows:
                return
            yield from rows
    finally:
        stop.set()
        reader.join()


def audit_chain_verify() -> chain.ChainResult:
    """Walk the whole chain, then check that it ends where the head row says it does,
    so removing, replacing or adding the last event is caught as well."""
    head_position, head_hash = audit_head()
    if connection.vendor == "postgresql":
        # A named cursor lives in a transaction; READ COMMITTED is enough because
        # events are never changed after they are committed.
        with transaction.atomic():
            result = chain.verify_rows(audit_chain_rows())
    else:
        # Not in a transaction: on SQLite that would take the write lock (IMMEDIATE).
        result = chain.verify_rows(audit_chain_rows())
    if not result.ok:
        return result
    return _check_head(result, head_position, head_hash)


def _check_head(result: chain.ChainResult, head_position: int, head_hash: str) -> chain.ChainResult:
    last = result.last_position

    def broken(position: int, reason: str) -> chain.ChainResult:
        return dataclasses.replace(result, verified=position - 1, first_bad_position=position, reason=reason)

    if last < head_position:
        return broken(last + 1, f"event {last + 1} is missing (the chain head is at {head_position})")
    if last == head_position:
        if result.last_hash != head_hash:
            return broken(last, f"event {last} is not the event recorded as the chain head (changed or replaced)")
        return result
    # More events than the head we read first: appended since, or added behind the
    # portal's back. Appends move the head in the same transaction, so read it again.
    now_position, _ = audit_head()
    if now_position < last:
        return broken(now_position + 1, f"event {now_position + 1} is beyond the chain head ({now_position}): not appended by the portal")
    stored = AuditEvent.objects.filter(position=head_position).values_list("hash", flat=True).first()
    if head_position and stored != head_hash:
        return broken(head_position, f"event {head_position} is not the event recorded as the chain head (changed or replaced)")
    return result


def audit_event_hash_matches(event: AuditEvent) -> bool:
    """Does the event's stored hash match its fields and the previous hash?"""
    own_hash = chain.event_hash(
        event.position, event.time, event.actor_id, event.actor_name, event.source_ip, event.request_id,
        event.action, event.target, event.outcome, event.details, event.prev_hash,
    )
    return own_hash == event.hash


def audit_trail_facts(head: tuple[int, str] | None = None) -> dict:
    """The badge and the key: how far the chain is verified, the latest checkpoint and
    the public key that signs checkpoints and exports."""
    key = active_public_key()
    return {
        "chain_status": AuditChainStatus.objects.filter(pk=1).first(),
        "head_position": (head or audit_head())[0],
        "checkpoint": AuditCheckpoint.objects.order_by("-time").first(),
        "signing_key": key,
        "signing_key_pem": public_pem(key.public_key) if key else "",
    }
