"""Account pages: log in and out, TOTP enrolment, password change and user
administration. Thin: a form parses input, one service call, a page or a redirect."""

from __future__ import annotations

from base64 import b32encode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from pamportal.core.views import refused_redirect

from . import selectors, services
from .decorators import require_capability
from .forms import CodeForm, LoginForm, PasswordChangeForm, UserCreateForm
from .models import TOTPDevice
from .qr import qr_svg
from .services import AccountRefused


def locked_out(request, original_response=None, credentials=None, *args, **kwargs):
    """Axes' lockout page (``AXES_LOCKOUT_CALLABLE``). The audit event is written by the
    ``user_locked_out`` receiver, so this only explains."""
    response = render(
        request,
        "accounts/locked_out.html",
        {"minutes": services.lockout_minutes(), "failure_limit": settings.AXES_FAILURE_LIMIT},
        status=403,
    )
    response["Cache-Control"] = "no-store"
    return response


def _safe_next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return ""


@sensitive_post_parameters("password", "otp_token")
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request):
    if request.method == "GET" and request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    error = ""
    if request.method == "POST":
        form = LoginForm(request.POST)
        if form.is_valid():
            result = services.session_login(
                request=request,
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
                code=form.cleaned_data.get("otp_token") or "",
            )
            if result.user is not None:
                return redirect(_safe_next(request) or settings.LOGIN_REDIRECT_URL)
            # When axes locked this attempt out, its middleware replaces this page
            # with the lockout page.
            error = result.error
            form = LoginForm(initial={"username": form.cleaned_data["username"]})
    else:
        form = LoginForm()
    return render(
        request,
        "accounts/login.html",
        {"form": form, "error": error, "next": _safe_next(request), "failure_limit": settings.AXES_FAILURE_LIMIT},
    )


@require_POST
def logout_view(request):
    services.session_logout(request=request)
    messages.success(request, "You have logged out.")
    return redirect("accounts:login")


@sensitive_post_parameters("otp_token")
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def totp_enrol(request):
    if TOTPDevice.objects.filter(user=request.user, confirmed=True).exists():
        return render(request, "accounts/totp_enrolled.html")
    device = services.totp_enrol_start(user=request.user)
    form = CodeForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        result = services.totp_enrol_confirm(request=request, device=device, code=form.cleaned_data["otp_token"])
        if result.ok:
            messages.success(request, "Your authenticator app is enrolled. From now on, log in with its 6-digit code.")
            return redirect(settings.LOGIN_REDIRECT_URL)
        form = CodeForm()
        form_error = result.error
    else:
        form_error = ""
    response = render(
        request,
        "accounts/totp_enrol.html",
        {
            "form": form,
            "form_error": form_error,
            "qr": qr_svg(device.config_url),
            "secret": _grouped_secret(device),
            "required": request.user.totp_required,
        },
    )
    response["Cache-Control"] = "no-store"
    return response


def _grouped_secret(device: TOTPDevice) -> str:

    secret = b32encode(device.bin_key).decode()
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


@sensitive_post_parameters("old_password", "new_password1", "new_password2")
@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def password_change_view(request):
    form = PasswordChangeForm(request.user, request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        services.password_change(user=request.user, new_password=form.cleaned_data["new_password1"])
        request.user.refresh_from_db()
        update_session_auth_hash(request, request.user)
        messages.success(request, "Your password has been changed.")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(
        request,
        "accounts/password_change.html",
        {"form": form, "forced": request.user.must_change_password},
    )


# --- User administration ----------------------------------------------------------------


@never_cache
@require_capability("users.manage")
@require_GET
def user_list(request):
    return render(
        request,
        "accounts/user_list.html",
        {"users": selectors.user_list(), "failure_limit": settings.AXES_FAILURE_LIMIT},
    )


@sensitive_post_parameters("new_password1", "new_password2")
@never_cache
@require_capability("users.manage")
@require_http_methods(["GET", "POST"])
def user_create(request):
    form = UserCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            user = services.user_create(
                username=form.cleaned_data["username"],
                role=form.cleaned_data["role"],
                password=form.cleaned_data["new_password1"],
            )
        except AccountRefused as refused:
            form.add_error(None, refused.message)
        else:
            messages.success(
                request,
                f"User {user.get_username()} ({user.get_role_display()}) created. "
                "Give them the initial password in person; they must change it at first login"
                + (" and enrol an authenticator app." if user.totp_required else "."),
            )
            return redirect("accounts:user_list")
    return render(request, "accounts/user_create.html", {"form": form})


def _user_action(request, user_id: int, service, success: str):
    try:
        result = service(actor=request.user, user_id=user_id)
    except AccountRefused as refused:
        messages.error(request, refused.message)
        return None
    user = result[0] if isinstance(result, tuple) else result
    messages.success(request, success.format(name=user.get_username()))
    return result


@require_POST
@require_capability("users.manage")
def user_disable(request, user_id: int):
    _user_action(request, user_id, services.user_disable, "{name} is disabled; their sessions have ended.")
    return redirect("accounts:user_list")


@require_POST
@require_capability("users.manage")
def user_enable(request, user_id: int):
    _user_action(request, user_id, services.user_enable, "{name} is enabled again.")
    return redirect("accounts:user_list")


@require_POST
@require_capability("users.manage")
def user_unlock(request, user_id: int):
    result = _user_action(request, user_id, services.user_unlock, "{name} is unlocked and may log in again.")
    if result is not None and result[1] == 0:
        messages.info(request, "There were no failed attempts recorded for this user.")
    return redirect("accounts:user_list")


@never_cache
@require_POST
@require_capability("users.manage")
def user_reset(request, user_id: int):
    try:
        user, password = services.user_reset(actor=request.user, user_id=user_id)
    except AccountRefused as refused:
        return refused_redirect(request, refused, "accounts:user_list")
    # Shown in this one response only: never stored, never put in a message or a log.
    response = render(request, "accounts/user_reset_done.html", {"target": user, "password": password})
    response["Cache-Control"] = "no-store"
    return response

