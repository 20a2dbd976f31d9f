"""Account policy enforced on every page: approvers and administrators enrol TOTP
before anything else, a session of a user with TOTP must have passed it, and a reset
password must be changed first."""

from functools import cache

from django.contrib import auth, messages
from django.shortcuts import redirect
from django.urls import reverse

from pamportal.accounts.models import TOTPDevice

_ALWAYS_OPEN = ("/static/", "/healthz")
# The wizard steps before the first administrator has a verified session: its start,
# the setup token, the administrator's name and password, and TOTP enrolment. Every
# later step (node, preflight, licence, MEK, finalise, join) is an ordinary page and
# needs a session that passed TOTP and a changed password.
_OPEN_SETUP_STEPS = ("setup:start", "setup:token", "setup:administrator", "setup:totp")


@cache
def _open_paths() -> frozenset[str]:
    """The paths of the open setup steps and of logging out (reversed once, not on
    every request)."""
    return frozenset(reverse(name) for name in (*_OPEN_SETUP_STEPS, "accounts:logout"))


class AccountPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if not user.is_authenticated or request.path.startswith(_ALWAYS_OPEN):
            return self.get_response(request)
        if request.path in _open_paths():
            return self.get_response(request)
        # A verified session has a device; only an unverified one needs the query.
        verified = user.is_verified()
        has_device = verified or TOTPDevice.objects.filter(user=user, confirmed=True).exists()
        if has_device and not verified:
            # A session without the second factor (the login page never makes one):
            # end it here rather than send a GET to the POST-only logout.
            auth.logout(request)
            messages.error(request, "Your session had not passed the 6-digit code check. Log in again.")
            return redirect("accounts:login")
        if request.path in (reverse("accounts:totp_enrol"), reverse("accounts:password_change")):
            return self.get_response(request)
        if user.totp_required and not has_device:
            return redirect("accounts:totp_enrol")
        if user.must_change_password:
            return redirect("accounts:password_change")
        return self.get_response(request)
