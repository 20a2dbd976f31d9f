"""Account policy enforced on every page: approvers and administrators enrol TOTP
before anything else, a verified second factor is required once enrolled, and a reset
password must be changed first."""

from django.shortcuts import redirect
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

_ALWAYS_OPEN = ("/static/", "/healthz", "/setup/")


class AccountPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if user.is_authenticated and not request.path.startswith(_ALWAYS_OPEN):
            allowed = {reverse("accounts:logout"), reverse("accounts:totp_enrol"), reverse("accounts:password_change")}
            if request.path not in allowed:
                has_device = TOTPDevice.objects.filter(user=user, confirmed=True).exists()
                if user.totp_required and not has_device:
                    return redirect("accounts:totp_enrol")
                if has_device and not user.is_verified():
                    # Logged in without the second factor (cannot happen through the
                    # login page): start again.
                    return redirect("accounts:logout")
                if user.must_change_password:
                    return redirect("accounts:password_change")
        return self.get_response(request)
