"""Logging filters. An expected refusal (a 403, a service's ``Refused``) is recorded in
the audit trail and answered with a page; the log gets one line, not a traceback."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied


def _expected(exc: BaseException | None) -> bool:
    if isinstance(exc, PermissionDenied):
        return True
    # Imported when a record is filtered: logging is configured before the apps load.
    from django.apps import apps

    if not apps.ready:
        return False
    from pamportal.audit.refusals import Refused

    return isinstance(exc, Refused)


class RefusalsOnOneLine(logging.Filter):
    """Drops the traceback of a record about an expected refusal (Django's
    "Forbidden (Permission denied)" passes the exception along); the line stays, with
    what was refused."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info and isinstance(exc_info, tuple) and _expected(exc_info[1]):
            record.exc_info = None
            record.exc_text = None
            reason = str(exc_info[1])
            if reason and isinstance(record.args, tuple) and reason not in record.getMessage():
                record.msg, record.args = f"{record.msg} (%s)", (*record.args, reason)
        return True
