"""View guards. Every view names the capability it needs from ``roles.CAPABILITIES``."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django_htmx.http import HttpResponseClientRedirect

from pamportal.core.htmx import htmx_partial

from .roles import has_capability


def login_redirect(request) -> HttpResponse:
    """To the login page, and back to this page after it. A part of a page that htmx
    polls or swaps (a job's progress, a join's status) whose session ended (it expired,
    or the node moved onto the cluster's database, whose accounts replace its own) sends
    the whole page there, rather than the login form being swapped into the part."""
    if htmx_partial(request):
        return HttpResponseClientRedirect(redirect_to_login(request.htmx.current_url_abs_path or "/").url)
    return redirect_to_login(request.get_full_path())


def require_capability(capability: str, *, on_refused=None):
    """Anonymous users go to the login page; users without the capability get 403
    (which the 403 handler records as an audit event), or, when given, the answer of
    ``on_refused(request, *args, **kwargs)``, which then records the refusal itself."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return login_redirect(request)
            if not has_capability(request.user, capability):
                if on_refused is not None:
                    return on_refused(request, *args, **kwargs)
                raise PermissionDenied(capability)
            return view(request, *args, **kwargs)

        wrapper.required_capability = capability
        return wrapper

    return decorator
