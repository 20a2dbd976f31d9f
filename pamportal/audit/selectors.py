"""Reading the audit trail: the filtered listing for the audit page, and the chain
walk that ``audit_verify`` runs."""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from datetime import datetime
from typing import Iterator, NamedTuple

from django.core.paginator import Page, Paginator
from django.db import connection, transaction
from django.db.models import QuerySet

from . import chain
from .models import AuditChainStatus, AuditCheckpoint, AuditEvent, AuditExport, AuditHead, AuditSigningKey
from .signing import public_pem

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


class AuditRow(NamedTuple):
    """An event as the audit page's table shows it: only the columns of the table (not
    the details or the hashes), without the cost of a model instance per row."""

    position: int
    time: datetime
    actor_name: str
    source_ip: str
    action: str
    target: str
    outcome: str

    # The model's own label lookups: the same labels as AuditEvent's.
    get_action_display = AuditEvent.get_action_display
    get_outcome_display = AuditEvent.get_outcome_display


def audit_event_page(filters: dict, number, *, per_page: int, head: tuple[int, str] | None = None) -> Page:
    """One page of ``audit_event_list(**filters)``, its events as ``AuditRow``s.
    Unfiltered, the number of events is the chain head's position (positions run
    1..head without gaps, events are never deleted), so the pager costs no COUNT(*) over
    the whole audit table. ``head``: the head the caller already read (one read for the
    page and its badge)."""
    paginator = Paginator(audit_event_list(**filters).values_list(*AuditRow._fields), per_page)
    if not filters:
        head_position = (head or audit_head())[0]
        paginator.count = head_position  # Paginator.count is a cached_property
    page = paginator.get_page(number)
    if filters:
        page.object_list = [AuditRow._make(row) for row in page.object_list]
    else:
        # The same events as the paginator's OFFSET, found from the top position down
        # the primary key: a deep page costs no more than the first.
        page.object_list = audit_rows_below(head_position - (page.number - 1) * per_page, per_page)
    return page


def audit_rows_below(top: int, count: int) -> list[AuditRow]:
    """The ``count`` events at positions ``top`` and below, newest first: the query of
    ``AuditEvent.objects.filter(position__lte=top).order_by("-position")
    .values_list(*AuditRow._fields)[:count]``, its SQL built once per process and its
    values converted as the ORM converts them."""
    with connection.cursor() as cursor:
        cursor.execute(_rows_below_sql(count), [top])
        rows = cursor.fetchall()
    converters = _converters(AuditEvent, [AuditEvent._meta.get_field(name) for name in AuditRow._fields])
    return [AuditRow._make(_converted(row, converters)) for row in rows]


@functools.cache
def _rows_below_sql(count: int) -> str:
    query = AuditEvent.objects.filter(position__lte=0).order_by("-position").values_list(*AuditRow._fields)[:count]
    sql, params = query.query.sql_with_params()
    if params != (0,):  # the one parameter is the top position
        raise RuntimeError(f"unexpected parameters {params!r} for {sql}")
    return sql


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
    """The chain head's (position, hash); (0, genesis) before the first event.

    A primary-key read of two plain columns, made on every view of the audit page:
    written as SQL, since building the ORM query cost about twenty times the read."""
    with connection.cursor() as cursor:
        cursor.execute(_head_sql())
        head = cursor.fetchone()
    return (int(head[0]), str(head[1])) if head is not None else (0, chain.GENESIS_HASH)


@functools.cache
def _head_sql() -> str:
    quote = connection.ops.quote_name
    return (f"SELECT {quote('position')}, {quote('hash')} FROM {quote(AuditHead._meta.db_table)} "
            f"WHERE {quote('id')} = 1")


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


# Reads the audit page makes on every view, always the same queries: their SQL is
# built once per process (the ORM spent several times the read itself building it)
# and the values are converted as the ORM converts them (``_converted``). Each entry is
# the very query of the ORM call named beside it.
_FIXED_READS = {
    # AuditChainStatus.objects.filter(pk=1).first()
    "chain_status": lambda: AuditChainStatus.objects.filter(pk=1).order_by("pk")[:1],
    # AuditCheckpoint.objects.order_by("-time").first()
    "checkpoint": lambda: AuditCheckpoint.objects.order_by("-time")[:1],
    # signing.active_public_key()
    "signing_key": lambda: AuditSigningKey.objects.filter(retired_at__isnull=True).order_by("-created_at")[:1],
    # The audit page's recent exports: the columns of its table.
    "recent_exports": lambda: AuditExport.objects.only(
        "id", "created_at", "created_by_name", "format", "expected_count", "state"
    ).order_by("-created_at")[:10],
}
_TRAIL_READS = (("chain_status", AuditChainStatus), ("checkpoint", AuditCheckpoint), ("signing_key", AuditSigningKey))


def _converters(model, fields) -> list:
    """(index, converter functions, column) for each of ``fields`` that the ORM would
    convert when reading it (times on SQLite, booleans, ...)."""
    result = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            result.append((index, functions, column))
    return result


def _converted(values, converters) -> list:
    values = list(values)
    for index, functions, column in converters:
        for convert in functions:
            values[index] = convert(values[index], column, connection)
    return values


class AuditTrail(NamedTuple):
    head: tuple[int, str]
    chain_status: AuditChainStatus | None
    checkpoint: AuditCheckpoint | None
    signing_key: AuditSigningKey | None


def audit_trail_read() -> AuditTrail:
    """The chain head, the chain status, the latest checkpoint and the active signing
    key, in one query: each the row its ORM read in ``_FIXED_READS`` (and
    ``audit_head``) gives, or None."""
    with connection.cursor() as cursor:
        cursor.execute(*_trail_sql())
        row = cursor.fetchone()
    position, digest = row[0], row[1]
    head = (int(position), str(digest)) if position is not None else (0, chain.GENESIS_HASH)
    objects = []
    offset = 2
    for _name, model in _TRAIL_READS:
        fields = model._meta.concrete_fields
        values = row[offset:offset + len(fields)]
        offset += len(fields)
        if values[fields.index(model._meta.pk)] is None:  # no such row
            objects.append(None)
            continue
        values = _converted(values, _converters(model, fields))
        objects.append(model.from_db(connection.alias, [f.attname for f in fields], values))
    return AuditTrail(head, *objects)


@functools.cache
def _trail_sql() -> tuple[str, tuple]:
    quote = connection.ops.quote_name
    selects = [f"h.{quote('position')}", f"h.{quote('hash')}"]
    joins = [f"LEFT JOIN {quote(AuditHead._meta.db_table)} h ON h.{quote('id')} = 1"]
    params: list = []
    for number, (name, model) in enumerate(_TRAIL_READS):
        sql, read_params = _FIXED_READS[name]().query.sql_with_params()
        alias = f"r{number}"
        joins.append(f"LEFT JOIN ({sql}) {alias} ON 1 = 1")
        params.extend(read_params)
        selects.extend(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)
    return f"SELECT {', '.join(selects)} FROM (SELECT 1 AS one) base {' '.join(joins)}", tuple(params)


@functools.cache
def _fixed_sql(name: str) -> tuple[str, tuple]:
    return _FIXED_READS[name]().query.sql_with_params()


def audit_recent_exports() -> list[AuditExport]:
    """The last ten exports, newest first, with the columns the audit page shows."""
    sql, params = _fixed_sql("recent_exports")
    return list(AuditExport.objects.raw(sql, params))


def audit_trail_facts(head: tuple[int, str] | None = None, *, trail: AuditTrail | None = None) -> dict:
    """The badge and the key: how far the chain is verified, the latest checkpoint and
    the public key that signs checkpoints and exports. ``trail``: what the caller
    already read with ``audit_trail_read``."""
    trail = trail or audit_trail_read()
    key = trail.signing_key
    return {
        "chain_status": trail.chain_status,
        "head_position": (head or trail.head)[0],
        "checkpoint": trail.checkpoint,
        "signing_key": key,
        "signing_key_pem": public_pem(key.public_key) if key else "",
    }
