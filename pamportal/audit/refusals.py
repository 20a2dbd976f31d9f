"""One way to refuse an action and leave its trace: a service raises a ``Refused``
(subclassed per domain for the callers' ``except``), and ``audited_refusals`` runs the
service in its own transaction, so that what it did is rolled back and only the
refusal is recorded (in a transaction of its own), then raised again for the view.

A refusal that must record more than its event (a join request voided, a flood
counted rather than listed) overrides ``Refused.record``.
"""

from __future__ import annotations

from functools import wraps
from typing import Any

from django.db import transaction

from .actions import AuditAction, Outcome
from .services import audit_record


class Refused(Exception):
    """A refusal the operator reads (``message``), with what the trail records."""

    def __init__(self, message: str, *, action: AuditAction | str, target: str, reason: str, code: str = "",
                 outcome: Outcome | str = Outcome.DENIED, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.action = action
        self.target = target
        self.reason = reason
        self.code = code
        self.outcome = outcome
        self.details = details or {}

    def audit_details(self) -> dict[str, Any]:
        return {"reason": self.reason, **({"code": self.code} if self.code else {}), **self.details}

    def record(self) -> None:
        """Record the refusal in its own transaction: it survives the caller's rollback."""
        with transaction.atomic():
            audit_record(action=self.action, target=self.target, outcome=self.outcome, details=self.audit_details())


def audited_refusals(service):
    """Run ``service`` atomically; a ``Refused`` rolls it back, is recorded, is raised."""
    atomic_service = transaction.atomic(service)

    @wraps(service)
    def wrapper(*args, **kwargs):
        try:
            return atomic_service(*args, **kwargs)
        except Refused as refused:
            refused.record()
            raise

    return wrapper
