"""Forwarding the trail to a SIEM: RFC 5424 syslog messages over TLS with RFC 5425
octet-counting framing, in position order from a durable cursor.

The cursor (last position handed to the collector) moves only after a batch was sent
in full, so a collector that was down gets everything it missed, in order, when it is
back. A run holds a short lease on the collector row instead of a lock, so no
transaction stays open during network I/O and two runs never send concurrently.
Each run ends with a half-close and waits for the collector to close too, so nothing is
lost to a TCP reset. RFC 5425 has no application acknowledgement: a batch that the
collector's kernel accepted but that died with the collector is not resent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import uuid
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import chain, conf
from .actions import AuditAction
from .models import AuditEvent, SiemCollector
from .services import audit_record

logger = logging.getLogger(__name__)

_FACILITY_LOG_AUDIT = 13
_SEVERITY = {"succeeded": 5, "denied": 4, "failed": 4}  # notice / warning


class SiemError(Exception):
    pass


def _sd_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _printable(value: str, limit: int) -> str:
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return text or "-"


def syslog_message(event: AuditEvent, *, hostname: str, sd_id: str) -> bytes:
    """One RFC 5424 message: the event's fields as structured data and, as MSG, the
    event as JSON (the same fields and hash as an export row)."""
    pri = _FACILITY_LOG_AUDIT * 8 + _SEVERITY.get(event.outcome, 5)
    time_text = chain.canonical_time(event.time)
    params = {
        "position": str(event.position),
        "actor": event.actor_name,
        "actor_id": "" if event.actor_id is None else str(event.actor_id),
        "source_ip": event.source_ip,
        "request_id": event.request_id,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
    sd = "[" + _sd_id(sd_id) + "".join(f' {k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
    body = json.dumps(
        {
            "position": event.position, "time": time_text, "actor_id": event.actor_id, "actor_name": event.actor_name,
            "source_ip": event.source_ip, "request_id": event.request_id, "action": event.action, "target": event.target,
            "outcome": event.outcome, "details": event.details, "prev_hash": event.prev_hash, "hash": event.hash,
        },
        ensure_ascii=False, separators=(",", ":"),
    )
    header = f"<{pri}>1 {time_text} {_printable(hostname, 255)} pamportal - {_printable(event.action, 32)} {sd} "
    return header.encode("utf-8") + b"\xef\xbb\xbf" + body.encode("utf-8")


def _sd_id(value: str) -> str:
    return _printable(value.replace("=", "_").replace('"', "_").replace("]", "_"), 32)


def frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return b"%d %b" % (len(message), message)


def tls_context(ca_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _connect(collector: SiemCollector) -> ssl.SSLSocket:
    context = tls_context(collector.ca_pem)
    raw = socket.create_connection((collector.host, collector.port), timeout=conf.siem_timeout())
    try:
        return context.wrap_socket(raw, server_hostname=collector.host)
    except BaseException:
        raw.close()
        raise


def _close_gracefully(connection: ssl.SSLSocket) -> None:
    """Send TLS close_notify (RFC 5425 §4.4; without it the collector logs a truncation
    error), then half-close and read until the collector closes too. Closing with unread
    data (TLS 1.3 session tickets) would make the kernel send a reset, and a reset makes
    the collector's kernel drop what it had received but not yet read."""
    sock: socket.socket = connection
    try:
        # unwrap() sends close_notify and waits (bounded by the timeout) for the
        # collector's; many collectors just close the TCP connection instead.
        sock = connection.unwrap()
    except (OSError, ssl.SSLError, ValueError):
        pass
    try:
        sock.shutdown(socket.SHUT_WR)
        for _ in range(64):  # bounded; each read also bounded by the socket timeout
            if not sock.recv(65536):
                break
    except (OSError, ssl.SSLError, ValueError):
        pass
    finally:
        for each in {id(sock): sock, id(connection): connection}.values():
            try:
                each.close()
            except OSError:
                pass


def _take_lease(owner: str) -> SiemCollector | None:
    now = timezone.now()
    until = now + timedelta(seconds=max(60.0, conf.siem_timeout() * 6))
    taken = SiemCollector.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now), pk=1, enabled=True
    ).update(lease_owner=owner, lease_until=until)
    return SiemCollector.objects.get(pk=1) if taken else None


def _advance(owner: str, old: int, new: int) -> bool:
    return bool(
        SiemCollector.objects.filter(pk=1, lease_owner=owner, cursor=old).update(
            cursor=new, last_success_at=timezone.now(), last_error=""
        )
    )


def siem_forward(*, max_events: int | None = None) -> dict:
    """Send the events after the cursor, oldest first, in batches; the cursor moves
    after each batch that was sent in full. Bounded by ``max_events`` per run."""
    if not SiemCollector.objects.filter(pk=1, enabled=True).exclude(host="").exists():
        return {"sent": 0, "skipped": "not configured"}
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    collector = _take_lease(owner)
    if collector is None:
        return {"sent": 0, "skipped": "another run holds the lease"}
    limit = max_events if max_events is not None else conf.siem_max_per_run()
    batch_size = conf.siem_batch()
    hostname, sd_id = conf.siem_hostname(), conf.siem_sd_id()
    sent, cursor, error = 0, collector.cursor, ""
    connection = None
    try:
        while sent < limit:
            events = list(AuditEvent.objects.filter(position__gt=cursor).order_by("position")[: min(batch_size, limit - sent)])
            if not events:
                break
            if connection is None:
                connection = _connect(collector)
            connection.sendall(b"".join(frame(syslog_message(e, hostname=hostname, sd_id=sd_id)) for e in events))
            new_cursor = events[-1].position
            if not _advance(owner, cursor, new_cursor):
                error = "the cursor was moved by someone else during this run; stopped"
                break
            sent += len(events)
            cursor = new_cursor
    except (OSError, ssl.SSLError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if connection is not None:
            _close_gracefully(connection)
        updates = {"lease_owner": "", "lease_until": None}
        if error:
            updates.update(last_error=error[:2000], last_error_at=timezone.now())
        elif sent == 0:
            updates["last_success_at"] = timezone.now()
        SiemCollector.objects.filter(pk=1, lease_owner=owner).update(**updates)
    if error:
        logger.warning("SIEM forwarding stopped at position %s: %s", cursor, error)
    return {"sent": sent, "cursor": cursor, **({"error": error} if error else {})}


@transaction.atomic
def siem_configure(*, host: str, port: int, ca_pem: str, enabled: bool, cursor: int | None = None) -> SiemCollector:
    """Set the collector (audited). ``cursor`` moves the durable cursor (e.g. to skip
    history), which is audited separately."""
    collector, _ = SiemCollector.objects.select_for_update().get_or_create(pk=1)
    collector.host, collector.port, collector.ca_pem, collector.enabled = host, port, ca_pem, enabled
    fields = ["host", "port", "ca_pem", "enabled", "updated_at"]
    if cursor is not None and cursor != collector.cursor:
        audit_record(action=AuditAction.AUDIT_SIEM_RESET, target="siem", details={"from": collector.cursor, "to": cursor})
        collector.cursor = cursor
        fields.append("cursor")
    collector.save(update_fields=fields)
    audit_record(
        action=AuditAction.AUDIT_SIEM_CONFIGURED, target=f"siem:{host}:{port}",
        details={"host": host, "port": port, "enabled": enabled, "ca_sha256": _pem_digest(ca_pem)},
    )
    return collector


def _pem_digest(pem: str) -> str:
    return hashlib.sha256(pem.encode("utf-8")).hexdigest() if pem else ""


def siem_collector() -> SiemCollector:
    return SiemCollector.objects.filter(pk=1).first() or SiemCollector()
