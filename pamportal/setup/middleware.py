"""While no administrator exists, every page leads to the setup wizard."""

from django.shortcuts import redirect

from .selectors import setup_is_complete

_OPEN_PREFIXES = ("/setup/", "/static/", "/healthz")


class FirstBootMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # One indexed EXISTS query a request; not cached, so a restored database or a
        # test that starts empty is judged as it is now.
        if not request.path.startswith(_OPEN_PREFIXES) and not setup_is_complete():
            return redirect("setup:start")
        return self.get_response(request)
