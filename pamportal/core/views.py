"""Error pages and the health probe. A refused page is an audit event."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render

from pamportal.audit.actions import AuditAction, Outcome
from pamportal.audit.services import audit_record


def healthz(request):
    return JsonResponse({"status": "ok"})


def permission_denied(request, exception=None):
    audit_record(
        action=AuditAction.ACCESS_DENIED,
        target=request.path,
        outcome=Outcome.DENIED,
        details={"method": request.method},
    )
    return render(request, "core/403.html", status=403)


def not_found(request, exception=None):
    return render(request, "core/404.html", status=404)


def server_error(request):
    return render(request, "core/500.html", status=500)
