"""WSGI entry points used by gunicorn: one Django project behind three listeners.

``PAM_LISTENER`` says which listener this process serves, and only that listener's
paths pass: the console never answers the cluster APIs, the setup API (2390) answers
only ``/api/setup/``, the delegation API (2391, mutual TLS) only ``/api/delegation/``.
"""

import os

from django.core.wsgi import get_wsgi_application

# Files a listener writes (sessions in SQLite, logs, broker messages) are owner-only,
# however the server was started.
os.umask(0o077)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pamportal.settings")

_PREFIXES = {"setup-api": ("/api/setup/",), "delegation": ("/api/delegation/",)}


class ListenerGate:
    def __init__(self, app, listener: str):
        if listener not in ("console", *_PREFIXES):
            raise ValueError(f"unknown listener {listener!r}")
        self.app = app
        self.listener = listener

    def allows(self, path: str) -> bool:
        if self.listener == "console":
            return not path.startswith("/api/")
        return path.startswith(_PREFIXES[self.listener])

    def __call__(self, environ, start_response):
        if self.allows(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "not_found", "message": "No such endpoint on this port."}']


application = ListenerGate(get_wsgi_application(), os.environ.get("PAM_LISTENER", "console"))
