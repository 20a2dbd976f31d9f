"""Writes that belong to no other part of the domain: refused pages."""

from __future__ import annotations

from django.db import transaction

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record


@transaction.atomic
def access_denied_record(*, path: str, method: str, reason: str, detail: str = "") -> None:
    """A page refused: ``reason`` is a short code ("capability", "csrf"), ``detail`` says
    more (the missing capability, Django's CSRF reason). Nothing secret goes in."""
    details = {"method": method, "reason": reason}
    if detail:
        details["detail"] = detail[:200]
    audit_record(action=AuditAction.ACCESS_DENIED, target=path, outcome=Outcome.DENIED, details=details)
