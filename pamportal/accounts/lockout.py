"""django-axes with one limit per lockout combination (``AXES_HANDLER``).

Axes compares the largest failure count over all ``AXES_LOCKOUT_PARAMETERS``
combinations with one ``AXES_FAILURE_LIMIT``. We lock a username from one address after
``AXES_FAILURE_LIMIT`` failures, and the address alone (password spraying across
usernames) only after ``PAM_LOCKOUT_ADDRESS_FAILURES``; so each combination is judged
against its own limit here, and one that reached it reports at least the failure limit.
"""

from __future__ import annotations

from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_failure_limit, get_lockout_parameters
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum


def _is_address_only(parameter) -> bool:
    return parameter == "ip_address" or (not isinstance(parameter, str) and list(parameter) == ["ip_address"])


def combination_limit(parameter, failure_limit: int) -> int:
    """The failures one lockout combination may have before it locks."""
    if _is_address_only(parameter):
        return int(settings.PAM_LOCKOUT_ADDRESS_FAILURES)
    return failure_limit


class AddressBrakeHandler(AxesDatabaseHandler):
    def get_failures(self, request, credentials: dict | None = None) -> int:
        failure_limit = get_failure_limit(request, credentials)
        parameters = get_lockout_parameters(request, credentials)
        failures = 0
        for parameter, attempts in zip(parameters, self.get_user_attempts(request, credentials), strict=True):
            count = attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            if count >= combination_limit(parameter, failure_limit):
                failures = max(failures, count, failure_limit)
            else:
                failures = max(failures, min(count, failure_limit - 1))
        return failures

    def reset_user_attempts(self, request, credentials: dict | None = None) -> int:
        """A successful login clears that username's failures from this address only:
        logging in to one's own account must not wipe the address's count of guesses at
        other usernames (axes would clear every combination, the address's included)."""
        username = get_client_username(request, credentials)
        count, _ = AccessAttempt.objects.filter(username=username, ip_address=request.axes_ip_address).delete()
        return count
