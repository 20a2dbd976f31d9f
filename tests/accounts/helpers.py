"""Small helpers for the account and setup tests."""

import json

from pamportal.audit.models import AuditEvent


def events(action):
    """Audit events of one action, oldest first, with details decoded."""
    rows = list(AuditEvent.objects.filter(action=action).order_by("position"))
    for row in rows:
        row.data = json.loads(row.details or "{}")
    return rows
