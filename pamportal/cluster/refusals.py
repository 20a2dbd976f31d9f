"""The cluster's refusals: ``ClusterRefused``, the audit mechanism's ``Refused`` with
what a cluster refusal records beyond its event (a request voided; the setup API's
anonymous refusals counted per source rather than listed)."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.refusals import Refused
from pamportal.audit.repeats import audit_refusal_repeated
from pamportal.audit.services import audit_record
from pamportal.core import context

from .models import OPEN_REQUEST_STATES, RequestState

# Refusals of the setup API (2390), which anyone who reaches the port can cause.
ANONYMOUS_REFUSALS = frozenset({AuditAction.CLUSTER_JOIN_REFUSED, AuditAction.CLUSTER_JOIN_POLL_REFUSED})


def request_target(request) -> str:
    """A join or removal request as an audit target."""
    return f"{request.KIND}-request:{request.public_id}"


def request_void(model, pk: int, reason: str) -> None:
    """Fail a request whose operation changed after it was made or voted on."""
    request = model.objects.select_for_update().get(pk=pk)
    if request.state not in OPEN_REQUEST_STATES:
        return
    request.state = RequestState.FAILED
    request.failure_reason = "The request changed after votes were cast; the votes are void."
    request.finished_at = timezone.now()
    request.save(update_fields=["state", "failure_reason", "finished_at"])
    audit_record(action=AuditAction.CLUSTER_REQUEST_VOIDED, target=request_target(request), outcome=Outcome.FAILED,
                 details={"reason": reason, "votes": request.votes.count()})


class ClusterRefused(Refused):
    """A cluster change that the rules refuse; ``message`` is for the operator (or the
    follower, with ``code``)."""

    def __init__(self, message: str, **kwargs):
        super().__init__(message, **kwargs)
        # Set when the refusal must also fail a request (votes voided by a change).
        self.void_request: tuple[type, int] | None = None

    def record(self) -> None:
        with transaction.atomic():
            if self.void_request is not None:
                model, pk = self.void_request
                request_void(model, pk, self.reason)
            if self.action in ANONYMOUS_REFUSALS:
                # Bounded per source address and kind: a flood is counted, not listed.
                audit_refusal_repeated(source=context.current().source_ip,
                                       kind=f"{self.action}:{self.code or self.reason}"[:128], action=self.action,
                                       target=self.target, outcome=self.outcome, details=self.audit_details())
            else:
                super().record()
