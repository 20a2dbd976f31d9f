"""Reads about accounts: the user list with each user's lockout and TOTP state."""

from __future__ import annotations

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Sum
from django.utils import timezone

from .models import TOTPDevice


def locked_usernames() -> set[str]:
    """Usernames whose failed attempts from one address (within the cool-off window)
    reached the limit: a lockout is per username and address."""
    attempts = AccessAttempt.objects.all()
    if settings.AXES_COOLOFF_TIME:
        attempts = attempts.filter(attempt_time__gte=timezone.now() - settings.AXES_COOLOFF_TIME)
    rows = attempts.values("username", "ip_address").annotate(failures=Sum("failures_since_start"))
    return {row["username"] for row in rows if row["username"] and row["failures"] >= settings.AXES_FAILURE_LIMIT}


def user_list() -> list:
    """Every user, in name order, with ``totp_enrolled`` and ``locked`` set (two queries)."""
    users = list(
        get_user_model()
        .objects.annotate(
            totp_enrolled=Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True))
        )
        .order_by("username")
    )
    locked = locked_usernames()
    for user in users:
        user.locked = user.get_username() in locked
    return users
