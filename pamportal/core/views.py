"""Error pages, the health probe, and the answer to a refused action. A refused page is
an audit event."""

from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_http_methods

from pamportal.accounts.roles import CAPABILITIES, Role
from pamportal.core import services


@require_http_methods(["GET", "HEAD"])  # probes may ask with HEAD
def healthz(request):
    return JsonResponse({"status": "ok"})


def refused_redirect(request, refused, to: str, *args, **kwargs):
    """A service refused the action (a ``Refused``, or any refusal with a ``message``):
    the operator reads why on the page ``to`` (a URL name and its arguments)."""
    messages.error(request, refused.message)
    return redirect(to, *args, **kwargs)


def _role_of(request) -> str:
    user = getattr(request, "user", None)
    return getattr(user, "role", "") if user is not None and user.is_authenticated else "anonymous"


def permission_denied(request, exception=None):
    # ``require_capability`` raises PermissionDenied with the capability's name.
    capability = str(exception) if exception is not None and exception.args else ""
    services.access_denied_record(
        path=request.path,
        method=request.method,
        reason="capability",
        detail=f"role {_role_of(request)} lacks {capability}" if capability else f"role {_role_of(request)}",
    )
    roles = sorted(CAPABILITIES.get(capability, ()), key=list(Role).index)
    return render(request, "core/403.html", {"capability": capability if roles else "",
                                             "roles": [role.label for role in roles]}, status=403)


def csrf_failure(request, reason=""):
    """``CSRF_FAILURE_VIEW``: a form posted without a valid CSRF token (a stale page, a
    cookie that expired, or another site's form). Refused, recorded, explained."""
    services.access_denied_record(path=request.path, method=request.method, reason="csrf", detail=reason)
    response = render(request, "core/403_csrf.html", status=403)
    add_never_cache_headers(response)
    return response


def not_found(request, exception=None):
    return render(request, "core/404.html", status=404)


def server_error(request):
    return render(request, "core/500.html", status=500)
