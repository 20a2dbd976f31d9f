"""The first-boot wizard. Its state lives in the session, so a refresh resumes where
the operator was; every step re-checks that the setup token is still usable."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.hashers import make_password
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from pamportal.accounts import services as account_services
from pamportal.accounts.qr import qr_svg

from . import services
from .forms import AdministratorForm, SetupCodeForm, TokenForm
from .selectors import setup_is_complete, setup_token_usable
from .steps import STEP_BY_KEY, step_list

SESSION_KEY = "pam_setup"


def _state(request) -> dict:
    return dict(request.session.get(SESSION_KEY) or {})


def _save(request, state: dict) -> None:
    request.session[SESSION_KEY] = state


def current_step(request) -> str:
    """The step the operator is on, from the wizard state in the session."""
    state = _state(request)
    if not state.get("token_id") or not setup_token_usable(state.get("token_id")):
        return "token"
    if not state.get("username"):
        return "administrator"
    return "totp"


def _render(request, template: str, step: str, context: dict, status: int = 200):
    context = {**context, "steps": step_list(step), "step": STEP_BY_KEY[step]}
    response = render(request, template, context, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _complete(request, *, error: str = "", status: int = 200):
    return render(request, "setup/complete.html", {"error": error}, status=status)


def _guard(request, step: str):
    """Send the operator to the step that is due when this one is not; None if it is."""
    if setup_is_complete():
        return redirect("setup:start")
    state = _state(request)
    if state.get("token_id") and not setup_token_usable(state["token_id"]):
        request.session.pop(SESSION_KEY, None)
        messages.error(
            request,
            "The setup token you entered is no longer valid (used, replaced or expired). "
            "Enter the token printed most recently at the console.",
        )
        return redirect("setup:token")
    due = current_step(request)
    order = list(STEP_BY_KEY)
    if order.index(step) > order.index(due):
        return redirect(STEP_BY_KEY[due].url_name)
    return None


@never_cache
def start(request):
    if setup_is_complete():
        return _complete(request)
    return redirect(STEP_BY_KEY[current_step(request)].url_name)


@sensitive_post_parameters("token")
@never_cache
@require_http_methods(["GET", "POST"])
def token_step(request):
    complete = setup_is_complete()
    if request.method == "GET" and complete:
        return redirect("setup:start")
    form = TokenForm(request.POST if request.method == "POST" else None)
    error = ""
    if request.method == "POST" and form.is_valid():
        check = services.setup_token_check(token=form.cleaned_data["token"])
        if check.ok:
            _save(request, {"token_id": check.token_id})
            messages.success(request, "Setup token accepted.")
            return redirect("setup:administrator")
        error = check.message
        if complete:
            return _complete(request, error=error, status=403)
        form = TokenForm()
    return _render(request, "setup/token.html", "token", {"form": form, "error": error})


@sensitive_post_parameters("password1", "password2")
@never_cache
@require_http_methods(["GET", "POST"])
def administrator_step(request):
    if (response := _guard(request, "administrator")) is not None:
        return response
    state = _state(request)
    form = AdministratorForm(request.POST if request.method == "POST" else None, initial={"username": state.get("username", "")})
    if request.method == "POST" and form.is_valid():
        if state.get("username") != form.cleaned_data["username"]:
            state.pop("totp_key", None)  # the QR code's label names the user
            state["last_t"] = -1
        state["username"] = form.cleaned_data["username"]
        # Only the hash is kept until the administrator is created at the next step.
        state["password_hash"] = make_password(form.cleaned_data["password1"])
        state.setdefault("totp_key", services.setup_totp_key())
        state.setdefault("last_t", -1)
        _save(request, state)
        return redirect("setup:totp")
    return _render(request, "setup/administrator.html", "administrator", {"form": form})


@sensitive_post_parameters("otp_token")
@never_cache
@require_http_methods(["GET", "POST"])
def totp_step(request):
    if (response := _guard(request, "totp")) is not None:
        return response
    state = _state(request)
    if not state.get("totp_key"):
        state["totp_key"] = services.setup_totp_key()
        _save(request, state)
    username, key = state["username"], state["totp_key"]
    form = SetupCodeForm(request.POST if request.method == "POST" else None)
    error = ""
    if request.method == "POST" and form.is_valid():
        check = services.setup_totp_check(
            username=username, key=key, code=form.cleaned_data["otp_token"], after_t=state.get("last_t", -1)
        )
        if check.ok:
            try:
                user, device = services.setup_admin_create(
                    token_id=state["token_id"],
                    username=username,
                    password_hash=state["password_hash"],
                    totp_key=key,
                    totp_t=check.t,
                    totp_drift=check.drift,
                )
            except services.SetupRefused as refused:
                request.session.pop(SESSION_KEY, None)
                messages.error(request, refused.message)
                return redirect("setup:start")
            request.session.pop(SESSION_KEY, None)
            account_services.session_start(request=request, user=user, device=device, via="setup")
            messages.success(
                request,
                f"Setup complete: administrator {username} created with TOTP, and you are logged in.",
            )
            return redirect("nodes:dashboard")
        error = check.message
        form = SetupCodeForm()
    device = services.setup_totp_device(username=username, key=key)
    secret = services.base32_secret(key)
    return _render(
        request,
        "setup/totp.html",
        "totp",
        {"form": form, "error": error, "qr": qr_svg(device.config_url), "secret": secret, "username": username},
    )
