"""Database sessions whose idle timeout costs no write on most requests.

Django's ``SESSION_SAVE_EVERY_REQUEST`` restarts a session's expiry by writing its row
on every request; on SQLite every such write takes the database's write lock, so
concurrent page views queue behind each other. This store skips that write while the
session is unchanged and was written less than ``SESSION_REFRESH_SECONDS`` ago (at
most half the idle timeout): a
session still ends after at most ``SESSION_COOKIE_AGE`` seconds without a request
(possibly up to ``SESSION_REFRESH_SECONDS`` sooner, never later), and a request after
that finds it expired. A session whose data changed is always written.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore as DbSessionStore
from django.utils import timezone


def refresh_seconds() -> int:
    """The refresh window; never more than half the idle timeout, so a short timeout
    is still restarted by the requests."""
    return min(int(getattr(settings, "SESSION_REFRESH_SECONDS", 60)), settings.SESSION_COOKIE_AGE // 2)


class SessionStore(DbSessionStore):
    _stored_expiry = None  # the row's expire_date as loaded, or None

    def _get_session_from_db(self):
        session = super()._get_session_from_db()
        self._stored_expiry = session.expire_date if session is not None else None
        return session

    def save(self, must_create=False):
        if not must_create and not self.modified and self._fresh():
            return
        super().save(must_create=must_create)
        self._stored_expiry = None

    def _fresh(self) -> bool:
        """Was the stored row written (its expiry restarted) within the refresh window,
        with the expiry the session would be given now?"""
        if self._stored_expiry is None or self.session_key is None:
            return False
        if self.get("_session_expiry") is not None:
            return False  # an explicit expiry: leave it to Django
        written_ago = timedelta(seconds=settings.SESSION_COOKIE_AGE) - (self._stored_expiry - timezone.now())
        return timedelta(0) <= written_ago < timedelta(seconds=refresh_seconds())
