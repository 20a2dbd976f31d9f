"""Reading the audit trail in tests."""

from __future__ import annotations

import json

from pamportal.audit.models import AuditEvent


def events(action, outcome=None) -> list[AuditEvent]:
    """Audit events of one action (and outcome, if given), oldest first, each with its
    details decoded as ``.data``."""
    rows = AuditEvent.objects.filter(action=action).order_by("position")
    if outcome is not None:
        rows = rows.filter(outcome=outcome)
    rows = list(rows)
    for row in rows:
        row.data = json.loads(row.details or "{}")
    return rows
