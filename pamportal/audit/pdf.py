"""The PDF report (WeasyPrint): what a person reads. Period and filters, counts by
action and outcome, approvals with their votes, the verification result, the events
(up to a limit) and, in every page's footer, the digest of the events it covers."""

from __future__ import annotations

import json
from typing import Callable

from django.db import transaction
from django.db.models import Count
from django.template.loader import render_to_string

from pamportal.core.files import private_file
from pamportal.nodes.selectors import node_address

from . import chain, conf
from .actions import APPROVAL_ACTIONS, AuditAction, Outcome
from .exports import ExportStats, _filters_from_stored, export_queryset
from .models import AuditChainStatus, AuditExport
from .signing import signing_key_load


def _stats(filters: dict, upto: int) -> ExportStats:
    """Count, first/last and the digest of the events' hashes, streamed."""
    stats = ExportStats()
    qs = export_queryset(filters, upto)
    batch: list[tuple] = []
    rows = qs.values_list("position", "hash", "time").iterator(chunk_size=5000)
    for position, digest, when in rows:
        batch.append((position, digest, chain.canonical_time(when)))
        if len(batch) >= 5000:
            stats.add_rows(batch)
            batch = []
    stats.add_rows(batch)
    return stats


def _approval_note(event) -> str:
    """The decision, the count of approvals or the reason a vote or request carries."""
    try:
        details = json.loads(event.details or "{}")
    except ValueError:
        return ""
    if not isinstance(details, dict):
        return ""
    parts = []
    if details.get("decision"):
        parts.append(str(details["decision"]))
    if "approvals" in details and "required_approvals" in details:
        parts.append(f"{details['approvals']} of {details['required_approvals']} approvals")
    if isinstance(details.get("approvers"), list):
        parts.append("approved by " + ", ".join(str(a) for a in details["approvers"]))
    if details.get("denied_by"):
        parts.append(f"denied by {details['denied_by']}")
    if details.get("reason"):
        parts.append(str(details["reason"]))
    return "; ".join(parts)


def _label(choices, value: str) -> str:
    try:
        return choices(value).label
    except ValueError:
        return value


def write_pdf_file(export: AuditExport, *, log: Callable[[str], None]) -> ExportStats:
    from weasyprint import HTML  # local import: heavy; loaded only when a PDF is made

    filters = _filters_from_stored(export.filters)
    with transaction.atomic():  # one snapshot-free but bounded read: rows <= upto never change
        stats = _stats(filters, export.upto_position)
        events = export_queryset(filters, export.upto_position)
        by_action = [
            {"action": row["action"], "label": _label(AuditAction, row["action"]), "count": row["n"]}
            for row in events.order_by().values("action").annotate(n=Count("position")).order_by("-n", "action")
        ]
        by_outcome = [
            {"outcome": row["outcome"], "label": _label(Outcome, row["outcome"]), "count": row["n"]}
            for row in events.order_by().values("outcome").annotate(n=Count("position")).order_by("-n", "outcome")
        ]
        limit = conf.pdf_event_rows()
        listed = list(events[:limit])
        # Requests that need approval, their votes and how they ended, as recorded.
        approvals = list(events.filter(action__in=sorted(APPROVAL_ACTIONS))[:limit])
        for event in approvals:
            event.note = _approval_note(event)
    log(f"{stats.count:,} events counted; rendering the PDF")
    key = signing_key_load()
    status = AuditChainStatus.objects.filter(pk=1).first()
    html = render_to_string(
        "audit/report_pdf.html",
        {
            "export": export,
            "filters": export.filters,
            "stats": stats,
            "events_sha256": stats.events.hexdigest(),
            "by_action": by_action,
            "by_outcome": by_outcome,
            "listed": listed,
            "limit": limit,
            "approvals": approvals,
            "status": status,
            "key": key,
            "node": node_address(),
        },
    )
    path = conf.export_dir() / export.file_name
    with private_file(path) as handle:
        HTML(string=html).write_pdf(handle)
    return stats
