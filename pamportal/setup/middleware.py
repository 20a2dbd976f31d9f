"""While no administrator exists, every page leads to the setup wizard."""

from django.shortcuts import redirect

from pamportal.accounts.roles import Role

from .selectors import setup_is_complete

_OPEN_PREFIXES = ("/setup/", "/static/", "/healthz")


class FirstBootMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Not cached, so a restored database or a test that starts empty is judged as
        # it is now: an active administrator signed in is such an administrator, read
        # from the database in this request; anyone else costs one indexed EXISTS.
        if request.path.startswith(_OPEN_PREFIXES) or _is_active_administrator(request.user):
            return self.get_response(request)
        if not setup_is_complete():
            return redirect("setup:start")
        return self.get_response(request)


def _is_active_administrator(user) -> bool:
    return user.is_authenticated and user.is_active and user.role == Role.ADMINISTRATOR
